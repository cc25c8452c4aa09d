"""The names of the files in a run directory: the one place that spells them.

A leaf module (it imports nothing), so that everything that reads or writes a run directory can use
these names, from :mod:`hardctl.config` (``config.toml``) and :mod:`hardctl.models` (a run directory
loads as its ``model.safetensors``) up to the trainer, ``export``, ``visualize`` and recipes, without
importing torch or pointing an import upwards. What each file holds: :mod:`hardctl.distill.rundir`.
"""

CONFIG_FILE = "config.toml"  # the resolved RunConfig, read back by --resume
STEPS_FILE = "steps.jsonl"  # one JSON object per optimisation step
EPOCHS_FILE = "epochs.jsonl"  # one JSON object per epoch
MODEL_FILE = "model.safetensors"  # the weights the run reports (--select): what a run directory loads as
LAST_MODEL_FILE = "last.safetensors"  # the weights after the last finished epoch
BEST_MODEL_FILE = "best.safetensors"  # the weights of the best centered validation accuracy
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.pt"  # full training state for --resume
BEST_CHECKPOINT = f"{CHECKPOINT_DIR}/best.pt"  # full training state at the best validation accuracy
SUMMARY_FILE = "summary.json"  # final metrics: its presence marks a finished run
LOG_FILE = "log.txt"  # the run's log lines
POOL_DIR = "augmentors"  # HARD's augmentor pool (hardctl.augment.pool)
EVAL_FILE = "eval.json"  # a recipe's scores of the run (hardctl.recipes.evaluation)
GRID_FILE = "augmentations.png"  # what visualize draws into a HARD run (hardctl.visualize): the augmentation grid,
PHASES_FILE = "phases.png"  # the phase plot
CURVES_FILE = "curves.png"  # and the centered/shifted validation curves
FIGURE_FILES = (GRID_FILE, PHASES_FILE, CURVES_FILE)

# hardctl's bookkeeping (hidden files)
RUN_MARKER = ".hardctl-run"  # written when hardctl creates a run directory: --force replaces only such folders
LOCK_FILE = ".hardctl-lock"  # locked by the one process writing the folder (a run; recipes run on its --out)
COMMIT_JOURNAL = ".hardctl-commit.json"  # the renames of a checkpoint being committed (rundir.one_checkpoint)

__all__ = ["BEST_CHECKPOINT", "BEST_MODEL_FILE", "CHECKPOINT_DIR", "COMMIT_JOURNAL", "CONFIG_FILE", "CURVES_FILE", "EPOCHS_FILE", "EVAL_FILE",
           "FIGURE_FILES", "GRID_FILE", "LAST_CHECKPOINT", "LAST_MODEL_FILE", "LOCK_FILE", "LOG_FILE", "MODEL_FILE", "PHASES_FILE", "POOL_DIR",
           "RUN_MARKER", "STEPS_FILE", "SUMMARY_FILE"]

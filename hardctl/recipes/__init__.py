"""Recipes: one of the paper's tables as a TOML file of arms × seeds, run by one command.

A recipe file has three parts::

    [recipe]
    name = "transfer-digits"          # default: the file's stem
    kind = "transfer"                 # transfer (arms of train/distill runs) | toy (hardctl.toy)
    description = "CNN → MLP on digits, the paper's table 1 at CPU scale"
    paper = "Table 1 (CNN → MLP)"
    seeds = [0, 1, 2]

    [defaults]                        # RunConfig fields shared by every arm
    data = "digits"
    epochs = 30

    [[arm]]                           # one row of the table, in order
    id = "teacher"                    # its folder: OUT/<id>/seed-<n>
    label = "Teacher only"            # its row label
    command = "train"
    model = "mnist_cnn"

    [[arm]]
    id = "kd"
    label = "KD"
    command = "distill"
    teacher = "@teacher"              # that arm's run directory for the same seed
    model = "mnist_mlp"
    augmentor = "none"

Every arm key except ``id`` and ``label`` is a :class:`~hardctl.config.RunConfig` field that
overrides ``[defaults]``; ``seed`` is set per seed. :func:`run_recipe` trains the arms seed by seed
into ``OUT/<arm>/seed-<n>`` (reusing a finished run whose saved configuration is the same, so an
interrupted recipe continues where it stopped) and writes ``results.json``, ``results.md`` (the
paper's layout: rows = arms, the chosen columns as mean ± s.e.m.) and the resolved ``recipe.toml``
into ``OUT``.

Optional parts, used by the paper's CIFAR-10 and ImageNet recipes::

    [recipe]
    teacher_download = "deepaugment_and_augmix.pth.tar from https://github.com/hendrycks/imagenet-r"
    augmentor_download = "X from URL, then `hardctl vae convert X ...`"   # for an arm's aug_options weights file

    [defaults]
    teacher = "resnet50:weights/deepaugment_and_augmix.pth.tar"   # NAME:FILE, checked before anything runs

    [eval]                            # score every finished arm's model with hardctl eval's suites
    suites = ["imagenet-id", "imagenet-ood"]
    data_root = "data"                # where the suites look for their sets; sets = { NAME = "DIR" } for one set
    batch_size = 256                  # workers = N: DataLoader workers (default: the eval engine's)

    [results]
    columns = ["imagenet-val", "imagenet-real", "imagenet-c mCE"]   # default: centered, shifted, eval scores
    labels = { "imagenet-val" = "Val" }                             # the built-in labels cover the paper's sets
    reference = "kd"                  # the arm the Δ columns compare with (default: plain KD)

    [[arm]]
    id = "teacher"
    label = "Teacher"
    command = "eval"                  # trains nothing: scores its ``teacher`` once (not per seed)

A column is ``centered`` or ``shifted`` (each run's own test split and its shifted copy), a set of the
eval suites (``imagenet-val``: top-1 %) or a summary (``imagenet-c mCE``). Sets the suites do not find
are skipped with the eval engine's message and leave their column empty. ``--set KEY=VALUE`` sets KEY
for every arm (an arm's own value included), ``--set ARM.KEY=VALUE`` for one arm (applied after the
former), ``--set eval.KEY=VALUE`` / ``eval.sets.NAME=DIR`` / ``results.columns=a,b`` the sections.
"""


from hardctl.recipes.results import (PlannedRun, collect, format_delta, format_mean_sem, markdown, mean_sem,
                                     reproduce_command, saved_config_matches, shift_label, write_results)
from hardctl.recipes.runner import list_recipes, run_recipe
from hardctl.recipes.overrides import apply_overrides, parse_overrides
from hardctl.recipes.sections import EvalSpec, ResultsSpec
from hardctl.recipes.spec import (KINDS, Arm, Recipe, check_value, describe_file, load_recipe, parse_recipe,
                                  parse_value, recipe_path)

__all__ = ["KINDS", "Arm", "EvalSpec", "Recipe", "ResultsSpec", "PlannedRun", "apply_overrides", "check_value", "collect", "describe_file",
           "format_delta", "format_mean_sem", "list_recipes", "load_recipe", "markdown", "mean_sem",
           "parse_overrides", "parse_recipe", "parse_value", "recipe_path", "reproduce_command",
           "run_recipe", "saved_config_matches", "shift_label", "write_results"]

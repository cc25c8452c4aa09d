"""Figures of a HARD run: what its augmentors do to images, and how training switched between phases.

:func:`render` writes two PNGs into a run directory (or ``out_dir``), in the spirit of the paper's
figure 4 and table 2 (right):

* ``augmentations.png`` — rows are the first validation images, columns the original and then the
  augmentations made by pool snapshots chosen evenly from the first (the identity) to the last. Every
  column replays the same random draw (the global torch seed is set to ``seed`` before each snapshot),
  so columns differ only by what the augmentor had learned at that point. For an augmentor that mixes
  images of the batch (its :meth:`~hardctl.augment.Augmentor.sources` reports them, e.g. HARD-Mix) the
  original column is replaced by one column per source (``source 1`` is the row's image, ``source 2`` …
  its group partners, taken from the same validation batch) and every mix carries a caption with its
  sources' mean weights (``71/29 %``); the snapshot titles add the mean over the rows.
* ``curves.png`` — centered and shifted validation accuracy per epoch (:mod:`.curves`).
* ``phases.png`` — the switching statistic (the student's error on augmented data, ``aug_error`` in
  ``steps.jsonl``) over iterations, shaded by phase, with ``l_min`` / ``l_max`` and the pool size.

The grid is :mod:`.grid`, the phase plot :mod:`.phases`; this module draws both for a run directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hardctl.errors import UsageError
from hardctl.distill.rundir import read_jsonl
from hardctl.runfiles import EPOCHS_FILE, STEPS_FILE
from hardctl.visualize.curves import CURVES_FILE, plot_curves
from hardctl.visualize.grid import (GRID_FILE, GRID_META_KEY, Grid, assemble_grid, augmentation_columns,
                                    choose_snapshots, mix_columns, snapshot_title, weights_caption)
from hardctl.visualize.phases import PHASES_FILE, PHASE_COLOURS, plot_phases, read_steps, switches_from_epochs

__all__ = ["CURVES_FILE", "GRID_FILE", "GRID_META_KEY", "PHASES_FILE", "PHASE_COLOURS", "Grid", "assemble_grid",
           "augmentation_columns", "choose_snapshots", "mix_columns", "plot_curves", "plot_phases", "read_steps",
           "render", "snapshot_title", "switches_from_epochs", "weights_caption"]


def render(run_dir: str | Path, out_dir: str | Path | None = None, *, rows: int = 8, snapshots: int = 6,
           seed: int = 0, data=None) -> dict[str, Path]:
    """Draw ``augmentations.png``, ``phases.png`` and ``curves.png`` for a HARD run; returns
    ``{"grid": …, "phases": …, "curves": …}``.

    ``rows`` validation images, ``snapshots`` pool entries (first and last always among them), the random
    draw fixed by ``seed``. Raises :class:`~hardctl.errors.UsageError` for a folder that is not a run
    directory or a run without an augmentor pool (plain KD). ``data``: the run's already loaded
    :class:`~hardctl.data.DataBundle` (the trainer passes its own instead of reading the data set again).
    """
    from hardctl.augment import build_augmentor
    from hardctl.augment.pool import POOL_DIR, pool_files, read_entry
    from hardctl.config import RunConfig
    from hardctl.data import load_data

    run_dir = Path(run_dir).expanduser()
    if rows < 1:
        raise UsageError(f"--rows must be at least 1, got {rows}")
    if snapshots < 1:
        raise UsageError(f"--snapshots must be at least 1, got {snapshots}")
    cfg = RunConfig.load(run_dir)  # a non-run folder: its UsageError
    files = pool_files(run_dir)
    if not files:
        what = ("a supervised run (hardctl train), which has no augmentor" if cfg.command == "train" else
                "a plain KD run (--augmentor none)" if not cfg.uses_hard else
                f"a HARD run whose {POOL_DIR}/ is empty or missing")
        raise UsageError(f"{run_dir} has nothing to visualize: it is {what}",
                         hint="visualize draws the augmentor pool of a run of hardctl distill --augmentor NAME")
    out = Path(out_dir).expanduser() if out_dir is not None else run_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    if data is None:
        data = load_data(cfg.data, shift_px=cfg.shift_px, shift_seed=cfg.shift_seed)
    source = data.val if len(data.val) else data.test
    count = min(rows, len(source))
    images = torch.stack([torch.as_tensor(source[i][0]).float() for i in range(count)])
    augmentor = build_augmentor(cfg.augmentor, cfg.aug_options, in_chans=data.in_chans, img_size=data.img_size)
    augmentor.eval()

    chosen = choose_snapshots(len(files), snapshots)
    entries = []
    for index in chosen:
        snapshot, info = read_entry(files[index], "cpu")
        entries.append((snapshot, {"index": index, **info}))
    mixed = mix_columns(augmentor, images, entries, seed=seed)
    if mixed is None:
        columns, titles = augmentation_columns(augmentor, images, entries, seed=seed)
        grid = assemble_grid(columns, titles, group_after=1)
    else:
        columns, titles, captions, sources = mixed
        grid = assemble_grid(columns, titles, captions=captions, group_after=sources)
    grid_path = grid.save(out / GRID_FILE)
    phases_path = plot_phases(read_steps(run_dir / STEPS_FILE), out / PHASES_FILE, augmentor=cfg.augmentor,
                              l_min=cfg.l_min, l_max=cfg.l_max, switches=switches_from_epochs(run_dir),
                              pool_size=len(files))
    curves_path = plot_curves(read_jsonl(run_dir / EPOCHS_FILE), out / CURVES_FILE,
                              title=f"HARD {cfg.augmentor} on {cfg.data}", select=cfg.select)
    return {"grid": grid_path, "phases": phases_path, "curves": curves_path}

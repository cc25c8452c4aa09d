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
* ``phases.png`` — the switching statistic (the student's error on augmented data, ``aug_error`` in
  ``steps.jsonl``) over iterations, shaded by phase, with ``l_min`` / ``l_max`` and the pool size.

The grid is assembled by :func:`assemble_grid` from a list of columns of image tensors and titles, so an
augmentor that mixes several images (HARD-Mix) can add columns for its sources. Matplotlib is imported
only inside :func:`plot_phases` and draws on an Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hardctl.atomic import atomic_path
from hardctl.distill.rundir import read_jsonl
from hardctl.errors import UsageError
from hardctl.runfiles import EPOCHS_FILE, STEPS_FILE

__all__ = ["GRID_FILE", "PHASES_FILE", "Grid", "assemble_grid", "augmentation_columns", "choose_snapshots",
           "mix_columns", "plot_phases", "read_steps", "render", "switches_from_epochs", "weights_caption"]

GRID_FILE = "augmentations.png"
PHASES_FILE = "phases.png"
GRID_META_KEY = "hardctl_grid"  # PNG text chunk: the layout of the grid (titles, image boxes), as JSON

MIN_CELL = 96  # small images are upscaled (nearest) until their longer side reaches this many pixels
PAD = 6  # pixels between cells and around the grid
GROUP_GAP = 10  # extra space after the original column(s)
PHASE_COLOURS = {"student": "#4c72b0", "augmentor": "#dd8452", "joint": "#55a868"}


# ---------------------------------------------------------------------------------------- the entry point
def render(run_dir: str | Path, out_dir: str | Path | None = None, *, rows: int = 8, snapshots: int = 6,
           seed: int = 0, data=None) -> dict[str, Path]:
    """Draw ``augmentations.png`` and ``phases.png`` for a HARD run; returns ``{"grid": …, "phases": …}``.

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
        raise UsageError(f"{run_dir} has no augmentor pool (a plain KD run?)",
                         hint=f"visualize needs a run of hardctl distill --augmentor NAME, which saves its "
                              f"augmentors in {POOL_DIR}/; this run's augmentor is {cfg.augmentor!r}")
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
    return {"grid": grid_path, "phases": phases_path}


def choose_snapshots(available: int, wanted: int) -> list[int]:
    """Up to ``wanted`` indices out of ``range(available)``, evenly spread, first and last always included
    (``wanted == 1``: the last, the most trained augmentor)."""
    if available <= 0:
        return []
    if wanted >= available:
        return list(range(available))
    if wanted == 1:
        return [available - 1]
    picks = {round(i * (available - 1) / (wanted - 1)) for i in range(wanted)}
    return sorted(picks)


def augmentation_columns(augmentor, images: torch.Tensor, entries: Sequence[tuple[dict, dict]], *,
                         seed: int = 0) -> tuple[list[torch.Tensor], list[str]]:
    """The original column, then ``images`` augmented by each ``(snapshot, info)`` under one replayed draw.

    The global torch RNG is seeded with ``seed`` before each snapshot (so every column sees the same
    noise) inside :func:`torch.random.fork_rng`, which leaves the caller's RNG state as it was.
    """
    columns, titles = [images], ["original\nvalidation"]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for snapshot, info in entries:
            torch.manual_seed(seed)
            out = augmentor.forward_with(snapshot, images) if hasattr(augmentor, "forward_with") else augmentor(images)
            columns.append(out.detach().float().clamp(0.0, 1.0).cpu())
            titles.append(snapshot_title(info))
    return columns, titles


def mix_columns(augmentor, images: torch.Tensor, entries: Sequence[tuple[dict, dict]], *, seed: int = 0
                ) -> tuple[list[torch.Tensor], list[str], list[list[str] | None], int] | None:
    """For an augmentor whose ``sources`` reports what it mixed (HARD-Mix): ``(columns, titles, captions,
    G)``, the ``G`` source columns (``source 1``: ``images`` themselves, then their group partners, from
    the first snapshot's ``index``, which comes from the draw and not from the learned state) and one
    column of mixes per snapshot, captioned per row with its sources' mean weights. ``None`` for other
    augmentors. The draw is replayed as in :func:`augmentation_columns`.
    """
    if not hasattr(augmentor, "sources_with") or not entries:
        return None
    outputs, reports = [], []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for snapshot, _ in entries:
            torch.manual_seed(seed)
            report = augmentor.sources_with(snapshot, images)  # first: other augmentors stop here, unsampled
            if report is None:
                return None
            torch.manual_seed(seed)  # the same draw again, for the mix those weights made
            out = augmentor.forward_with(snapshot, images)
            outputs.append(out.detach().float().clamp(0.0, 1.0).cpu())
            reports.append({k: torch.as_tensor(v).detach().cpu() for k, v in report.items()})
    index = reports[0]["index"].long()
    group = index.shape[1]
    columns = [images[index[:, g]] for g in range(group)]
    titles = ["source 1\n(the image)"] + [f"source {g + 1}\n" + ("(next row)" if g == 1 else f"(row + {g})")
                                           for g in range(1, group)]
    captions: list[list[str] | None] = [None] * group
    for out, report, (_, info) in zip(outputs, reports, entries):
        weight = report["weight"].float()
        columns.append(out)
        titles.append(snapshot_title(info) + "\nmean " + weights_caption(weight.mean(dim=0)))
        captions.append([weights_caption(row) for row in weight])
    return columns, titles, captions, group


def weights_caption(weights: torch.Tensor) -> str:
    """``71/29 %``: the sources' weights in per cent, the image's own first."""
    return "/".join(f"{100 * float(w):.0f}" for w in weights) + " %"


def snapshot_title(info: dict[str, Any]) -> str:
    """Two lines for a pool entry: ``#3 switch`` / ``ep 2 · it 410``."""
    head = f"#{info.get('index', '?')}"
    if info.get("reason"):
        head += f" {info['reason']}"
    when = []
    if info.get("epoch") is not None:
        when.append(f"ep {info['epoch']}")
    if info.get("iteration") is not None:
        when.append(f"it {info['iteration']}")
    return head + ("\n" + " · ".join(when) if when else "")


# ---------------------------------------------------------------------------------------- the grid
@dataclass
class Grid:
    """An assembled grid: the image and, per column and row, the box ``(left, top, right, bottom)`` of
    each picture in it (also stored in the PNG's ``hardctl_grid`` text chunk)."""

    image: Any  # PIL.Image.Image
    titles: list[str]
    boxes: list[list[tuple[int, int, int, int]]]  # [column][row]
    scale: int
    captions: list[list[str] | None] | None = None  # [column][row] text under the pictures, if any

    def layout(self) -> dict[str, Any]:
        layout = {"titles": self.titles, "boxes": self.boxes, "scale": self.scale,
                  "columns": len(self.boxes), "rows": len(self.boxes[0]) if self.boxes else 0}
        if self.captions is not None:
            layout["captions"] = self.captions
        return layout

    def save(self, path: str | Path) -> Path:
        """Write the PNG atomically (with the layout as a text chunk); returns ``path``."""
        from PIL.PngImagePlugin import PngInfo

        path = Path(path)
        meta = PngInfo()
        meta.add_text(GRID_META_KEY, json.dumps(self.layout()))
        with atomic_path(path) as tmp:
            self.image.save(tmp, format="png", pnginfo=meta)
        return path


def assemble_grid(columns: Sequence[torch.Tensor], titles: Sequence[str], *, scale: int | None = None,
                  group_after: int | Sequence[int] = (), captions: Sequence[Sequence[str] | None] | None = None,
                  background=(255, 255, 255)) -> Grid:
    """Lay out ``columns`` (each ``N×C×H×W`` in ``[0, 1]``, the same N) side by side under their ``titles``.

    Row ``i`` shows image ``i`` of every column. ``scale`` is the nearest-neighbour upscaling factor
    (default: enough for the longer side to reach :data:`MIN_CELL` pixels). ``group_after`` puts a wider
    gap after those column counts (``1``: after the original), e.g. to set a mixing augmentor's source
    columns apart from its outputs. ``captions``: per column ``None`` or one line per row, written under
    each picture (e.g. a mix's weights). One channel is drawn as grey, three as RGB (more: the first three).
    """
    from PIL import Image, ImageDraw

    if not columns:
        raise ValueError("assemble_grid needs at least one column")
    if len(titles) != len(columns):
        raise ValueError(f"{len(columns)} columns but {len(titles)} titles")
    if captions is not None and len(captions) != len(columns):
        raise ValueError(f"{len(columns)} columns but {len(captions)} caption lists")
    columns = [_as_batch(c) for c in columns]
    n, height, width = columns[0].shape[0], columns[0].shape[-2], columns[0].shape[-1]
    for c in columns:
        if c.shape[0] != n or c.shape[-2:] != (height, width):
            raise ValueError(f"columns differ in size: {tuple(columns[0].shape)} vs {tuple(c.shape)}")
    if scale is None:
        scale = max(1, math.ceil(MIN_CELL / max(height, width)))
    img_w, img_h = width * scale, height * scale
    groups = {group_after} if isinstance(group_after, int) else set(group_after)

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [probe.multiline_textbbox((0, 0), t, font=font, spacing=2) for t in titles]
    title_h = max(b[3] - b[1] for b in sizes) if titles else 0
    cell_w = max(img_w, *(b[2] - b[0] + 4 for b in sizes))
    lines = [(c, r, text) for c, column in enumerate(captions or []) if column is not None
             for r, text in enumerate(column)]
    if any(column is not None and len(column) != n for column in captions or []):
        raise ValueError(f"every caption list needs one line per row ({n})")
    caption_boxes = {(c, r): probe.textbbox((0, 0), text, font=font) for c, r, text in lines}
    caption_h = max((b[3] - b[1] for b in caption_boxes.values()), default=0)
    if caption_boxes:
        caption_h += 2  # space between a picture and its caption
        cell_w = max(cell_w, *(b[2] - b[0] + 4 for b in caption_boxes.values()))

    lefts, x = [], PAD
    for i in range(len(columns)):
        lefts.append(x)
        x += cell_w + PAD + (GROUP_GAP if (i + 1) in groups else 0)
    total_w = x
    top = PAD + title_h + PAD
    row_h = img_h + caption_h + PAD
    total_h = top + n * row_h

    canvas = Image.new("RGB", (total_w, total_h), tuple(background))
    draw = ImageDraw.Draw(canvas)
    boxes: list[list[tuple[int, int, int, int]]] = []
    for c, (batch, title, left, size) in enumerate(zip(columns, titles, lefts, sizes)):
        text_w = size[2] - size[0]
        draw.multiline_text((left + (cell_w - text_w) // 2 - size[0], PAD - size[1]), title, fill=(0, 0, 0),
                            font=font, spacing=2, align="center")
        x0 = left + (cell_w - img_w) // 2
        col_boxes = []
        for row in range(n):
            y0 = top + row * row_h
            picture = _to_pil(batch[row]).resize((img_w, img_h), Image.NEAREST)
            canvas.paste(picture, (x0, y0))
            if (c, row) in caption_boxes:
                box = caption_boxes[(c, row)]
                draw.text((left + (cell_w - (box[2] - box[0])) // 2 - box[0], y0 + img_h + 2 - box[1]),
                          captions[c][row], fill=(0, 0, 0), font=font)
            col_boxes.append((x0, y0, x0 + img_w, y0 + img_h))
        boxes.append(col_boxes)
    return Grid(image=canvas, titles=list(titles), boxes=boxes, scale=scale,
                captions=[list(c) if c is not None else None for c in captions] if captions is not None else None)


def _as_batch(column: torch.Tensor) -> torch.Tensor:
    column = torch.as_tensor(column).detach().float().cpu()
    if column.ndim == 3:  # N×H×W: grey
        column = column.unsqueeze(1)
    if column.ndim != 4:
        raise ValueError(f"a grid column is N×C×H×W, got shape {tuple(column.shape)}")
    return column


def _to_pil(image: torch.Tensor):
    """One ``C×H×W`` image in ``[0, 1]`` as an RGB PIL image."""
    from PIL import Image

    pixels = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if pixels.shape[0] >= 3:
        array = pixels[:3].permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(array, mode="RGB")
    return Image.fromarray(pixels[0].contiguous().numpy(), mode="L").convert("RGB")


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)  # Pillow >= 10.1 (FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


# ---------------------------------------------------------------------------------------- the phase plot
def read_steps(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``steps.jsonl`` that carry the switching statistic, one per iteration, in order.

    Read by :func:`hardctl.distill.rundir.read_jsonl` (a torn last line is dropped); a resumed run's
    repeated iterations keep their latest record.
    """
    by_iter: dict[int, dict[str, Any]] = {}
    for record in read_jsonl(path):
        if "iter" in record and record.get("aug_error") is not None:
            by_iter[int(record["iter"])] = record
    return [by_iter[i] for i in sorted(by_iter)]


def _phase_runs(records: Sequence[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """Contiguous ``(phase, first, last)`` runs of iterations."""
    runs: list[tuple[str, int, int]] = []
    for r in records:
        phase, it = str(r.get("phase", "student")), int(r["iter"])
        if runs and runs[-1][0] == phase:
            runs[-1] = (phase, runs[-1][1], it)
        else:
            runs.append((phase, it, it))
    return runs


def switches_from_epochs(run_dir: str | Path) -> int | None:
    """The switch count of the last epoch record (exact, unlike counting phase changes in the steps)."""
    counts = [int(r["switches"]) for r in read_jsonl(Path(run_dir) / EPOCHS_FILE) if r.get("switches") is not None]
    return counts[-1] if counts else None


def plot_phases(records: Sequence[dict[str, Any]], path: str | Path, *, augmentor: str = "",
                l_min: float | None = None, l_max: float | None = None, switches: int | None = None,
                pool_size: int | None = None) -> Path:
    """Plot the switching statistic per iteration, shaded by phase, with thresholds and pool size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    runs = _phase_runs(records)
    phases = {p for p, _, _ in runs}
    joint = phases == {"joint"}
    if switches is None:
        switches = max(0, len(runs) - 1) if not joint else 0

    fig = Figure(figsize=(9, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if records:
        iters = [int(r["iter"]) for r in records]
        for phase, first, last in runs:
            colour = PHASE_COLOURS.get(phase, "#8c8c8c")
            ax.axvspan(first - 0.5, last + 0.5, color=colour, alpha=0.12, lw=0)
        # the statistic, one line per phase run so its colour follows the phase
        position = {it: k for k, it in enumerate(iters)}
        dots = len(records) <= 400  # few points: mark each one (a one-iteration phase has no line)
        for phase, first, last in runs:
            chunk = records[position[first]:position[last] + 1]
            ax.plot([int(r["iter"]) for r in chunk], [float(r["aug_error"]) for r in chunk],
                    color=PHASE_COLOURS.get(phase, "#8c8c8c"), lw=0.8,
                    marker="." if dots or len(chunk) == 1 else None, ms=3)
        epochs = [(int(r["iter"]), r.get("epoch")) for r in records]
        for (_, before), (it, after) in itertools.pairwise(epochs):
            if after != before and after is not None:
                ax.axvline(it - 0.5, color="#999999", lw=0.5, ls=":")
        ax.set_xlim(iters[0] - 0.5, iters[-1] + 0.5)
    else:
        ax.text(0.5, 0.5, "no step records in steps.jsonl", ha="center", va="center", transform=ax.transAxes)
    unused = " (unused: joint training)" if joint else ""
    if l_min is not None:
        ax.axhline(l_min, color="#2a9d8f", ls="--", lw=1, label=f"l_min = {l_min:g}{unused}")
    if l_max is not None:
        ax.axhline(l_max, color="#c44e52", ls="--", lw=1, label=f"l_max = {l_max:g}{unused}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("iteration (student and augmentor steps)")
    ax.set_ylabel("student error on augmented data")

    handles = [Patch(color=PHASE_COLOURS.get(p, "#8c8c8c"), alpha=0.5, label=f"{p} phase")
               for p in ("student", "augmentor", "joint") if p in phases]
    if records and any("pool_size" in r for r in records):
        twin = ax.twinx()
        pooled = [r for r in records if "pool_size" in r]
        twin.step([int(r["iter"]) for r in pooled], [int(r["pool_size"]) for r in pooled], where="post",
                  color="#333333", lw=1.2, label="pool size")
        twin.set_ylabel("pool size")
        twin.set_ylim(0, max(int(r["pool_size"]) for r in pooled) + 1)
        twin.yaxis.get_major_locator().set_params(integer=True)
        handles += twin.get_legend_handles_labels()[0]
    handles = ax.get_legend_handles_labels()[0] + handles
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(handles), fontsize=7,
                  frameon=False)

    mode = "joint training, no phases" if joint else f"{switches} switch{'es' if switches != 1 else ''}"
    pool = f", pool of {pool_size}" if pool_size is not None else ""
    ax.set_title(f"HARD {augmentor or '?'}: {mode}{pool}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path

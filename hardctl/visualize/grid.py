"""The augmentation grid (``augmentations.png``): validation images under pool snapshots, as columns.

Rows are images, columns the original and then the augmentations made by the chosen pool snapshots. Every
column replays the same random draw (the global torch seed is set before each snapshot), so columns differ
only by what the augmentor had learned. For an augmentor that mixes images of its batch (HARD-Mix, its
:meth:`~hardctl.augment.Augmentor.sources`) the original column becomes one column per source and every mix
carries its sources' mean weights. :func:`assemble_grid` lays out columns of image tensors with titles (and
captions) and records the layout in the PNG (``GRID_META_KEY``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hardctl.atomic import atomic_path
from hardctl.runfiles import GRID_FILE

__all__ = ["GRID_FILE", "GRID_META_KEY", "Grid", "assemble_grid", "augmentation_columns", "choose_snapshots",
           "mix_columns", "snapshot_title", "weights_caption"]

GRID_META_KEY = "hardctl_grid"  # PNG text chunk: the layout of the grid (titles, image boxes), as JSON
MIN_CELL = 96  # small images are upscaled (nearest) until their longer side reaches this many pixels
PAD = 6  # pixels between cells and around the grid
GROUP_GAP = 10  # extra space after the original column(s)


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

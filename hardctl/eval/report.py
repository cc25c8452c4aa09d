"""Result rows -> a table with a column per model (Rich or Markdown), JSON and CSV files.

Every row is a plain dict. Set rows (``kind == "set"``) carry ``model``, ``arch``, ``suite``, ``set``,
``dataset``, ``description``, ``path``, ``status`` (``ok`` or ``skipped`` with a ``reason``),
``images`` (scored), ``acc`` (top-1 %), ``top5``, ``loss``, ``preprocessing``, ``hardctl_version`` and
``meta``; summary rows (``kind == "summary"``: mCE, means over corruption cells) carry ``metric``,
``value`` and ``lower_is_better`` instead of ``acc``. Rows of a student whose teacher was evaluated in
the same call also carry ``teacher`` and ``gap`` (student - teacher, in points).

The table condenses the corruption cells (ImageNet-C, CIFAR-10-C) into one row per corruption (the
mean over the severities scored); the files keep every cell.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

import hardctl
from hardctl.atomic import atomic_path
from hardctl.errors import UsageError

__all__ = ["CSV_COLUMNS", "FORMATS", "check_out_path", "matrix", "render_markdown", "rich_table", "write"]

FORMATS = (".json", ".csv", ".md")
CSV_COLUMNS = ("model", "arch", "suite", "set", "kind", "status", "metric", "images", "acc", "top5", "loss", "value",
               "teacher", "gap", "dataset", "description", "path", "preprocessing", "reason", "hardctl_version", "meta")


def check_out_path(path: str | Path) -> Path:
    """``--out`` must end in .json, .csv or .md; checked before any work is done."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {path}: unknown format {path.suffix or '(no suffix)'!r}",
                         hint="end the file name in .json, .csv or .md")
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder", hint="name a file ending in .json, .csv or .md")
    probe = path.with_name(f".{path.name}.probe")
    try:  # fail now rather than after hours of evaluation
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write --out {path}: {exc.strerror or exc}", hint="pick a writable path") from None
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _models(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


def matrix(rows: Sequence[dict], labels: dict[str, str] | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    """``(header, body, notes)``: one line per set (corruption cells condensed) or summary, a column per
    model, a gap column per student whose teacher was evaluated, and footnotes."""
    models = _models(rows)
    labels = labels or {m: m for m in models}
    pairs = list(dict.fromkeys((r["model"], r["teacher"]) for r in rows if r.get("teacher")))
    header = ["set", "images", *(labels[m] for m in models),
              *(f"Δ {labels[s]} − {labels.get(t, t)}" for s, t in pairs)]
    lines: dict[tuple, dict] = {}  # line key -> {"label", "images", model -> [values], gaps}
    for r in rows:
        meta = r.get("meta") or {}
        if r["kind"] == "summary":
            if r["metric"] == "CE":
                continue  # per-corruption CE stays in the files; the table shows the corruption's accuracy
            arrow = " ↓" if r.get("lower_is_better") else ""
            key, label = ("summary", r["set"], r["metric"]), f"{r['set']} {r['metric']}{arrow}"
            value = r.get("value")
        elif "severity" in meta and "corruption" in meta:
            key = ("cells", meta.get("benchmark"), meta["corruption"])
            label = f"{meta.get('benchmark')}/{meta['corruption']} (s1-5)"
            value = r.get("acc")
        else:
            key, label, value = ("set", r["set"]), r["set"], r.get("acc")
        line = lines.setdefault(key, {"label": label, "images": {}, "values": {}, "gaps": {}, "skipped": False})
        if r["status"] == "skipped":
            line["skipped"] = True
        line["images"].setdefault(r["model"], 0)
        line["images"][r["model"]] += int(r.get("images") or 0)
        line["values"].setdefault(r["model"], []).append(value)
        if "gap" in r:
            line["gaps"].setdefault(r["model"], []).append(r["gap"])
    body = []
    for key, line in lines.items():
        cells = []
        for m in models:
            got = [v for v in line["values"].get(m, []) if v is not None]
            cells.append(_fmt(fmean(got)) if got else ("skipped" if line["skipped"] else "—"))
        gaps = []
        for student, _ in pairs:
            got = line["gaps"].get(student, [])
            gaps.append(_fmt(fmean(got), 2) if got and None not in got else "—")
        images = max(line["images"].values()) if line["images"] else 0
        images_cell = f"{images:,}" if images else ("—" if key[0] == "summary" else "0")
        body.append([line["label"] + (" (partial)" if line["skipped"] and key[0] == "cells" else ""),
                     images_cell, *cells, *gaps])
    return header, body, _notes(rows, labels)


def _notes(rows: Sequence[dict], labels: dict[str, str]) -> list[str]:
    notes: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        if text not in seen:
            seen.add(text)
            notes.append(text)

    if any("severity" in (r.get("meta") or {}) for r in rows):
        add("(s1-5): accuracy averaged over the severities scored; the files hold every cell")
    for r in rows:
        if r["kind"] == "set" and r["status"] == "skipped":
            add(f"skipped {r['set']}: {r.get('reason', '')}")
    cells: dict[str, list[dict]] = {}
    for r in rows:
        meta = r.get("meta") or {}
        expected = meta.get("expected_images")
        if r["kind"] != "set" or r["status"] != "ok" or not expected or r.get("images") == expected:
            continue
        if meta.get("benchmark"):  # corruption cells: one note per benchmark, not per cell
            cells.setdefault(meta["benchmark"], []).append(r)
            continue
        extra = f" ({r['excluded']} without a ReaL label)" if r.get("excluded") else ""
        add(f"partial {r['set']}: {r['images']:,} images scored{extra}; the official set has {expected:,}")
    for bench, got in cells.items():
        model = got[0]["model"]
        got = [r for r in got if r["model"] == model]
        expected = got[0]["meta"]["expected_images"]
        add(f"partial {bench}: {len(got)} cells below their official size ({sum(r['images'] for r in got):,} "
            f"images in all); an official cell has {expected:,}")
    for r in rows:
        if r["kind"] == "summary" and r["status"] != "ok" and r["metric"] != "CE":
            add(f"{r['set']} {r['metric']} not computed: {r.get('reason', '')}")
    for r in rows:
        if r["kind"] == "set" and r["status"] == "ok" and r.get("preprocessing"):
            add(f"preprocessing of {labels.get(r['model'], r['model'])}: {r['preprocessing']}")
    versions = sorted({r.get("hardctl_version", "") for r in rows} - {""})
    add(f"hardctl {', '.join(versions) or hardctl.__version__}")
    return notes


def rich_table(rows: Sequence[dict], title: str, labels: dict[str, str] | None = None):
    """A Rich table and its footnotes (printed after it)."""
    from rich.table import Table

    header, body, notes = matrix(rows, labels)
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for line in body:
        table.add_row(*line)
    return table, notes


def render_markdown(rows: Sequence[dict], title: str, labels: dict[str, str] | None = None) -> str:
    header, body, notes = matrix(rows, labels)

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"# {title}", "", "| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in body]
    lines += [""] + [f"- {esc(n)}" for n in notes]
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: "" if r.get(k) is None else r.get(k) for k in CSV_COLUMNS},
                         "meta": json.dumps(r.get("meta") or {}, sort_keys=True)})
    return buffer.getvalue()


def render_json(rows: Sequence[dict]) -> str:
    return json.dumps(list(rows), indent=2, default=str) + "\n"


def write(path: str | Path, rows: Sequence[dict], title: str, labels: dict[str, str] | None = None) -> Path:
    """Write ``rows`` as JSON, CSV or Markdown by ``path``'s suffix, atomically."""
    path = check_out_path(path)
    suffix = path.suffix.lower()
    text = (render_json(rows) if suffix == ".json" else render_csv(rows) if suffix == ".csv"
            else render_markdown(rows, title, labels))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write --out {path}: {exc.strerror or exc}", hint="pick a writable path") from None
    return path

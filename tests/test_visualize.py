"""``hardctl visualize``: the augmentation grid and the phase plot of a HARD run.

The run directories are written by hand (config.toml, pool snapshots through AugmentorPool, a
steps.jsonl), which is what a HARD run leaves behind, so these tests need no training.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hardctl.augment import AugmentorPool, build_augmentor
from hardctl.config import RunConfig
from hardctl.errors import UsageError
from hardctl.distill.build import resolve_config
from hardctl.visualize import (GRID_META_KEY, assemble_grid, choose_snapshots, plot_phases, read_steps,
                               render)


def make_run(run: Path, augmentor: str = "affine", aug_options: dict | None = None, *,
             moves: list[dict] | None = None, phases: str = "alternate", iterations: int = 40) -> Path:
    """A HARD run directory as the trainer leaves it; ``moves[k]`` sets parameters before entry k + 1."""
    run.mkdir(parents=True)
    cfg = resolve_config(RunConfig(command="distill", data="digits", model="hard_mnist_mlp", teacher="teacher-run",
                    augmentor=augmentor, aug_options=dict(aug_options or {}), l_min=0.5, l_max=0.6))
    cfg.save(run)
    if augmentor != "none":
        aug = build_augmentor(cfg.augmentor, cfg.aug_options, in_chans=1, img_size=(16, 16))
        pool = AugmentorPool(aug, run / "augmentors")
        pool.add(reason="identity", iteration=0, step=0, epoch=1, augmentor=augmentor)
        for k, move in enumerate(moves or []):
            with torch.no_grad():
                params = dict(aug.named_parameters())
                for name, value in move.items():
                    params[name].copy_(torch.as_tensor(value, dtype=params[name].dtype))
            pool.add(reason="switch", iteration=5 * (k + 1), step=3 * (k + 1), epoch=1 + k // 3, augmentor=augmentor)
    rng = random.Random(0)
    with open(run / "steps.jsonl", "w") as fh:
        size = 1
        for it in range(1, iterations + 1):
            if phases == "joint":
                phase = "joint"
            else:
                phase = "student" if (it - 1) // 5 % 2 == 0 else "augmentor"
                size += phase == "student" and (it - 1) % 10 == 0 and it > 1
            record = {"iter": it, "step": it, "epoch": 1 + it // 20, "phase": phase, "loss": 1.0, "l_st": 1.0,
                      "aug_error": rng.random(), "pool_size": size}
            fh.write(json.dumps(record) + "\n")
        fh.write('{"iter": 41, "aug_err')  # a torn last line, as a killed run leaves it
    return run


IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
WIDE = math.log(0.3)
AFFINE_MOVES = [
    {"mean": [1.0, 0.0, 0.3, 0.0, 1.0, 0.0], "log_std": [WIDE] * 6},  # entry 1 ...
    {"mean": [1.0, 0.0, 0.3, 0.0, 1.0, 0.0], "log_std": [WIDE] * 6},  # ... and entry 2 are the same augmentor
    {"mean": [0.9, 0.1, -0.2, 0.0, 0.9, 0.2], "log_std": [WIDE] * 6},
    {"mean": [0.8, 0.2, 0.1, -0.1, 0.8, 0.0], "log_std": [math.log(0.2)] * 6},
    {"mean": [0.7, 0.0, 0.4, 0.0, 0.7, -0.3], "log_std": [math.log(0.1)] * 6},
]  # six entries in all


@pytest.fixture(scope="module")
def affine_run(tmp_path_factory) -> Path:
    # sigma_init tiny: entry 0 (the identity-initialised augmentor) must reproduce the originals
    return make_run(tmp_path_factory.mktemp("viz") / "hard", "affine", {"sigma_init": 1e-6}, moves=AFFINE_MOVES)


@pytest.fixture(scope="module")
def rendered(affine_run):
    before = torch.get_rng_state()
    paths = render(affine_run, rows=3, snapshots=6, seed=0)
    assert torch.equal(torch.get_rng_state(), before), "render must leave the caller's RNG as it was"
    return paths


def cells(path: Path) -> tuple[Image.Image, dict, list[list[np.ndarray]]]:
    """The grid PNG, its layout, and every picture in it as an array, [column][row]."""
    image = Image.open(path)
    image.load()
    layout = json.loads(image.text[GRID_META_KEY])
    rgb = image.convert("RGB")
    pictures = [[np.asarray(rgb.crop(tuple(box)), dtype=np.int16) for box in column] for column in layout["boxes"]]
    return image, layout, pictures


def test_render_writes_its_pngs_into_the_run(affine_run, rendered):
    assert set(rendered) == {"grid", "phases", "curves"}
    assert rendered["grid"] == affine_run / "augmentations.png"
    assert rendered["phases"] == affine_run / "phases.png" and rendered["curves"] == affine_run / "curves.png"
    for path in rendered.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert not list(affine_run.glob(".*.tmp")), "atomic writes leave no temporary files"


def test_grid_layout_titles_and_upscaling(rendered):
    image, layout, pictures = cells(rendered["grid"])
    assert layout["columns"] == 7 and layout["rows"] == 3  # the original + six snapshots
    assert layout["titles"][0].startswith("original")
    assert [t.split()[0] for t in layout["titles"][1:]] == ["#0", "#1", "#2", "#3", "#4", "#5"]
    assert "identity" in layout["titles"][1] and "ep 1" in layout["titles"][1] and "it 0" in layout["titles"][1]
    assert "ep 2" in layout["titles"][-1] and "it 25" in layout["titles"][-1]  # entry 5: iteration 25
    assert layout["scale"] == 6 and pictures[0][0].shape[:2] == (96, 96)  # 16×16 digits, nearest ×6
    _, _, right, bottom = layout["boxes"][-1][-1]
    assert right <= image.width and bottom <= image.height


def test_identity_snapshot_reproduces_the_originals(rendered):
    _, _, pictures = cells(rendered["grid"])
    for original, identity in zip(pictures[0], pictures[1]):
        assert original.max() > 100, "the originals show digits"
        assert np.abs(original - identity).max() <= 1


def test_every_column_replays_the_same_draw(rendered):
    _, _, pictures = cells(rendered["grid"])
    # entries 1 and 2 hold the same wide Gaussian: with one draw for all columns they look the same ...
    for a, b, original in zip(pictures[2], pictures[3], pictures[0]):
        assert np.array_equal(a, b)
        assert np.abs(a - original).max() > 50  # ... and nothing like the original
    # ... while a later snapshot differs
    assert any(not np.array_equal(a, c) for a, c in zip(pictures[2], pictures[4]))


def test_width_grows_with_the_snapshot_count(affine_run, rendered, tmp_path):
    small = render(affine_run, tmp_path / "two", rows=3, snapshots=2)
    with Image.open(rendered["grid"]) as six, Image.open(small["grid"]) as two:
        assert two.width < six.width and two.height == six.height
        layout = json.loads(two.text[GRID_META_KEY])
    assert [t.split()[0] for t in layout["titles"][1:]] == ["#0", "#5"]  # first and last
    assert not (tmp_path / "two" / "augmentations.png").samefile(rendered["grid"])


def test_choose_snapshots_spreads_from_first_to_last():
    assert choose_snapshots(6, 6) == [0, 1, 2, 3, 4, 5]
    assert choose_snapshots(3, 6) == [0, 1, 2]
    assert choose_snapshots(10, 2) == [0, 9]
    picks = choose_snapshots(20, 6)
    assert len(picks) == 6 and picks[0] == 0 and picks[-1] == 19 and picks == sorted(set(picks))
    assert choose_snapshots(5, 1) == [4]
    assert choose_snapshots(0, 6) == []


def test_assemble_grid_draws_grey_and_rgb_columns():
    red = torch.zeros(2, 3, 32, 32)
    red[:, 0] = 1.0
    grey = torch.full((2, 1, 32, 32), 0.5)
    grid = assemble_grid([red, grey, red], ["red", "grey", "again\nred"], group_after=1)
    assert grid.scale == 3 and len(grid.boxes) == 3 and len(grid.boxes[0]) == 2
    pixels = np.asarray(grid.image.convert("RGB"))
    x0, y0, x1, y1 = grid.boxes[0][1]
    assert (x1 - x0, y1 - y0) == (96, 96)
    assert (pixels[y0:y1, x0:x1] == [255, 0, 0]).all()
    x0, y0, x1, y1 = grid.boxes[1][0]
    assert (pixels[y0:y1, x0:x1] == 128).all()
    # the wider gap after the first column
    assert grid.boxes[1][0][0] - grid.boxes[0][0][2] > grid.boxes[2][0][0] - grid.boxes[1][0][2]
    with pytest.raises(ValueError):
        assemble_grid([red, grey[:1]], ["a", "b"])


def test_phase_plot_of_a_joint_run_and_torn_log(tmp_path):
    run = make_run(tmp_path / "joint", "none", phases="joint")  # only its steps.jsonl is used here
    records = read_steps(run / "steps.jsonl")
    assert len(records) == 40 and {r["phase"] for r in records} == {"joint"}
    path = plot_phases(records, tmp_path / "p.png", augmentor="mixlike", l_min=0.05, l_max=0.4, pool_size=3)
    with Image.open(path) as image:
        assert image.format == "PNG"
    empty = plot_phases([], tmp_path / "empty.png", augmentor="affine")
    assert empty.is_file()


def test_phase_plot_of_a_long_run_labels_a_few_epoch_lines_and_ends_at_the_final_pool(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    lines, steps = [], []
    original_vline, original_step = Axes.axvline, Axes.step
    monkeypatch.setattr(Axes, "axvline", lambda ax, x, **kw: lines.append(kw.get("label")) or original_vline(ax, x, **kw))
    monkeypatch.setattr(Axes, "step", lambda ax, x, y, **kw: steps.append(list(y)) or original_step(ax, x, y, **kw))
    records = [{"iter": i + 1, "epoch": i // 3 + 1, "phase": "joint", "aug_error": 0.5, "pool_size": i // 3 + 1}
               for i in range(300)]  # 100 epochs of 3 steps, a snapshot at the end of each (HARD-Mix)
    plot_phases(records, tmp_path / "p.png", augmentor="mix", pool_size=101)
    assert len(lines) <= 12 and lines[0] == "every 9 epochs" and lines[1:] == [None] * (len(lines) - 1)
    assert steps[0][-1] == 101  # the pool line ends at the pool the title names, not at the last step's


def test_curves_show_centered_and_shifted_validation_and_mark_the_best_epoch(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from hardctl.visualize import plot_curves

    plotted, marks = [], []
    original_plot, original_vline = Axes.plot, Axes.axvline
    monkeypatch.setattr(Axes, "plot", lambda ax, x, y, **kw: plotted.append((kw["label"], list(y)))
                        or original_plot(ax, x, y, **kw))
    monkeypatch.setattr(Axes, "axvline", lambda ax, x, **kw: marks.append(x) or original_vline(ax, x, **kw))
    epochs = [{"epoch": 1, "val_acc": 50.0, "val_shifted_acc": 10.0}, {"epoch": 2, "val_acc": 90.0,
              "val_shifted_acc": 20.0}, {"epoch": 3, "val_acc": 88.0, "val_shifted_acc": 40.0}]
    path = plot_curves(epochs, tmp_path / "c.png", title="t", select="last")
    assert dict(plotted) == {"validation, centered": [50.0, 90.0, 88.0],
                             "validation, shifted like the test set": [10.0, 20.0, 40.0]}
    assert marks == [2] and path.is_file()


def test_cli_composition_to_another_folder_as_json(cli, tmp_path):
    noise = {"parts.1.log_sigma": [math.log(0.3)], "parts.0.mean": [1.0, 0.0, 0.2, 0.0, 1.0, 0.0]}
    run = make_run(tmp_path / "comp", "affine+noise", moves=[noise, noise], phases="alternate")
    out = tmp_path / "figures"
    result = cli("visualize", run, "--out", out, "--rows", "2", "--snapshots", "2", "--seed", "3", "--json")
    assert result.code == 0, result.err
    paths = json.loads(result.out)
    assert paths == {"grid": str(out / "augmentations.png"), "phases": str(out / "phases.png"),
                     "curves": str(out / "curves.png")}
    assert all(Path(p).is_file() for p in paths.values())
    assert not (run / "augmentations.png").exists() and not (run / "phases.png").exists()
    with Image.open(paths["grid"]) as image:
        layout = json.loads(image.text[GRID_META_KEY])
    assert layout["rows"] == 2 and layout["columns"] == 3


def test_cli_plain_kd_run_is_a_usage_error(cli, tmp_path):
    run = make_run(tmp_path / "kd", "none")
    result = cli("visualize", run)
    assert result.code == 2
    assert result.err.startswith("hardctl: error:") and len(result.err.strip().splitlines()) == 1
    assert "has nothing to visualize: it is a plain KD run (--augmentor none)" in result.err
    with pytest.raises(UsageError, match="plain KD"):
        render(run)


def test_cli_supervised_run_is_not_said_to_have_an_augmentor(cli, tmp_path):
    run = make_run(tmp_path / "sup", "none")
    cfg = RunConfig.load(run)
    RunConfig(**{**cfg.to_dict(), "command": "train", "teacher": None, "augmentor": "affine"}).save(run)
    result = cli("visualize", run)
    assert result.code == 2 and "it is a supervised run (hardctl train), which has no augmentor" in result.err
    assert "'affine'" not in result.err


def test_cli_missing_or_non_run_folder(cli, tmp_path):
    result = cli("visualize", tmp_path / "nowhere")
    assert result.code == 2 and "not a hardctl run directory" in result.err
    assert len(result.err.strip().splitlines()) == 1
    (tmp_path / "plain").mkdir()
    result = cli("visualize", tmp_path / "plain")
    assert result.code == 2 and "not a hardctl run directory" in result.err


def test_cli_rejects_bad_counts(cli, affine_run):
    assert cli("visualize", affine_run, "--rows", "0").code == 2
    assert cli("visualize", affine_run, "--snapshots", "0").code == 2
    with pytest.raises(UsageError, match="--snapshots"):
        render(affine_run, snapshots=0)

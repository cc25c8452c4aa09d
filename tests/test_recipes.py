"""Recipes (hardctl.recipes, ``hardctl recipes``): format checks, overrides, the runner, reuse, the CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sys
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

import hardctl
from hardctl import tomlio
from hardctl.cli import main
from hardctl.cli.recipes import _target_and_seeds
from hardctl.config import RunConfig
from hardctl.distill.progress import Reporter
from hardctl.errors import UsageError
from hardctl.recipes import (apply_overrides, describe_file, format_mean_sem, load_recipe, parse_overrides,
                             run_recipe)

BUILTIN = Path(hardctl.__file__).resolve().parents[1] / "plugins" / "hardctl_builtins" / "recipes"

TINY = """\
[recipe]
name = "tiny"
kind = "transfer"
description = "three arms, one epoch, for the tests"
paper = "Table 1 (shape only)"
seeds = [0]

[defaults]
data = "digits"
epochs = 1
batch_size = 256
lr = 5e-3
temperature = 5.0

[[arm]]
id = "teacher"
label = "Teacher only"
command = "train"
model = "mnist_mlp"

[[arm]]
id = "kd"
label = "KD"
command = "distill"
teacher = "@teacher"
model = "mnist_mlp"
augmentor = "none"

[[arm]]
id = "hard"
label = "+ HARD Affine"
command = "distill"
teacher = "@teacher"
model = "mnist_mlp"
augmentor = "affine"
max_aug_steps = 20
"""


def write_recipe(folder: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("*/seed-*/summary.json"))}


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> tuple[Path, Path, dict, str]:
    """The tiny recipe run once through the CLI: (recipe file, output folder, --json output, stderr)."""
    folder = tmp_path_factory.mktemp("recipe")
    path = write_recipe(folder)
    out = folder / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr), pytest.raises(SystemExit) as exc:
        main(["recipes", "run", str(path), "--out", str(out), "--json"])
    assert exc.value.code == 0, stderr.getvalue()
    return path, out, json.loads(stdout.getvalue()), stderr.getvalue()


@pytest.fixture
def out_copy(tiny_out, tmp_path) -> tuple[Path, Path]:
    """A private copy of the finished tiny recipe (recipe file, output folder) for tests that change it."""
    path, out, _, _ = tiny_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    # the copied runs name their teacher by its absolute path in the original folder: rewrite it
    for config in copy.glob("*/seed-*/config.toml"):
        config.write_text(config.read_text().replace(str(out), str(copy)))
    return path, copy


# ---------------------------------------------------------------------------------------------- built-ins
def test_builtin_recipes_are_listed(cli):
    result = cli("recipes")
    assert result.code == 0, result.err
    assert "transfer-digits" in result.out and "transfer-fashion-mnist" in result.out
    result = cli("recipes", "list", "--json")
    assert result.code == 0, result.err
    rows = {row["name"]: row for row in json.loads(result.out)}
    digits = rows["transfer-digits"]
    assert digits["kind"] == "transfer" and digits["error"] is None
    table_1 = ["teacher", "student", "random-affine", "shifts", "kd", "hard-affine"]
    assert [arm for arm in digits["arms"] if arm in table_1] == table_1
    assert digits["seeds"] == [0, 1, 2]
    assert [arm for arm in rows["transfer-fashion-mnist"]["arms"] if arm in table_1] == table_1
    extra = ["kd-standard", "kd-random-affine", "hard-mix"]  # the baseline-augmentation and HARD-Mix rows
    for name in ("transfer-digits", "transfer-fashion-mnist", "transfer-fashion-mnist-cpu"):
        assert [arm for arm in rows[name]["arms"] if arm in extra] == extra, name
    assert "hours on CPU" in rows["transfer-fashion-mnist"]["description"]
    for name, row in rows.items():  # every recipe reads and says what it is in one line
        assert row["error"] is None and row["description"] and "\n" not in row["description"], name


def test_builtin_transfer_digits_resolves_to_the_papers_arms():
    recipe = load_recipe("transfer-digits")
    assert recipe.paper == "Table 1 (CNN → MLP)"
    configs = {arm.id: recipe.config(arm, 1, {a.id: Path(f"/runs/{a.id}/seed-1") for a in recipe.arms})
               for arm in recipe.arms}
    assert configs["teacher"].model == "mnist_cnn" and configs["teacher"].command == "train"
    assert configs["random-affine"].augment == "random-affine" and configs["shifts"].augment == "shift"
    assert configs["kd"].teacher == "/runs/teacher/seed-1" and configs["kd"].augmentor == "none"
    hard = configs["hard-affine"]
    assert (hard.command, hard.augmentor, hard.model, hard.seed) == ("distill", "affine", "mnist_mlp", 1)
    assert (hard.data, hard.epochs, hard.lr, hard.batch_size, hard.temperature) == ("digits", 100, 5e-3, 128, 5.0)
    assert (hard.l_min, hard.aug_lr, hard.max_aug_steps, hard.clean_fraction) == (0.2, 0.02, 50, 0.25)  # the study's choice
    assert (configs["teacher"].augment, configs["teacher"].epochs) == ("shift", 30)
    fixed = configs["hard-affine-fixed"]  # the ablation: the same arm with the augmentor never trained
    assert (fixed.l_min, fixed.clean_fraction, fixed.augmentor) == (0.0, 0.25, "affine")
    assert load_recipe("transfer-fashion-mnist").defaults["data"] == "fashion-mnist"


def test_transfer_fashion_mnist_cpu_runs_the_studys_choice():
    """The recipe runs what docs/results/study-fashion-mnist-r18.toml chose on validation data: a ResNet-18
    teacher (its final weights), the wide MLP student in every arm, seven eighths of each HARD student batch clean,
    and the ablation row that differs from hard-affine only in never training the augmentor."""
    recipe = load_recipe("transfer-fashion-mnist-cpu")
    configs = {arm.id: recipe.config(arm, 0, {a.id: Path(f"/runs/{a.id}") for a in recipe.arms}) for arm in recipe.arms}
    teacher = configs["teacher"]
    assert (teacher.model, teacher.epochs, teacher.lr, teacher.select, teacher.augment) == \
        ("resnet18", 15, 2e-3, "last", "shift")
    hard, fixed = configs["hard-affine"], configs["hard-affine-fixed"]
    assert (hard.l_min, hard.l_max, hard.aug_lr, hard.max_aug_steps, hard.clean_fraction, hard.aug_options) == \
        (0.3, 0.6, 0.02, 50, 0.875, {"min_sigma": 0.05})
    assert {c.model for arm, c in configs.items() if arm != "teacher"} == {"mnist_mlp_wide"}
    assert fixed.l_min == 0.0 and dataclasses.replace(fixed, l_min=hard.l_min) == hard
    assert {configs[arm].teacher for arm in ("kd", "kd-random-affine", "hard-affine", "hard-affine-fixed")} == \
        {"/runs/teacher"}


@pytest.mark.parametrize("name, vae_run", [("transfer-fashion-mnist-cpu", "rqvae-fm"), ("transfer-digits", "rqvae-digits")])
def test_transfer_vae_arms_differ_from_hard_affine_in_the_augmentor_only(name, vae_run):
    from hardctl.distill.build import resolve_config

    recipe = load_recipe(name)
    dirs = {a.id: Path(f"/runs/{a.id}") for a in recipe.arms}
    cfg = {arm.id: resolve_config(recipe.config(arm, 0, dirs)) for arm in recipe.arms}
    affine, vae, both = cfg["hard-affine"], cfg["hard-vae"], cfg["hard-vae-affine"]
    weights = str(Path(f"runs/{vae_run}/vae.safetensors").absolute())
    assert (vae.augmentor, vae.aug_options["weights"], both.augmentor, both.aug_options["rqvae.weights"]) == \
        ("rqvae", weights, "rqvae+affine", weights)
    for c in (vae, both):  # the VAE's paper settings, this data set's l_min, hard-affine's cap and clean fraction
        assert (c.aug_lr, c.aug_batch_size, c.l_max, c.switch_patience) == (1e-4, 160, 0.6, 5)
        assert (c.l_min, c.max_aug_steps, c.clean_fraction) == (affine.l_min, affine.max_aug_steps, affine.clean_fraction)
        assert (c.teacher, c.model, c.epochs, c.lr, c.temperature) == \
            (affine.teacher, affine.model, affine.epochs, affine.lr, affine.temperature)
    # in the composition the warp trains as hard-affine's augmentor does, the VAE at its own 1e-4
    assert (both.aug_options["rqvae.lr"], both.aug_options["affine.lr"]) == (1e-4, affine.aug_lr)
    assert both.aug_options["affine.min_sigma"] == affine.aug_options["min_sigma"]
    assert "hardctl vae train --arch rqvae" in recipe.augmentor_download and f"--out runs/{vae_run}" in recipe.augmentor_download


def test_recipes_show_prints_the_file(cli):
    result = cli("recipes", "show", "transfer-digits")
    assert result.code == 0, result.err
    assert result.out == (BUILTIN / "transfer-digits.toml").read_text()
    assert tomlio.loads(result.out)["recipe"]["name"] == "transfer-digits"


def test_a_builtin_recipe_runs_by_name_with_a_subset(cli, tmp_path):
    out = tmp_path / "o"
    result = cli("recipes", "run", "transfer-digits", "--seeds", "0", "--arms", "student", "--set", "epochs=1",
                 "--out", out)
    assert result.code == 0, result.err
    assert "transfer-digits — Table 1 (CNN → MLP)" in result.out and "Student only" in result.out
    assert f"written: {out / 'results.json'}" in result.out
    assert "[1/1] Student only (student), seed 0: training into" in result.err
    results = json.loads((out / "results.json").read_text())
    assert [a["id"] for a in results["arms"]] == ["student"] and results["kd_reference"] is None
    assert results["command"] == ("hardctl recipes run transfer-digits --seeds 0 --arms student --set epochs=1 "
                                  f"--out {out}")
    assert summary(out / "student" / "seed-0")["epochs"] == 1
    resolved = tomlio.loads((out / "recipe.toml").read_text())
    assert resolved["defaults"]["epochs"] == 1 and len(resolved["arm"]) == len(load_recipe("transfer-digits").arms)
    # --set KEY=VALUE is every arm's value: the teacher's own "epochs = 30" gives way too
    assert "epochs" not in resolved["arm"][0] and load_recipe("transfer-digits").arm("teacher").values["epochs"] == 30


def test_plugins_lists_the_recipe_registrations(cli):
    result = cli("plugins", "--json")
    assert result.code == 0, result.err
    listed = {p["name"]: p for p in json.loads(result.out)}
    assert listed["builtin_recipes"]["registered"] == {"recipes": sorted(p.stem for p in BUILTIN.glob("*.toml"))}
    assert {"toy-cos", "transfer-digits", "mnist-cnn-mlp", "cifar10-resnet18-vit", "imagenet-resnet50-resnet18"} <= \
        set(listed["builtin_recipes"]["registered"]["recipes"])


def test_describe_file_is_tolerant(tmp_path):
    assert describe_file(BUILTIN / "transfer-digits.toml").startswith("CNN → MLP shift-equivariance transfer")
    assert describe_file(write_recipe(tmp_path, "[recipe\nbroken", "broken.toml")) == ""
    assert describe_file(tmp_path / "missing.toml") == ""
    assert describe_file(write_recipe(tmp_path, 'recipe = 3\n', "odd.toml")) == ""


# ---------------------------------------------------------------------------------------------- running
def test_results_hold_the_runs_numbers(tiny_out):
    path, out, printed, stderr = tiny_out
    results = json.loads((out / "results.json").read_text())
    assert printed == {**results, "files": {"json": str(out / "results.json"), "markdown": str(out / "results.md"),
                                            "recipe": str(out / "recipe.toml")}}
    assert [a["id"] for a in results["arms"]] == ["teacher", "kd", "hard"]
    assert results["complete"] and results["runs_finished"] == results["runs_planned"] == 3
    assert results["kd_reference"] == "kd" and results["shift_px"] == [2] and results["seeds"] == [0]
    for arm in results["arms"]:
        run_dir = out / arm["id"] / "seed-0"
        saved = summary(run_dir)
        assert arm["runs"] == [{**arm["runs"][0], "seed": 0, "run_dir": str(run_dir), "status": "trained"}]
        assert arm["centered"] == {"mean": saved["student"]["test_acc"], "sem": None, "n": 1,
                                   "values": [saved["student"]["test_acc"]]}
        assert arm["shifted"]["values"] == [saved["student"]["shifted_acc"]]
    kd, hard = results["arms"][1], results["arms"][2]
    assert hard["vs_kd"]["shifted"] == pytest.approx(hard["shifted"]["mean"] - kd["shifted"]["mean"])
    assert "vs_kd" not in kd and "vs_kd" not in results["arms"][0]
    hard_summary = summary(out / "hard" / "seed-0")
    assert hard["hard"]["switches"] == hard_summary["hard"]["switches"]
    assert hard["hard"]["pool_size"] == hard_summary["hard"]["pool_size"] >= 1
    assert "hard" not in kd
    assert kd["teacher_acc"]["centered"]["values"] == [summary(out / "teacher" / "seed-0")["student"]["test_acc"]]
    # each distill arm was taught by this seed's teacher run
    assert RunConfig.load(out / "kd" / "seed-0").teacher == str(out / "teacher" / "seed-0")
    assert RunConfig.load(out / "hard" / "seed-0").augmentor == "affine"
    assert "[1/3] Teacher only (teacher), seed 0: training into" in stderr


def test_results_markdown_has_the_papers_layout(tiny_out):
    path, out, _, _ = tiny_out
    results = json.loads((out / "results.json").read_text())
    text = (out / "results.md").read_text()
    assert text.startswith("# tiny\n")
    assert "| Method | Centered | Shifted (±2 px) | Δ centered vs KD | Δ shifted vs KD | n |" in text
    kd, hard = results["arms"][1], results["arms"][2]
    row = (f"| + HARD Affine | {hard['centered']['mean']:.1f} | {hard['shifted']['mean']:.1f} | "
           f"{hard['vs_kd']['centered']:+.1f} | {hard['vs_kd']['shifted']:+.1f} | 1 |")
    assert row in text
    assert f"| KD | {kd['centered']['mean']:.1f} | {kd['shifted']['mean']:.1f} |  |  | 1 |" in text
    assert "| HARD arm | switches | pool size | iterations in augmentor phases |" in text
    assert f"Command: `hardctl recipes run {path} --out {out}`" in text
    # the resolved recipe is a valid recipe again
    again = load_recipe(out / "recipe.toml")
    assert again.name == "tiny" and [a.id for a in again.arms] == ["teacher", "kd", "hard"]


def test_mean_and_sem_over_seeds():
    from hardctl.recipes import mean_sem

    stat = mean_sem([90.0, 92.0, 94.0])
    assert stat["mean"] == 92.0 and stat["sem"] == pytest.approx(2.0 / 3 ** 0.5)
    assert format_mean_sem(stat) == "92.0 ± 1.2"
    assert format_mean_sem(mean_sem([91.25])) == "91.2"
    assert format_mean_sem(mean_sem([])) == "-"


def test_finished_runs_are_reused(out_copy):
    path, out = out_copy
    before = mtimes(out)
    messages: list[str] = []

    class Collect(Reporter):
        def log(self, message):
            messages.append(message)

    results = run_recipe(load_recipe(path), out, progress=Collect())
    assert mtimes(out) == before  # nothing was trained again
    assert [r["status"] for a in results["arms"] for r in a["runs"]] == ["reused"] * 3
    assert sum("finished before, reusing" in m for m in messages) == 3


def test_results_record_the_code_that_made_them(out_copy):
    from hardctl.codeversion import code_version

    path, out = out_copy
    results = run_recipe(load_recipe(path), out)
    assert results["code"] == code_version() and results["code"]["hardctl"] == hardctl.__version__
    assert all(run["code"]["hardctl"] == hardctl.__version__ for arm in results["arms"] for run in arm["runs"])
    assert f"Written by hardctl {hardctl.__version__}" in (out / "results.md").read_text()


def test_a_run_of_another_hardctl_version_is_not_reused(out_copy):
    path, out = out_copy
    summary_file = out / "kd" / "seed-0" / "summary.json"
    saved = json.loads(summary_file.read_text())
    summary_file.write_text(json.dumps({**saved, "code": {"hardctl": "0.0.1", "commit": None, "dirty": None}}))
    messages: list[str] = []

    class Collect(Reporter):
        def log(self, message):
            messages.append(message)

    results = run_recipe(load_recipe(path), out, arms=["kd"], progress=Collect())
    assert [a["runs"][0]["status"] for a in results["arms"]] == ["reused", "trained"]
    assert any(f"replacing it: hardctl 0.0.1 made it; this is hardctl {hardctl.__version__}" in m for m in messages)
    assert json.loads(summary_file.read_text())["code"]["hardctl"] == hardctl.__version__


def test_a_run_of_another_commit_is_reused_and_said_so(out_copy):
    path, out = out_copy
    summary_file = out / "kd" / "seed-0" / "summary.json"
    saved = json.loads(summary_file.read_text())
    summary_file.write_text(json.dumps({**saved, "code": {"hardctl": hardctl.__version__, "commit": "f" * 40,
                                                          "dirty": False}}))
    messages: list[str] = []

    class Collect(Reporter):
        def log(self, message):
            messages.append(message)

    from hardctl.codeversion import code_version

    results = run_recipe(load_recipe(path), out, arms=["kd"], progress=Collect())
    assert [a["runs"][0]["status"] for a in results["arms"]] == ["reused", "reused"]
    if code_version()["commit"]:  # a git checkout: the reuse names both commits
        assert any(f"made by hardctl {hardctl.__version__} at fffffff" in m for m in messages)


def test_a_changed_config_is_not_reused_and_its_teacher_is(out_copy):
    path, out = out_copy
    before = mtimes(out)
    results = run_recipe(load_recipe(path), out, arms=["kd"], overrides={"kd.lr": "2e-3"})
    after = mtimes(out)
    assert [a["id"] for a in results["arms"]] == ["teacher", "kd"]  # the teacher comes along, reused
    assert after["teacher/seed-0/summary.json"] == before["teacher/seed-0/summary.json"]
    assert after["kd/seed-0/summary.json"] != before["kd/seed-0/summary.json"]
    assert RunConfig.load(out / "kd" / "seed-0").lr == 2e-3
    assert [a["runs"][0]["status"] for a in results["arms"]] == ["reused", "trained"]
    assert tomlio.loads((out / "recipe.toml").read_text())["arm"][1]["lr"] == 2e-3
    assert results["overrides"] == {"kd.lr": "2e-3"}


def test_a_retrained_teacher_retrains_its_students(out_copy):
    path, out = out_copy
    recipe = load_recipe(path)
    run_recipe(recipe, out, arms=["teacher"], reuse=False)
    results = run_recipe(recipe, out, arms=["kd"])
    assert [a["runs"][0]["status"] for a in results["arms"]] == ["reused", "trained"]


def test_an_interrupted_recipe_continues(out_copy):
    path, out = out_copy

    class StopAfterFirstEpoch(Reporter):
        def end_epoch(self, record):
            if record["epoch"] == 1:
                raise KeyboardInterrupt

    recipe = load_recipe(path)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, out, arms=["kd"], overrides={"kd.epochs": "2"}, progress=StopAfterFirstEpoch())
    partial = json.loads((out / "results.json").read_text())
    assert not partial["complete"] and partial["runs_finished"] == 1 and partial["runs_planned"] == 2
    assert not (out / "kd" / "seed-0" / "summary.json").exists()
    results = run_recipe(recipe, out, arms=["kd"], overrides={"kd.epochs": "2"})
    assert [a["runs"][0]["status"] for a in results["arms"]] == ["reused", "resumed"]
    epochs = [json.loads(line)["epoch"] for line in (out / "kd" / "seed-0" / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and summary(out / "kd" / "seed-0")["epochs"] == 2


# ---------------------------------------------------------------------------------------------- overrides
def test_overrides_take_the_fields_types(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    resolved = apply_overrides(recipe, parse_overrides([
        "epochs=3", "lr=0.01", "amp=off", "pretrained=yes", "batch-size=32", "shift_px=3",
        "hard.l_max=0.5", "hard.aug_options={sigma_init = 0.2}", "kd.label=Plain KD", "kd.shift_px=none",
    ]))
    assert resolved.defaults["epochs"] == 3 and isinstance(resolved.defaults["epochs"], int)
    assert resolved.defaults["lr"] == 0.01 and resolved.defaults["amp"] == "off"
    assert resolved.defaults["pretrained"] is True and resolved.defaults["batch_size"] == 32
    hard = resolved.arm("hard")
    assert hard.values["l_max"] == 0.5 and hard.values["aug_options"] == {"sigma_init": 0.2}
    assert resolved.arm("kd").label == "Plain KD"
    assert resolved.config(resolved.arm("kd"), 0).shift_px is None  # unset for that arm only
    assert resolved.config(resolved.arm("hard"), 0).shift_px == 3
    assert recipe.defaults["epochs"] == 1  # the original is untouched
    # the arm-level unset survives the round trip through recipe.toml
    again = load_recipe(write_recipe(tmp_path, resolved.to_toml(), "resolved.toml"))
    assert again.config(again.arm("kd"), 0).shift_px is None and again.config(again.arm("hard"), 0).shift_px == 3


@pytest.mark.parametrize("item, message", [
    ("epochs=ten", "--set epochs=ten: epochs must be an integer, got 'ten'"),
    ("lr=fast", "--set lr=fast: lr must be a number, got 'fast'"),
    ("pretrained=maybe", "pretrained must be true or false"),
    ("lrr=0.1", "unknown setting 'lrr'; did you mean 'lr'?"),
    ("kdd.lr=0.1", "has no arm 'kdd'; did you mean 'kd'?"),
    ("seed=3", "the seed is set per seed (use --seeds)"),
    ("hard.aug_options=3", "aug_options must be a table such as {key = 1}, got '3'"),
    ("epochs=0", "arm 'teacher': --epochs must be at least 1"),
    ("noequals", "--set 'noequals' is not KEY=VALUE"),
])
def test_bad_overrides_are_one_line_usage_errors(tmp_path, item, message):
    recipe = load_recipe(write_recipe(tmp_path))
    with pytest.raises(UsageError) as exc:
        apply_overrides(recipe, parse_overrides([item]))
    assert message in exc.value.oneline() and "\n" not in exc.value.oneline()


def test_an_invalid_resolved_arm_fails_before_anything_is_trained(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"arm 'hard': --l-min \(0.5\) must be below --l-max \(0.4\)"):
        run_recipe(recipe, out, overrides={"hard.l_min": "0.5"})
    assert not out.exists()


def test_seeds_and_arms_from_the_command_line(cli, tmp_path):
    assert _target_and_seeds(["tiny"], None) == ("tiny", None)
    assert _target_and_seeds(["tiny", "1", "2"], ["0"]) == ("tiny", [0, 1, 2])
    assert _target_and_seeds(["tiny"], ["0,1", "2"]) == ("tiny", [0, 1, 2])
    path = write_recipe(tmp_path)
    for args, message in [
        (["--seeds", "x"], "--seeds takes integers, got 'x'"),
        (["--seeds", "1,1"], "--seeds lists a seed twice: [1, 1]"),
        (["3"], "unexpected argument '3' (seeds go after --seeds: --seeds 0 1 2)"),
        (["--arms", "hardd"], "recipe 'tiny' has no arm 'hardd'; did you mean 'hard'?"),
        (["--set", "epochs=x"], "--set epochs=x: epochs must be an integer, got 'x'"),
    ]:
        result = cli("recipes", "run", path, "--out", tmp_path / "out", *args)
        assert result.code == 2, (args, result.err)
        assert result.err.strip().splitlines() == [f"hardctl: error: {message}"] or message in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- bad files
def replace(old: str, new: str) -> str:
    assert old in TINY
    return TINY.replace(old, new, 1)


@pytest.mark.parametrize("text, message", [
    (replace("epochs = 1", "epoch = 1"), "unknown key 'epoch' in [defaults]; did you mean 'epochs'?"),
    (replace("seeds = [0]", "seed = [0]"), "unknown key 'seed' in [recipe]; did you mean 'seeds'?"),
    (replace('model = "mnist_mlp"\n\n[[arm]]\nid = "kd"', 'modle = "mnist_mlp"\n\n[[arm]]\nid = "kd"'),
     "unknown key 'modle' in arm 'teacher'; did you mean 'model'?"),
    (TINY + "\n[extras]\nx = 1\n", "unknown key 'extras' in a transfer recipe (sections)"),
    (replace('id = "kd"', 'id = "teacher"'), "two arms have the id 'teacher'"),
    (replace('teacher = "@teacher"', 'teacher = "@teachr"'),
     "arm 'kd' takes its teacher from '@teachr', which is no arm; did you mean 'teacher'?"),
    (replace('teacher = "@teacher"', 'teacher = "@hard"'), "takes its teacher from '@hard', which is a later arm"),
    (replace('kind = "transfer"', 'kind = "toys"'), "unknown kind 'toys'; did you mean 'toy'?"),
    (replace("epochs = 1", 'epochs = "one"'), "epochs must be an integer, got 'one'"),
    (replace("seeds = [0]", "seeds = [0, 0]"), "seeds lists a seed twice"),
    (replace("seeds = [0]", 'seeds = "0"'), "seeds must be a non-empty list of integers"),
    (replace('teacher = "@teacher"\n', ""), "arm 'kd': distill needs --teacher"),
    (replace('augmentor = "none"', 'augment = "random_affine"'),
     "'random_affine'; did you mean 'random-affine'?"),
    (replace('id = "kd"', 'id = "k d"'), "needs an id of letters, digits"),
    (replace("[defaults]", "[defaults"), "cannot parse recipe"),
    ('[recipe]\nname = "empty"\n', "no [[arm]] tables"),
])
def test_bad_recipe_files_are_one_line_errors(cli, tmp_path, text, message):
    path = write_recipe(tmp_path, text, "bad.toml")
    result = cli("recipes", "run", path, "--out", tmp_path / "out")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hardctl: error:"), result.err
    assert message in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_name_and_missing_file(cli, tmp_path):
    result = cli("recipes", "run", "transfer-digit")
    assert result.code == 2
    assert "unknown recipe 'transfer-digit'; did you mean 'transfer-digits'" in result.err
    assert "or pass a recipe file path" in result.err
    result = cli("recipes", "show", tmp_path / "nothere.toml")
    assert result.code == 2 and f"recipe file {tmp_path / 'nothere.toml'} does not exist" in result.err


def test_errors_name_the_file(tmp_path):
    path = write_recipe(tmp_path, replace("epochs = 1", "epoch = 1"), "named.toml")
    with pytest.raises(UsageError, match=f"recipe {path}: unknown key 'epoch'"):
        load_recipe(path)


# ---------------------------------------------------------------------------------------------- toy recipes
TOY = """\
[recipe]
name = "toy-test"
kind = "toy"
description = "the toy example, tiny"
seeds = [0, 1]

[toy]
iterations = 20
"""


def test_toy_recipes_go_to_hardctl_toy(monkeypatch, tmp_path):
    calls, lines = [], []

    def fake_run_recipe(recipe_dict, out_dir, *, seeds, overrides, progress):
        progress("toy baseline seed 3: test MSE 0.5")
        calls.append((recipe_dict, out_dir, seeds, overrides))
        return {"table": {"baseline": {"mean": 0.5}}, "files": {}}

    fake = types.SimpleNamespace(run_recipe=fake_run_recipe, settings_from=lambda values, where: values,
                                 ARMS=("baseline", "hard"), ARM_TITLES={"baseline": "Baseline (KD)"})
    monkeypatch.setitem(sys.modules, "hardctl.toy", fake)
    monkeypatch.setattr(hardctl, "toy", fake, raising=False)

    class Collect(Reporter):
        def log(self, message):
            lines.append(message)

    recipe = load_recipe(write_recipe(tmp_path, TOY, "toy.toml"))
    assert [(a.id, a.label) for a in recipe.arms] == [("baseline", "Baseline (KD)"), ("hard", "hard")]
    result = run_recipe(recipe, tmp_path / "out", seeds=[3], overrides={"iterations": "5"}, progress=Collect())
    assert result == {"table": {"baseline": {"mean": 0.5}}, "files": {}}
    assert calls == [(tomlio.loads(TOY), (tmp_path / "out").resolve(), [3], {"iterations": "5"})]
    assert lines == ["toy baseline seed 3: test MSE 0.5"]
    with pytest.raises(UsageError, match="--arms is not supported for toy recipes"):
        run_recipe(recipe, tmp_path / "out", arms=["baseline"])


def test_toy_recipes_without_hardctl_toy_are_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "hardctl.toy", None)
    monkeypatch.delattr(hardctl, "toy", raising=False)
    recipe = load_recipe(write_recipe(tmp_path, TOY, "toy.toml"))
    with pytest.raises(UsageError, match="is a toy recipe, and this hardctl has no hardctl.toy"):
        run_recipe(recipe, tmp_path / "out")


@pytest.mark.parametrize("text, message", [
    (TOY + "\n[defaults]\nepochs = 1\n", "unknown key 'defaults' in a toy recipe (sections)"),
    (TOY.replace("iterations = 20", "iteratons = 20"), "unknown [toy] setting 'iteratons'; did you mean 'iterations'?"),
])
def test_bad_toy_recipes_are_one_line_errors(cli, tmp_path, text, message):
    pytest.importorskip("hardctl.toy", reason="hardctl.toy (the toy example) is not in this checkout")
    result = cli("recipes", "run", write_recipe(tmp_path, text, "toy.toml"), "--out", tmp_path / "out")
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and message in result.err, result.err


def test_a_toy_recipe_runs_through_the_cli(cli, tmp_path):
    pytest.importorskip("hardctl.toy", reason="hardctl.toy (the toy example) is not in this checkout")
    out = tmp_path / "out"
    result = cli("recipes", "run", write_recipe(tmp_path, TOY, "toy.toml"), "--seeds", "0", "--set", "iterations=10",
                 "--out", out)
    assert result.code == 0, result.err
    assert "Baseline (KD)" in result.out and "HARD noise" in result.out
    assert "written: " in result.out and (out / "results.md").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["seeds"] == [0] and saved["settings"]["iterations"] == 10
    assert "toy baseline seed 0: test MSE" in result.err


# ---------------------------------------------------------------------------------------------- eval step
EVAL_TINY = """\
[recipe]
name = "eval-tiny"
seeds = [0, 1]

[defaults]
data = "digits"
epochs = 1
batch_size = 256
teacher = "TEACHER"

[eval]
suites = ["standard"]

[results]
columns = ["centered", "shifted"]
labels = { centered = "Test" }

[[arm]]
id = "teacher"
label = "Teacher (given)"
command = "eval"

[[arm]]
id = "student"
label = "Student"
command = "train"
model = "mnist_mlp"
"""


def test_an_eval_arm_scores_its_teacher_once_and_trained_arms_are_scored_too(digits_teacher, tmp_path):
    path = write_recipe(tmp_path, EVAL_TINY.replace("TEACHER", str(digits_teacher)), "eval-tiny.toml")
    out = tmp_path / "out"
    messages: list[str] = []

    class Collect(Reporter):
        def log(self, message):
            messages.append(message)

    results = run_recipe(load_recipe(path), out, progress=Collect())
    assert results["complete"] and results["runs_planned"] == 3  # the eval arm once, the student per seed
    teacher, student = results["arms"]
    assert teacher["command"] == "eval" and teacher["n"] == 1 and teacher["runs"][0]["seed"] is None
    saved = summary(digits_teacher)
    assert teacher["centered"]["mean"] == pytest.approx(saved["student"]["test_acc"])
    assert teacher["shifted"]["mean"] == pytest.approx(saved["student"]["shifted_acc"])
    assert (out / "teacher" / "eval.json").is_file() and not (out / "teacher" / "seed-0").exists()
    assert student["n"] == 2 and all((out / "student" / f"seed-{s}" / "eval.json").is_file() for s in (0, 1))
    assert [c["label"] for c in results["columns"]] == ["Test", "Shifted (±2 px)"]
    assert "| Teacher (given) |" in (out / "results.md").read_text()
    assert any("evaluating " + str(digits_teacher) in m for m in messages)
    messages.clear()
    again = run_recipe(load_recipe(path), out, progress=Collect())
    assert again["arms"][0]["runs"][0]["status"] == "reused"
    assert sum("scored before" in m for m in messages) == 3


@pytest.mark.parametrize("text, message", [
    (EVAL_TINY.replace('teacher = "TEACHER"', 'teacher = "resnet50:nowhere/w.pth.tar"'),
     "arm 'teacher': teacher weights file nowhere/w.pth.tar does not exist (--set teacher=resnet50:/path/to/w.pth.tar)"),
    (EVAL_TINY.replace('teacher = "TEACHER"\n', ""), "an eval arm scores its teacher, and it has none"),
    (EVAL_TINY.replace('[eval]\nsuites = ["standard"]\n', "").replace('["centered", "shifted"]', '["imagenet-val"]'),
     "arm 'teacher' only evaluates, but nothing would score it"),
    (EVAL_TINY.replace('id = "student"', 'id = "eval"'), "'eval' cannot be an arm id"),
    (EVAL_TINY.replace('suites = ["standard"]', 'suites = ["standrd"]'), "did you mean 'standard'"),
    (EVAL_TINY.replace('columns = ["centered", "shifted"]', "columns = []"), "[results] columns is empty"),
])
def test_bad_eval_recipes_are_one_line_errors(cli, tmp_path, text, message):
    path = write_recipe(tmp_path, text.replace("TEACHER", str(tmp_path)), "bad.toml")
    result = cli("recipes", "run", path, "--out", tmp_path / "out")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.err
    assert not (tmp_path / "out").exists()


def test_global_overrides_win_over_arm_values_and_arm_overrides_over_both(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, TINY.replace('max_aug_steps = 20', 'max_aug_steps = 20\nlr = 0.5')))
    for order in (["lr=0.1", "kd.lr=0.2"], ["kd.lr=0.2", "lr=0.1"]):
        resolved = apply_overrides(recipe, parse_overrides(order))
        assert [resolved.config(a, 0).lr for a in resolved.arms] == [0.1, 0.2, 0.1]

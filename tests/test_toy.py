"""The toy example of paper section 3 / figure 2 (hardctl.toy): files, determinism, HARD's phases and pool,
recipe overrides. The fast tests train for a few hundred iterations; the slow one checks the paper's ordering."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest

from hardctl.errors import UsageError
from hardctl.toy import ARMS, ToySettings, run_arm, run_recipe, run_toy, settings_from

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
RECIPE = next((p for p in (ROOT / "recipes" / "toy-cos.toml", ROOT / "plugins" / "hardctl_builtins" / "recipes" /
                           "toy-cos.toml") if p.is_file()), ROOT / "recipes" / "toy-cos.toml")

# Short runs: a higher learning rate so the student meets l_min (and HARD switches) within a few hundred steps.
FAST = dataclasses.replace(ToySettings(), iterations=600, lr=3e-3, width=32, batch_size=64, curve_points=51)


def test_run_toy_writes_loadable_files(tmp_path):
    from PIL import Image

    result = run_toy(dataclasses.replace(FAST, iterations=100), tmp_path / "toy", seeds=[0])
    out = tmp_path / "toy"
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "toy.png"]  # no temp files left
    with Image.open(out / "toy.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 200
    data = json.loads((out / "results.json").read_text())
    for key in ("table", "arms", "seeds", "ordering_holds", "settings", "runs", "wall_s"):
        assert key in data
    assert data["arms"] == list(ARMS) and data["seeds"] == [0]
    assert data["settings"]["iterations"] == 100 and data["settings"]["seeds"] == [0]
    for arm in ARMS:
        row = data["table"][arm]
        assert len(row["mse"]) == 1 and row["mean"] == row["mse"][0] and row["sem"] == 0.0
        run = data["runs"][arm][0]
        assert len(run["curve"]) == FAST.curve_points and len(run["inputs"]["counts"]) == FAST.hist_bins
        assert run["student_steps"] == 100
    assert data["table"] == result["table"]
    text = (out / "results.md").read_text()
    assert "| HARD noise |" in text and "| Baseline (KD) |" in text
    from hardctl import __version__
    assert data["code"]["hardctl"] == __version__  # which code made the table (issue 12)
    assert f"Made by hardctl {__version__}" in text


def test_same_seed_same_result_and_arms_differ():
    a, b = run_arm("hard", 3, FAST), run_arm("hard", 3, FAST)
    assert a["mse"] == b["mse"] and a["curve"] == b["curve"] and a["hard"]["pool"] == b["hard"]["pool"]
    assert run_arm("mixup", 3, FAST)["mse"] == run_arm("mixup", 3, FAST)["mse"]
    assert run_arm("hard", 4, FAST)["mse"] != a["mse"]


def test_baseline_trains_only_on_training_inputs_and_augmentations_widen_them():
    short = dataclasses.replace(FAST, iterations=50)
    spans = {arm: run_arm(arm, 0, short)["inputs"] for arm in ("baseline", "mixup", "noise")}
    lo, hi = FAST.train_ranges[0][0], FAST.train_ranges[-1][1]
    assert spans["baseline"]["min"] >= lo and spans["baseline"]["max"] <= hi
    assert spans["mixup"]["std"] < spans["baseline"]["std"]  # mixup fills the gap between the two intervals
    assert spans["noise"]["min"] < lo - 1 and spans["noise"]["max"] > hi + 1


def test_hard_switches_phases_and_grows_its_pool():
    result = run_arm("hard", 0, FAST)
    hard = result["hard"]
    assert hard["switches"] >= 2 and hard["pool_size"] >= 2 and hard["aug_steps"] > 0
    phases = [phase for _, phase in hard["history"]]
    assert phases[:2] == ["augmentor", "student"]  # starts as the student, alternates
    assert all(p != q for p, q in itertools.pairwise(phases))
    # one pool entry per augmentor -> student switch, plus the initial one
    assert hard["pool_size"] == 1 + phases.count("student")
    assert [e["index"] for e in hard["pool"]] == list(range(hard["pool_size"]))
    assert hard["pool"][0]["reason"] == "initial" and hard["pool"][0]["mu"] == 0.0
    assert math.isclose(hard["pool"][0]["sigma"], FAST.hard_sigma_init, rel_tol=1e-6)
    assert result["iterations"] == FAST.iterations + hard["aug_steps"]  # augmentor steps come on top


def test_hard_noise_augmentor_learns_mu_and_sigma():
    hard = run_arm("hard", 0, FAST)["hard"]
    assert hard["mu"] != hard["mu_init"]
    assert hard["sigma"] > 2 * hard["sigma_init"]  # the augmentor widens the noise to find the student's errors
    saved = hard["pool"][1:]
    assert saved and all(e["sigma"] != FAST.hard_sigma_init and e["mu"] != 0.0 for e in saved)


def test_recipe_file_spells_out_the_defaults():
    recipe = tomllib.loads(RECIPE.read_text())
    assert recipe["recipe"]["name"] == "toy-cos" and recipe["recipe"]["kind"] == "toy"
    assert recipe["recipe"]["seeds"] == list(range(10))
    assert settings_from(recipe["toy"]) == ToySettings()


def test_run_recipe_applies_overrides_and_seeds(tmp_path):
    recipe = tomllib.loads(RECIPE.read_text())
    result = run_recipe(recipe, tmp_path / "r", seeds=[2], arms=["baseline", "hard"],
                        overrides={"iterations": 20, "width": "8", "curve_points": 11, "train_ranges": "[[0, 1]]"})
    assert result["seeds"] == [2] and result["settings"]["iterations"] == 20 and result["settings"]["width"] == 8
    assert result["settings"]["train_ranges"] == [[0.0, 1.0]]
    assert result["arms"] == ["baseline", "hard"] and list(result["table"]) == ["baseline", "hard"]
    assert (tmp_path / "r" / "toy.png").is_file()


@pytest.mark.parametrize("overrides, words", [
    ({"iteratons": 10}, ["unknown", "'iterations'"]),
    ({"l_mni": 0.1}, ["'l_min'"]),
    ({"width": 1.5}, ["width", "must be an integer"]),
    ({"l_min": 0.5, "l_max": 0.1}, ["l_min", "below l_max"]),
    ({"train_ranges": [[1, 0]]}, ["train_ranges"]),
])
def test_bad_override_is_a_usage_error(tmp_path, overrides, words):
    with pytest.raises(UsageError) as exc:
        run_recipe({"recipe": {"kind": "toy"}, "toy": {}}, tmp_path / "bad", seeds=[0], overrides=overrides)
    for word in words:
        assert word in str(exc.value)
    assert not (tmp_path / "bad").exists()


def test_unknown_key_in_recipe_table_and_unknown_arm(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'noise_sigma'"):
        run_recipe({"toy": {"noise_sigm": 1.0}}, tmp_path, seeds=[0], overrides={})
    with pytest.raises(UsageError, match="did you mean 'mixup'"):
        run_arm("mixpu", 0, FAST)
    with pytest.raises(UsageError, match="did you mean 'hard'"):
        run_toy(FAST, tmp_path, arms=["hrad"])


@pytest.mark.slow
def test_defaults_reproduce_the_papers_ordering(tmp_path):
    """The tuned defaults with 3,000 instead of 10,000 updates, 2 seeds: HARD best and baseline worst, per seed too."""
    result = run_toy(dataclasses.replace(ToySettings(), iterations=3000), tmp_path, seeds=[0, 1])
    table = result["table"]
    assert result["ordering_holds"], {arm: row["mean"] for arm, row in table.items()}
    for i in range(2):
        per_seed = {arm: table[arm]["mse"][i] for arm in ARMS}
        assert min(per_seed, key=per_seed.get) == "hard" and max(per_seed, key=per_seed.get) == "baseline", per_seed
    assert table["hard"]["mean"] < 0.5 * table["noise"]["mean"]

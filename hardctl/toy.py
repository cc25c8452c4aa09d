"""The paper's toy example (section 3, figure 2): why the inputs matter for knowledge distillation.

The teacher is the function ``f_t(x) = cos(x)``, the student a three-layer ReLU MLP, and the training
inputs are a few points in two short intervals that do not reveal the period. The student is
distilled for a fixed number of student updates in four *arms* that differ only in the inputs it sees:

* ``baseline`` — plain KD on the training inputs;
* ``mixup``    — ``x̃ = (1-α)·x1 + α·x2``, two random training inputs, ``α ~ U[0, 1]``;
* ``noise``    — ``x̃ = x + ε``, ``ε ~ N(0, σ²)`` with a fixed ``σ``;
* ``hard``     — ``x̃ = x + μ + σ·ε`` with ``μ`` and ``σ`` learned by HARD (section 4): the
  augmentor maximises ``λ_s·D[s(x̃), t(x̃)] − λ_t·D[t(x̃), t(x)]`` in augmentor phases, the student
  minimises ``D[s(x̃), t(x̃)]`` on augmentors drawn from the pool, and the phases switch on the
  student's error on augmented inputs (:class:`~hardctl.distill.phases.PhaseSwitch`).

``D`` is the squared error (a regression teacher has no softmax). Every arm is scored by the mean
squared error against ``cos`` on 100 test inputs drawn once from ``U[-10, 10]``.

Choices the paper leaves open (tuned so that its ordering holds over 10 seeds; see :class:`ToySettings`):

* training inputs: 8 evenly spaced points in each of ``[-8, -7]`` and ``[5, 6]`` — a sixth of a period
  each, 12 apart, so the gap shows the value of interpolation (mixup) and the ends that of extrapolation;
* the student: ``1 → 64 → 64 → 1``, Adam (lr 1e-3), batch 128, 10,000 updates in every arm (HARD's
  augmentor steps, about 2 % of its iterations, come on top);
* HARD: the paper's image settings (λ_s = 1, augmentor lr 0.05, patience 5) except ``λ_t = 0.1`` and
  MSE thresholds ``l_min = 0.05``, ``l_max = 0.3``. cos is invariant to no small shift, so near the
  start (σ = 0.1) the teacher–teacher term ``λ_t·E[(cos x̃ − cos x)²] ≈ λ_t·σ²·E[sin² x]`` outweighs the
  student–teacher term wherever the student already fits: with the paper's ``λ_t = 1`` the augmentor
  shrinks σ to zero in 5 of 5 seeds (HARD is then no better than the baseline), with 0.5 in 2 of 5, with 0.2 and
  0.1 in none of 10. ``l_min`` must be reachable by a student that trains on a random pool entry per
  step, or it stays in its phase for good (``l_min = 0.01`` stalled most seeds after a few switches).

:func:`run_arm` trains one arm for one seed; :func:`run_toy` runs arms × seeds and writes
``toy.png`` (a figure like the paper's figure 2), ``results.json`` and ``results.md``;
:func:`run_recipe` is the entry point of ``recipes/toy-cos.toml``. Everything is deterministic per
seed (CPU, one thread, the global torch RNG seeded at the start of every run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hardctl.atomic import atomic_path
from hardctl.augment import build_augmentor
from hardctl.codeversion import code_version, describe
from hardctl.config import threshold_problem
from hardctl.distill.hard import Hard, HardSettings
from hardctl.distill.losses import hard_objective
from hardctl.distill.phases import AUGMENTOR, STUDENT
from hardctl.errors import UsageError, did_you_mean
from hardctl.stats import mean_sem
from hardctl.values import parse_value

__all__ = ["ARMS", "ToySettings", "make_student", "run_arm", "run_recipe", "run_toy", "settings_from",
           "test_inputs", "train_inputs"]

ARMS = ("baseline", "mixup", "noise", "hard")
ARM_TITLES = {"baseline": "Baseline (KD)", "mixup": "Mixup", "noise": "Gaussian noise", "hard": "HARD noise"}


@dataclass(frozen=True)
class ToySettings:
    """Every knob of the toy example. The defaults are the tuned values documented in the README."""

    # -- data ------------------------------------------------------------------------------------
    train_ranges: tuple[tuple[float, float], ...] = ((-8.0, -7.0), (5.0, 6.0))  # intervals of training inputs
    train_per_range: int = 8  # evenly spaced training inputs per interval (fixed across seeds)
    test_points: int = 100  # test inputs from U[test_low, test_high] ...
    test_low: float = -10.0
    test_high: float = 10.0
    test_seed: int = 0  # ... drawn once with this seed
    # -- student and its optimiser (the same in every arm) -----------------------------------------
    width: int = 64  # hidden units of the 3-layer ReLU MLP 1 → width → width → 1
    iterations: int = 10_000  # student updates per arm (HARD's augmentor steps come on top)
    batch_size: int = 128  # inputs per student (and augmentor) step, drawn with replacement
    lr: float = 1e-3  # Adam
    seeds: tuple[int, ...] = tuple(range(10))
    # -- the augmentation arms --------------------------------------------------------------------
    noise_sigma: float = 1.0  # the fixed σ of the Gaussian-noise arm
    hard_sigma_init: float = 0.1  # HARD's augmentor starts near the identity: μ = 0, σ = this
    l_min: float = 0.05  # student → augmentor once the student's MSE on x̃ is below l_min ...
    l_max: float = 0.3  # augmentor → student once it is above l_max ...
    patience: int = 5  # ... for this many consecutive iterations (appendix A)
    lambda_s: float = 1.0  # weight of the student–teacher term the augmentor maximises
    lambda_t: float = 0.1  # weight of the teacher–teacher term it minimises (1 collapses σ, see above)
    aug_lr: float = 0.05  # Adam on the augmentor's μ and log σ (the paper's affine value)
    max_aug_steps: int = 50  # an augmentor phase that cannot reach l_max ends after this many steps
    # -- what is recorded -------------------------------------------------------------------------
    record_every: int = 10  # keep every n-th student batch for the input histogram
    hist_range: float = 10.0  # histogram bins cover [-hist_range, hist_range] (inputs outside are counted) ...
    hist_bins: int = 80  # ... in this many bins
    curve_points: int = 401  # the fitted curve is sampled on this many points of [test_low, test_high]
    threads: int = 1  # torch threads while training (tiny MLPs are fastest on one)

    def __post_init__(self):
        problems = []
        if not self.train_ranges or any(len(r) != 2 or not r[0] < r[1] for r in self.train_ranges):
            problems.append("train_ranges must be a list of [low, high] pairs with low < high")
        for name in ("train_per_range", "test_points", "width", "iterations", "batch_size", "patience",
                     "max_aug_steps", "record_every", "hist_bins", "curve_points", "threads"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("lr", "aug_lr", "noise_sigma", "hard_sigma_init", "hist_range"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        thresholds = threshold_problem(self.l_min, self.l_max)
        if thresholds:
            problems.append(thresholds)
        if not self.test_low < self.test_high:
            problems.append("test_low must be below test_high")
        if not self.seeds:
            problems.append("seeds must not be empty")
        if problems:
            raise UsageError("toy settings: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------- pieces
def teacher(x: torch.Tensor) -> torch.Tensor:
    """The frozen teacher ``f_t(x) = cos(x)`` (differentiable, so the augmentor gets its gradient)."""
    return torch.cos(x)


def make_student(width: int) -> nn.Module:
    """The three-layer ReLU MLP ``1 → width → width → 1``."""
    return nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


def train_inputs(s: ToySettings) -> torch.Tensor:
    """The training inputs, ``[N, 1]``: evenly spaced points in each of ``train_ranges``."""
    xs = [torch.linspace(lo, hi, s.train_per_range) for lo, hi in s.train_ranges]
    return torch.cat(xs).unsqueeze(1)


def test_inputs(s: ToySettings) -> torch.Tensor:
    """The test inputs, ``[test_points, 1]`` from ``U[test_low, test_high]``, the same for every run."""
    gen = torch.Generator().manual_seed(s.test_seed)
    return s.test_low + (s.test_high - s.test_low) * torch.rand(s.test_points, 1, generator=gen)


def noise_augmentor(sigma_init: float):
    """The ``noise`` augmentor (``x + μ + σ·ε``, one learned scalar μ and σ) on unbounded inputs, built through
    the plugin registry like any augmentor."""
    return build_augmentor("noise", {"sigma_init": sigma_init, "shape": "scalar", "clamp": False},
                           in_chans=1, img_size=(1, 1))


def hard_settings(s: ToySettings) -> HardSettings:
    """The engine's HARD settings for the toy (the switching statistic is the student's MSE on x̃)."""
    return HardSettings(augmentor="noise", l_min=s.l_min, l_max=s.l_max, switch_patience=s.patience,
                        lambda_s=s.lambda_s, lambda_t=s.lambda_t, aug_lr=s.aug_lr, aug_batch_size=s.batch_size,
                        max_aug_steps=s.max_aug_steps)


def mu_sigma(state: dict[str, torch.Tensor]) -> tuple[float, float]:
    return float(state["mu"].reshape(-1)[0]), float(state["log_sigma"].reshape(-1)[0].exp())


# ---------------------------------------------------------------------------------------------------- one run
def run_arm(arm: str, seed: int, settings: ToySettings | None = None) -> dict[str, Any]:
    """Distil ``cos`` into a fresh student with ``arm``'s inputs; returns its test MSE, fitted curve, the
    histogram of the inputs it trained on and (``hard``) the augmentor's phases and pool."""
    if arm not in ARMS:
        raise UsageError(f"unknown toy arm {arm!r}{did_you_mean(arm, ARMS)}", hint=f"arms: {', '.join(ARMS)}")
    s = settings or ToySettings()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        return _run_arm(arm, seed, s)
    finally:
        torch.set_num_threads(threads)


def _run_arm(arm: str, seed: int, s: ToySettings) -> dict[str, Any]:
    started = time.perf_counter()
    torch.manual_seed(seed)
    x_train = train_inputs(s)
    student = make_student(s.width)
    optimizer = torch.optim.Adam(student.parameters(), lr=s.lr, fused=True)

    def batch() -> torch.Tensor:  # training inputs drawn with replacement, [B, 1]
        return x_train[torch.randint(len(x_train), (s.batch_size,))]

    if arm == "hard":  # the engine's HARD state: augmentor, its Adam, the phase switch, the pool
        hard = Hard(noise_augmentor(s.hard_sigma_init), hard_settings(s), device=torch.device("cpu"))
        hard.save("initial", iteration=0, step=0)  # entry 0: μ = 0, σ = hard_sigma_init
        trace = []  # (iteration, phase, student MSE on x̃) every 50 iterations, for the record

    seen = []
    iteration = step = 0  # all iterations / student updates only
    while step < s.iterations:
        # ---- HARD augmentor phase: ascend λ_s·D[s(x̃), t(x̃)] − λ_t·D[t(x̃), t(x)] (student, teacher frozen)
        if arm == "hard" and hard.in_augmentor_phase:
            x = batch()
            x_aug = hard.augmentor(x)
            l_st = F.mse_loss(student(x_aug), teacher(x_aug))
            l_tt = F.mse_loss(teacher(x_aug), teacher(x))
            loss = -hard_objective(l_st, l_tt, lambda_s=s.lambda_s, lambda_t=s.lambda_t)
            hard.optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=hard.params)  # the student gets no gradient
            hard.optimizer.step()
            iteration += 1
            hard.augmentor_stepped(l_st.item(), iteration, step=step)  # may end the phase into the pool
            if iteration % 50 == 0:
                trace.append((iteration, AUGMENTOR, round(l_st.item(), 5)))
            continue

        # ---- student step: plain KD on this arm's inputs
        x = batch()
        with torch.no_grad():
            if arm == "mixup":
                alpha = torch.rand(s.batch_size, 1)
                x_aug = (1 - alpha) * x + alpha * batch()
            elif arm == "noise":
                x_aug = x + s.noise_sigma * torch.randn_like(x)
            elif arm == "hard":
                x_aug = hard.pool.augment(hard.pool.sample(), x)
            else:
                x_aug = x
        loss = F.mse_loss(student(x_aug), teacher(x_aug))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        iteration += 1
        step += 1
        if arm == "hard":
            hard.student_stepped(loss.item(), iteration)
            if iteration % 50 == 0:
                trace.append((iteration, STUDENT, round(loss.item(), 5)))
        if (step - 1) % s.record_every == 0:  # steps 1, 1 + n, 1 + 2n, ...
            seen.append(x_aug.reshape(-1))

    # ---- evaluation
    with torch.no_grad():
        x_test = test_inputs(s)
        mse = F.mse_loss(student(x_test), teacher(x_test)).item()
        grid = torch.linspace(s.test_low, s.test_high, s.curve_points).unsqueeze(1)
        curve = student(grid).squeeze(1)
    seen = torch.cat(seen) if seen else torch.empty(0)
    counts = torch.histc(seen, bins=s.hist_bins, min=-s.hist_range, max=s.hist_range)
    inside = (seen.abs() <= s.hist_range).sum().item()
    result = {
        "arm": arm, "seed": seed, "mse": mse,
        "curve": [round(v, 5) for v in curve.tolist()],
        "inputs": {"counts": [int(c) for c in counts.tolist()], "outside": int(seen.numel() - inside),
                   "n": int(seen.numel()), "mean": float(seen.mean()), "std": float(seen.std()),
                   "min": float(seen.min()), "max": float(seen.max())},
        "student_steps": step, "iterations": iteration,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if arm == "hard":
        mu, sigma = mu_sigma(hard.augmentor.snapshot())
        pool, switch = hard.pool, hard.switch
        pool_entries = []
        for entry, info in zip(pool.entries, pool.info):
            entry_mu, entry_sigma = mu_sigma(entry)
            pool_entries.append({**info, "mu": entry_mu, "sigma": entry_sigma})
        result["hard"] = {
            "switches": switch.switches, "history": [list(h) for h in switch.history],
            "pool_size": len(pool), "pool": pool_entries, "aug_steps": hard.steps,
            "aug_fraction": hard.steps / max(1, iteration),
            "mu": mu, "sigma": sigma, "mu_init": 0.0, "sigma_init": s.hard_sigma_init, "trace": trace,
        }
    return result


# ---------------------------------------------------------------------------------------------------- all runs
def run_toy(settings: ToySettings | None = None, out_dir: str | Path = "toy", *, seeds: list[int] | None = None,
            arms: list[str] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``arms`` × ``seeds`` and write ``toy.png``, ``results.json`` and ``results.md`` into ``out_dir``.

    Returns the table: per arm the test MSE of every seed, its mean and s.e.m., and whether the paper's
    ordering (HARD best, baseline worst) holds.
    """
    s = settings or ToySettings()
    seeds = list(s.seeds if seeds is None else seeds)
    arms = list(ARMS if arms is None else arms)
    for arm in arms:
        if arm not in ARMS:
            raise UsageError(f"unknown toy arm {arm!r}{did_you_mean(arm, ARMS)}", hint=f"arms: {', '.join(ARMS)}")
    if not seeds:
        raise UsageError("the toy example needs at least one seed")
    s = dataclasses.replace(s, seeds=tuple(seeds))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for arm in arms:
        for seed in seeds:
            result = run_arm(arm, seed, s)
            runs[arm].append(result)
            if progress is not None:
                extra = ""
                if arm == "hard":
                    h = result["hard"]
                    extra = f", {h['switches']} switches, pool {h['pool_size']}, μ {h['mu']:+.2f} σ {h['sigma']:.2f}"
                progress(f"toy {arm} seed {seed}: test MSE {result['mse']:.4f} ({result['wall_s']:.1f} s{extra})")

    table = {}
    for arm in arms:
        mses = [r["mse"] for r in runs[arm]]
        stat = mean_sem(mses)
        table[arm] = {"mean": stat["mean"], "sem": stat["sem"] or 0.0, "mse": mses}  # one seed: s.e.m. 0
    ordering = seeds_won = None
    if {"baseline", "hard"} <= set(arms):
        means = {arm: table[arm]["mean"] for arm in arms}
        ordering = min(means, key=means.get) == "hard" and max(means, key=means.get) == "baseline"
        seeds_won = sum(h < b for h, b in zip(table["hard"]["mse"], table["baseline"]["mse"]))
    wall = time.perf_counter() - started
    code = code_version()  # the hardctl version and commit that made this table
    result = {"code": code, "table": table, "arms": arms, "seeds": seeds, "ordering_holds": ordering,
              "hard_beats_baseline_seeds": seeds_won, "wall_s": round(wall, 1),
              "settings": _jsonable(dataclasses.asdict(s)), "runs": runs,
              "files": {name: str(out / name) for name in ("toy.png", "results.json", "results.md")}}

    _draw(out / "toy.png", s, runs, table)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(_dumps(result))
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown_table(table, seeds, s, ordering, wall, code=code))
    return result


def _dumps(obj: Any) -> str:
    """Indented JSON with lists of numbers kept on one line (curves and histograms stay readable)."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def markdown_table(table: dict[str, dict[str, Any]], seeds: list[int], s: ToySettings, ordering: bool | None,
                   wall_s: float, code: dict[str, Any] | None = None) -> str:
    ranges = " ∪ ".join(f"[{lo:g}, {hi:g}]" for lo, hi in s.train_ranges)
    lines = ["# Toy example (paper section 3, figure 2)", "",
             (f"Teacher cos(x), student 3-layer ReLU MLP (width {s.width}), {s.iterations} student updates "
             f"(Adam lr {s.lr:g}, batch {s.batch_size}), {len(seeds)} seed(s); training inputs "
             f"{s.train_per_range} per interval of {ranges}; noise σ = {s.noise_sigma:g}; HARD λ_s = {s.lambda_s:g}, "
             f"λ_t = {s.lambda_t:g}, l_min = {s.l_min:g}, l_max = {s.l_max:g}, patience {s.patience}. "
             f"Test MSE on {s.test_points} inputs from U[{s.test_low:g}, {s.test_high:g}], mean ± s.e.m. over seeds."),
             "", "| Arm | Test MSE |", "|---|---|"]
    for arm, row in table.items():
        lines.append(f"| {ARM_TITLES[arm]} | {row['mean']:.4f} ± {row['sem']:.4f} |")
    lines.append("")
    if ordering is not None:
        wins = sum(h < b for h, b in zip(table["hard"]["mse"], table["baseline"]["mse"]))
        lines.append(f"Paper's ordering (HARD best, baseline worst): {'holds' if ordering else 'does NOT hold'}; "
                     f"HARD below baseline in {wins}/{len(seeds)} seeds.")
    lines.append(f"Wall time: {wall_s:.0f} s." + (f" Made by {describe(code)}." if code else ""))
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _draw(path: Path, s: ToySettings, runs: dict[str, list[dict[str, Any]]], table: dict[str, Any]) -> None:
    """Figure 2: per arm, the students' fits against cos with the training points (top) and the normalised
    histogram of the inputs the students trained on (bottom)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    arms = list(runs)
    grid = torch.linspace(s.test_low, s.test_high, s.curve_points).tolist()
    x_train = train_inputs(s).squeeze(1)
    fig, axes = plt.subplots(2, len(arms), figsize=(3.6 * len(arms), 5.6), squeeze=False)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    width = 2 * s.hist_range / s.hist_bins
    centers = [-s.hist_range + width * (i + 0.5) for i in range(s.hist_bins)]
    for col, arm in enumerate(arms):
        top, bottom = axes[0][col], axes[1][col]
        for r in runs[arm]:
            top.plot(grid, r["curve"], color="tab:blue", alpha=0.45, lw=1)
        top.plot(grid, [math.cos(v) for v in grid], color="black", ls="--", lw=1.2, label="teacher cos(x)")
        top.scatter(x_train.tolist(), torch.cos(x_train).tolist(), color="tab:orange", s=14, zorder=3,
                    label="training inputs")
        top.set_ylim(-2.5, 2.5)
        top.set_xlim(s.test_low, s.test_high)
        top.set_title(f"{letters[col]}  {ARM_TITLES[arm]}\nMSE {table[arm]['mean']:.3f} ± {table[arm]['sem']:.3f}",
                      fontsize=10)
        counts = [0.0] * s.hist_bins
        for r in runs[arm]:
            counts = [a + b for a, b in zip(counts, r["inputs"]["counts"])]
        total = sum(r["inputs"]["n"] for r in runs[arm]) or 1
        outside = sum(r["inputs"]["outside"] for r in runs[arm]) / total
        bottom.bar(centers, [c / total / width for c in counts], width=width, color="tab:orange", alpha=0.8)
        note = f" ({100 * outside:.0f}% beyond ±{s.hist_range:g})" if outside >= 0.005 else ""
        bottom.set_title(f"{letters[len(arms) + col]}  inputs trained on{note}", fontsize=10)
        bottom.set_xlim(-s.hist_range, s.hist_range)
        bottom.set_xlabel("x")
        if col == 0:
            top.set_ylabel("f(x)")
            bottom.set_ylabel("density")
            top.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"cos teacher → MLP student, {s.iterations} iterations, {len(next(iter(runs.values())))} seed(s)",
                 fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- recipes
_FIELDS = {f.name: f for f in dataclasses.fields(ToySettings)}


_TYPES = typing.get_type_hints(ToySettings)


def _coerce(name: str, value: Any, where: str) -> Any:
    """A TOML or command-line value for ToySettings field ``name``, converted and checked (:mod:`hardctl.values`)."""
    return parse_value(value, _TYPES[name], f"{where} {name}")


def settings_from(values: dict[str, Any], *, base: ToySettings | None = None,
                  where: str = "toy setting") -> ToySettings:
    """``base`` (the defaults) with ``values`` (ToySettings field → value) applied; unknown names and wrong
    types are a :class:`~hardctl.errors.UsageError` with a did-you-mean."""
    changes = {}
    for name, value in values.items():
        if name not in _FIELDS:
            raise UsageError(f"unknown {where} {name!r}{did_you_mean(name, _FIELDS)}",
                             hint=f"known: {', '.join(_FIELDS)}")
        changes[name] = _coerce(name, value, where)
    return dataclasses.replace(base or ToySettings(), **changes)


def run_recipe(recipe: dict[str, Any], out_dir: Path, *, seeds: list[int] | None = None,
               overrides: dict[str, Any] | None = None, arms: list[str] | None = None, reuse: bool = True,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a ``kind = "toy"`` recipe: its ``[toy]`` table and then ``overrides`` (field → value, or the
    value's TOML/JSON text as ``--set`` gives it) applied to :class:`ToySettings`; seeds from ``seeds``,
    else the recipe's ``[recipe] seeds``, else the settings'. ``reuse`` is accepted and ignored: the toy
    always trains afresh (a few minutes on one core)."""
    settings = settings_from(dict(recipe.get("toy") or {}), where="[toy] setting")
    settings = settings_from(dict(overrides or {}), base=settings, where="toy override")
    if seeds is None:
        seeds = (recipe.get("recipe") or {}).get("seeds")
    if seeds is not None:
        settings = settings_from({"seeds": list(seeds)}, base=settings, where="seeds")
    return run_toy(settings, out_dir, arms=arms, progress=progress)

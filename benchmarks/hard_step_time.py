"""Time of HARD's steps against a plain KD step, measured side by side in one run.

Three kinds of step, with the same CNN teacher (``hard_mnist_cnn``), MLP student (``hard_mnist_mlp``),
batch size and 28×28 images:

* ``kd``: a plain KD step, :meth:`hardctl.distill.trainer.Trainer.step` (``--augmentor none``);
* ``student``: a HARD student-phase step, :meth:`Trainer.student_step` with a pool entry (KD on a batch augmented by a
  pool entry, plus the switching statistic);
* ``augmentor``: a HARD augmentor-phase step, :meth:`Trainer.augmentor_step` (augment, teacher and
  student forward with gradients to the augmentor, teacher on the clean batch, backward, Adam). It draws
  its own batch (``--aug-batch-size`` images) from the training set, as in a run.

Two more rows time parts of those steps alone, to show where the difference goes: ``pool-augment`` (the
student step's augmentation of its batch by a pool entry, no gradients) and ``aug-batch`` (the augmentor
step's drawing of its batch).

The kinds are interleaved in rounds (warm-up rounds first, not counted; the order rotates every round),
so a machine whose load drifts during the run slows all three alike: the ratios student/KD and
augmentor/KD are what this reports. Targets (issue 3): student ≤ 1.10× KD, augmentor ≤ 3.5× KD.

    python benchmarks/hard_step_time.py                    # CPU, fashion-mnist if installed, else digits28
    python benchmarks/hard_step_time.py --device cuda --json
    python benchmarks/hard_step_time.py --profile 5        # plus a torch.profiler table per kind

The step methods are called directly: the switching thresholds are set so that no switch fires
(``l_min`` 0, ``l_max`` 1, no step cap), so no pool snapshot is written inside a timed step, and the phase
is forced before each kind's steps. The teacher is a randomly initialised ``hard_mnist_cnn`` written to a
temporary weights file (a teacher's speed does not depend on its weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from hardctl.config import RunConfig
from hardctl.data import load_data
from hardctl.data.formats import FASHION_MNIST_DIR
from hardctl.distill.phases import AUGMENTOR, STUDENT
from hardctl.distill.progress import Reporter
from hardctl.distill.build import build
from hardctl.distill.trainer import Trainer
from hardctl.errors import HardctlError
from hardctl.models import create_model, save_model
from hardctl.distill.build import resolve_config

KINDS = ("kd", "student", "augmentor")
PARTS = ("pool-augment", "aug-batch")  # parts of the student and augmentor steps, timed alone
TARGETS = {"student": 1.10, "augmentor": 3.5}  # × the KD step


def default_data() -> str:
    folder = Path(FASHION_MNIST_DIR)
    return "fashion-mnist" if (folder / "train-images-idx3-ubyte.gz").is_file() else "digits28"


def random_teacher(data_spec: str, folder: Path) -> Path:
    """A randomly initialised ``hard_mnist_cnn`` for the data's shape, saved as a hardctl weights file."""
    bundle = load_data(data_spec)
    torch.manual_seed(0)
    model, info = create_model("hard_mnist_cnn", num_classes=bundle.num_classes, in_chans=bundle.in_chans,
                               img_size=bundle.img_size)
    return save_model(model, info, folder / "teacher.safetensors", extra={"note": "random init, benchmark only"})


def make_trainers(args, teacher: Path, run_root: Path) -> tuple[Trainer, Trainer]:
    cfg = RunConfig(command="distill", data=args.data, model="hard_mnist_mlp", teacher=str(teacher),
                    epochs=1000, batch_size=args.batch_size, device=args.device, amp=args.amp, seed=0,
                    augmentor=args.augmentor, aug_batch_size=args.aug_batch_size,
                    l_min=0.0, l_max=1.0,  # an error can be neither < 0 nor > 1: no switch fires
                    max_aug_steps=10**9)  # and no step cap ends an augmentor phase
    cfg = resolve_config(cfg)
    components = build(cfg)
    quiet = Reporter()
    hard = Trainer(components, run_root / "hard", reporter=quiet)
    kd_cfg = replace(cfg, augmentor="none")
    kd = Trainer(replace(components, cfg=kd_cfg, augmentor=None), run_root / "kd", reporter=quiet)
    hard.start_run()  # what fit() does first: the pool holds the identity augmentor
    return kd, hard


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="hard-step-time-") as tmp:
        root = Path(tmp)
        for sub in ("hard", "kd"):
            (root / sub).mkdir()
        teacher = random_teacher(args.data, root)
        kd, hard = make_trainers(args, teacher, root)
        device = hard.device
        loader = iter(kd.loader)
        batches = [next(loader) for _ in range(min(8, len(kd.loader)))]  # pre-drawn: KD and student get the same
        hard.task.train()
        kd.task.train()
        counter = {"i": 0}

        def next_batch():
            counter["i"] += 1
            return batches[counter["i"] % len(batches)]

        def run_kind(kind: str) -> float:
            if kind == "pool-augment":
                images = next_batch()[0].to(device)
                sync(device)
                start = time.perf_counter()
                with torch.no_grad():
                    hard.hard.pool.augment(0, images)
                sync(device)
                return time.perf_counter() - start
            if kind == "aug-batch":
                start = time.perf_counter()
                hard.prepare_batch(*hard.hard.draw_batch(hard.components.data.train)[:2])
                sync(device)
                return time.perf_counter() - start
            if kind == "augmentor":
                hard.hard.switch.force(AUGMENTOR, hard.iteration)
                sync(device)
                start = time.perf_counter()
                hard.augmentor_step()
            else:
                images, labels = next_batch()
                if kind == "student":
                    hard.hard.switch.force(STUDENT, hard.iteration)
                sync(device)
                start = time.perf_counter()
                if kind == "kd":
                    kd.student_step(*kd.prepare_batch(images, labels))
                else:
                    hard.student_step(*hard.prepare_batch(images, labels), entry=hard.hard.pool.sample())
            sync(device)
            return time.perf_counter() - start

        kinds = (*KINDS, *PARTS)
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        for round_ in range(args.warmup + args.rounds):
            shift = round_ % len(kinds)  # rotate the order so no kind always runs first
            for kind in kinds[shift:] + kinds[:shift]:
                seconds = run_kind(kind)
                if round_ >= args.warmup:
                    samples[kind].append(seconds)
        assert len(hard.hard.pool) == 1, "a pool snapshot was taken inside the benchmark"
        profile = profile_kinds(run_kind, args.profile, device) if args.profile else None

    med = {k: statistics.median(v) for k, v in samples.items()}
    per_round = {k: statistics.median(s / b for s, b in zip(samples[k], samples["kd"], strict=True))
                 for k in ("student", "augmentor")}
    ratios = {k: med[k] / med["kd"] for k in ("student", "augmentor")}
    return {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "amp": hard.amp, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "data": args.data, "teacher": "hard_mnist_cnn", "student": "hard_mnist_mlp", "augmentor": args.augmentor,
        "batch_size": args.batch_size, "aug_batch_size": args.aug_batch_size, "image": list(hard.components.data.img_size),
        "warmup_rounds": args.warmup, "rounds": args.rounds,
        "steps_ms": {k: {"median": round(1e3 * med[k], 3), "min": round(1e3 * min(v), 3),
                         "max": round(1e3 * max(v), 3), "samples": [round(1e3 * s, 3) for s in v]}
                     for k, v in samples.items()},
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "paired_ratios": {k: round(v, 4) for k, v in per_round.items()}, "targets": TARGETS,
        "meets_targets": {k: ratios[k] <= TARGETS[k] for k in TARGETS},
        "profile": profile,
    }


def profile_kinds(run_kind, steps: int, device: torch.device) -> dict[str, str]:
    """A torch.profiler table (top operators by self time) of ``steps`` steps of each kind."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = {}
    for kind in KINDS:
        with profile(activities=activities) as prof:
            for _ in range(steps):
                run_kind(kind)
        tables[kind] = prof.key_averages().table(sort_by=key, row_limit=18)
    return tables


def render(result: dict) -> str:
    rows = [f"HARD step time, {result['device']}"
            + (f" ({result['device_name']})" if result["device_name"] else "")
            + f", {result['threads']} threads, amp {result['amp']}, torch {result['torch']}",
            (f"teacher {result['teacher']} -> student {result['student']}, augmentor {result['augmentor']}, "
            f"data {result['data']} {result['image'][0]}x{result['image'][1]}, batch {result['batch_size']}, "
            f"aug batch {result['aug_batch_size']}, {result['rounds']} rounds after {result['warmup_rounds']} warm-up"),
            "",
            f"{'step':<22}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'× KD':>8}{'target':>9}"]
    names = {"kd": "KD (Trainer.step)", "student": "HARD student phase", "augmentor": "HARD augmentor phase",
             "pool-augment": "  part: pool augment", "aug-batch": "  part: aug batch"}
    for kind in (*KINDS, *PARTS):
        s = result["steps_ms"][kind]
        ratio = s["median"] / result["steps_ms"]["kd"]["median"]
        target = TARGETS.get(kind)
        verdict = "" if target is None else (f"≤{target:.2f} " + ("ok" if ratio <= target else "MISS"))
        rows.append(f"{names[kind]:<22}{s['median']:>11.2f}{s['min']:>9.2f}{s['max']:>9.2f}{ratio:>8.2f}{verdict:>9}")
    paired = result["paired_ratios"]
    rows += ["", (f"median of per-round ratios: student {paired['student']:.2f}×, "
                 f"augmentor {paired['augmentor']:.2f}×")]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="data spec (default: fashion-mnist if installed, else digits28)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off")
    parser.add_argument("--augmentor", default="affine")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--aug-batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5, help="rounds not counted")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (one step of each kind per round)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS steps of each kind with torch.profiler and print the tables")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.data = args.data or default_data()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(args)
    except HardctlError as exc:
        sys.exit(f"hard_step_time: error: {exc.oneline()}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
        for kind, table in (result["profile"] or {}).items():
            print(f"\n== profile: {kind} ==\n{table}")
    sys.exit(0)


if __name__ == "__main__":
    main()

"""Images per second of KD and HARD-Affine training steps, against the bare loader and pre-loaded tensors.

The paper's ImageNet pair — ResNet-50 teacher, ResNet-18 student at 224 px, random weights (speed does not
depend on them) — on a synthetic JPEG folder this script writes into a temporary directory (``imagenet:DIR``
layout at 224 px, so the loader does ImageNet's random resized crop; an ``imagefolder`` of ``--img-size``
images otherwise). Every number comes from hardctl's own :class:`~hardctl.distill.trainer.Trainer` steps, so
``--compile``, ``--channels-last``, ``--decode`` and ``--workers`` are the run options of the same names:

* ``loader``: the training loader alone (workers' decode + crop, or ``--decode gpu``'s nvJPEG in the main
  process), each batch made ready on the device (``Trainer.prepare_batch``);
* ``kd_preloaded``: a plain KD step (``Trainer.student_step``) on batches already on the device;
* ``hard_student_preloaded``: a HARD student step (KD on the batch as a pool entry augments it);
* ``augmentor_preloaded``: a HARD-Affine augmentor step (``Trainer.augmentor_step``) on a pre-drawn batch;
* ``kd_from_loader``: KD steps fed by the loader — what a run gets.

Ratios: ``hard_student / kd`` and ``augmentor / kd`` (step times on pre-loaded tensors), and
``kd_from_loader / kd_preloaded`` (below 1: the loader does not keep up). On CUDA each kind's peak memory.
Under ``torchrun`` (one node) the student is DDP-wrapped, ``--batch-size`` is global and rank 0 reports.

    python benchmarks/ddp_throughput.py --device cpu --img-size 64 --steps 3 --model-pair small   # < 1 min
    python benchmarks/ddp_throughput.py --device cuda --workers 8 --json                          # the real one
    python benchmarks/ddp_throughput.py --device cuda --workers 8 --compile --channels-last --decode gpu --json
    torchrun --nproc-per-node 8 benchmarks/ddp_throughput.py --device cuda --workers 8 --batch-size 2048 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hardctl import distributed
from hardctl.config import RunConfig
from hardctl.distill.build import build, resolve_config
from hardctl.distill.phases import AUGMENTOR, STUDENT
from hardctl.distill.progress import Reporter
from hardctl.distill.trainer import Trainer
from hardctl.models import create_model, save_model

PAIRS = {"resnet": ("resnet50", "resnet18"), "small": ("resnet18", "resnet10t")}  # teacher, student (timm)
CLASSES = 10


def write_jpegs(root: Path, images: int, img_size: int, seed: int = 0) -> str:
    """A synthetic JPEG folder; returns its data spec. 224 px: ``imagenet:`` layout with ImageNet-like file
    sizes (about 400×350, so the random resized crop has work); else ``imagefolder:`` of ``img_size`` images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    imagenet = img_size == 224
    for split, count in (("train", images), ("val", max(CLASSES, images // 10))):
        for i in range(count):
            cls = root / split / f"n{i % CLASSES:08d}"
            cls.mkdir(parents=True, exist_ok=True)
            h, w = (int(rng.integers(300, 420)), int(rng.integers(300, 480))) if imagenet else (img_size, img_size)
            coarse = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)  # smooth-ish content
            Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(cls / f"{i:06d}.jpg", quality=90)
    return f"{'imagenet' if imagenet else 'imagefolder'}:{root}"


def make_trainers(args, data: str, root: Path) -> tuple[Trainer, Trainer]:
    teacher_name, student_name = PAIRS[args.model_pair]
    torch.manual_seed(0)
    teacher, info = create_model(teacher_name, num_classes=CLASSES, in_chans=3, img_size=(args.img_size,) * 2)
    teacher_file = root / "teacher.safetensors"
    if distributed.current().is_main:
        save_model(teacher, info, teacher_file, extra={"note": "random init, benchmark only"})
    distributed.barrier()
    cfg = RunConfig(command="distill", data=data, model=student_name, teacher=str(teacher_file), epochs=1000,
                    batch_size=args.batch_size, aug_batch_size=args.batch_size, device=args.device, amp=args.amp,
                    seed=0, augmentor="affine", l_min=0.0, l_max=1.0, max_aug_steps=10**9,  # no switch fires
                    workers=args.workers, compile=args.compile, channels_last=args.channels_last, decode=args.decode)
    cfg = resolve_config(cfg)
    components = build(cfg)
    quiet = Reporter()
    for sub in ("hard", "kd"):
        (root / sub).mkdir(exist_ok=True)
    hard = Trainer(components, root / "hard", reporter=quiet)
    kd = Trainer(replace(components, cfg=replace(cfg, augmentor="none"), augmentor=None), root / "kd", reporter=quiet)
    hard.start_run()  # the pool holds the identity augmentor, as at a run's start
    return kd, hard


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, steps: int, warmup: int) -> tuple[list[float], int | None]:
    """Seconds of each of ``steps`` calls of ``fn`` after ``warmup`` calls, and the peak CUDA memory."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def measure(args, root: Path) -> dict:
    info = distributed.setup(args.device)
    data = root / "jpegs"
    if info.is_main and not data.exists():
        write_jpegs(data, args.images, args.img_size)
    distributed.barrier()
    spec = f"{'imagenet' if args.img_size == 224 else 'imagefolder'}:{data}"
    kd, hard = make_trainers(args, spec, root)
    device, world = kd.device, info.world_size
    kd.task.train()
    hard.task.train()
    stream = {"it": iter(kd.loader)}

    def next_batch():
        try:
            return next(stream["it"])
        except StopIteration:
            stream["it"] = iter(kd.loader)
            return next(stream["it"])

    preloaded = [kd.prepare_batch(*next_batch()) for _ in range(4)]
    aug_batch = hard.hard.draw_batch(hard.components.data.train)
    hard.hard.draw_batch = lambda dataset: aug_batch  # the augmentor step on a pre-drawn batch
    turn = {"i": 0}

    def ready():
        turn["i"] += 1
        return preloaded[turn["i"] % len(preloaded)]

    def student_step():
        hard.hard.switch.force(STUDENT, hard.iteration)
        hard.student_step(*ready(), entry=hard.hard.pool.sample())

    def augmentor_step():
        hard.hard.switch.force(AUGMENTOR, hard.iteration)
        hard.augmentor_step()

    kinds = {
        "loader": lambda: kd.prepare_batch(*next_batch()),
        "kd_preloaded": lambda: kd.student_step(*ready()),
        "hard_student_preloaded": student_step,
        "augmentor_preloaded": augmentor_step,
        "kd_from_loader": lambda: kd.student_step(*kd.prepare_batch(*next_batch())),
    }
    results = {}
    with distributed.translate_errors():
        for name, fn in kinds.items():
            seconds, peak = timed(device, fn, args.steps, args.warmup)
            med = statistics.median(seconds)
            results[name] = {"median_ms": round(1e3 * med, 3), "min_ms": round(1e3 * min(seconds), 3),
                             "images_per_s": round(args.batch_size / med, 1),  # global batch: all ranks together
                             "peak_memory_mib": round(peak / 2**20, 1) if peak is not None else None}
    assert len(hard.hard.pool) == 1, "a pool snapshot was taken inside the benchmark"
    kd_ms = results["kd_preloaded"]["median_ms"]
    return {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "world_size": world, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "pair": dict(zip(("teacher", "student"), PAIRS[args.model_pair])), "img_size": args.img_size,
        "data": spec.split(":")[0], "images": args.images, "batch_size": args.batch_size, "amp": kd.amp,
        "compile": args.compile, "channels_last": args.channels_last, "decode": kd.cfg.decode, "workers": args.workers,
        "steps": args.steps, "warmup": args.warmup, "kinds": results,
        "ratios": {"hard_student/kd": round(results["hard_student_preloaded"]["median_ms"] / kd_ms, 3),
                   "augmentor/kd": round(results["augmentor_preloaded"]["median_ms"] / kd_ms, 3),
                   "kd_from_loader/kd_preloaded": round(kd_ms / results["kd_from_loader"]["median_ms"], 3)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-pair", choices=sorted(PAIRS), default="resnet",
                        help="resnet: ResNet-50 -> ResNet-18 (the paper's); small: ResNet-18 -> ResNet-10t")
    parser.add_argument("--img-size", type=int, default=224, help="224: imagenet layout and crops; else imagefolder")
    parser.add_argument("--batch-size", type=int, default=256, help="global, as in a run")
    parser.add_argument("--images", type=int, default=None, help="synthetic training JPEGs (default 4 batches)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per kind (compilation happens here)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--decode", choices=("cpu", "gpu", "auto"), default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.images = args.images or 4 * args.batch_size
    info = distributed.current()
    if info.world_size > 1:  # the ranks share one folder (one node)
        root = Path(tempfile.gettempdir()) / f"ddp-throughput-{os.environ.get('MASTER_PORT', '0')}"
        root.mkdir(exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="ddp-throughput-"))
    try:
        result = measure(args, root)
    finally:
        distributed.barrier()
        if info.is_main:
            shutil.rmtree(root, ignore_errors=True)
    if info.is_main:
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for name, row in result["kinds"].items():
                peak = f", peak {row['peak_memory_mib']} MiB" if row["peak_memory_mib"] is not None else ""
                print(f"{name:24s} {row['median_ms']:9.2f} ms  {row['images_per_s']:9.1f} images/s{peak}")
            print("ratios: " + ", ".join(f"{k} {v}" for k, v in result["ratios"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

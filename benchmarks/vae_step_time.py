"""Time of HARD-VAE's steps against a plain KD step, measured side by side in one run.

Like ``benchmarks/hard_step_time.py``, with the VAE augmentors (plugins/hardctl_builtins/vaeaug.py): per
setup, one KD trainer and one HARD trainer per augmentor share the teacher, student, data and batch size,
and these steps are interleaved in rounds (warm-up rounds first, not counted; the order rotates every
round, so load drifting during the run slows every kind alike):

* ``kd``: a plain KD step (``Trainer.student_step`` of an ``--augmentor none`` trainer);
* ``student:A``: a HARD student-phase step with augmentor A (its batch augmented by pool entry 0, the VAE's
  reconstruction, without gradients; then KD on it);
* ``augmentor:A``: a HARD augmentor-phase step (the VAE forward with gradients to its trainable part,
  teacher and student on the result, teacher on the clean batch, backward, Adam), which draws its own
  batch of ``--aug-batch-size`` images from the training set as in a run; ``aug-batch`` times that draw
  alone (JPEG decoding and cropping at 224 px), so it can be told apart from the VAE's share.

Reported: each step's median, and augmentor step / KD step and student step / KD step; on CUDA also each
kind's peak memory (``torch.cuda.max_memory_allocated`` over its steps). The VAEs and the teacher have
random weights (a step's time does not depend on them). Setups:

* ``small`` (always): digits28 (1×28×28), ``hard_mnist_cnn`` → ``hard_mnist_mlp``, ``vdvae`` and ``rqvae``
  of ``--preset`` (default ``small``, the configuration ``hardctl vae train`` makes for these data).
* ``cifar10`` (``--device cuda``): the official CIFAR-10 VDVAE size (preset ``cifar10``, 39 M parameters)
  at 32 px, ``resnet18_cifar`` → ``vit_cifar``, on generated CIFAR-10 batches; bf16 with ``--amp bf16``.
* ``in224`` (``--device cuda``): the official ImageNet RQ-VAE size (preset ``in256``) at 224 px,
  ``resnet50`` → ``resnet18``, on a generated ILSVRC-style tree of 256×256 JPEGs.

    python benchmarks/vae_step_time.py --rounds 5 --warmup 1          # CPU: the small setup
    python benchmarks/vae_step_time.py --device cuda --amp bf16 --json  # plus cifar10 and in224

The thresholds are set so that no switch fires (``l_min`` 0, ``l_max`` 1, no step cap): the pool keeps its
one entry and no snapshot is taken inside a timed step.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hardctl.config import RunConfig
from hardctl.data import load_data
from hardctl.distill.build import build, resolve_config
from hardctl.distill.phases import AUGMENTOR, STUDENT
from hardctl.distill.progress import Reporter
from hardctl.distill.trainer import Trainer
from hardctl.errors import HardctlError
from hardctl.models import create_model, save_model
from hardctl.vae.archs import build_vae, config_from, resolve_config as vae_config
from hardctl.vae.files import save_vae

ARCHS = ("vdvae", "rqvae")
# name -> data (a spec, or a generator below), teacher, student, {arch: preset or None (--preset)}, batch, aug batch
SETUPS = {
    "small": ("digits28", "hard_mnist_cnn", "hard_mnist_mlp", {"vdvae": None, "rqvae": None}, 128, 160),
    "cifar10": ("gen-cifar10", "resnet18_cifar", "vit_cifar", {"vdvae": "cifar10"}, 256, 160),
    "in224": ("gen-imagenet", "resnet50", "resnet18", {"rqvae": "in256"}, 64, 32),
}


# ---------------------------------------------------------------------------------------------- inputs
def generated_data(kind: str, root: Path) -> str:
    """A data spec of generated images in a real on-disk layout (CIFAR-10 python batches, ILSVRC tree)."""
    rng = np.random.default_rng(0)
    if kind == "gen-cifar10":
        folder = root / "cifar10" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            n = 400 if name != "test_batch" else 100
            batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                     b"labels": [int(v) for v in rng.integers(0, 10, size=n)], b"batch_label": name.encode()}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        names = [f"class{i}".encode() for i in range(10)]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
        return f"cifar10:{root / 'cifar10'}"
    from PIL import Image

    for c in range(4):
        wnid = f"n0{c:07d}"
        for split, count in (("train", 120), ("val", 4)):
            for i in range(count):
                path = root / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(path, quality=90)
    return f"imagenet:{root / 'imagenet'}"


def make_files(setup: str, args, root: Path) -> tuple[str, Path, dict[str, Path]]:
    """(data spec, teacher weights file, {arch: hardctl VAE file}), all with random weights."""
    data, teacher_name, _, presets, _, _ = SETUPS[setup]
    spec = generated_data(data, root) if data.startswith("gen-") else data
    bundle = load_data(spec)
    torch.manual_seed(0)
    model, info = create_model(teacher_name, num_classes=bundle.num_classes, in_chans=bundle.in_chans,
                               img_size=bundle.img_size)
    teacher = save_model(model, info, root / "teacher.safetensors", extra={"note": "random init, benchmark only"})
    vaes = {}
    for arch, preset in presets.items():
        cfg = (vae_config(arch, args.preset, bundle.img_size[0], bundle.in_chans) if preset is None
               else config_from(arch, preset))
        vaes[arch] = save_vae(build_vae(arch, cfg), root / f"{arch}.safetensors", arch=arch, config=cfg.to_dict(),
                              source="random init, benchmark only")
    return spec, teacher, vaes


def make_trainers(setup: str, args, spec: str, teacher: Path, vaes: dict[str, Path], root: Path):
    _, _, student, _, batch, aug_batch = SETUPS[setup]
    quiet = Reporter()
    hard = {}
    for arch, path in vaes.items():
        cfg = RunConfig(command="distill", data=spec, model=student, teacher=str(teacher), epochs=1000,
                        batch_size=args.batch_size or batch, device=args.device, amp=args.amp, seed=0,
                        augmentor=arch, aug_options={"weights": str(path)},
                        aug_batch_size=args.aug_batch_size or aug_batch,
                        l_min=0.0, l_max=1.0, max_aug_steps=10**9)  # no switch, no step cap
        components = build(resolve_config(cfg))
        (root / arch).mkdir()
        hard[arch] = Trainer(components, root / arch, reporter=quiet)
        hard[arch].start_run()  # the pool holds entry 0: the VAE as loaded
    first = next(iter(hard.values())).components
    (root / "kd").mkdir()
    kd = Trainer(replace(first, cfg=replace(first.cfg, augmentor="none"), augmentor=None), root / "kd", reporter=quiet)
    return kd, hard


# ---------------------------------------------------------------------------------------------- timing
def measure(setup: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="vae-step-time-") as tmp:
        root = Path(tmp)
        spec, teacher, vaes = make_files(setup, args, root)
        kd, hard = make_trainers(setup, args, spec, teacher, vaes, root)
        device = kd.device
        cuda = device.type == "cuda"
        loader = iter(kd.loader)
        batches = [next(loader) for _ in range(min(4, len(kd.loader)))]  # KD and student steps share these
        for t in (kd, *hard.values()):
            t.task.train()
        count = {"i": 0}

        def run_kind(kind: str) -> float:
            count["i"] += 1
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            if kind == "aug-batch":
                trainer = next(iter(hard.values()))
                start = time.perf_counter()
                trainer.prepare_batch(*trainer.hard.draw_batch(trainer.components.data.train)[:2])
            elif kind.startswith("augmentor:"):
                trainer = hard[kind.split(":")[1]]
                trainer.hard.switch.force(AUGMENTOR, trainer.iteration)
                start = time.perf_counter()
                trainer.augmentor_step()
            else:
                images, labels = batches[count["i"] % len(batches)]
                start = time.perf_counter()
                if kind == "kd":
                    kd.student_step(*kd.prepare_batch(images, labels))
                else:
                    trainer = hard[kind.split(":")[1]]
                    trainer.hard.switch.force(STUDENT, trainer.iteration)
                    trainer.student_step(*trainer.prepare_batch(images, labels), entry=0)
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            if cuda:
                peaks[kind] = max(peaks.get(kind, 0), torch.cuda.max_memory_allocated(device))
            return seconds

        kinds = ["kd", *[f"{k}:{a}" for a in hard for k in ("student", "augmentor")], "aug-batch"]
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        peaks: dict[str, int] = {}
        for round_ in range(args.warmup + args.rounds):
            shift = round_ % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                seconds = run_kind(kind)
                if round_ >= args.warmup:
                    samples[kind].append(seconds)
        assert all(len(t.hard.pool) == 1 for t in hard.values()), "a pool snapshot was taken inside the benchmark"
        params = {a: {"vae": sum(p.numel() for p in t.components.augmentor.vae.parameters()),
                      "trainable": sum(p.numel() for p in t.components.augmentor.parameters() if p.requires_grad)}
                  for a, t in hard.items()}
        geometry = list(kd.components.data.img_size), kd.components.data.in_chans
        amp, batch, aug_batch = kd.amp, kd.cfg.batch_size, next(iter(hard.values())).cfg.aug_batch_size
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {k: round(med[k] / med["kd"], 3) for k in kinds if k != "kd"}
    return {"setup": setup, "data": spec.split(":")[0], "image": geometry[0], "channels": geometry[1],
            "teacher": SETUPS[setup][1], "student": SETUPS[setup][2], "amp": amp, "batch_size": batch,
            "aug_batch_size": aug_batch, "vae_params": params,
            "presets": {a: p or args.preset for a, p in SETUPS[setup][3].items()},
            "steps_ms": {k: {"median": round(1e3 * med[k], 2), "min": round(1e3 * min(v), 2),
                             "max": round(1e3 * max(v), 2)} for k, v in samples.items()},
            "ratios_vs_kd": ratios,
            "peak_memory_gib": {k: round(v / 2**30, 2) for k, v in peaks.items()} or None}


def render(results: list[dict], args) -> str:
    threads, dev = torch.get_num_threads(), args.device
    name = f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else ""
    rows = [f"HARD-VAE step time, {dev}{name}, {threads} threads, torch {torch.__version__}, "
            f"{args.rounds} rounds after {args.warmup} warm-up"]
    for r in results:
        vae = ", ".join(f"{a} {r['presets'][a]} ({p['vae'] / 1e6:.2f} M params, {p['trainable'] / 1e6:.2f} M trained)"
                        for a, p in r["vae_params"].items())
        rows += ["", f"[{r['setup']}] {r['data']} {r['channels']}×{r['image'][0]}×{r['image'][1]}, {r['teacher']} -> "
                 f"{r['student']}, batch {r['batch_size']}, aug batch {r['aug_batch_size']}, amp {r['amp']}; {vae}",
                 f"{'step':<22}{'median ms':>11}{'min ms':>10}{'max ms':>10}{'× KD':>8}"
                 + (f"{'peak GiB':>10}" if r["peak_memory_gib"] else "")]
        for kind, s in r["steps_ms"].items():
            ratio = 1.0 if kind == "kd" else r["ratios_vs_kd"][kind]
            peak = f"{r['peak_memory_gib'][kind]:>10.2f}" if r["peak_memory_gib"] else ""
            rows.append(f"{kind:<22}{s['median']:>11.2f}{s['min']:>10.2f}{s['max']:>10.2f}{ratio:>8.2f}{peak}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off")
    parser.add_argument("--preset", default="small", help="VAE preset of the small setup (small or tiny)")
    parser.add_argument("--setups", default=None,
                        help="comma-separated subset of small,cifar10,in224 (default: small; all three on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="KD/student batch (default: per setup)")
    parser.add_argument("--aug-batch-size", type=int, default=None, help="augmentor batch (default: per setup)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (one step of each kind per round)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setups = args.setups.split(",") if args.setups else (
        list(SETUPS) if args.device.startswith("cuda") else ["small"])
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        sys.exit(f"vae_step_time: error: unknown setup {unknown[0]!r} (setups: {', '.join(SETUPS)})")
    try:
        results = [measure(s, args) for s in setups]
    except HardctlError as exc:
        sys.exit(f"vae_step_time: error: {exc.oneline()}")
    print(json.dumps(results, indent=2) if args.json else render(results, args))


if __name__ == "__main__":
    main()

"""Evaluation throughput against the input pipeline alone, measured in one run.

Writes a small ImageNet-style folder of JPEGs (``<wnid>/<name>.JPEG``), then streams it through the
same DataLoader ``hardctl eval`` uses (workers, pinned memory and channels_last on CUDA, uint8 until
the device) twice per round: once with no model (the *bare* loop: decode, resize, crop, copy) and
once scoring a timm model (the *eval* loop, :func:`hardctl.eval.engine.score`). The ratio eval/bare
says where the time goes: near 1, the input pipeline is the bottleneck; well below 1, the model.

    python benchmarks/eval_throughput.py --images 512 --size 96 --model resnet18 --input-size 64 \\
        --batch-size 64 --workers 2
    python benchmarks/eval_throughput.py --device cuda --images 4096 --size 320 --model resnet50 \\
        --batch-size 256 --workers 12

The model has random weights (only its speed matters); its timm config gives crop_pct and
interpolation, as for a real evaluation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hardctl.eval.engine import Feed, batches, score
from hardctl.eval.imagenet import scan_folder, wnid_index
from hardctl.eval.metrics import TopK
from hardctl.eval.preprocess import FileImages, preprocessing_for


def write_images(root: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """``n`` JPEGs of smooth colour fields with noise (photo-like to decode), spread over ``classes`` wnids."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = sorted(wnid_index())[:classes]
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        field = np.stack([a * xx + (255 - a) * yy, b * yy, c * (1 - xx)], axis=-1)
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        folder = root / wnids[i % classes]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG", quality=90)


def bare_pass(data, batch_size: int, workers: int, device: torch.device) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for images, _ in batches(data, batch_size, workers=workers, device=device, channels_last=device.type == "cuda"):
        n += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=96, help="side of the generated JPEGs")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=None, help="model input side (default: its timm config)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off")
    parser.add_argument("--rounds", type=int, default=2, help="bare + eval passes each, alternating; best kept")
    parser.add_argument("--root", type=Path, default=None,
                        help="keep the generated JPEGs in this folder and reuse them on the next run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import timm

    from hardctl.models import InputNormalize, create_model

    device = torch.device(args.device)
    amp = ("bf16" if device.type == "cuda" else "off") if args.amp == "auto" else args.amp
    size = args.input_size or timm.models.get_pretrained_cfg(timm.models.get_arch_name(args.model)).input_size[-1]
    model, info = create_model(args.model, num_classes=1000, in_chans=3, img_size=size)
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    feed = Feed(model, InputNormalize(info.mean, info.std).to(device))
    pre = preprocessing_for(model, info, "crop")

    with tempfile.TemporaryDirectory(prefix="hardctl-bench-") as tmp:
        root = args.root or Path(tmp)
        t0 = time.perf_counter()
        if not (root.is_dir() and any(root.iterdir())):
            write_images(root, args.images, args.size)
        paths, targets = scan_folder(root, wnid_index().get, "bench")
        data = FileImages(paths, targets).with_preprocessing(pre)
        made = time.perf_counter() - t0
        warm = torch.utils.data.Subset(data, range(min(len(data), 2 * args.batch_size)))
        bare_pass(warm, args.batch_size, args.workers, device)  # page cache, worker start-up code paths
        score([feed], warm, TopK, device=device, batch_size=args.batch_size, amp=amp, workers=args.workers)
        bare, evals = [], []
        for _ in range(args.rounds):
            n, seconds = bare_pass(data, args.batch_size, args.workers, device)
            bare.append(n / seconds)
            _, stats = score([feed], data, TopK, device=device, batch_size=args.batch_size, amp=amp,
                             workers=args.workers)
            evals.append(stats.images / stats.seconds)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "model": args.model,
        "input": f"{size}x{size}", "images": args.images, "jpeg_side": args.size, "batch_size": args.batch_size,
        "workers": args.workers, "amp": amp, "preprocessing": pre.describe(), "rounds": args.rounds,
        "bare_images_per_s": max(bare), "eval_images_per_s": max(evals),
        "bare_all": [round(v, 1) for v in bare], "eval_all": [round(v, 1) for v in evals],
        "setup_s": round(made, 1),
    }
    result["ratio_eval_to_bare"] = result["eval_images_per_s"] / result["bare_images_per_s"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    bound = "the input pipeline" if result["ratio_eval_to_bare"] > 0.8 else "the model"
    print(f"device {result['device']}, {args.model} at {size}x{size}, {args.images} JPEGs of {args.size}px, "
          f"batch {args.batch_size}, {args.workers} workers, amp {amp}, torch {torch.__version__}")
    print(f"bare loop (decode + resize + crop + copy): {result['bare_images_per_s']:8.1f} images/s  "
          f"(rounds: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"evaluation (same loader + model):         {result['eval_images_per_s']:8.1f} images/s  "
          f"(rounds: {', '.join(f'{v:.1f}' for v in evals)})")
    print(f"ratio eval / bare: {result['ratio_eval_to_bare']:.2f}  -> the bottleneck is {bound} "
          f"(median ratio {statistics.median(e / b for e, b in zip(evals, bare)):.2f})")


if __name__ == "__main__":
    sys.exit(main())

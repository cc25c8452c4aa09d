"""What each pool entry of a HARD run does to the validation images, in numbers beside the grid's pictures.

For every entry of ``RUN/augmentors/`` (the first is the identity-initialised augmentor: for a VAE its plain
reconstruction), over the run's validation split (its test split if it holds none out):

* ``teacher acc``: the teacher's accuracy on the augmented images (labels);
* ``teacher kept``: how often the teacher's prediction is the one it makes on the clean image — what the
  teacher–teacher term asks the augmentor to keep;
* ``student agrees``: how often the run's final student predicts what the teacher predicts on the augmented
  image — one minus the switching statistic, for the final student;
* ``MSE``: the mean squared pixel change from the clean images.

One ε draw, replayed for every entry (seed ``--seed``), as in ``hardctl visualize``. Usage::

    python benchmarks/pool_agreement.py RUN [RUN ...] [--json] [--limit N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hardctl.augment import build_augmentor
from hardctl.augment.pool import pool_files, read_entry
from hardctl.config import RunConfig
from hardctl.data import load_data
from hardctl.models import InputNormalize, load_model
from hardctl.visualize.grid import augmentation_columns


def predictions(model, normalize, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(normalize(images[i:i + batch])).argmax(1) for i in range(0, len(images), batch)])


def measure(run_dir: Path, *, limit: int | None = None, seed: int = 0) -> dict:
    cfg = RunConfig.load(run_dir)
    data = load_data(cfg.data, shift_px=cfg.shift_px, shift_seed=cfg.shift_seed, seed=cfg.seed)
    split = data.val if len(data.val) else data.test
    count = len(split) if limit is None else min(limit, len(split))
    images = torch.stack([torch.as_tensor(split[i][0]).float() for i in range(count)])
    labels = torch.tensor([int(split[i][1]) for i in range(count)])
    shape = dict(num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size)
    teacher, t_info = load_model(cfg.teacher, **shape)
    student, s_info = load_model(str(run_dir), **shape)
    teacher.eval(), student.eval()
    t_norm, s_norm = InputNormalize(t_info.mean, t_info.std), InputNormalize(s_info.mean, s_info.std)
    augmentor = build_augmentor(cfg.augmentor, cfg.aug_options, in_chans=data.in_chans, img_size=data.img_size)
    augmentor.eval()
    clean = predictions(teacher, t_norm, images)
    rows = []
    for index, path in enumerate(pool_files(run_dir)):
        snapshot, info = read_entry(path, "cpu")
        x = augmentation_columns(augmentor, images, [(snapshot, info)], seed=seed)[0][1]  # the grid's draw
        t, s = predictions(teacher, t_norm, x), predictions(student, s_norm, x)
        rows.append({"entry": index, "reason": info.get("reason", ""), "epoch": info.get("epoch"),
                     "teacher_acc": 100 * float((t == labels).float().mean()),
                     "teacher_kept": 100 * float((t == clean).float().mean()),
                     "student_agrees": 100 * float((s == t).float().mean()),
                     "mse": float(((x - images) ** 2).mean())})
    return {"run": str(run_dir), "augmentor": cfg.augmentor, "images": count,
            "teacher_clean_acc": 100 * float((clean == labels).float().mean()), "entries": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="the first N validation images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(run, limit=args.limit, seed=args.seed) for run in args.runs]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(f"\n{r['run']} ({r['augmentor']}, {r['images']} images; teacher {r['teacher_clean_acc']:.1f} % on clean)")
        print("| entry | made at | teacher acc | teacher kept | student agrees | MSE |\n|---:|---|---:|---:|---:|---:|")
        for e in r["entries"]:
            made = "start" if e["entry"] == 0 else f"epoch {e['epoch']}, {e['reason']}"
            print(f"| {e['entry']} | {made} | {e['teacher_acc']:.1f} | {e['teacher_kept']:.1f} | "
                  f"{e['student_agrees']:.1f} | {e['mse']:.4f} |")


if __name__ == "__main__":
    main()

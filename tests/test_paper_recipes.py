"""The paper's recipes (tables 1-4): their settings, their error messages, and end-to-end smoke runs.

The smoke runs use tiny generated data in the real on-disk layouts (MNIST IDX files, the CIFAR-10 python
pickles, an ILSVRC-2012 train/val tree of JPEGs, MNIST-C .npy files) and a DeepAugment+AugMix-style teacher
file (a randomly initialised timm resnet50 saved as ``{"state_dict": {"module." + k: v}}``), and override
only what makes them small: one seed, one epoch, tiny batches, short augmentor phases, no warm-up and no
worker processes. Together they run every arm kind of the paper's tables at least once: teacher/student
training, the baseline augmentations, KD, KD with augmentations and Mixup/CutMix, HARD-Affine, HARD-Mix,
the external teacher's eval-only row and the evaluation step; HARD-VAE and HARD-VAE-Affine run on tiny
random-weight VAE files (a 32 px VDVAE for CIFAR-10, an RQ-VAE without attention at 224 px for ImageNet).
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hardctl import tomlio
from hardctl.config import RunConfig
from hardctl.recipes import load_recipe
from hardctl.recipes.overrides import apply_overrides, parse_overrides
from hardctl.distill.build import resolve_config

CIFAR = ["cifar10-resnet18-vit", "cifar10-resnet101-vit", "cifar10-resnet101-resnet18"]
IMAGENET = ["imagenet-resnet50-resnet18", "imagenet-resnet50-vit-s"]
MNIST = ["mnist-cnn-mlp", "mnist-resnet18-vit"]
PAPER = MNIST + CIFAR + IMAGENET
WNIDS = ["n01440764", "n01443537", "n01484850"]  # the first three ImageNet classes
TEACHER_FILE = "deepaugment_and_augmix.pth.tar"
SMALL = ["--seeds", "0", "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "batch_size=4",
         "--set", "aug_batch_size=4", "--set", "max_aug_steps=2", "--set", "workers=0",
         "--set", "eval.workers=0", "--set", "eval.batch_size=8"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared machine a second thread costs far more in
    synchronisation than it gains (a CNN step measured 10× slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- data
def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw))


def digit_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28×28 "digits": a bright square whose position depends on the label, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = 6 + (y // 5) * 8, 4 + (y % 5) * 4
        images[i, r:r + 8, c:c + 4] = 255
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """``ROOT/mnist`` (gzipped IDX), ``ROOT/mnist_c/{identity,translate}``, ``ROOT/cifar10/cifar-10-batches-py``."""
    root = tmp_path_factory.mktemp("data")
    train_x, train_y = digit_images(20, 0)
    test_x, test_y = digit_images(10, 1)
    for name, array in {"train-images-idx3-ubyte.gz": train_x, "train-labels-idx1-ubyte.gz": train_y,
                        "t10k-images-idx3-ubyte.gz": test_x, "t10k-labels-idx1-ubyte.gz": test_y}.items():
        write_idx(root / "mnist" / name, array)
    for corruption, shift in (("identity", 0), ("translate", 3)):
        folder = root / "mnist_c" / corruption
        folder.mkdir(parents=True)
        np.save(folder / "test_images.npy", np.roll(test_x, shift, axis=(1, 2))[..., None])
        np.save(folder / "test_labels.npy", test_y.astype(np.int64))
    cifar = root / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    batches = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 4}
    for name, n in batches.items():
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, size=n)], b"filenames": [b"x.png"] * n}
        with open(cifar / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(cifar / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names, b"num_vis": 3072, b"num_cases_per_batch": 10000}, fh, protocol=2)
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> tuple[Path, Path]:
    """(an ILSVRC-2012 tree of 3 wnids with tiny JPEGs, a DeepAugment+AugMix-style resnet50 teacher file)."""
    import timm

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        for split, count in (("train", 2), ("val", 1)):
            for i in range(count):
                path = root / split / wnid / (f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{c:08d}.JPEG")
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, quality=90)
    torch.manual_seed(0)
    model = timm.create_model("resnet50", num_classes=len(WNIDS))
    teacher = root.parent / f"{root.name}-weights" / TEACHER_FILE
    teacher.parent.mkdir()
    torch.save({"epoch": 180, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, teacher)
    return root, teacher


def run_recipe_cli(cli, name: str, out: Path, *args) -> tuple[dict, str]:
    result = cli("recipes", "run", name, "--out", out, *args)
    assert result.code == 0, result.err[-3000:]
    return json.loads((out / "results.json").read_text()), result.err


def ran(results: dict) -> dict[str, dict]:
    """arm id -> its record, each with every planned run finished."""
    assert results["complete"], (results["runs_finished"], results["runs_planned"])
    return {arm["id"]: arm for arm in results["arms"]}


# ---------------------------------------------------------------------------------------------- settings
def test_the_paper_recipes_are_registered_and_show(cli):
    result = cli("recipes", "list", "--json")
    assert result.code == 0, result.err
    rows = {row["name"]: row for row in json.loads(result.out)}
    for name in PAPER:
        assert rows[name]["error"] is None and rows[name]["kind"] == "transfer", name
        assert rows[name]["description"] and "\n" not in rows[name]["description"]
        shown = cli("recipes", "show", name)
        assert shown.code == 0 and tomlio.loads(shown.out)["recipe"]["name"] == name
    listed = cli("recipes")
    assert all(name in listed.out for name in PAPER)
    assert "fashion-mnist" in rows["mnist-cnn-mlp"]["description"]


def configs(name: str, *sets: str) -> dict[str, RunConfig]:
    recipe = apply_overrides(load_recipe(name), parse_overrides(sets))
    dirs = {a.id: Path(f"/runs/{a.id}") for a in recipe.arms}
    return {arm.id: resolve_config(recipe.config(arm, 0, dirs)) for arm in recipe.arms}


def test_mnist_recipes_hold_the_orbit_settings():
    for name, batch, teacher, student in (("mnist-cnn-mlp", 64, "mnist_cnn", "mnist_mlp"),
                                          ("mnist-resnet18-vit", 256, "resnet18_cifar", "mnist_vit")):
        recipe = load_recipe(name)
        assert recipe.seeds == [0, 1, 2, 3] and recipe.eval.suites == ["mnist-c"]
        assert recipe.results.columns == ["centered", "shifted", "mnist-c/translate"]
        cfg = configs(name)
        assert [a.id for a in recipe.arms] == ["teacher", "student", "random-affine", "shifts", "kd", "hard-affine",
                                               "hard-mix"]
        kd = cfg["kd"]
        assert (kd.data, kd.optimizer, kd.lr, kd.weight_decay, kd.batch_size, kd.temperature) == \
            ("mnist:data/mnist", "adam", 3e-4, 2e-9, batch, 5.0)
        assert (kd.schedule, kd.warmup_epochs, kd.plateau_factor, kd.plateau_patience, kd.plateau_decays) == \
            ("plateau", 20, 0.8, 20, 5)
        assert cfg["teacher"].model == teacher and cfg["hard-affine"].model == student
        assert (cfg["random-affine"].augment, cfg["shifts"].augment) == ("random-affine", "shift")
        hard = cfg["hard-affine"]
        assert (hard.augmentor, hard.l_min, hard.l_max, hard.aug_lr, hard.aug_batch_size, hard.switch_patience) == \
            ("affine", 0.05, 0.4, 0.05, 128, 5)
        assert cfg["hard-mix"].augmentor == "mix" and cfg["hard-mix"].teacher == "/runs/teacher"


def test_cifar10_recipes_hold_appendix_a1():
    for name in CIFAR:
        cfg = configs(name)
        assert list(cfg) == ["teacher", "student", "standard", "random-affine", "kd", "kd-standard", "hard-affine",
                             "hard-mix", "hard-vae", "hard-vae-affine"]
        for arm, c in cfg.items():
            assert (c.data, c.epochs, c.batch_size, c.optimizer, c.lr, c.weight_decay, c.warmup_epochs) == \
                ("cifar10:data/cifar10", 300, 256, "adam", 3e-4, 2e-9, 20), arm
            assert (c.schedule, c.plateau_factor, c.plateau_patience, c.plateau_decays) == ("plateau", 0.8, 20, 5)
        assert cfg["kd"].temperature == 5.0 and cfg["kd-standard"].augment == "standard"
        hard = cfg["hard-affine"]
        patience = 10 if name == "cifar10-resnet101-resnet18" else 5
        assert (hard.aug_batch_size, hard.aug_lr, hard.l_min, hard.l_max, hard.switch_patience) == \
            (128, 0.05, 0.05, 0.4, patience)
        teacher = cfg["teacher"]
        if "resnet101" in name:
            assert (teacher.model, teacher.pretrained) == ("resnet101", True)
            assert not any(c.pretrained for arm, c in cfg.items() if arm != "teacher")
        else:
            assert (teacher.model, teacher.pretrained) == ("resnet18_cifar", False)
        student = "resnet18_cifar" if name.endswith("resnet18") else "vit_cifar"
        assert {c.model for arm, c in cfg.items() if arm != "teacher"} == {student}
    # tests and CPU runs turn the download off; --set KEY=VALUE is every arm's value
    assert not configs(CIFAR[1], "pretrained=false")["teacher"].pretrained


def test_imagenet_recipes_hold_appendix_a2():
    for name, student, epochs, lr, wd, hard_wd in (("imagenet-resnet50-resnet18", "resnet18", 200, 1e-4, 0.1, 0.05),
                                                   ("imagenet-resnet50-vit-s", "vit_s14", 150, 5e-5, 1e-3, 1e-3)):
        recipe = load_recipe(name)
        assert recipe.eval.suites == ["imagenet-id", "imagenet-ood"] and recipe.eval.data_root == "data"
        assert recipe.results.columns[:3] == ["imagenet-val", "imagenet-real", "imagenet-v2"]
        assert "imagenet-c mCE" in recipe.results.columns and recipe.results.reference == "kd"
        assert "https://github.com/hendrycks/imagenet-r" in recipe.teacher_download
        assert recipe.is_eval(recipe.arm("teacher")) and recipe.seeds == [0]
        cfg = configs(name)
        assert cfg["teacher"].model == f"resnet50:weights/{TEACHER_FILE}"  # the eval arm scores the teacher
        for arm in ("student", "kd", "hard-affine", "hard-mix"):
            c = cfg[arm]
            assert (c.data, c.batch_size, c.optimizer, c.schedule, c.min_lr, c.epochs, c.amp) == \
                ("imagenet:data/imagenet", 512, "lion", "cosine", 0.0, epochs, "auto"), arm
            assert c.model == student
        s = cfg["student"]
        assert (s.lr, s.weight_decay, s.mixup, s.cutmix, s.label_smoothing) == (lr, wd, 0.2, 1.0, 0.1)
        if student == "vit_s14":
            assert (s.augment, s.random_erasing) == ("trivialaugment", 0.1)
        kd = cfg["kd"]
        assert (kd.teacher, kd.temperature, kd.mixup, kd.cutmix, kd.augment, kd.lr, kd.weight_decay) == \
            (f"resnet50:weights/{TEACHER_FILE}", 1.0, 1.0, 1.0, "augmix", 1e-4, 1e-3)
        for arm in ("hard-affine", "hard-mix"):
            assert (cfg[arm].lr, cfg[arm].weight_decay, cfg[arm].temperature) == (1e-4, hard_wd, 1.0)
        assert cfg["hard-mix"].aug_options["patch_size"] == 16


def test_eval_and_results_overrides(tmp_path):
    recipe = load_recipe("imagenet-resnet50-resnet18")
    resolved = apply_overrides(recipe, parse_overrides([
        f"eval.data_root={tmp_path}", f"eval.sets.imagenet-v2={tmp_path / 'a'}", "eval.suites=imagenet-id",
        "eval.batch_size=64", "results.columns=centered,imagenet-c mCE", "results.labels.centered=Test",
        f"teacher=resnet50:{tmp_path / 'other.pth'}",
    ]))
    assert resolved.eval.data_root == str(tmp_path) and resolved.eval.suites == ["imagenet-id"]
    assert resolved.eval.sets == {"imagenet-v2": str(tmp_path / "a")} and resolved.eval.batch_size == 64
    assert resolved.results.columns == ["centered", "imagenet-c mCE"] and resolved.results.labels == {"centered": "Test"}
    assert all(resolved.config(a, 0).teacher == f"resnet50:{tmp_path / 'other.pth'}"
               for a in resolved.arms if a.id in ("kd", "hard-mix"))
    assert resolved.config(resolved.arm("teacher"), 0).model == f"resnet50:{tmp_path / 'other.pth'}"
    saved = tomlio.loads(resolved.to_toml())
    assert saved["eval"]["data_root"] == str(tmp_path) and saved["results"]["columns"][1] == "imagenet-c mCE"
    off = apply_overrides(recipe, parse_overrides(["eval.suites=none", "eval.data_root=none"]))
    assert off.eval.suites == [] and off.eval.data_root is None


@pytest.mark.parametrize("item, message", [
    ("eval.root=/x", "[eval] has no setting 'root'"),
    ("eval.suites=imagenet-odd", "unknown evaluation suite 'imagenet-odd'"),
    ("eval.sets.imagenet-b=/x", "the suites read no set 'imagenet-b'"),
    ("eval.batch_size=many", "eval.batch_size must be an integer"),
    ("results.reference=kdd", "[results] reference 'kdd' is no arm; did you mean 'kd'?"),
])
def test_bad_eval_overrides_are_one_line_errors(cli, tmp_path, item, message):
    result = cli("recipes", "run", "imagenet-resnet50-resnet18", "--set", item, "--out", tmp_path / "out")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.err
    assert not (tmp_path / "out").exists()


def test_missing_teacher_file_names_file_source_and_flag(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("recipes", "run", "imagenet-resnet50-vit-s", "--out", tmp_path / "out")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    line = lines[0]
    assert f"teacher weights file weights/{TEACHER_FILE} does not exist" in line
    assert "https://github.com/hendrycks/imagenet-r" in line and TEACHER_FILE in line
    assert f"--set teacher=resnet50:/path/to/{TEACHER_FILE}" in line
    assert not (tmp_path / "out").exists()


def test_missing_data_names_the_download_and_the_flag(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("recipes", "run", "mnist-cnn-mlp", "--out", tmp_path / "out")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "mnist: no such folder data/mnist" in lines[0], result.err
    assert "MNIST IDX files" in lines[0] and "--set data=mnist:DIR" in lines[0]
    for name in CIFAR[:1]:
        result = cli("recipes", "run", name, "--out", tmp_path / "out")
        assert result.code == 2 and "cifar-10-python.tar.gz" in result.err and "--set data=cifar10:DIR" in result.err
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / TEACHER_FILE).write_bytes(b"not read before the data is found")
    result = cli("recipes", "run", "imagenet-resnet50-resnet18", "--out", tmp_path / "out")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "imagenet: no such folder data/imagenet" in lines[0], result.err
    assert "image-net.org" in lines[0] and "sorted into wnid folders" in lines[0]
    assert "--set data=imagenet:DIR" in lines[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- smoke runs
@pytest.mark.slow
def test_cifar10_resnet18_vit_standard_augmentation_and_the_eval_step(cli, data_root, tmp_path):
    """The standard-augmentation arms of table 2 (and their teacher) on generated CIFAR-10 batches, each
    model then scored on the cifar10 suite; a second run reuses every run and every score."""
    out = tmp_path / "out"
    args = [*SMALL, "--arms", "standard,kd-standard", "--set", f"data=cifar10:{data_root / 'cifar10'}",
            "--set", "eval.suites=cifar10", "--set", f"eval.data_root={data_root / 'cifar10'}"]
    results, err = run_recipe_cli(cli, "cifar10-resnet18-vit", out, *args)
    arms = ran(results)
    assert list(arms) == ["teacher", "standard", "kd-standard"]
    assert [c["key"] for c in results["columns"][:2]] == ["centered", "shifted"]
    assert {"cifar10", "cifar10-shifted"} <= {c["key"] for c in results["columns"]}
    for arm_id, arm in arms.items():
        run = arm["runs"][0]
        assert 0 <= run["test_acc"] <= 100 and set(run["eval"]) == {"cifar10", "cifar10-shifted"}, arm_id
        # the suite's test batch is the data's test split: the same accuracy as the run's own summary
        assert run["eval"]["cifar10"] == pytest.approx(run["test_acc"]), arm_id
        assert (out / arm_id / "seed-0" / "eval.json").is_file()
    assert RunConfig.load(out / "kd-standard" / "seed-0").augment == "standard"
    # no KD arm ran: no Δ columns
    assert "| Method | CIFAR-10 test | Shifted (±3 px) | CIFAR-10 | CIFAR-10 shifted | n |" in (out / "results.md").read_text()
    again, err = run_recipe_cli(cli, "cifar10-resnet18-vit", out, *args)
    assert err.count("finished before, reusing") == 3 and err.count("scored before on cifar10") == 3
    assert again["arms"] == [{**arm, "runs": [{**run, "status": "reused"} for run in arm["runs"]]}
                             for arm in results["arms"]]


@pytest.mark.slow
@pytest.mark.parametrize("name, arms", [("cifar10-resnet101-resnet18", "hard-affine"),
                                        ("cifar10-resnet101-vit", "kd")])
def test_cifar10_resnet101_recipes(cli, data_root, tmp_path, name, arms):
    """The ResNet101* teacher (pretrained=false: nothing is downloaded here) and one distill arm each."""
    # batch 3: 9 training images make 3 full batches (a last batch of one image fails in BatchNorm, whose
    # input is 1×1 after ResNet101's last stage at 32×32: the trainer keeps the last partial batch)
    results, _ = run_recipe_cli(cli, name, tmp_path / "out", *SMALL, "--arms", arms, "--set", "pretrained=false",
                                "--set", "batch_size=3",
                                "--set", f"data=cifar10:{data_root / 'cifar10'}")
    arms_run = ran(results)
    assert list(arms_run) == ["teacher", arms]
    assert RunConfig.load(tmp_path / "out" / "teacher" / "seed-0").model == "resnet101"
    assert summary_of(tmp_path / "out" / arms / "seed-0")["teacher"]["arch"].startswith("resnet101")


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_imagenet_resnet50_resnet18_every_arm(cli, imagenet, tmp_path):
    """Teacher row (scored, not trained), student with Mixup/CutMix, KD with AugMix, HARD-Affine, HARD-Mix (the
    HARD-VAE arms need a VAE file: test_imagenet_hard_vae_arms runs them)."""
    root, teacher = imagenet
    out = tmp_path / "out"
    results, err = run_recipe_cli(cli, "imagenet-resnet50-resnet18", out, *SMALL, "--arms",
                                  "teacher,student,kd,hard-affine,hard-mix", "--set", "batch_size=2",
                                  "--set", "aug_batch_size=2", "--set", f"data=imagenet:{root}",
                                  "--set", f"teacher=resnet50:{teacher}", "--set", f"eval.data_root={tmp_path / 'none'}",
                                  "--set", "results.columns=centered,imagenet-val,imagenet-c mCE")
    arms = ran(results)
    assert list(arms) == ["teacher", "student", "kd", "hard-affine", "hard-mix"]
    # the external teacher: scored on the data's test split (the centered column), nothing trained
    assert arms["teacher"]["command"] == "eval" and arms["teacher"]["runs"][0]["status"] == "evaluated"
    assert 0 <= arms["teacher"]["columns"]["centered"]["mean"] <= 100
    assert not (out / "teacher" / "seed-0").exists() and (out / "teacher" / "eval.json").is_file()
    # the ImageNet test sets are not there: skipped with the eval engine's message, their columns empty
    assert "eval: imagenet-a skipped: not found: looked for" in err
    assert all(arm["columns"]["imagenet-val"]["mean"] is None for arm in arms.values())
    assert [c["label"] for c in results["columns"]] == ["Centered", "Val", "Im-C mCE ↓"]
    text = (out / "results.md").read_text()
    assert "| Method | Centered | Val | Im-C mCE ↓ | Δ centered vs KD | n |" in text and "| Teacher | " in text
    assert "Evaluation sets not found" in text
    kd = RunConfig.load(out / "kd" / "seed-0")
    assert (kd.teacher, kd.augment, kd.mixup, kd.cutmix, kd.temperature) == \
        (f"resnet50:{teacher}", "augmix", 1.0, 1.0, 1.0)
    for arm in ("student", "kd", "hard-affine", "hard-mix"):
        summary = summary_of(out / arm / "seed-0")
        assert summary["data"] == f"imagenet:{root}" and 0 <= summary["student"]["test_acc"] <= 100
    assert summary_of(out / "hard-affine" / "seed-0")["teacher"]["arch"] == "resnet50"
    assert arms["kd"]["teacher_acc"]["centered"]["values"] == [arms["teacher"]["columns"]["centered"]["mean"]]


@pytest.mark.slow
def test_imagenet_resnet50_vit_s(cli, imagenet, tmp_path):
    """The ViT-S/14 student with TrivialAugment + random erasing, and HARD-Mix into the ViT."""
    root, teacher = imagenet
    out = tmp_path / "out"
    results, err = run_recipe_cli(cli, "imagenet-resnet50-vit-s", out, *SMALL, "--set", "batch_size=2",
                                  "--set", "aug_batch_size=2", "--arms", "teacher,student,hard-mix",
                                  "--set", f"data=imagenet:{root}", "--set", f"teacher=resnet50:{teacher}",
                                  "--set", f"eval.data_root={tmp_path / 'none'}")
    arms = ran(results)
    assert list(arms) == ["teacher", "student", "hard-mix"]
    student = RunConfig.load(out / "student" / "seed-0")
    assert (student.model, student.augment, student.random_erasing, student.label_smoothing) == \
        ("vit_s14", "trivialaugment", 0.1, 0.1)
    # every column is an ImageNet test set, none is there: the table has the rows and empty cells
    assert all(v["mean"] is None for arm in arms.values() for v in arm["columns"].values())
    assert "| Teacher | - | - | - | - | - | - | - | - | 1 |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_mnist_recipes_on_idx_files_with_mnist_c(cli, data_root, tmp_path):
    """Every arm of table 1 (CNN → MLP) and ResNet18 → ViT's KD arm, with the MNIST-C translate column."""
    common = [*SMALL, "--set", f"data=mnist:{data_root / 'mnist'}", "--set", f"eval.data_root={data_root}"]
    results, err = run_recipe_cli(cli, "mnist-cnn-mlp", tmp_path / "mlp", *common)
    arms = ran(results)
    assert list(arms) == ["teacher", "student", "random-affine", "shifts", "kd", "hard-affine", "hard-mix"]
    assert [c["label"] for c in results["columns"]] == ["Centered", "Shifted (±3 px)",
                                                        "Shifted (MNIST-C translate)"]
    for arm in arms.values():
        assert 0 <= arm["columns"]["mnist-c/translate"]["mean"] <= 100
    assert "vs_kd" in arms["hard-affine"] and "mnist-c/translate" in arms["hard-affine"]["vs_kd"]
    assert "eval: mnist-c/shot_noise skipped" in err
    results, _ = run_recipe_cli(cli, "mnist-resnet18-vit", tmp_path / "vit", *common, "--arms", "kd")
    assert list(ran(results)) == ["teacher", "kd"]
    assert RunConfig.load(tmp_path / "vit" / "kd" / "seed-0").model == "mnist_vit"


# ---------------------------------------------------------------------------------------------- HARD-VAE arms
VDVAE_URL = "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/"
RQVAE_URL = "https://twg.kakaocdn.net/brainrepo/models/RQVAE/"
VAE_FILES = {"vdvae": "weights/vdvae-cifar10.safetensors", "rqvae": "weights/rqvae-in256.safetensors"}
# switch to the augmentor after one student step whose error (against the teacher) is below 99 %, so the
# smoke runs take augmentor steps too (max_aug_steps=2 ends the phase), not only the VAE's reconstruction
QUICK_SWITCH = ["--set", "l_min=0.99", "--set", "l_max=1.0", "--set", "switch_patience=1"]


def test_vae_arms_hold_appendix_a():
    """Table 2's HARD-VAE / HARD-VAE-Affine rows on CIFAR-10 (VDVAE) and tables 3–4's on ImageNet (RQ-VAE)."""
    for name in CIFAR + IMAGENET:
        arch = "vdvae" if name in CIFAR else "rqvae"
        cfg, recipe = configs(name), load_recipe(name)
        for arm, augmentor in (("hard-vae", arch), ("hard-vae-affine", f"{arch}+affine")):
            c = cfg[arm]
            # the composition's warp trains at the affine augmentor's paper rate, the VAE at its 1e-4
            assert recipe.config(recipe.arm(arm), 0).aug_options == \
                {"weights": VAE_FILES[arch], **({"affine.lr": 0.05} if "+" in augmentor else {})}
            # resolved: the file as an absolute path, the other options at the plugin's defaults (section 4.1)
            # (a composition keys them PART.KEY)
            part = "" if arm == "hard-vae" else f"{arch}."
            vae = {k[len(part):]: v for k, v in c.aug_options.items()
                   if k.startswith(part) and "affine." not in k and k != f"{arch}.lr"}
            assert vae == {"weights": str(Path(VAE_FILES[arch]).absolute()),
                           **({"start": 10, "eps_scale": 1.0} if arch == "vdvae" else
                              {"noise_site": "pre_quant", "noise_init": 0.01})}, (name, arm)
            assert (c.command, c.augmentor) == ("distill", augmentor)
            assert (c.aug_batch_size, c.aug_lr, c.lambda_s, c.lambda_t) == (160, 1e-4, 1.0, 1.0), (name, arm)
            if "+" in augmentor:
                assert (c.aug_options[f"{arch}.lr"], c.aug_options["affine.lr"]) == (1e-4, 0.05), (name, arm)
            # appendix A.1's VAE thresholds; ResNet101* -> ResNet18 has the paper's own 5 %/40 %/10
            expected = (0.05, 0.40, 10) if name == "cifar10-resnet101-resnet18" else (0.10, 0.60, 5)
            assert (c.l_min, c.l_max, c.switch_patience) == expected, (name, arm)
            assert c.model == cfg["hard-affine"].model and c.teacher == cfg["hard-affine"].teacher
            assert (c.lr, c.weight_decay, c.temperature) == (cfg["hard-affine"].lr, cfg["hard-affine"].weight_decay,
                                                             cfg["hard-affine"].temperature), (name, arm)
        assert "hardctl vae convert" in recipe.augmentor_download
        assert (VDVAE_URL if arch == "vdvae" else RQVAE_URL) in recipe.augmentor_download
        assert ("CC-BY-NC-SA" in recipe.augmentor_download) == (arch == "rqvae")


@pytest.mark.parametrize("name", ["cifar10-resnet18-vit", "imagenet-resnet50-resnet18"])
def test_missing_vae_file_names_convert_url_and_flag(cli, data_root, imagenet, tmp_path, monkeypatch, name):
    """Checked with the teacher and the data, before anything runs: one line with the download, the convert
    command and a --set for every arm that takes the file."""
    monkeypatch.chdir(tmp_path)
    cifar = name in CIFAR
    sets = ["--set", f"data=cifar10:{data_root / 'cifar10'}"] if cifar else \
        ["--set", f"data=imagenet:{imagenet[0]}", "--set", f"teacher=resnet50:{imagenet[1]}"]
    result = cli("recipes", "run", name, "--out", tmp_path / "out", *sets)
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    line, arch = lines[0], "vdvae" if cifar else "rqvae"
    assert f"arm 'hard-vae': augmentor weights file {tmp_path / VAE_FILES[arch]} does not exist" in line
    assert (VDVAE_URL if cifar else RQVAE_URL) in line and f"--arch {arch} --out {VAE_FILES[arch]}" in line
    stem = Path(VAE_FILES[arch]).name
    for arm, rest in (("hard-vae", ""), ("hard-vae-affine", ', "affine.lr" = 0.05')):  # once each, of three seeds
        assert line.count(f"--set '{arm}.aug_options={{weights = \"/path/to/{stem}\"{rest}}}'") == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_vaes(tmp_path_factory) -> dict[str, Path]:
    """Seeded random VAE files of the ``tiny`` presets, resized to what the recipes feed them: a 3×32×32
    VDVAE with 12 latent layers (so the default start = 10 is in range) and an RQ-VAE without its 8×8
    attention (at 224 px that level is 112×112, and full attention over it would dominate the test)."""
    import dataclasses

    from hardctl.vae.archs import build_vae
    from hardctl.vae.files import save_vae
    from hardctl.vae.rqvae import RQVAE_PRESETS
    from hardctl.vae.vdvae import VDVAE_PRESETS

    root = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    configs_ = {"vdvae": dataclasses.replace(VDVAE_PRESETS["tiny"], image_size=32,
                                             enc_blocks="32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1",
                                             dec_blocks="1x1,4m1,4x1,8m4,8x2,16m8,16x2,32m16,32x2"),
                "rqvae": dataclasses.replace(RQVAE_PRESETS["tiny"], attn_resolutions=())}
    files = {}
    for arch, cfg in configs_.items():
        model = build_vae(arch, cfg)
        files[arch] = save_vae(model, root / f"{arch}.safetensors", arch=arch, config=cfg.to_dict(), source="test")
    return files


def vae_sets(path: Path) -> list[str]:
    return [item for arm in ("hard-vae", "hard-vae-affine")
            for item in ("--set", f"{arm}.aug_options={{weights = \"{path}\"}}")]


def check_vae_runs(out: Path, arch: str, path: Path) -> None:
    for arm, augmentor in (("hard-vae", arch), ("hard-vae-affine", f"{arch}+affine")):
        hard = summary_of(out / arm / "seed-0")["hard"]
        key = "weights" if arm == "hard-vae" else f"{arch}.weights"  # a composition keys options PART.KEY
        assert (hard["augmentor"], hard["options"][key]) == (augmentor, str(path)), arm
        assert hard["student_steps"] > 0 and 1 <= hard["pool_size"] and hard["aug_steps"] <= 2 * hard["switches"]
        assert 0 <= summary_of(out / arm / "seed-0")["student"]["test_acc"] <= 100


@pytest.mark.slow
def test_cifar10_hard_vae_arms(cli, data_root, tiny_vaes, tmp_path):
    """HARD-VAE and HARD-VAE-Affine of table 2 (and their teacher) with a tiny random VDVAE."""
    out = tmp_path / "out"
    results, _ = run_recipe_cli(cli, "cifar10-resnet18-vit", out, *SMALL, *QUICK_SWITCH,
                                "--arms", "hard-vae,hard-vae-affine",
                                "--set", f"data=cifar10:{data_root / 'cifar10'}", *vae_sets(tiny_vaes["vdvae"]))
    assert list(ran(results)) == ["teacher", "hard-vae", "hard-vae-affine"]
    check_vae_runs(out, "vdvae", tiny_vaes["vdvae"])
    assert RunConfig.load(out / "hard-vae" / "seed-0").aug_batch_size == 4  # --set aug_batch_size reaches VAE arms


@pytest.mark.slow
def test_imagenet_hard_vae_arms(cli, imagenet, tiny_vaes, tmp_path):
    """Tables 3–4's HARD-VAE (and the VAE-Affine composition) with a tiny random RQ-VAE at 224 px."""
    root, teacher = imagenet
    out = tmp_path / "out"
    results, _ = run_recipe_cli(cli, "imagenet-resnet50-resnet18", out, *SMALL, *QUICK_SWITCH,
                                "--set", "batch_size=2", "--set", "aug_batch_size=2",
                                "--arms", "hard-vae,hard-vae-affine", "--set", f"data=imagenet:{root}",
                                "--set", f"teacher=resnet50:{teacher}", "--set", f"eval.data_root={tmp_path / 'none'}",
                                "--set", "results.columns=centered", *vae_sets(tiny_vaes["rqvae"]))
    assert list(ran(results)) == ["hard-vae", "hard-vae-affine"]  # the external teacher: no arm needed
    check_vae_runs(out, "rqvae", tiny_vaes["rqvae"])

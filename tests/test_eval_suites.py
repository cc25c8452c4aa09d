"""Evaluation suites on tiny data sets written in each official on-disk layout.

Every image carries its predicted class as colour: channel i holds ``10 + 20 * digit_i`` of the code
(hundreds, tens, units for RGB; one digit for grey), uniform over the image, so JPEG, resizing,
centre crops and shifts all keep it. :class:`CodeReader` reads the centre pixel back and predicts
that code. Writing a code different from an image's label makes it wrong on purpose, so every
expected accuracy below is counted by hand from the lists in each test.
"""

from __future__ import annotations

import csv
import json
import pickle
import struct
from pathlib import Path
from statistics import fmean

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from test_cli import one_line_error
from timm.models import register_model
from torch import nn

from hardctl.config import RunConfig
from hardctl.eval import EvalSet
from hardctl.eval.corruptions import (
    ALEXNET_ERR,
    CATEGORIES,
    CORRUPTIONS,
    EXTRAS,
    MNIST_C_CORRUPTIONS,
)
from hardctl.eval.imagenet import (
    imagenet_id_suite,
    imagenet_ood_suite,
    imagenet_subset,
    wnid_index,
)
from hardctl.eval.runner import EvalModel, evaluate
from hardctl.models import InputNormalize, ModelInfo, save_model

WNIDS = sorted(wnid_index(), key=wnid_index().get)  # ImageNet-1k index -> wnid


# --- the model that reads its prediction from the image ----------------------------------------------------


class CodeReader(nn.Module):
    """Predicts the class whose code is written into the centre pixel (plus ``offset``).

    Logits: 5 for the read class, a tiny descending baseline elsewhere (so top-5 is the read class
    and classes 0..3), and 10 for ``decoy`` when given: a class outside ImageNet-A/R that wins any
    1000-way argmax but disappears when the logits are sliced to the 200-class subset.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, offset: int = 0, decoy: int | None = None):
        super().__init__()
        self.num_classes, self.in_chans, self.offset, self.decoy = num_classes, in_chans, offset, decoy
        self.anchor = nn.Parameter(torch.zeros(1))  # a weights file needs a tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        digits = ((x[:, :, h // 2, w // 2].float() * 255 - 10) / 20).round().clamp(0, 9).long()
        powers = 10 ** torch.arange(digits.shape[1] - 1, -1, -1, device=x.device)
        code = ((digits * powers).sum(1) + self.offset).clamp(0, self.num_classes - 1)
        logits = -1e-3 * torch.arange(self.num_classes, device=x.device, dtype=torch.float32).repeat(len(x), 1)
        logits[torch.arange(len(x)), code] = 5.0
        if self.decoy is not None:
            logits[:, self.decoy] = 10.0
        return logits + 0 * self.anchor


@register_model
def hardctl_test_code_reader(pretrained: bool = False, **kwargs) -> CodeReader:
    return CodeReader(kwargs.get("num_classes", 1000), kwargs.get("in_chans", 3))


@register_model
def hardctl_test_off_by_one_reader(pretrained: bool = False, **kwargs) -> CodeReader:
    return CodeReader(kwargs.get("num_classes", 1000), kwargs.get("in_chans", 3), offset=1)


def reader_file(path: Path, num_classes: int, in_chans: int, size: tuple[int, int], arch="hardctl_test_code_reader"):
    model = timm.create_model(arch, num_classes=num_classes, in_chans=in_chans)
    info = ModelInfo(arch, num_classes, in_chans, size, (0.0,) * in_chans, (1.0,) * in_chans)
    save_model(model, info, path)
    return path


def eval_model(name: str = "reader", **kwargs) -> EvalModel:
    info = ModelInfo("hardctl_test_code_reader", 1000, 3, (8, 8), (0.0,) * 3, (1.0,) * 3)
    return EvalModel(spec=name, model=CodeReader(**kwargs), info=info, normalize=InputNormalize(info.mean, info.std),
                     label=name)


def pixels(code: int, chans: int, size: tuple[int, int]) -> np.ndarray:
    """An H×W×C uint8 image carrying ``code``."""
    digits = [(code // 10 ** (chans - 1 - i)) % 10 for i in range(chans)]
    return np.broadcast_to(np.array([10 + 20 * d for d in digits], dtype=np.uint8), (*size, chans)).copy()


def write_image(path: Path, code: int, size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels(code, 3, size))
    if path.suffix.lower() == ".png":
        image.save(path)
    else:  # uniform colour at quality 100 without chroma subsampling comes back within 1 level
        image.save(path, "JPEG", quality=100, subsampling=0)


def run(sets: list[EvalSet], *models: EvalModel, suite: str = "test") -> list[dict]:
    return evaluate(list(models), [(suite, s) for s in sets], device=torch.device("cpu"), batch_size=4, workers=0)


def by_set(rows: list[dict], model: str = "reader") -> dict[str, dict]:
    return {r["set"] if r["kind"] == "set" else f"{r['set']}|{r['metric']}": r for r in rows if r["model"] == model}


# --- ImageNet val, ReaL, V2 ----------------------------------------------------------------------------------

# (val image number, folder class, code written). ReaL labels of these numbers in real.json:
# 1 -> [] (excluded), 2 -> [970, 795], 3 -> [230, 231], 4 -> [809], 5 -> [516, 850], 22 -> [] (excluded)
VAL = [(1, 65, 65), (2, 970, 795), (3, 230, 230), (4, 809, 100), (5, 516, 850), (22, 500, 7)]


def write_val(root: Path) -> None:
    for number, label, code in VAL:
        write_image(root / WNIDS[label] / f"ILSVRC2012_val_{number:08d}.JPEG", code)


def test_imagenet_id_val_real_and_v2_numeric_folders(tmp_path):
    write_val(tmp_path / "imagenet" / "val")
    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    # class-index folders: sorted as strings they would be 1, 10, 2 (labels 0, 1, 2), naturally 1, 2, 10
    for folder, codes in {"1": [1], "2": [2], "10": [10, 11]}.items():
        for i, code in enumerate(codes):
            write_image(v2 / folder / f"{i}.jpeg", code)
    rows = by_set(run(imagenet_id_suite(data_root=tmp_path), eval_model(), suite="imagenet-id"))

    val = rows["imagenet-val"]  # right: numbers 1 and 3
    assert (val["status"], val["images"], val["acc"]) == ("ok", 6, pytest.approx(100 * 2 / 6))
    assert val["top5"] == pytest.approx(100 * 2 / 6)  # the other top-5 guesses are classes 0..3
    real = rows["imagenet-real"]  # scored 2, 3, 4, 5: right 2 (795), 3 (230), 5 (850); 1 and 22 excluded
    assert (real["images"], real["excluded"], real["acc"]) == (4, 2, pytest.approx(75.0))
    assert real["loss"] is None
    v2_row = rows["imagenet-v2"]  # label = int(folder): 1, 2, 10, 10 against codes 1, 2, 10, 11
    assert (v2_row["images"], v2_row["acc"]) == (4, pytest.approx(75.0))
    assert "CenterCrop(8x8)" in val["preprocessing"] and val["hardctl_version"]


def test_v2_labels_are_the_folder_numbers(tmp_path):
    """ImageFolder would label the folders 1, 10, 2 as 0, 1, 2 (string order); V2's label is int(folder)."""
    for folder in ("1", "2", "10", "999"):
        write_image(tmp_path / "v2" / folder / "a.jpeg", int(folder))
    sets = {s.name: s for s in imagenet_id_suite(sets={"imagenet-v2": tmp_path / "v2"})}
    data = sets["imagenet-v2"].load()
    assert {Path(p).parent.name: t for p, t in zip(data.paths, data.targets)} == {"1": 1, "2": 2, "10": 10, "999": 999}
    assert sets["imagenet-val"].skipped and sets["imagenet-real"].skipped


def test_a_and_r_slice_the_logits_to_their_200_classes(tmp_path):
    a_wnids, a_idx, _ = imagenet_subset("a")
    r_wnids, r_idx, _ = imagenet_subset("r")
    # (subset position of the folder, code written): one image carries another subset class's code
    for root, wnids, idx in ((tmp_path / "imagenet-a", a_wnids, a_idx), (tmp_path / "imagenet-r", r_wnids, r_idx)):
        for i, (pos, code_pos) in enumerate([(0, 0), (1, 1), (2, 2), (2, 0)]):
            write_image(root / wnids[pos] / f"{i}.jpg", idx[code_pos])
    (tmp_path / "imagenet-a" / "README.txt").write_text("not an image")
    decoy = eval_model(decoy=0)  # class 0 (tench) is in neither subset
    assert 0 not in a_idx and 0 not in r_idx
    rows = by_set(run(imagenet_ood_suite(data_root=tmp_path), decoy), "reader")
    assert rows["imagenet-a"]["acc"] == pytest.approx(75.0) and rows["imagenet-a"]["images"] == 4
    assert rows["imagenet-r"]["acc"] == pytest.approx(75.0)
    assert rows["imagenet-a"]["meta"]["subset_md5"] == "c44c349f1867f245e19c0da763a1e0ca"
    # the same images scored 1000-way: the decoy wins every argmax, so nothing is right
    thousand = next(s for s in imagenet_ood_suite(data_root=tmp_path) if s.name == "imagenet-a")
    thousand.logit_indices = None
    thousand.open = _as_1k(thousand.open, a_idx)
    assert by_set(run([thousand], decoy))["imagenet-a"]["acc"] == 0.0


def _as_1k(open_set, indices):
    def reopen():
        data = open_set()
        data.targets = [indices[t] for t in data.targets]  # subset position -> ImageNet-1k index
        return data
    return reopen


def test_imagenet_ood_sketch_stylized_and_skipped_sets(tmp_path):
    for i, (label, code) in enumerate([(3, 3), (999, 999), (42, 41)]):
        write_image(tmp_path / "sketch" / WNIDS[label] / f"s{i}.JPEG", code)
    for i, (label, code) in enumerate([(7, 7), (8, 9)]):
        write_image(tmp_path / "stylized-imagenet" / "val" / WNIDS[label] / f"ILSVRC2012_val_{i + 1:08d}.png", code)
    rows = by_set(run(imagenet_ood_suite(data_root=tmp_path), eval_model()))
    assert rows["imagenet-sketch"]["acc"] == pytest.approx(100 * 2 / 3)
    assert rows["imagenet-sketch"]["meta"]["expected_images"] == 50_889
    assert rows["stylized-imagenet"]["acc"] == pytest.approx(50.0)
    assert "224x224 as stored" in rows["stylized-imagenet"]["preprocessing"]
    skipped = {name: r["reason"] for name, r in rows.items() if r["kind"] == "set" and r["status"] == "skipped"}
    assert set(skipped) == {"imagenet-val", "imagenet-a", "imagenet-r", "imagenet-c"}
    assert skipped["imagenet-a"] == f"not found: looked for {tmp_path / 'imagenet-a'}"
    assert skipped["imagenet-val"] == f"not found: looked for {tmp_path / 'imagenet' / 'val'}, {tmp_path / 'val'}"
    assert not any(r["kind"] == "summary" for r in rows.values())  # no ImageNet-C, no mCE


# --- ImageNet-C ----------------------------------------------------------------------------------------------


def write_imagenet_c(root: Path, wrong_at_severity=lambda s: s - 1, corruptions=CORRUPTIONS + EXTRAS) -> None:
    """4 images a cell; ``wrong_at_severity(s)`` of them wrong in benchmark cells, extras all right.
    Noise and blur extracted flat (<c>/<s>/<wnid>), the rest per category (<category>/<c>/<s>/<wnid>)."""
    for c in corruptions:
        base = root / c if c in CATEGORIES["noise"] + CATEGORIES["blur"] else root / next(
            cat for cat, names in CATEGORIES.items() if c in names) / c
        for s in range(1, 6):
            wrong = 0 if c in EXTRAS else wrong_at_severity(s)
            for i in range(4):
                label = 10 + i
                write_image(base / str(s) / WNIDS[label] / f"ILSVRC2012_val_{i + 1:08d}.JPEG",
                            label + 1 if i < wrong else label, size=(8, 8))


def test_imagenet_c_mce_relative_mce_and_means_by_hand(tmp_path):
    write_imagenet_c(tmp_path / "imagenet-c")
    for i, (label, code) in enumerate([(1, 1), (2, 2), (3, 3), (4, 5)]):
        write_image(tmp_path / "val" / WNIDS[label] / f"ILSVRC2012_val_{i + 1:08d}.JPEG", code)
    rows = by_set(run(imagenet_ood_suite(data_root=tmp_path), eval_model()))
    # severity s: s - 1 of 4 wrong -> errors 0, .25, .5, .75, 1 -> mean 0.5 per corruption
    assert [rows[f"imagenet-c/fog/{s}"]["acc"] for s in range(1, 6)] == [100.0, 75.0, 50.0, 25.0, 0.0]
    assert rows["imagenet-c/fog/3"]["preprocessing"].startswith("RGB, 224x224 as stored")
    # augmix's ALEXNET_ERR (6-decimal averages), typed here independently of the per-severity table
    augmix = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572,
              0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]
    mce = rows["imagenet-c|mCE"]
    assert mce["value"] == pytest.approx(100 * fmean(0.5 / a for a in augmix), abs=1e-4)
    assert mce["value"] == pytest.approx(64.67257, abs=1e-4)
    assert mce["images"] == 15 * 5 * 4 and mce["status"] == "ok"
    rel = rows["imagenet-c|relative mCE"]  # clean error 0.25: sum_s (E - .25) = 1.25 per corruption
    assert rel["value"] == pytest.approx(100 * fmean(1.25 / (5 * (a - 0.4348)) for a in augmix), abs=1e-4)
    assert rel["value"] == pytest.approx(81.40429, abs=1e-4)
    assert rows["imagenet-c|mean acc (75 cells)"]["value"] == pytest.approx(50.0)
    assert rows["imagenet-c extras|mean acc (20 cells)"]["value"] == pytest.approx(100.0)
    ce = rows["imagenet-c/gaussian_noise|CE"]["value"]  # 2.5 / sum of AlexNet's 5 gaussian_noise errors
    assert ce == pytest.approx(100 * 2.5 / (0.69528 + 0.82542 + 0.93554 + 0.98138 + 0.99452))
    assert rows["imagenet-c/saturate|CE"]["value"] == 0.0  # extras get a CE too, never inside mCE
    assert all(len(v) == 5 for v in ALEXNET_ERR.values()) and len(CORRUPTIONS) == 15


def test_imagenet_c_incomplete_gives_no_mce_and_says_why(tmp_path):
    write_imagenet_c(tmp_path / "c", corruptions=("gaussian_noise",))
    rows = by_set(run(imagenet_ood_suite(sets={"imagenet-c": tmp_path / "c"}), eval_model()))
    assert rows["imagenet-c|mCE"]["value"] is None
    assert rows["imagenet-c|mCE"]["reason"] == "5 of 75 cells scored"
    assert rows["imagenet-c/gaussian_noise|CE"]["status"] == "ok"
    assert rows["imagenet-c/shot_noise"]["status"] == "skipped"
    assert str(tmp_path / "c" / "noise" / "shot_noise") in rows["imagenet-c/shot_noise"]["reason"]


# --- CIFAR-10, CIFAR-10-C --------------------------------------------------------------------------------------


def write_cifar_test(folder: Path, labels: list[int], codes: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = np.stack([pixels(c, 3, (32, 32)).transpose(2, 0, 1).reshape(-1) for c in codes])  # R, G, B planes
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
             b"filenames": [f"{i}.png".encode() for i in range(len(codes))]}
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def test_cifar10_and_its_shifted_copy(tmp_path):
    from hardctl.eval.arrays import cifar10_suite

    write_cifar_test(tmp_path / "cifar-10-batches-py", [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 9, 9])
    model = eval_model()
    model.model, model.info = CodeReader(10, 3), ModelInfo("hardctl_test_code_reader", 10, 3, (32, 32), (0,) * 3, (1,) * 3)
    rows = by_set(run(cifar10_suite(data_root=tmp_path), model))
    assert rows["cifar10"]["acc"] == pytest.approx(100 * 4 / 6) and rows["cifar10"]["images"] == 6
    shifted = rows["cifar10-shifted"]  # the centre pixel survives a 3 px shift of a uniform image
    assert shifted["acc"] == pytest.approx(100 * 4 / 6) and shifted["meta"]["shift_px"] == 3


def write_cifar10_c(root: Path, n: int = 4) -> None:
    """Severity-major files: block s holds the n test images; ``s - 1`` of them wrong (extras: none)."""
    root.mkdir(parents=True)
    labels = np.tile(np.arange(n, dtype=np.uint8), 5)
    np.save(root / "labels.npy", labels)
    for c in CORRUPTIONS + EXTRAS:
        codes = [(lab + 1) % 10 if (c not in EXTRAS and i < s - 1) else lab
                 for s in range(1, 6) for i, lab in enumerate(range(n))]
        np.save(root / f"{c}.npy", np.stack([pixels(code, 3, (32, 32)) for code in codes]))


def test_cifar10_c_severity_slices_and_means(tmp_path):
    from hardctl.eval.arrays import cifar10_c_suite

    write_cifar10_c(tmp_path / "CIFAR-10-C")
    model = eval_model()
    model.model, model.info = CodeReader(10, 3), ModelInfo("hardctl_test_code_reader", 10, 3, (32, 32), (0,) * 3, (1,) * 3)
    rows = by_set(run(cifar10_c_suite(data_root=tmp_path), model))
    assert [rows[f"cifar10-c/snow/{s}"]["acc"] for s in range(1, 6)] == [100.0, 75.0, 50.0, 25.0, 0.0]
    assert rows["cifar10-c/snow/2"]["images"] == 4
    assert rows["cifar10-c|mean acc (75 cells)"]["value"] == pytest.approx(50.0)
    assert rows["cifar10-c|mean error (75 cells)"]["value"] == pytest.approx(50.0)
    assert rows["cifar10-c extras|mean acc (20 cells)"]["value"] == pytest.approx(100.0)


# --- MNIST, MNIST-C -------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def grey_model() -> EvalModel:
    model = eval_model()
    model.model, model.info = CodeReader(10, 1), ModelInfo("hardctl_test_code_reader", 10, 1, (28, 28), (0.0,), (1.0,))
    model.normalize = InputNormalize((0.0,), (1.0,))
    return model


def test_mnist_and_mnist_c_translate_and_the_15_corruption_mean(tmp_path):
    from hardctl.eval.arrays import mnist_c_suite, mnist_suite

    labels = np.array([0, 1, 2, 3, 4], dtype=np.uint8)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte",
              np.stack([pixels(c, 1, (28, 28))[..., 0] for c in [0, 1, 2, 3, 0]]))
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    root = tmp_path / "mnist_c"
    for k, name in enumerate(("identity",) + MNIST_C_CORRUPTIONS):
        wrong = 0 if name == "identity" else (k - 1) % 3  # corruption k (0-based): k % 3 of 3 wrong
        codes = [(lab + 1) % 10 if i < wrong else lab for i, lab in enumerate([5, 6, 7])]
        images = np.stack([pixels(c, 1, (28, 28)) for c in codes])
        (root / name).mkdir(parents=True)
        np.save(root / name / "test_images.npy", images.astype(np.float32) if name == "fog" else images)
        np.save(root / name / "test_labels.npy", np.array([5, 6, 7], dtype=np.uint8))
    sets = mnist_suite(data_root=tmp_path) + mnist_c_suite(data_root=tmp_path)
    rows = by_set(run(sets, grey_model()))
    assert rows["mnist"]["acc"] == pytest.approx(80.0) and rows["mnist-shifted"]["meta"]["shift_px"] == 3
    assert rows["mnist-c/identity"]["acc"] == 100.0
    assert MNIST_C_CORRUPTIONS.index("translate") == 8 and rows["mnist-c/translate"]["acc"] == pytest.approx(100 / 3)
    assert rows["mnist-c/fog"]["acc"] == pytest.approx(100 * 2 / 3)  # float32 file: index 10 -> 1 of 3 wrong
    # per corruption 3, 2, 1 of 3 right, five times over: mean 2/3
    assert rows["mnist-c|mean acc (15 corruptions)"]["value"] == pytest.approx(100 * 2 / 3)
    assert rows["mnist-c|mean error (15 corruptions)"]["value"] == pytest.approx(100 / 3)


# --- the evaluation loop -------------------------------------------------------------------------------------


class OomAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than ``limit`` (from call ``after`` on)."""

    def __init__(self, limit: int, after: int = 0):
        super().__init__()
        self.limit, self.after, self.calls, self.sizes = limit, after, 0, []

    def forward(self, x):
        self.calls += 1
        if len(x) > self.limit and self.calls > self.after:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        self.sizes.append(len(x))
        return CodeReader(10, 1)(x)


def grey_set(codes: list[int], labels: list[int]):
    from hardctl.data import TensorImages

    images = torch.from_numpy(np.stack([pixels(c, 1, (6, 6)) for c in codes])).permute(0, 3, 1, 2).contiguous()
    return TensorImages(images, torch.tensor(labels))


def test_out_of_memory_halves_the_batch_and_resumes_where_it_failed():
    from hardctl.eval.engine import Feed, score
    from hardctl.eval.metrics import TopK

    data = grey_set([0, 1, 2, 3, 4, 5, 6, 7, 8, 0], list(range(9)) + [9])  # the last image is wrong
    model, halvings = OomAbove(limit=2, after=1), []
    scorers, stats = score([Feed(model)], data, TopK, batch_size=4, on_retry=lambda a, b: halvings.append((a, b)))
    assert halvings == [(4, 2)] and stats.retries == 1 and stats.batch_size == 2
    assert model.sizes == [4, 2, 2, 2]  # batch 1 kept, batch 2 failed and was redone in halves, no repeats
    assert scorers[0].result()["images"] == 10 and scorers[0].result()["acc"] == pytest.approx(90.0)
    model = OomAbove(limit=1)
    scorers, stats = score([Feed(model)], data, TopK, batch_size=16)
    assert stats.batch_size == 1 and stats.retries == 4 and scorers[0].n == 10


def test_out_of_memory_at_batch_size_one_is_a_runtime_error():
    from hardctl.errors import HardctlError
    from hardctl.eval.engine import Feed, score
    from hardctl.eval.metrics import TopK

    with pytest.raises(HardctlError, match="even at batch size 1") as exc:
        score([Feed(OomAbove(limit=0))], grey_set([1], [1]), TopK, batch_size=2)
    assert exc.value.exit_code == 1


def test_models_sharing_a_preprocessing_share_one_pass(tmp_path):
    write_val(tmp_path / "val")
    messages: list[str] = []
    rows = evaluate([eval_model("a"), eval_model("b", offset=1)], [("t", s) for s in imagenet_id_suite(
        sets={"imagenet-val": tmp_path / "val"}) if s.name == "imagenet-val"],
        device=torch.device("cpu"), batch_size=4, workers=0, progress=messages.append)
    assert any(m.startswith("imagenet-val: 6 images x 2 model(s)") for m in messages)
    assert [r["acc"] for r in rows] == [pytest.approx(100 * 2 / 6), 0.0]  # codes + 1: none right


# --- the command line ----------------------------------------------------------------------------------------


def test_list_shows_every_suite_and_its_sets(cli):
    result = cli("eval", "--list", "--json")
    assert result.code == 0, result.err
    suites = {s["name"]: s for s in json.loads(result.out)}
    assert {"standard", "imagenet-id", "imagenet-ood", "cifar10", "cifar10-c", "mnist", "mnist-c",
            "fashion-mnist"} <= set(suites)
    assert [s["name"] for s in suites["imagenet-id"]["sets"]] == ["imagenet-val", "imagenet-real", "imagenet-v2"]
    result = cli("eval", "--list")
    assert result.code == 0 and "imagenet-ood" in result.out and "--data SPEC" in result.out


def test_cli_writes_json_csv_and_markdown_with_teacher_gap(cli, tmp_path):
    write_cifar_test(tmp_path / "data" / "cifar-10-batches-py", [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 9, 9])
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    for folder, arch in ((teacher, "hardctl_test_code_reader"), (student, "hardctl_test_off_by_one_reader")):
        reader_file(folder / "model.safetensors", 10, 3, (32, 32), arch)
    RunConfig(command="train", data="cifar10").save(teacher)
    RunConfig(command="distill", data="cifar10", teacher=str(teacher)).save(student)
    outputs = {}
    for suffix in ("json", "csv", "md"):
        out = tmp_path / "results" / f"r.{suffix}"
        result = cli("eval", "--model", teacher, "--model", student, "--suite", "cifar10", "--data-root",
                     tmp_path / "data", "--out", out)
        assert result.code == 0, result.err
        assert out.is_file()
        outputs[suffix] = out.read_text()
    assert "Δ student − teacher" in result.out and "-66.67" in result.out  # student 0 %, teacher 66.67 %
    rows = json.loads(outputs["json"])
    student_row = next(r for r in rows if r["model"] == str(student) and r["set"] == "cifar10")
    assert student_row["acc"] == 0.0 and student_row["gap"] == pytest.approx(-100 * 4 / 6)
    assert student_row["teacher"] == str(teacher) and student_row["images"] == 6
    assert student_row["preprocessing"].startswith("as stored") and student_row["hardctl_version"]
    table = list(csv.DictReader(outputs["csv"].splitlines()))
    assert len(table) == 4 and float(table[0]["acc"]) == pytest.approx(100 * 4 / 6)
    assert "| cifar10-shifted | 6 | 66.67 | 0.00 | -66.67 |" in outputs["md"]


def test_cli_reports_skipped_sets_and_goes_on(cli, tmp_path):
    a_wnids, a_idx, _ = imagenet_subset("a")
    write_image(tmp_path / "imagenet-a" / a_wnids[5] / "x.jpg", a_idx[5])
    model = reader_file(tmp_path / "reader.safetensors", 1000, 3, (8, 8))
    result = cli("eval", "--model", model, "--suite", "imagenet-ood", "--data-root", tmp_path, "--workers", "0")
    assert result.code == 0, result.err
    assert "skipped imagenet-r: not found: looked for" in result.out and str(tmp_path / "imagenet-r") in result.out
    assert "partial imagenet-a: 1 images scored; the official set has 7,500" in result.out
    result = cli("eval", "--model", model, "--suite", "imagenet-ood", "--set", f"imagenet-a={tmp_path}",
                 "--workers", "1", "--json")  # the archive's folder inside DIR; one worker process
    assert result.code == 0, result.err
    assert next(r for r in json.loads(result.out) if r["set"] == "imagenet-a")["acc"] == 100.0


def test_cli_bad_input_is_one_line_with_exit_code(cli, tmp_path):
    model = reader_file(tmp_path / "reader.safetensors", 1000, 3, (8, 8))
    one_line_error(cli("eval", "--suite", "imagenet-id"), 2, "eval needs --model")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-odd"), 2, "unknown evaluation suite", "imagenet-ood")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-ood"), 2, "no set of the chosen suites was found")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-ood", "--data-root", tmp_path / "nope"), 2,
                   "--data-root: no such folder")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-ood", "--set", "imagenet-a"), 2, "is not NAME=DIR")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-ood", "--set", f"imagenet-b={tmp_path}"), 2,
                   "read no set 'imagenet-b'", "did you mean")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-ood", "--set", f"imagenet-a={tmp_path / 'x'}"), 2,
                   "no such folder")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-ood", "--data", "digits"), 2, "--data apply to")
    one_line_error(cli("eval", "-m", model, "--data-root", tmp_path), 2, "--data-root and --set apply to")
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-id", "--data-root", tmp_path, "--out",
                       tmp_path / "r.txt"), 2, "unknown format '.txt'")
    write_cifar_test(tmp_path / "cifar10", [0], [0])
    write_image(tmp_path / "val" / WNIDS[0] / "ILSVRC2012_val_00000001.JPEG", 0)
    one_line_error(cli("eval", "-m", model, "--suite", "cifar10", "--suite", "imagenet-id", "--data-root", tmp_path),
                   2, "need different models")
    write_image(tmp_path / "v2" / "abc" / "x.jpeg", 1)
    one_line_error(cli("eval", "-m", model, "--suite", "imagenet-id", "--set", f"imagenet-v2={tmp_path / 'v2'}",
                       "--workers", "0"), 2, "is not a class folder")
    bad = tmp_path / "a" / imagenet_subset("a")[0][0] / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    for workers in ("0", "1"):  # a decoding error in a worker process still ends as one line
        one_line_error(cli("eval", "-m", model, "--suite", "imagenet-ood", "--set", f"imagenet-a={tmp_path / 'a'}",
                           "--workers", workers), 2, "cannot decode image", "broken.jpg")
    (tmp_path / "CIFAR-10-C").mkdir()
    np.save(tmp_path / "CIFAR-10-C" / "labels.npy", np.zeros(10, dtype=np.uint8))
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((10, 32, 32), dtype=np.uint8))
    cifar_model = reader_file(tmp_path / "c.safetensors", 10, 3, (32, 32))
    one_line_error(cli("eval", "-m", cifar_model, "--suite", "cifar10-c", "--data-root", tmp_path), 2,
                   "fog.npy holds uint8 (10, 32, 32)")

"""Evaluation plumbing: finding sets on disk, the standard suite's old JSON, the library/CLI boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from test_eval_suites import reader_file  # also registers the test architectures in timm

from hardctl.eval.arrays import SOURCES as ARRAY_SOURCES
from hardctl.eval.imagenet import SOURCES as IMAGENET_SOURCES
from hardctl.eval.sources import Locator, parse_set_options
from hardctl.errors import UsageError


def test_locator_order_nested_folders_markers_and_defaults(tmp_path):
    cifar = ARRAY_SOURCES["cifar10"]
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    found = Locator(tmp_path).find(cifar)  # folders exist but hold no test_batch: not found
    assert found.path is None
    assert found.looked == [tmp_path / "cifar-10-batches-py" / "test_batch", tmp_path / "cifar10" / "test_batch",
                            tmp_path / "test_batch"]
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    # --set DIR where the archive was extracted into DIR: its own folder inside DIR is found first
    assert Locator(sets={"cifar10": tmp_path / "cifar10"}).find(cifar).path == tmp_path / "cifar10" / "cifar-10-batches-py"
    # ReaL falls back to the --set folder of the validation set
    val = Locator(sets={"imagenet-val": tmp_path}).find(IMAGENET_SOURCES["imagenet-real"], fallback="imagenet-val")
    assert val.path == tmp_path
    debian = Path("/usr/share/datasets/fashion-mnist")
    fashion = Locator().find(ARRAY_SOURCES["fashion-mnist"])  # nothing given: Debian's folder
    if (debian / "t10k-images-idx3-ubyte.gz").is_file():
        assert fashion.path == debian and fashion.looked == [debian]
    else:
        assert fashion.path is None and fashion.looked == [debian / "t10k-images-idx3-ubyte"]


def test_set_options_are_checked(tmp_path):
    known = {"imagenet-a": "", "imagenet-r": ""}
    assert parse_set_options([f"imagenet-a={tmp_path}"], known) == {"imagenet-a": tmp_path}
    for bad, message in ((f"imagenet-a={tmp_path}", "given twice"), ("imagenet-a", "is not NAME=DIR"),
                         (f"imagenet-q={tmp_path}", "did you mean"), (f"imagenet-r={tmp_path / 'x'}", "no such folder")):
        values = [f"imagenet-a={tmp_path}", bad] if message == "given twice" else [bad]
        with pytest.raises(UsageError, match=message):
            parse_set_options(values, known)


def test_standard_suite_keeps_its_rows(cli, tmp_path):
    model = reader_file(tmp_path / "digits.safetensors", 10, 1, (16, 16))
    result = cli("eval", "--model", model, "--data", "digits", "--shifted", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [(r["set"], r["images"], r["dataset"], r["suite"]) for r in rows] == [
        ("centered", 360, "digits", "standard"), ("shifted", 360, "digits", "standard")]
    assert all(0 <= r["acc"] <= 100 and r["hardctl_version"] and r["preprocessing"] for r in rows)
    result = cli("eval", "--model", model, "--data", "digits")
    assert result.code == 0 and "centered" in result.out and "shifted" not in result.out.split("┗")[0]
    result = cli("eval", "--model", model, "--model", model, "--data", "digits")
    assert result.code == 2 and "given twice" in result.err
    assert timm.is_model("hardctl_test_code_reader")


def test_the_library_never_imports_the_cli():
    code = ("import sys, hardctl.eval, hardctl.eval.runner, hardctl.eval.report, hardctl.eval.imagenet, "
            "hardctl.eval.arrays, hardctl.eval.engine; "
            "print([m for m in sys.modules if m.startswith('hardctl.cli')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_evaluation_never_moves_the_training_random_stream():
    """A training run evaluates every epoch (validation, shifted validation): that must not change what the
    global RNG draws next, or adding a logged metric would change the trained model."""
    import torch
    from torch.utils.data import TensorDataset

    from hardctl.eval import accuracy

    data = TensorDataset(torch.rand(10, 1, 4, 4), torch.arange(10) % 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    accuracy(model, data, batch_size=4)
    assert torch.equal(torch.rand(3), expected)

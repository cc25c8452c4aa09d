"""``hardctl export``: safetensors, ONNX and TorchScript files of the paper's models, checked after writing.

Run directories are written by hand (a config.toml and a model.safetensors of a freshly initialised
model), which is what ``export`` reads of a finished run, so no test trains. Every exported file is run
outside hardctl's own code (onnxruntime, ``torch.jit.load``, ``load_model``) on the run's real test images
and compared with ``model(normalize(x))``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hardctl.config import RunConfig
from hardctl.data import load_data
from hardctl.data.formats import FASHION_MNIST_CLASSES
from hardctl.export import DEFAULT_ATOL, read_metadata
from hardctl.models import InputNormalize, ModelInfo, create_model, load_model, save_model
from conftest import one_line_error

onnx = pytest.importorskip("onnx")  # the test extra installs them; without, the ONNX tests say why
ort = pytest.importorskip("onnxruntime")

DIGITS = [str(d) for d in range(10)]
PAPER_MODELS = ["hard_mnist_mlp", "hard_mnist_cnn", "hard_vit_mnist", "hard_resnet18_cifar"]
# the exporters reorder floating-point sums; measured differences are below 1e-6 (see the report)
CLOSE = 1e-5

# torch 2.14 deprecates TorchScript; the format is still what C++ deployments load
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


def make_run(run: Path, arch: str = "hard_mnist_mlp", *, data: str = "digits", img_size: int = 16,
             summary: dict | str | None = None, normalise: tuple[float, float] | None = None) -> Path:
    """A finished run as ``export`` reads it: config.toml, model.safetensors and optionally summary.json.

    ``normalise=(mean, std)`` replaces the MNIST models' identity normalisation (0, 1), so that a test
    sees whether the exported graph really applies it.
    """
    run.mkdir(parents=True)
    RunConfig(command="distill", data=data, model=arch, teacher="teacher-run", augmentor="none").save(run)
    torch.manual_seed(0)
    model, info = create_model(arch, num_classes=10, in_chans=1, img_size=img_size)
    if normalise:
        info = dataclasses.replace(info, mean=(normalise[0],), std=(normalise[1],))
    save_model(model, info, run / "model.safetensors")
    if summary is not None:
        (run / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return run


def reference(run: Path, images: torch.Tensor) -> torch.Tensor:
    """What the exported model must compute: the run's model on normalised pixels."""
    model, info = load_model(str(run))
    with torch.no_grad():
        return model.eval()(InputNormalize.from_info(info)(images))


def digits_images(n: int = 32) -> torch.Tensor:
    test = load_data("digits").test
    return torch.stack([test[i][0] for i in range(n)])


def export(cli, run: Path, out: Path, *args) -> dict:
    result = cli("export", run, "--out", out, *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


# --- the formats --------------------------------------------------------------------------------------


def test_mlp_onnx_round_trip(cli, tmp_path):
    run = make_run(tmp_path / "run", summary={"student": {"test_acc": 0.25, "shifted_acc": 0.125}},
                   normalise=(0.5, 0.25))
    out = tmp_path / "student.onnx"
    result = export(cli, run, out, "--format", "onnx")
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["run", "student.onnx"]  # no .data
    assert result["max_abs_diff"] < CLOSE and result["atol"] == DEFAULT_ATOL
    assert result["checked_on"] == "32 test images of digits" and result["notes"] == []

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", 18)]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta == read_metadata(out)
    assert json.loads(meta["classes"]) == DIGITS and meta["class_names"] == "from the data set"
    info = ModelInfo.from_metadata(meta)  # the model part parses like a hardctl weights file's
    assert (info.arch, info.in_chans, info.img_size, info.mean, info.std) == ("hard_mnist_mlp", 1, (16, 16),
                                                                              (0.5,), (0.25,))
    assert meta["normalization"] == "folded into the model" and meta["output"] == "logits (no softmax)"
    assert (meta["data"], meta["teacher"], meta["test_acc"], meta["batch"]) == ("digits", "teacher-run", "0.2500",
                                                                               "1")

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"] and session.get_inputs()[0].shape == [1, 1, 16, 16]
    images = digits_images()
    logits = torch.cat([torch.from_numpy(session.run(["logits"], {"pixels": x[None].numpy()})[0]) for x in images])
    expected = reference(run, images)
    assert (logits - expected).abs().max() < CLOSE
    assert not torch.allclose(logits.sum(1), torch.ones(32)) and (logits < 0).any()  # logits, not softmax
    model, _ = load_model(str(run))
    with torch.no_grad():  # the normalisation is in the graph: the bare model on raw pixels is far off
        assert (logits - model.eval()(images)).abs().max() > 100 * CLOSE


def test_onnx_dynamic_batch_takes_any_batch_size(cli, tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "student.onnx"
    result = export(cli, run, out, "--format", "onnx", "--dynamic-batch", "--opset", "20")
    assert result["opset"] == "20" and result["batch"] == "dynamic"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = digits_images(7)
    for batch in (images, images[:1]):  # the export traced a batch of 2
        logits = session.run(None, {"pixels": batch.numpy()})[0]
        assert logits.shape == (len(batch), 10)
        assert np.abs(logits - reference(run, batch).numpy()).max() < CLOSE

    fixed = tmp_path / "fixed.onnx"
    export(cli, run, fixed, "--format", "onnx")
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"]).run(None, {"pixels": images.numpy()})


def test_cnn_torchscript_round_trip(cli, tmp_path):
    run = make_run(tmp_path / "run", "hard_mnist_cnn")
    out = tmp_path / "student.pt"
    result = export(cli, run, out, "--format", "torchscript")
    assert result["max_abs_diff"] < CLOSE and "opset" not in result
    files = {"hardctl.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=files)
    meta = json.loads(files["hardctl.json"])
    assert meta == read_metadata(out) and json.loads(meta["classes"]) == DIGITS
    assert (meta["arch"], meta["img_size"], meta["in_chans"]) == ("hard_mnist_cnn", "[16, 16]", "1")
    images = digits_images(7)  # traced at batch 2: other batch sizes work
    with torch.no_grad():
        assert (loaded(images) - reference(run, images)).abs().max() < CLOSE


def test_safetensors_stays_the_default_and_gains_class_names(cli, tmp_path):
    run = make_run(tmp_path / "run", summary={"student": {"test_acc": 0.5, "shifted_acc": 0.25}})
    out = tmp_path / "student.safetensors"
    result = cli("export", run, "--out", out)
    assert result.code == 0, result.err
    assert result.out.startswith(f"wrote {out} (safetensors, hard_mnist_mlp, 10 classes); max |logit difference| 0 ")
    meta = read_metadata(out)
    assert json.loads(meta["classes"]) == DIGITS and meta["normalization"] == "not folded"
    assert (meta["format"], meta["weights"], meta["shifted_acc"]) == ("hardctl", "selected", "0.2500")
    model, info = load_model(str(out))  # hardctl's loader applies mean/std itself
    images = digits_images(4)
    with torch.no_grad():
        assert torch.equal(model.eval()(InputNormalize.from_info(info)(images)), reference(run, images))


def write_idx(path: Path, array: np.ndarray) -> None:
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw))


def test_class_names_come_from_the_data_set(cli, tmp_path):
    data = tmp_path / "fashion"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 5)):
        write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 16, 16), dtype=np.uint8))
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    run = make_run(tmp_path / "run", data=f"fashion-mnist:{data}")
    result = export(cli, run, tmp_path / "student.pt", "--format", "torchscript")
    assert json.loads(result["classes"]) == FASHION_MNIST_CLASSES and result["classes"].count("Ankle boot") == 1
    assert result["checked_on"] == f"5 test images of fashion-mnist:{data}"


def test_without_the_data_it_checks_random_pixels_and_says_so(cli, tmp_path):
    run = make_run(tmp_path / "run", data=f"mnist:{tmp_path / 'gone'}")
    result = cli("export", run, "--out", tmp_path / "student.pt", "--format", "torchscript", "--json")
    assert result.code == 0, result.err
    exported = json.loads(result.out)
    assert exported["checked_on"] == "32 random images" and exported["max_abs_diff"] < CLOSE
    assert json.loads(exported["classes"]) == DIGITS and exported["class_names"] == "indices (the data set names none)"
    warning = result.err.strip()
    assert warning.startswith("hardctl: warning: cannot load data 'mnist:") and "class names are indices" in warning


def paper_cases() -> list:
    """Every paper model in every format; ONNX export (torch.export) of the ViT and the ResNet is slow."""
    cases = []
    for arch in PAPER_MODELS:
        for fmt in ("onnx", "torchscript", "safetensors"):
            slow = fmt == "onnx" and arch in ("hard_vit_mnist", "hard_resnet18_cifar")  # ~3 s each
            cases.append(pytest.param(arch, fmt, marks=[pytest.mark.slow] if slow else [], id=f"{arch}-{fmt}"))
    return cases


@pytest.mark.parametrize(("arch", "fmt"), paper_cases())
def test_paper_models(cli, tmp_path, arch, fmt):
    """Each format of each paper model computes model(normalize(x)) on real pixels in [0, 1]."""
    run = make_run(tmp_path / "run", arch)
    out = tmp_path / ("student.pt" if fmt == "torchscript" else f"student.{fmt}")
    result = export(cli, run, out, "--format", fmt)
    meta = read_metadata(out)
    assert json.loads(meta["classes"]) == DIGITS and meta["img_size"] == "[16, 16]" and meta["arch"] == arch
    images = digits_images()
    if fmt == "onnx":
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits = torch.cat([torch.from_numpy(session.run(None, {"pixels": x[None].numpy()})[0]) for x in images])
    elif fmt == "torchscript":
        with torch.no_grad():
            logits = torch.jit.load(str(out))(images)
    else:
        model, info = load_model(str(out))
        with torch.no_grad():
            logits = model.eval()(InputNormalize.from_info(info)(images))
    measured = float((logits - reference(run, images)).abs().max())
    assert measured < CLOSE and result["max_abs_diff"] == pytest.approx(measured, abs=1e-7)
    print(f"MEASURED {arch} {fmt} {measured:.2e}")


# --- bad requests and failed checks ----------------------------------------------------------------


@pytest.mark.parametrize(("args", "fragments"), [
    (["--format", "onx"], ["unknown --format 'onx'; did you mean 'onnx'?", "choose one of safetensors, onnx"]),
    (["--format", "onnx", "--out", "m.safetensors"], ["must end in .onnx for --format onnx",
                                                      "pass --format safetensors"]),
    (["--out", "m.pt"], ["must end in .safetensors for --format safetensors", "pass --format torchscript"]),
    (["--format", "onnx", "--opset", "17"], ["--opset 17 is outside 18.."]),
    (["--format", "torchscript", "--out", "m.ts", "--opset", "18"], ["--opset applies only to --format onnx"]),
    (["--dynamic-batch"], ["--dynamic-batch applies only to --format onnx"]),
    (["--atol", "nan"], ["--atol must be a finite number >= 0, not nan"]),
    (["--atol", "-1"], ["--atol must be a finite number >= 0, not -1.0"]),
    (["--which", "middle"], ["--which must be selected, best or last, not 'middle'"]),
    (["--which", "last"], ["has no last.safetensors"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("-") else None)
def test_bad_requests_are_usage_errors(cli, tmp_path, monkeypatch, args, fragments):
    run = make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    out = [] if "--out" in args else ["--out", "m.onnx" if "onnx" in args else "m.safetensors"]
    one_line_error(cli("export", run, *out, *args), 2, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_missing_run_and_existing_out(cli, tmp_path):
    one_line_error(cli("export", tmp_path / "nope", "--out", tmp_path / "m.safetensors"), 2, "no such run directory")
    one_line_error(cli("export", tmp_path, "--out", tmp_path / "m.safetensors"), 2, "has no model.safetensors")
    run = make_run(tmp_path / "run")
    target = tmp_path / "m.onnx"
    target.write_text("existing")
    one_line_error(cli("export", run, "--format", "onnx", "--out", target), 2, "already exists", "--force")
    assert target.read_text() == "existing"
    assert cli("export", run, "--format", "onnx", "--out", target, "--force").code == 0
    assert "pixels" in [i.name for i in onnx.load(str(target)).graph.input]


@pytest.mark.parametrize(("summary", "fragment"), [
    ('{"student": {"test_acc": 0.9', "cannot read"),
    ('{"teacher": {"test_acc": 0.9}}', "lacks the student's test accuracies (KeyError: 'student')"),
    ('{"student": null}', "lacks the student's test accuracies (TypeError"),
    ('{"student": {"test_acc": "high", "shifted_acc": 1}}', "cannot read"),
])
def test_damaged_summary_is_a_usage_error(cli, tmp_path, summary, fragment):
    run = make_run(tmp_path / "run", summary=summary)
    line = one_line_error(cli("export", run, "--out", tmp_path / "m.safetensors"), 2, fragment,
                          "delete summary.json to export anyway")
    assert "summary.json" in line and "internal error" not in line
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("missing", [["onnxruntime"], ["onnx", "onnxruntime", "onnxscript"]])
def test_onnx_without_its_packages_says_how_to_install_them(cli, tmp_path, monkeypatch, missing):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    run = make_run(tmp_path / "run")
    verb = "is" if len(missing) == 1 else "are"
    one_line_error(cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx"), 2,
                   f"--format onnx needs {', '.join(missing)}, which {verb} not installed",
                   "(pip install 'hardctl[onnx]')")


def test_a_failed_check_leaves_no_file(cli, tmp_path, monkeypatch):
    """A file whose logits drift by 1e-3 is refused (exit 1) and --out keeps its old content."""
    from hardctl import export as export_module

    write, run_file = export_module._FORMATS["torchscript"]
    monkeypatch.setitem(export_module._FORMATS, "torchscript", (write, lambda *a: run_file(*a) + 1e-3))
    run = make_run(tmp_path / "run")
    out = tmp_path / "student.pt"
    one_line_error(cli("export", run, "--format", "torchscript", "--out", out), 1,
                   "logits differ from the PyTorch model's by up to 0.001 on 32 test images of digits",
                   "above the tolerance 0.0001", "raise --atol")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # neither the file nor a temporary one
    out.write_text("old")
    one_line_error(cli("export", run, "--format", "torchscript", "--out", out, "--force"), 1, "is unchanged")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run", "student.pt"]
    result = export(cli, run, out, "--format", "torchscript", "--force", "--atol", "0.01")
    assert result["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3) and result["atol"] == 0.01


def test_an_exporter_failure_is_one_line(cli, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Dynamic control flow is not supported\nsecond line of torch's message")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    run = make_run(tmp_path / "run")
    one_line_error(cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx"), 1,
                   "torch cannot export hard_mnist_mlp to ONNX: RuntimeError: Dynamic control flow is not supported",
                   "try --format torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_write_is_one_line_and_leaves_no_file(cli, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):  # what torch's zip writer raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch.jit, "save", disk_full)
    run = make_run(tmp_path / "run")
    out = tmp_path / "student.pt"
    one_line_error(cli("export", run, "--format", "torchscript", "--out", out), 1,
                   f"cannot write {out}: RuntimeError: [enforce fail", "check free disk space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_cli_default_tolerance_is_the_library_one():
    import inspect

    from hardctl.cli.export import export as command

    assert inspect.signature(command).parameters["atol"].default == DEFAULT_ATOL

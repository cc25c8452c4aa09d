"""Export a run's student for deployment: safetensors, ONNX or TorchScript, checked after writing.

Every format carries the same metadata (:func:`export_metadata`, a str -> str map): the architecture and
input shape (:class:`~hardctl.models.ModelInfo`'s fields), the class names of the run's data set, the
mean/std of the input normalisation, the data spec, the hardctl version and where the weights came from.
It lives in the safetensors header, in ONNX ``metadata_props`` and in a TorchScript file's extra file
``hardctl.json``; :func:`read_metadata` reads it back from any of them.

* ``safetensors`` (the default) is hardctl's own weights file: ``--model FILE`` rebuilds the model and
  applies mean/std itself, so the normalisation is recorded, not built in.
* ``onnx`` and ``torchscript`` are self-contained graphs of ``(x - mean) / std`` followed by the student:
  they take float32 ``N×C×H×W`` pixels in ``[0, 1]`` and return logits (no softmax).

A file is written beside ``--out`` under a temporary name, run on real images of the run's data (the
first :data:`CHECK_IMAGES` test images) and compared with the PyTorch model; only if the largest absolute
logit difference is within ``atol`` does it replace ``--out``, so a failed check leaves no broken file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import hardctl
from hardctl.atomic import atomic_path
from hardctl.config import RunConfig
from hardctl.errors import CheckpointError, HardctlError, UsageError, did_you_mean, shorten
from hardctl.runfiles import BEST_MODEL_FILE, LAST_MODEL_FILE, MODEL_FILE, SUMMARY_FILE

if TYPE_CHECKING:  # hardctl.models imports torch: only where the work starts
    from hardctl.models import ModelInfo

__all__ = ["CHECK_IMAGES", "DEFAULT_ATOL", "DEFAULT_OPSET", "FORMATS", "ONNX_PACKAGES", "ExportError",
           "export_metadata", "export_run", "read_metadata"]

FORMATS: dict[str, tuple[str, ...]] = {"safetensors": (".safetensors",), "onnx": (".onnx",),
                                       "torchscript": (".pt", ".ts")}
"""Export formats and the file endings each accepts for ``--out``."""

DEFAULT_OPSET = 18
"""The lowest opset torch's ONNX exporter implements: lower ones need a version conversion that fails
for convolutions (``axes`` inputs) and silently keeps 18, so they are refused."""
DEFAULT_ATOL = 1e-4  # fp32 graphs reorder sums; the paper's models measure below 1e-6 (see the tests)
CHECK_IMAGES = 32
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: torch's (dynamo) ONNX exporter needs it
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
TORCHSCRIPT_METADATA = "hardctl.json"


class ExportError(HardctlError):
    """The exporter failed or the written file does not compute what the model computes (exit 1)."""


WEIGHTS = {"selected": MODEL_FILE, "best": BEST_MODEL_FILE, "last": LAST_MODEL_FILE}  # --which -> run-dir file


def weights_file(run_dir: Path, which: str) -> Path:
    """The run's weights file for ``--which``: the student it reports (``selected``, its ``--select``), the
    best-validation or the last one (runs of older versions have no best.safetensors: model.safetensors was it)."""
    path = run_dir / WEIGHTS[which]
    if which == "best" and not path.is_file():
        return run_dir / MODEL_FILE
    return path


def export_run(run_dir: Path, out: Path, *, which: str = "selected", fmt: str = "safetensors",
               opset: int | None = None, dynamic_batch: bool = False, atol: float = DEFAULT_ATOL,
               force: bool = False) -> dict[str, Any]:
    """Export the run's ``best`` (highest validation accuracy) or ``last`` student to ``out`` as ``fmt``.

    Returns the metadata written plus ``source``, ``out``, ``format`` and the check: ``max_abs_diff``,
    ``atol``, ``checked_on`` and ``notes`` (what fell back, e.g. class indices instead of names).
    """
    run_dir, out = Path(run_dir), Path(out)
    opset = _check_request(run_dir, out, which, fmt, opset, dynamic_batch, atol, force)
    import torch

    from hardctl.models import load_model

    cfg = RunConfig.load(run_dir)
    source = weights_file(run_dir, which)
    model, info = load_model(str(source))
    model.eval()
    notes: list[str] = []
    images, classes, checked_on = _check_images(cfg.data, info, notes)
    if classes is None or len(classes) != info.num_classes:
        if classes is not None:
            notes.append(f"data {cfg.data!r} names {len(classes)} classes but the model predicts "
                         f"{info.num_classes}: class names are indices")
        classes = [str(i) for i in range(info.num_classes)]
        names_from = "indices"
    else:
        names_from = "data"
    meta = export_metadata(info, classes, names_from, fmt, _provenance(run_dir, cfg, which), opset, dynamic_batch)
    net = _with_normalisation(model, info)
    with torch.no_grad():
        reference = net(images)
    write, run = _FORMATS[fmt]
    try:
        with atomic_path(out) as tmp:
            write(model, net, info, meta, tmp, images, opset, dynamic_batch)
            produced = run(tmp, images, dynamic_batch)
            diff = float((produced - reference).abs().max())
            if not diff <= atol:  # also catches NaN
                raise ExportError(
                    f"the exported {fmt} file's logits differ from the PyTorch model's by up to {diff:.3g} "
                    f"on {checked_on}, above the tolerance {atol:g}; {out} is unchanged",
                    hint="raise --atol if that difference is acceptable")
    except OSError as e:
        raise CheckpointError(f"cannot write {out}: {e.strerror or e}",
                              hint="check free disk space and permissions") from None
    return {"source": str(source), "out": str(out), **meta, "max_abs_diff": diff, "atol": atol,
            "checked_on": checked_on, "notes": notes}


def _check_request(run_dir: Path, out: Path, which: str, fmt: str, opset: int | None, dynamic_batch: bool,
                   atol: float, force: bool) -> int | None:
    """Every usage error before any work (exit 2); returns the opset to use (None unless ONNX)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}{did_you_mean(fmt, FORMATS)}",
                         hint=f"choose one of {', '.join(FORMATS)}")
    if which not in WEIGHTS:
        raise UsageError(f"--which must be selected, best or last, not {which!r}")
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise UsageError(f"--atol must be a finite number >= 0, not {atol}")
    if fmt != "onnx" and (opset is not None or dynamic_batch):
        given = "--opset" if opset is not None else "--dynamic-batch"
        raise UsageError(f"{given} applies only to --format onnx",
                         hint="TorchScript files take any batch size; safetensors files hold only weights")
    if fmt == "onnx":
        opset = DEFAULT_OPSET if opset is None else opset
        _require_onnx()
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not DEFAULT_OPSET <= opset <= newest:
            raise UsageError(f"--opset {opset} is outside {DEFAULT_OPSET}..{newest}",
                             hint=f"torch's ONNX exporter writes opset {DEFAULT_OPSET} and newer; the installed "
                                  f"onnx knows up to {newest}")
    source = weights_file(run_dir, which)
    if not run_dir.is_dir():
        raise UsageError(f"no such run directory: {run_dir}")
    if not source.is_file():
        raise UsageError(f"{run_dir} has no {source.name}", hint="export a finished hardctl run directory")
    if out.suffix not in FORMATS[fmt]:
        by_suffix = [f for f, endings in FORMATS.items() if out.suffix in endings]
        raise UsageError(f"--out {out} must end in {' or '.join(FORMATS[fmt])} for --format {fmt}",
                         hint=f"pass --format {by_suffix[0]}" if by_suffix else "rename --out")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder", hint="name the file to write")
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="pass --force to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist", hint="create it first")
    return opset


def _require_onnx() -> None:
    """ONNX export needs optional packages; say how to get them instead of an ImportError."""
    import importlib

    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"--format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         "not installed", hint="pip install 'hardctl[onnx]'")


def _provenance(run_dir: Path, cfg: RunConfig, which: str) -> dict[str, str]:
    """Where the weights came from: the run's command, data, student, teacher and test accuracies.

    ``summary.json`` is optional (a run killed before its end has none) but must be readable if present:
    a corrupt one means a damaged run directory, which the user should hear about.
    """
    extra = {"run_command": cfg.command, "data": cfg.data, "weights": which, "student": cfg.model}
    if cfg.teacher:
        extra["teacher"] = cfg.teacher
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return extra
    try:
        summary = json.loads(path.read_text())
        student = summary["student"]
        extra["test_acc"] = f"{float(student['test_acc']):.4f}"
        extra["shifted_acc"] = f"{float(student['shifted_acc']):.4f}"
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise UsageError(f"cannot read {path}: {e}",
                         hint="the run directory is damaged; rerun it, or delete summary.json to export anyway"
                         ) from None
    except (KeyError, TypeError) as e:
        raise UsageError(f"{path} lacks the student's test accuracies ({type(e).__name__}: {e})",
                         hint="the run directory is damaged; rerun it, or delete summary.json to export anyway"
                         ) from None
    return extra


def _check_images(data: str, info: ModelInfo, notes: list[str]) -> tuple[Any, list[str] | None, str]:
    """The first :data:`CHECK_IMAGES` test images of the run's data, its class names and a description.

    Without the data (moved, or a plugin's data set not installed here) the check runs on uniform random
    pixels and the class names fall back to indices, both said in ``notes``: the file is still exported.
    """
    import torch

    from hardctl.data import load_data

    shape = (info.in_chans, *info.img_size)
    try:
        bundle = load_data(data)
        n = min(CHECK_IMAGES, len(bundle.test))
        images = torch.stack([bundle.test[i][0] for i in range(n)]) if n else None
        classes = [str(c) for c in bundle.sets.classes]
    except (HardctlError, OSError, ValueError, RuntimeError) as e:
        images, classes, why = None, None, f"cannot load data {data!r} ({e})"
    else:
        why = f"data {data!r} has no test images"
        if images is not None and tuple(images.shape[1:]) != shape:
            why = f"data {data!r} has {tuple(images.shape[1:])} images but the model takes {shape}"
            images = None
    if images is None:
        notes.append(f"{why}: checked on {CHECK_IMAGES} random images"
                     + ("" if classes else "; class names are indices"))
        generator = torch.Generator().manual_seed(0)
        return torch.rand(CHECK_IMAGES, *shape, generator=generator), classes, f"{CHECK_IMAGES} random images"
    return images.float().contiguous(), classes, f"{len(images)} test images of {data}"


def export_metadata(info: ModelInfo, classes: list[str], names_from: str, fmt: str, provenance: dict[str, str],
                    opset: int | None = None, dynamic_batch: bool = False) -> dict[str, str]:
    """The str -> str metadata every format carries; :meth:`ModelInfo.from_metadata` parses its model part."""
    folded = fmt != "safetensors"
    meta = {
        **info.to_metadata(),
        "format": "hardctl",
        "hardctl_version": hardctl.__version__,
        "classes": json.dumps(classes),
        "class_names": "from the data set" if names_from == "data" else "indices (the data set names none)",
        "input": (f"float32 N×{info.in_chans}×{info.img_size[0]}×{info.img_size[1]} pixels in [0, 1]"
                  if folded else "normalise pixels in [0, 1] with mean/std first (hardctl's loader does)"),
        "normalization": "folded into the model" if folded else "not folded",
        "output": "logits (no softmax)",
        **provenance,
    }
    if fmt == "onnx":
        meta["opset"] = str(opset)
        meta["batch"] = "dynamic" if dynamic_batch else "1"
    return meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The hardctl metadata of an exported safetensors, ONNX or TorchScript file (by its ending)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if path.suffix in FORMATS["torchscript"]:
        import torch

        files = {TORCHSCRIPT_METADATA: ""}
        with _quiet():
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        return json.loads(files[TORCHSCRIPT_METADATA])
    import safetensors

    with safetensors.safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _with_normalisation(model: Any, info: ModelInfo) -> Any:
    """The student behind its ``(x - mean) / std``: what ONNX and TorchScript files contain."""
    from torch import nn

    from hardctl.models import InputNormalize

    return nn.Sequential(InputNormalize.from_info(info), model).eval()


@contextlib.contextmanager
def _quiet():
    """Silence what exporters print on success: PyTorch's deprecation notices for TorchScript, tracer
    warnings (the check below runs the file on real images, which is what those warn about) and the
    ONNX exporter's progress lines on stdout (stdout holds only results, e.g. ``--json``)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {shorten(lines[0], 300) if lines else ''}"


def _example(images: Any, n: int) -> Any:
    """``n`` images to trace with (a data set may have fewer test images than that)."""
    return images[:n] if len(images) >= n else images[:1].repeat(n, 1, 1, 1)


@contextlib.contextmanager
def _writing():
    """torch and protobuf report a failed write (disk full, file too large) as RuntimeError or ValueError:
    make it the OSError that :func:`export_run` turns into "cannot write OUT"."""
    try:
        yield
    except (RuntimeError, ValueError) as e:
        raise OSError(_first_line(e)) from None


# --- the formats: write(model, net, info, meta, tmp, images, opset, dynamic) and run(tmp, images, dynamic)


def _write_safetensors(model, net, info, meta, tmp, images, opset, dynamic) -> None:
    from hardctl.models import save_model

    reserved = {**info.to_metadata(), "format": "", "hardctl_version": ""}
    save_model(model, info, tmp, extra={k: v for k, v in meta.items() if k not in reserved})


def _run_safetensors(tmp, images, dynamic):
    import torch

    from hardctl.models import load_model

    reloaded, info = load_model(str(tmp))
    with torch.no_grad():
        return _with_normalisation(reloaded, info)(images)


def _write_onnx(model, net, info, meta, tmp, images, opset, dynamic) -> None:
    """torch's dynamo-based exporter (``dynamo=True``, the maintained one; the TorchScript-based one is
    deprecated), in one file (no external ``.data`` file), with the metadata in ``metadata_props``."""
    import torch

    example = _example(images, 2 if dynamic else 1)  # a batch of 1 would specialise a dynamic dimension
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    try:
        with _quiet():
            program = torch.onnx.export(net, (example,), dynamo=True, opset_version=opset, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=shapes)
    except Exception as e:  # torch.export and the ONNX translation raise many unrelated types
        raise ExportError(f"torch cannot export {info.arch} to ONNX: {_first_line(e)}",
                          hint="try --format torchscript, or rerun with --debug for the traceback") from e
    program.model.metadata_props.update(meta)
    with _writing():
        program.save(str(tmp), external_data=False)


def _run_onnx(tmp, images, dynamic):
    import numpy as np
    import onnxruntime
    import torch

    try:
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        # a fixed-batch file (batch 1) takes the images one at a time
        chunks = [images] if dynamic else list(images.split(1))
        outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: c.numpy()})[0] for c in chunks]
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise ExportError(f"onnxruntime cannot run the exported file: {_first_line(e)}",
                          hint="try another --opset, or upgrade onnxruntime") from None
    return torch.from_numpy(np.concatenate(outputs))


def _write_torchscript(model, net, info, meta, tmp, images, opset, dynamic) -> None:
    """A trace (``torch.jit.script`` fails on timm's models) at batch 2; the check runs it at another batch."""
    import torch

    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(net, _example(images, 2), check_trace=False)
    except Exception as e:  # tracing raises RuntimeError/TypeError/... from inside the model
        raise ExportError(f"torch cannot trace {info.arch} to TorchScript: {_first_line(e)}",
                          hint="try --format onnx, or rerun with --debug for the traceback") from e
    with _quiet(), _writing():
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta, sort_keys=True)})


def _run_torchscript(tmp, images, dynamic):
    import torch

    with _quiet(), torch.no_grad():
        return torch.jit.load(str(tmp), map_location="cpu")(images)


_FORMATS: dict[str, tuple[Callable[..., None], Callable[..., Any]]] = {
    "safetensors": (_write_safetensors, _run_safetensors),
    "onnx": (_write_onnx, _run_onnx),
    "torchscript": (_write_torchscript, _run_torchscript),
}

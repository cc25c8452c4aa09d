"""Shared fixtures: run the CLI in-process (fast) or as a real subprocess (entry points, env vars)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardctl.cli import main
from hardctl.distill.progress import Reporter


@dataclass
class Result:
    code: int
    out: str
    err: str


def one_line_error(result, code: int, *fragments: str) -> str:
    """The command exited with ``code`` and printed exactly one line on stderr, ``hardctl: error: ...``, with
    every fragment in it and no traceback; returns that line."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hardctl: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def cli(capsys):
    """``cli("train", "--model", ...)`` runs ``hardctl`` in this process and returns code/stdout/stderr."""

    def run(*args) -> Result:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(int(exc.value.code or 0), captured.out, captured.err)

    return run


def run_subprocess(*args, env: dict | None = None, cwd: Path | None = None) -> Result:
    """``hardctl`` as users run it: a fresh interpreter, entry points discovered from sys.path."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", "from hardctl.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A CNN teacher trained briefly on digits (shared by the tests that need a trained teacher)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "mnist_cnn", "--data", "digits", "--epochs", "2", "--lr", "3e-3",
              "--out", str(out)])
    assert exc.value.code == 0
    return out


def pip_install_target(package: Path, site: Path) -> Path:
    """``pip install`` an example plugin package into its own folder: a real dist-info with its entry points.

    pip builds in the source folder (setuptools writes ``build/`` and ``*.egg-info`` next to
    ``pyproject.toml``), so it builds a copy: the checkout's ``examples/`` stays as committed.
    """
    before = sorted(package.rglob("*"))
    with tempfile.TemporaryDirectory(prefix=f"{package.name}-") as scratch:
        source = Path(scratch) / package.name
        shutil.copytree(package, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(source)], check=True, capture_output=True)
    assert sorted(package.rglob("*")) == before, f"pip install wrote into {package}"
    return site


def listed_plugins(site: Path) -> dict[str, dict]:
    """What ``hardctl plugins --json`` reports in a fresh interpreter that sees ``site``, by plugin name."""
    import json

    result = run_subprocess("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.code == 0 and "warning" not in result.err, result.err
    return {p["name"]: p for p in json.loads(result.out)}


class InterruptAt(Reporter):
    """Simulates Ctrl-C in the middle of training, after ``step`` optimisation steps (resume tests)."""

    def __init__(self, step: int):
        self.at = step

    def step(self, record):
        if record["step"] == self.at:
            raise KeyboardInterrupt


def fake_hub_cache(root: Path, monkeypatch, fill) -> dict:
    """timm's ``test_resnet.r160_in1k`` weights (``fill(tensor)`` for each float tensor) in a Hugging Face cache
    under ``root`` laid out as the hub writes it, and that cache made the hub's; returns the weights."""
    import huggingface_hub.constants as hub_constants
    import safetensors.torch
    import timm

    reference = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    weights = {k: fill(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    snapshot = root / "models--timm--test_resnet.r160_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    safetensors.torch.save_file(weights, str(snapshot / "model.safetensors"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(root))
    return weights

"""The kill/resume matrix: a real ``hardctl distill`` killed with SIGKILL at four points, then ``--resume``.

Each run is a fresh interpreter that runs the CLI through a small wrapper (:data:`WRAPPER`). The wrapper counts
calls to the places a kill is interesting and, when ``KILL_AT=WHAT:N`` says so, SIGKILLs its own process on
the Nth one:

- ``student_step``: a student phase of the second epoch (Trainer.student_step);
- ``augmentor_step``: an augmentor phase late in the run (Trainer.augmentor_step);
- ``torch_save``: in the middle of writing the final checkpoint: half of ``last.pt``'s bytes are on disk in its
  temporary file (synced) when the process dies, which is what a kill during the write leaves;
- ``summary``: after the last checkpoint, before ``summary.json`` is written.

An uninterrupted run with the same seed gives the reference and, through ``COUNTS_TO``, how many calls of each
there are, so that the kill points follow the run's real shape. A resumed run must end where the straight
one ended: the same test accuracies in ``summary.json``, the same ``steps.jsonl`` and ``epochs.jsonl`` (but
for wall-clock ``time_s``) and byte-identical pool files. ``test_reliability.py`` checks the last case
in-process; here every case goes through the real process boundary, lock and all.

The runs are tiny (digits, 2 epochs, HARD with thresholds that switch phases every few iterations) and the
killed runs and their resumptions each run in parallel: about 40 s on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WRAPPER = r"""
import atexit, io, json, os, signal, sys
import torch
from hardctl.distill import rundir, run as run_module
from hardctl.distill.trainer import Trainer

target, _, nth = os.environ.get("KILL_AT", "").partition(":")
nth = int(nth or 0)
counts = {"student_step": 0, "augmentor_step": 0, "torch_save": 0, "summary": 0}

def due(name):
    counts[name] += 1
    return name == target and counts[name] == nth

def die():
    os.kill(os.getpid(), signal.SIGKILL)

for name in ("student_step", "augmentor_step"):
    def counted(self, *args, _original=getattr(Trainer, name), _name=name, **kwargs):
        if due(_name):
            die()
        return _original(self, *args, **kwargs)
    setattr(Trainer, name, counted)

real_save = torch.save
def save(obj, f, *args, **kwargs):  # checkpoints only: rundir.save_checkpoint writes through a file object
    if due("torch_save") and hasattr(f, "write"):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        die()
    return real_save(obj, f, *args, **kwargs)
rundir.torch.save = save

real_write_json = run_module.atomic_write_json
def write_json(path, obj):
    if os.path.basename(str(path)) == rundir.SUMMARY_FILE and due("summary"):
        die()
    return real_write_json(path, obj)
run_module.atomic_write_json = write_json

if os.environ.get("COUNTS_TO"):
    atexit.register(lambda: open(os.environ["COUNTS_TO"], "w").write(json.dumps(counts)))

from hardctl.cli import main
main()
"""

# thresholds that make HARD switch every few iterations, so that both phases and a pool of several
# augmentors happen within 2 short epochs
HARD_FAST = ["--l-min", "0.8", "--l-max", "0.9", "--switch-patience", "1", "--max-aug-steps", "5",
             "--aug-batch-size", "64"]


def _start(args: list, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *map(str, args)], env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _results(run: Path) -> dict:
    """What must not depend on whether the run was interrupted."""
    def jsonl(name: str) -> list[dict]:
        rows = [json.loads(line) for line in (run / name).read_text().splitlines() if line.strip()]
        return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]

    summary = json.loads((run / "summary.json").read_text())
    return {
        "test accuracies": {role: {k: v for k, v in part.items() if k.endswith("acc")}
                            for role, part in summary.items() if isinstance(part, dict) and "test_acc" in part},
        "steps": jsonl("steps.jsonl"),
        "epochs": jsonl("epochs.jsonl"),
        "pool": {p.name: p.read_bytes() for p in sorted((run / "augmentors").glob("*.safetensors"))},
    }


def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, digits_teacher):
    distill = ["distill", "--teacher", digits_teacher, "--student", "mnist_mlp", "--data", "digits",
               "--epochs", "2", "--batch-size", "128", "--seed", "3", *HARD_FAST]
    counts_file = tmp_path / "counts.json"
    code, err = _finish(_start([*distill, "--out", tmp_path / "straight"], env={"COUNTS_TO": str(counts_file)}))
    assert code == 0, err
    counts = json.loads(counts_file.read_text())
    reference = _results(tmp_path / "straight")
    # the run has the shape the kill points assume: both phases, a pool of several, two checkpoints
    assert counts["augmentor_step"] >= 8 and counts["student_step"] >= 8 and len(reference["pool"]) >= 3
    assert counts["torch_save"] >= 3 and counts["summary"] == 1
    assert reference["test accuracies"]["student"]["test_acc"] > 0

    kill_at = {
        "student phase": f"student_step:{counts['student_step'] * 3 // 4}",  # in the second epoch
        "augmentor phase": f"augmentor_step:{counts['augmentor_step'] * 3 // 4}",
        "checkpoint write": f"torch_save:{counts['torch_save']}",  # the final epoch's last.pt
        "before summary": "summary:1",
    }
    killed = {case: _start([*distill, "--out", tmp_path / case], env={"KILL_AT": point})
              for case, point in kill_at.items()}
    for case, proc in killed.items():
        code, err = _finish(proc)
        assert code == -signal.SIGKILL, (case, code, err)
        assert not (tmp_path / case / "summary.json").exists(), case
    torn = tmp_path / "checkpoint write" / "checkpoints"
    assert [p.name for p in torn.iterdir() if p.name.endswith(".tmp")], "the kill left no half-written checkpoint"

    resumed = {case: _start(["distill", "--resume", tmp_path / case]) for case in kill_at}
    for case, proc in resumed.items():
        code, err = _finish(proc)
        assert code == 0, (case, err)
        run = tmp_path / case
        got = _results(run)
        for part in reference:
            assert got[part] == reference[part], (case, part)
        leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == [], (case, leftovers)  # resume removed what the killed writer left

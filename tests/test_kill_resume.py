"""The kill/resume matrix: a real ``hardctl distill`` killed with SIGKILL at four points, then ``--resume``.

Each run is its own process running the CLI's ``main``: a server subprocess (:data:`SERVER`) imports hardctl
once and forks one child per run (importing torch and hardctl costs ~5 s a process; 9 runs would double the
test's time). The server counts calls to the places a kill is interesting and, when a job says
``kill_at="WHAT:N"``, the child SIGKILLs itself on the Nth one:

- ``student_step``: a student phase of the second epoch (Trainer.student_step);
- ``augmentor_step``: an augmentor phase late in the run (Trainer.augmentor_step);
- ``torch_save``: in the middle of writing the final checkpoint: half of ``last.pt``'s bytes are on disk in its
  temporary file (synced) when the process dies, which is what a kill during the write leaves;
- ``summary``: after the last checkpoint, before ``summary.json`` is written.

An uninterrupted run with the same seed gives the reference and how many calls of each there are, so that
the kill points follow the run's real shape. A resumed run must end where the straight one ended: the same
test accuracies in ``summary.json``, the same ``steps.jsonl`` and ``epochs.jsonl`` (but for wall-clock
``time_s``) and byte-identical pool files. ``test_reliability.py`` checks the last case in-process; here
every case crosses a real process death, the run directory's lock of a dead process included.

The runs are tiny (digits, 2 epochs, HARD with thresholds that switch phases every few iterations); the
killed runs run in parallel, then their resumptions: about 50 s on two busy cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="runs are forked from one server")]

SERVER = r"""
import io, json, os, signal, sys
import torch
from hardctl.cli import main
from hardctl.distill import rundir, run as run_module
from hardctl.distill.trainer import Trainer

kill = {"target": "", "nth": 0}
counts = {"student_step": 0, "augmentor_step": 0, "torch_save": 0, "summary": 0}

def due(name):
    counts[name] += 1
    return name == kill["target"] and counts[name] == kill["nth"]

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

def child(job):
    kill["target"], _, nth = job.get("kill_at", "").partition(":")
    kill["nth"] = int(nth or 0)
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 0
    try:
        main(job["args"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with open(job["log"] + ".counts", "w") as fh:
            json.dump(counts, fh)
        os._exit(code)

for line in sys.stdin:  # one batch of jobs a line, run in parallel; answers their exit statuses
    pids = []
    for job in json.loads(line):
        pid = os.fork()
        if pid == 0:
            child(job)
        pids.append(pid)
    codes = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        codes.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    print(json.dumps(codes), flush=True)
"""


class Runner:
    """:data:`SERVER` in a subprocess: batches of CLI runs, each a forked process, the batch in parallel."""

    def __init__(self, logs: Path):
        self.logs = logs
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def batch(self, jobs: dict[str, dict]) -> dict[str, tuple[int, str, dict]]:
        """``{name: {"args": [...], "kill_at": "WHAT:N"}}`` -> ``{name: (exit status, output, call counts)}``."""
        for name, job in jobs.items():
            job["args"] = [str(a) for a in job["args"]]
            job["log"] = str(self.logs / f"{name}.log")
        self.proc.stdin.write(json.dumps(list(jobs.values())) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the runner died"
        results = {}
        for (name, job), code in zip(jobs.items(), json.loads(line)):
            counts_file = Path(job["log"] + ".counts")
            counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
            results[name] = (code, Path(job["log"]).read_text(), counts)
        return results

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# thresholds that make HARD switch every few iterations, so that both phases and a pool of several
# augmentors happen within 2 short epochs
HARD_FAST = ["--l-min", "0.8", "--l-max", "0.9", "--switch-patience", "1", "--max-aug-steps", "5",
             "--aug-batch-size", "64"]


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


@pytest.fixture
def runner(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    runner = Runner(logs)
    yield runner
    runner.close()


def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, runner, digits_teacher):
    # runner first: its imports overlap the teacher's training when this is the session's first test
    distill = ["distill", "--teacher", digits_teacher, "--student", "mnist_mlp", "--data", "digits",
               "--epochs", "2", "--batch-size", "128", "--seed", "3", *HARD_FAST]
    code, output, counts = runner.batch({"straight": {"args": [*distill, "--out", tmp_path / "straight"]}})["straight"]
    assert code == 0, output
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
    killed = runner.batch({case: {"args": [*distill, "--out", tmp_path / case], "kill_at": point}
                           for case, point in kill_at.items()})
    for case, (code, output, _) in killed.items():
        assert code == -signal.SIGKILL, (case, code, output)
        assert not (tmp_path / case / "summary.json").exists(), case
    torn = tmp_path / "checkpoint write" / "checkpoints"
    assert [p.name for p in torn.iterdir() if p.name.endswith(".tmp")], "the kill left no half-written checkpoint"

    resumed = runner.batch({case: {"args": ["distill", "--resume", tmp_path / case]} for case in kill_at})
    for case, (code, output, _) in resumed.items():
        assert code == 0, (case, output)
        run = tmp_path / case
        got = _results(run)
        for part in reference:
            assert got[part] == reference[part], (case, part)
        leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == [], (case, leftovers)  # resume removed what the killed writer left

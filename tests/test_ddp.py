"""Multi-process runs (torchrun's variables, gloo on the CPU, 2 ranks): they compute what one process computes.

Each rank is a real ``hardctl`` process started with the variables ``torchrun`` sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the tests need neither a GPU nor torchrun's agent, and a rank can
be made to die at a chosen step. The student is ``mnist_mlp`` without dropout (the driver below builds it
with ``drop_rate=0``): dropout masks depend on how many rows a process draws, so only a model without it
can equal the one-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hardctl.distill.rundir import read_jsonl
from hardctl.distill.sampling import DistInfo, EpochSampler

DRIVER = '''
import os, sys
import hardctl.zoo as zoo
_init = zoo.MnistMLP.__init__
zoo.MnistMLP.__init__ = lambda self, *a, **k: _init(self, *a, **{**k, "drop_rate": 0.0})
die_at = int(os.environ.get("DIE_AT", 0))
if die_at:  # this rank dies (as a kill would) just before its die_at-th student step
    from hardctl.distill.trainer import Trainer
    _optimise = Trainer.optimise
    def optimise(self, *a, **k):
        if self.step_count + 1 == die_at:
            os._exit(9)
        return _optimise(self, *a, **k)
    Trainer.optimise = optimise
from hardctl.cli import main
main(sys.argv[1:])
'''
# SGD and a CE term: float rounding (the ranks sum in another order) stays at 1e-7 instead of being amplified by
# Adam's division by tiny second moments once a pure KD loss is near 0
KD = ["--student", "mnist_mlp", "--data", "digits", "--augmentor", "none", "--epochs", "2", "-b", "64", "--amp", "off",
      "--optimizer", "sgd", "--lr", "0.1", "--ce-weight", "1"]
HARD = ["--student", "mnist_mlp", "--data", "digits", "--augmentor", "affine", "--epochs", "2", "-b", "64",
        "--aug-batch-size", "64", "--l-min", "0.5", "--l-max", "0.8", "--max-aug-steps", "8", "--amp", "off"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp: Path, world: int, *args, die: dict[int, int] | None = None, timeout: float = 120) -> list:
    """``hardctl args`` as ``world`` ranks (one process when 1, without torchrun's variables); returns each
    rank's ``(exit code, stdout, stderr)``."""
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    port, procs = free_port(), []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DIE_AT": str((die or {}).get(rank, 0))}
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(driver), *map(str, args)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return [(p.wait(timeout=timeout), p.stdout.read(), p.stderr.read()) for p in procs]


def ok(results) -> None:
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, f"rank {rank}: {err}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def teacher(work) -> Path:
    out = work / "teacher"
    ok(launch(work, 1, "train", "--model", "mnist_mlp", "--data", "digits", "--epochs", "1", "--out", out))
    return out


@pytest.fixture(scope="module")
def hard_runs(work, teacher) -> dict[int, Path]:
    """The same HARD-Affine run with one process and with two ranks (global batch 64 in both)."""
    runs = {}
    for world in (1, 2):
        runs[world] = work / f"hard{world}"
        ok(launch(work, world, "distill", *HARD, "--teacher", teacher, "--out", runs[world]))
    return runs


def switch_lines(log: Path) -> list[str]:
    """A log's phase switches and lockstep checks, without their time stamps."""
    return [line[20:] for line in log.read_text().splitlines() if "phase" in line or "pool entry" in line]


def test_sampler_ranks_split_the_one_process_batches():
    """Rank r's k-th batch of B/W is rows r::W of the one-process k-th batch of B; a last global batch with
    fewer images than ranks is dropped (a rank would wait for a batch that never comes)."""
    single = list(EpochSampler(10, seed=4, batch_size=4))
    ranks = [list(EpochSampler(10, seed=4, dist=DistInfo(rank=r, world_size=2), batch_size=4)) for r in range(2)]
    for k in range(3):
        batch = single[4 * k:4 * k + 4]
        assert ranks[0][2 * k:2 * k + 2] + ranks[1][2 * k:2 * k + 2] == batch[0::2] + batch[1::2]
    three = [EpochSampler(10, seed=4, dist=DistInfo(rank=r, world_size=3), batch_size=3) for r in range(3)]
    assert [len(s) for s in three] == [3, 3, 3]  # 10 = 3 x 3 + 1: the last image is dropped
    assert sorted(i for s in three for i in s) == sorted(list(EpochSampler(10, seed=4))[:9])
    assert EpochSampler(10, seed=4, dist=DistInfo(rank=0, world_size=2), batch_size=4).global_batch(2, 4) == 2


def test_batch_that_does_not_split_is_refused(tmp_path, teacher):
    (code, _, err), _ = launch(tmp_path, 2, "distill", *KD, "-b", "63", "--teacher", teacher, "--out", tmp_path / "r")
    assert code == 2 and err.strip() == ("hardctl: error: --batch-size 63 is global and does not split over 2 processes "
                                         "(use a multiple of 2)")
    assert not (tmp_path / "r").exists()


def test_kd_two_ranks_equal_one_process(work, teacher):
    """2 ranks x 32 rows = 1 process x 64: the same loss at every step and the same final weights."""
    runs = {}
    for world in (1, 2):
        runs[world] = work / f"kd{world}"
        results = launch(work, world, "distill", *KD, "--teacher", teacher, "--out", runs[world], "--json")
        ok(results)
    assert results[1][1] == ""  # rank 1 prints no result: rank 0 does
    one, two = read_jsonl(runs[1] / "steps.jsonl"), read_jsonl(runs[2] / "steps.jsonl")
    assert len(one) == len(two) == 2 * 21  # 1293 images / 64: 21 steps per epoch, the last of 13 images
    for a, b in zip(one, two, strict=True):
        assert (a["step"], a["epoch"]) == (b["step"], b["epoch"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1e-4)
    w1, w2 = load_file(runs[1] / "last.safetensors"), load_file(runs[2] / "last.safetensors")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6, rtol=0) for k in w1)
    assert json.loads((runs[2] / "summary.json").read_text())["world_size"] == 2
    assert "[distributed]\nworld_size = 2\nsync_bn = false" in (runs[2] / "config.toml").read_text()
    assert "world_size = 1" in (runs[1] / "config.toml").read_text()
    written = {p.name for p in runs[2].iterdir()}
    assert "log.rank1.txt" in written and not any("rank0" in name for name in written)


@pytest.mark.slow
def test_hard_affine_ranks_in_lockstep(hard_runs):
    """Both ranks switch on the same iterations (the one-process run's), hold bit-identical augmentors
    after every augmentor phase, and one set of pool files is written."""
    two = hard_runs[2]
    lines = switch_lines(two / "log.txt")
    assert lines == switch_lines(two / "log.rank1.txt")  # same switches, same augmentor checksums
    checks = [line for line in lines if "identical on all 2 ranks" in line]
    summary = json.loads((two / "summary.json").read_text())["hard"]
    assert summary["switches"] >= 4 and len(checks) == summary["pool_size"] - 1
    pool = sorted((two / "augmentors").glob("pool-*.safetensors"))
    assert len(pool) == summary["pool_size"]
    for index, line in enumerate(checks, start=1):  # rank 1's augmentor is the one rank 0 wrote, to the bit
        written = sum(float(t.double().sum()) for t in load_file(pool[index]).values())
        assert line.endswith(f"(parameter sum {written:.12g})")
    phases = [(r["iter"], r.get("phase")) for r in read_jsonl(two / "steps.jsonl")]
    assert phases == [(r["iter"], r.get("phase")) for r in read_jsonl(hard_runs[1] / "steps.jsonl")]
    assert summary["switches"] == json.loads((hard_runs[1] / "summary.json").read_text())["hard"]["switches"]


def test_sharded_eval_equals_one_process(work, teacher):
    """`hardctl eval` with 2 ranks: every count of the one-process evaluation, on sets of odd sizes."""
    rows = {}
    for world in (1, 2):
        results = launch(work, world, "eval", "--model", teacher, "--data", "digits", "--json")
        ok(results)
        rows[world] = json.loads(results[0][1])
        if world == 2:
            assert results[1][1] == ""  # rank 1 reports nothing
    assert len(rows[1]) == len(rows[2]) > 0
    for a, b in zip(rows[1], rows[2], strict=True):
        assert (a["set"], a.get("images"), a.get("acc"), a.get("top5")) == (b["set"], b.get("images"), b.get("acc"),
                                                                             b.get("top5"))
        if a.get("loss") is not None:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)


def test_killed_rank_ends_the_run_with_one_line(tmp_path, teacher):
    """Rank 1 dies at step 5: rank 0 stops with one line (exit 1) instead of waiting for it."""
    started = time.perf_counter()
    (code, _, err), (code1, _, _) = launch(tmp_path, 2, "distill", *KD, "--teacher", teacher, "--out",
                                           tmp_path / "run", "--dist-timeout", "30", die={1: 5}, timeout=90)
    assert code1 == 9 and code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("hardctl: error: rank 0: lost the other ranks (") and "--resume" in line
    assert "Traceback" not in err
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_resume_two_ranks_continues_exactly(work, tmp_path, teacher, hard_runs):
    """A 2-rank HARD run whose rank 1 dies in epoch 2 resumes from epoch 1's checkpoint and logs what the
    uninterrupted run logged; resuming it with another world size is refused."""
    out = tmp_path / "run"
    results = launch(tmp_path, 2, "distill", *HARD, "--teacher", teacher, "--out", out, die={1: 25})
    assert results[1][0] == 9 and results[0][0] == 1
    ok(launch(tmp_path, 2, "distill", "--resume", out))
    assert read_jsonl(out / "steps.jsonl") == read_jsonl(hard_runs[2] / "steps.jsonl")
    w1, w2 = load_file(out / "last.safetensors"), load_file(hard_runs[2] / "last.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    (code, _, err), = launch(tmp_path, 1, "distill", "--resume", out)
    assert code == 2 and err.strip() == (f"hardctl: error: {out} was trained by 2 processes, this resume has 1 "
                                         "(resume it with torchrun --nproc-per-node 2)")

"""The run directory's JSON-lines logs: one reader for ``--resume`` and ``visualize`` that drops a torn
last line (a run killed mid-write) and refuses any other damage."""

from __future__ import annotations

import json

import pytest

from hardctl.distill import rundir
from hardctl.errors import CheckpointError
from hardctl.runfiles import EPOCHS_FILE, STEPS_FILE
from hardctl.visualize import read_steps, switches_from_epochs

TORN = '{"iter": 3, "aug_err'


def write_lines(path, *lines: str, newline: bool = True) -> None:
    path.write_text("\n".join(lines) + ("\n" if newline else ""))


def test_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / STEPS_FILE
    write_lines(path, '{"iter": 1}', "", '{"iter": 2}', TORN, newline=False)
    assert rundir.read_jsonl(path) == [{"iter": 1}, {"iter": 2}]
    assert rundir.JsonlLog(path).read() == [{"iter": 1}, {"iter": 2}]
    assert rundir.read_jsonl(tmp_path / "missing.jsonl") == []


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / STEPS_FILE
    write_lines(path, '{"iter": 1}', TORN, '{"iter": 3}')
    with pytest.raises(CheckpointError, match=r"steps\.jsonl: line 2 is not a JSON object") as exc:
        rundir.read_jsonl(path)
    assert exc.value.exit_code == 1 and "--force" in exc.value.hint
    write_lines(path, '{"iter": 1}', "[1, 2]", '{"iter": 3}')  # valid JSON but not a record
    with pytest.raises(CheckpointError, match="line 2"):
        rundir.read_jsonl(path)


def test_resume_truncation_rewrites_the_log_without_the_torn_line(tmp_path):
    log = rundir.JsonlLog(tmp_path / EPOCHS_FILE)
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "switches": epoch * 2})
    with open(log.path, "a") as fh:
        fh.write('{"epoch": 4, "swi')
    log.truncate_after("epoch", 2)  # resuming from the checkpoint of epoch 2
    assert log.path.read_text() == '{"epoch": 1, "switches": 2}\n{"epoch": 2, "switches": 4}\n'
    log.append({"epoch": 3, "switches": 5})
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]


def test_visualize_reads_the_logs_through_the_same_reader(tmp_path):
    records = [{"iter": i, "aug_error": 0.1 * i, "phase": "student"} for i in (1, 2)]
    records.append({"iter": 2, "aug_error": 0.5, "phase": "augmentor"})  # a resumed run repeats iteration 2
    records.append({"iter": 3, "loss": 1.0})  # no switching statistic: not plotted
    write_lines(tmp_path / STEPS_FILE, *map(json.dumps, records), TORN, newline=False)
    assert [(r["iter"], r["aug_error"]) for r in read_steps(tmp_path / STEPS_FILE)] == [(1, 0.1), (2, 0.5)]
    write_lines(tmp_path / EPOCHS_FILE, '{"epoch": 1, "switches": 1}', '{"epoch": 2, "switches": 4}', '{"epo',
                newline=False)
    assert switches_from_epochs(tmp_path) == 4
    write_lines(tmp_path / STEPS_FILE, '{"iter": 1, "aug_error": 0.1}', "garbage", '{"iter": 2, "aug_error": 0.2}')
    with pytest.raises(CheckpointError, match="line 2"):
        read_steps(tmp_path / STEPS_FILE)

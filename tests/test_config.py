"""RunConfig and its file: one TOML reader, typed values, and the checks a user meets first."""

from __future__ import annotations

import pytest

from hardctl import tomlio
from hardctl.config import RunConfig
from hardctl.errors import UsageError
from hardctl.eval.runner import _teacher_of
from hardctl.runfiles import CONFIG_FILE


def test_read_toml_names_the_file_in_one_line_usage_errors(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[recipe]\nname = "x"\n')
    assert tomlio.read_toml(path) == {"recipe": {"name": "x"}}
    with pytest.raises(UsageError, match=f"^recipe file {tmp_path / 'no.toml'} does not exist$"):
        tomlio.read_toml(tmp_path / "no.toml", "recipe")
    with pytest.raises(UsageError, match="is a folder, not a TOML file"):
        tomlio.read_toml(tmp_path)
    path.write_text("[recipe\n")
    with pytest.raises(UsageError, match=f"^cannot parse recipe {path}: ") as exc:
        tomlio.read_toml(path, "recipe")
    assert "\n" not in exc.value.message


def test_a_run_directory_is_read_back_by_runconfig_load_only(tmp_path):
    cfg = RunConfig(command="distill", teacher="runs/t", epochs=3, lr=0.01)
    cfg.save(tmp_path)
    assert RunConfig.load(tmp_path) == cfg
    assert _teacher_of(tmp_path) == "runs/t"  # hardctl eval pairs a student with its teacher through it
    RunConfig(command="train").save(tmp_path)
    assert _teacher_of(tmp_path) is None
    (tmp_path / CONFIG_FILE).write_text("[run\n")
    assert _teacher_of(tmp_path) is None  # unreadable: no gap column, not an error
    with pytest.raises(UsageError, match=f"cannot parse {tmp_path / CONFIG_FILE}"):
        RunConfig.load(tmp_path)
    with pytest.raises(UsageError, match="not a hardctl run directory"):
        RunConfig.load(tmp_path / "nowhere")

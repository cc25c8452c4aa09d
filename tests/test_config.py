"""RunConfig and its file: one TOML reader, typed values, and the checks a user meets first."""

from __future__ import annotations

import pytest

from hardctl import tomlio
from hardctl.config import RunConfig
from hardctl.errors import UsageError
from hardctl.eval.runner import teacher_of
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
    assert teacher_of(tmp_path) == "runs/t"  # hardctl eval pairs a student with its teacher through it
    RunConfig(command="train").save(tmp_path)
    assert teacher_of(tmp_path) is None
    (tmp_path / CONFIG_FILE).write_text("[run\n")
    assert teacher_of(tmp_path) is None  # unreadable: no gap column, not an error
    with pytest.raises(UsageError, match=f"cannot parse {tmp_path / CONFIG_FILE}"):
        RunConfig.load(tmp_path)
    with pytest.raises(UsageError, match="not a hardctl run directory"):
        RunConfig.load(tmp_path / "nowhere")


def test_one_typed_parser_converts_flag_strings_and_checks_typed_values():
    from hardctl.values import check_value, parse_value

    assert parse_value(" yes ", bool, "x") is True and parse_value("off", bool, "x") is False
    assert parse_value("3", int, "x") == 3 and parse_value("1e-3", float, "x") == 0.001
    assert parse_value("none", int | None, "x") is None and parse_value("", float | None, "x") is None
    assert parse_value("{sigma = 0.1}", dict, "x") == {"sigma": 0.1}
    assert parse_value("[[-8, -7], [5, 6]]", tuple[tuple[float, float], ...], "x") == ((-8.0, -7.0), (5.0, 6.0))
    assert parse_value("[1, 2]", tuple[int, ...], "x") == (1, 2)
    assert check_value(2, float, "x") == 2.0 and isinstance(check_value(2, float, "x"), float)
    for raw, kind, message in [
        ("ten", int, "opt must be an integer, got 'ten'"),
        ("inf", float, "opt must be a number, got 'inf'"),
        ("maybe", bool, "opt must be true or false, got 'maybe'"),
        ("3", dict, "opt must be a table such as {key = 1}, got '3'"),
        ("[1.5]", tuple[int, ...], "opt must be a list of integers, got '[1.5]'"),
    ]:
        with pytest.raises(UsageError, match=f"^{message.replace('[', '.').replace(']', '.')}$"):
            parse_value(raw, kind, "opt")
    for value, kind in [("3", int), (True, int), (1.5, int), (1, bool), (None, int), (3, str)]:
        with pytest.raises(UsageError, match="^opt must be"):
            check_value(value, kind, "opt")


def test_runconfig_from_dict_checks_every_type_and_names_the_key():
    assert RunConfig.from_dict({"epochs": 2, "lr": 1, "shift_px": None}).lr == 1.0
    for values, message in [({"epochs": "2"}, "config epochs must be an integer, got '2'"),
                            ({"lr": "fast"}, "config lr must be a number, got 'fast'"),
                            ({"pretrained": 1}, "config pretrained must be true or false, got 1"),
                            ({"aug_options": 3}, "config aug_options must be a table")]:
        with pytest.raises(UsageError, match=f"^{message}") as exc:
            RunConfig.from_dict(values)
        assert exc.value.exit_code == 2


def test_switch_thresholds_are_checked_once_for_every_caller():
    from hardctl.config import threshold_problem

    assert threshold_problem(0.1, 0.3) is None
    assert threshold_problem(0.5, 0.4, names=("--l-min", "--l-max")) == "--l-min (0.5) must be below --l-max (0.4)"
    assert threshold_problem(-0.1, 0.4) == "l_min (-0.1) must be >= 0"
    with pytest.raises(UsageError, match=r"^--l-min \(0.3\) must be below --l-max \(0.3\)$"):
        RunConfig(command="distill", teacher="t", l_min=0.3, l_max=0.3).validate()

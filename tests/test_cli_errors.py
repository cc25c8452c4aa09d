"""The CLI's errors as users meet them: the option parser's errors, Ctrl-C and the help texts.

Every usage error is exactly one ``hardctl: error: <problem> (<fix>)`` line on stderr with exit 2 (the
option parser's own included, which used to print Click's four-line usage box); Ctrl-C during a run
says how to continue it and exits 130; the help of options whose defaults come from the augmentor says
so and gives the built-in values.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import InterruptAt, one_line_error
from hardctl.errors import HardctlError, UsageError, shorten

PARSER_ERRORS = [
    (["train", "--epochs"], ["--epochs needs a value", "see hardctl train --help"]),
    (["train", "--epochs", "abc"], ["invalid value for --epochs", "valid integer", "see hardctl train --help"]),
    (["train", "--epochs", "0"], ["invalid value for --epochs", "greater than or equal to 1"]),
    (["distill", "--batch-size", "-3"], ["invalid value for --batch-size", "greater than or equal to 1"]),
    (["train", "--bogus"], ["hardctl train has no option '--bogus'", "see hardctl train --help"]),
    (["train", "--epoch", "3"], ["has no option '--epoch'", "did you mean '--epochs'?"]),
    (["export", "--formt", "onnx"], ["hardctl export has no option '--formt'", "did you mean '--format'"]),
    (["plugins", "--bogus"], ["hardctl plugins has no option '--bogus'", "see hardctl plugins --help"]),
    (["train", "--json=3"], ["--json takes no value", "write --json alone"]),
    (["visualize"], ["hardctl visualize needs the argument RUN_DIR", "see hardctl visualize --help"]),
    (["recipes", "run"], ["hardctl recipes run needs the argument NAME_OR_PATH"]),
    (["recipes", "run", "--seeds"], ["--seeds needs a value", "see hardctl recipes run --help"]),
    (["train", "a", "b"], ["unexpected extra argument", "see hardctl train --help"]),
    (["trian"], ["unknown command 'trian'; did you mean 'train'?", "commands: distill, eval", "see hardctl --help"]),
    (["recipes", "rnu"], ["unknown command 'rnu'; did you mean 'run'?", "see hardctl recipes --help"]),
]


@pytest.mark.parametrize("args, words", PARSER_ERRORS, ids=[" ".join(a) for a, _ in PARSER_ERRORS])
def test_parser_errors_are_one_line_with_exit_2(cli, args, words):
    result = cli(*args)
    line = one_line_error(result, 2, *words)
    assert "Usage:" not in result.err and "Try '" not in result.err and result.out == ""
    assert line.endswith(")"), line  # <problem> (<fix>)


def test_parser_error_under_debug_keeps_the_line(cli):
    result = cli("--debug", "train", "--epochs", "abc")
    assert result.code == 2 and result.err.rstrip().splitlines()[-1].startswith("hardctl: error: invalid value")


def test_bare_hardctl_still_shows_help(cli):
    result = cli()
    assert "Usage" in result.out + result.err and "distill" in result.out + result.err


def test_a_real_process_prints_the_same_line():
    proc = subprocess.run([sys.executable, "-c", "from hardctl.cli import main; main()", "train", "--epochs", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "hardctl: error: invalid value for --epochs: input should be a valid integer, unable to parse string as "
        "an integer (see hardctl train --help)"]


def test_ctrl_c_during_a_run_says_how_to_continue(cli, monkeypatch, tmp_path):
    import hardctl.distill.progress as progress

    out = tmp_path / "run"
    monkeypatch.setattr(progress, "reporter_for", lambda every: InterruptAt(step=30))  # epoch 2 of 11-step epochs
    result = cli("train", "--model", "mlp", "--data", "digits", "--epochs", "3", "--out", out)
    assert result.code == 130
    lines = [line for line in result.err.splitlines() if line.startswith("hardctl:")]
    assert lines == [f"hardctl: interrupted; continue with: hardctl train --resume {out}"]
    assert "Traceback" not in result.err
    monkeypatch.undo()
    resumed = cli("train", "--resume", out)  # the line's command works
    assert resumed.code == 0, resumed.err
    assert "resuming after epoch" in resumed.err


def test_ctrl_c_before_the_first_checkpoint_says_start_again(cli, monkeypatch, tmp_path):
    import hardctl.distill.progress as progress

    out = tmp_path / "run"
    monkeypatch.setattr(progress, "reporter_for", lambda every: InterruptAt(step=2))
    result = cli("train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--out", out)
    assert result.code == 130
    assert [line for line in result.err.splitlines() if line.startswith("hardctl:")] == [
        f"hardctl: interrupted before the first checkpoint; start again with: hardctl train ... --out {out} --force"]


def test_ctrl_c_outside_a_run_is_one_line(cli, monkeypatch):
    import hardctl.cli.plugins as plugins_cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plugins_cli.plugin_registry.manager, "plugin_infos", interrupt)
    result = cli("plugins")
    assert result.code == 130 and result.err.strip() == "hardctl: interrupted"


def test_shorten_cuts_foreign_text_at_a_word():
    text = "size mismatch for fc.weight: copying a param with shape " * 10
    short = shorten(text, 200)
    assert len(short) <= 201 and short.endswith("…") and text.startswith(short[:-1])
    assert text[len(short) - 1] in " :,;"  # cut between words, not inside one
    assert shorten("first line\nsecond") == "first line"
    assert shorten("x" * 300, 200) == "x" * 200 + "…"


def test_a_long_hardctl_error_is_never_cut(cli):
    message = "word " * 80
    error = UsageError(message.strip(), hint="the fix at the end")
    assert error.oneline().endswith("(the fix at the end)") and len(error.oneline()) > 400
    assert isinstance(error, HardctlError) and error.exit_code == 2


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-c", "from hardctl.cli import main; main()", *args, "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", proc.stdout))


def test_distill_help_names_the_augmentor_defaults_and_the_augmentors():
    text = _help("distill")
    for option, affine, mix in [("--l-min", "0.05", "unused"), ("--l-max", "0.40", "unused"),
                                ("--switch-patience", "5", "unused"), ("--lambda-s", "1.0", "1.0"),
                                ("--lambda-t", "1.0", "0.0"), ("--aug-lr", "0.05", "0.01"),
                                ("--aug-batch-size", "128", "unused")]:
        part = text[text.index(option + " <"):]
        part = part[:part.index("lists every augmentor's]")]
        assert f"[default: the augmentor's: affine and noise {affine}, mix {mix};" in part, (option, part)
    augmentor = text[text.index("--augmentor "):text.index("--aug-opt")]
    assert all(name in augmentor for name in ("affine", "noise", "mix", "noise+affine", "none"))
    assert "vdvae" not in text
    assert "digits28" in text and "imagenet:DIR" in text


def test_the_written_defaults_match_the_augmentors():
    """distill --help writes the built-ins' HardDefaults out (reading them would import torch)."""
    from hardctl_builtins.augmentors import AffineAugmentor, NoiseAugmentor
    from hardctl_builtins.hardmix import MixAugmentor

    for cls in (AffineAugmentor, NoiseAugmentor):
        d = cls.hard_defaults
        assert (d.l_min, d.l_max, d.patience, d.lambda_s, d.lambda_t, d.lr, d.batch_size) == (
            0.05, 0.40, 5, 1.0, 1.0, 0.05, 128)
    m = MixAugmentor.hard_defaults
    assert (m.lambda_s, m.lambda_t, m.lr) == (1.0, 0.0, 0.01)


def test_recipes_run_set_help_keeps_its_section_names():
    text = _help("recipes", "run")
    assert "the [eval] and [results] sections" in text


def test_command_help_reflows_at_80_columns_and_keeps_its_brackets():
    """Docstrings hard-wrapped at 100 columns broke mid-sentence at 80, and Rich took D[s(x̃), t(x̃)] for markup."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-c", "from hardctl.cli import main; main()", "distill", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    intro = proc.stdout.split("╭")[0]
    lines = [line.rstrip() for line in intro.splitlines() if line.strip()]
    assert "D[s(x̃), t(x̃)]" in " ".join(lines) and "D[t(x̃), t(x)]" in " ".join(lines)
    assert all(len(line) <= 80 for line in lines)
    # a paragraph is re-wrapped as a whole: no line is left much shorter than the width before the paragraph ends
    short = [a for a, b in zip(lines[1:], lines[2:]) if len(a) < 50 and not a.rstrip().endswith(".")]
    assert not short, short

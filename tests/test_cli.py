"""The command line: the documented workflow end to end, and every bad input's message and exit code."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hardctl.models import create_model, load_model, save_model
from conftest import one_line_error


@pytest.mark.slow
def test_train_distill_eval_export_workflow(cli, tmp_path, digits_teacher):
    kd = tmp_path / "kd"
    result = cli("distill", "--teacher", digits_teacher, "--student", "mnist_mlp", "--data", "digits",
                 "--epochs", "2", "--lr", "2e-3", "--out", kd, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)  # stdout holds only the result; progress went to stderr
    assert "epoch 2/2" in result.err
    assert set(summary) >= {"student", "teacher", "best_val_acc"}

    result = cli("eval", "--model", kd, "--model", digits_teacher, "--data", "digits", "--shifted", "--json")
    assert result.code == 0, result.err
    rows = {(r["model"], r["set"]): r for r in json.loads(result.out)}
    assert rows[(str(kd), "centered")]["acc"] == pytest.approx(summary["student"]["test_acc"])
    assert rows[(str(kd), "shifted")]["acc"] == pytest.approx(summary["student"]["shifted_acc"])
    assert rows[(str(digits_teacher), "shifted")]["acc"] == pytest.approx(summary["teacher"]["shifted_acc"])
    assert rows[(str(kd), "centered")]["images"] == 360

    exported = tmp_path / "student.safetensors"
    result = cli("export", kd, "--out", exported)
    assert result.code == 0, result.err
    with safe_open(exported, "pt") as fh:
        meta = fh.metadata()
    assert meta["arch"] == "hard_mnist_mlp" and meta["teacher"] == str(digits_teacher)
    assert float(meta["test_acc"]) == pytest.approx(summary["student"]["test_acc"], abs=1e-3)
    model, info = load_model(str(exported))
    original, _ = load_model(str(kd))
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(model.eval()(x), original.eval()(x))
    result = cli("eval", "--model", exported, "--data", "digits", "--json")
    assert json.loads(result.out)[0]["acc"] == pytest.approx(summary["student"]["test_acc"])

    # the deployable files of the trained student: metadata from the run, checked on its test images
    result = cli("export", kd, "--format", "onnx", "--dynamic-batch", "--out", tmp_path / "student.onnx", "--json")
    assert result.code == 0, result.err
    onnx_export = json.loads(result.out)
    assert onnx_export["max_abs_diff"] < 1e-5 and onnx_export["checked_on"] == "32 test images of digits"
    assert onnx_export["test_acc"] == meta["test_acc"] and json.loads(onnx_export["classes"])[3] == "3"


def test_table_output_and_help(cli):
    result = cli("distill", "--help")
    assert result.code == 0
    assert "T²·KL" in result.out and "Distillation loss" in result.out and "Examples" in result.out
    result = cli("--version")
    assert result.code == 0
    assert result.out.startswith("hardctl 0.1.0\ntorch ") and "CUDA" in result.out and "builtin_datasets" in result.out
    result = cli("plugins")
    assert result.code == 0 and "builtin_suites" in result.out


def test_unknown_model_gets_did_you_mean(cli, tmp_path):
    result = cli("train", "--model", "mnist_cnnn", "--data", "digits", "--out", tmp_path / "x")
    one_line_error(result, 2, "unknown model 'mnist_cnnn'", "did you mean", "mnist_cnn")
    assert not (tmp_path / "x").exists()  # a run that never started leaves nothing behind


def test_unknown_data_spec_and_missing_files(cli, tmp_path):
    one_line_error(cli("train", "--data", "digts", "--out", tmp_path / "a"), 2, "unknown data set 'digts'", "digits")
    one_line_error(cli("train", "--data", f"mnist:{tmp_path}", "--out", tmp_path / "b"), 2, "train-images-idx3-ubyte")
    one_line_error(cli("eval", "--model", "x.safetensors", "--data", "cifar10"), 2, "cifar10", "needs a folder")


def test_corrupt_and_truncated_weights_are_runtime_errors(cli, tmp_path):
    model, info = create_model("mnist_cnn", num_classes=10, in_chans=1, img_size=(16, 16))
    good = tmp_path / "teacher.safetensors"
    save_model(model, info, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    result = cli("distill", "--teacher", truncated, "--data", "digits", "--out", tmp_path / "kd")
    one_line_error(result, 1, "truncated.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    one_line_error(cli("eval", "--model", garbage, "--data", "digits"), 1, "garbage.safetensors")


def test_teacher_with_other_classes_than_the_data(cli, tmp_path):
    model, info = create_model("mnist_cnn", num_classes=5, in_chans=1, img_size=(16, 16))
    path = tmp_path / "five.safetensors"
    save_model(model, info, path)
    result = cli("distill", "--teacher", path, "--data", "digits", "--out", tmp_path / "kd")
    one_line_error(result, 2, "predicts 5 classes", "has 10")


def test_bare_timm_teacher_needs_pretrained(cli, tmp_path):
    result = cli("distill", "--teacher", "mnist_cnn", "--data", "digits", "--out", tmp_path / "kd")
    one_line_error(result, 2, "random weights", "--pretrained")


def test_existing_output_is_never_clobbered(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    one_line_error(cli("train", "--model", "mlp", "--data", "digits", "--out", out), 2, "not empty", "--resume", "--force")
    one_line_error(cli("train", "--model", "mlp", "--data", "digits", "--out", out, "--force"), 2,
                   "not a hardctl run directory")
    assert (out / "precious.txt").read_text() == "keep me"


def test_unwritable_output_folder(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(cli("train", "--model", "mlp", "--data", "digits", "--out", blocker / "run"), 2, "cannot create --out")


def test_resume_refuses_changed_options_and_non_runs(cli, tmp_path, digits_teacher):
    one_line_error(cli("train", "--resume", digits_teacher, "--lr", "0.5"), 2, "drop --lr")
    one_line_error(cli("distill", "--resume", digits_teacher), 2, "is a 'train' run")
    one_line_error(cli("train", "--resume", tmp_path), 2, "not a hardctl run directory")
    one_line_error(cli("train", "--resume", digits_teacher), 2, "already finished: it ran its 2 epochs")


def test_option_validation_is_a_usage_error(cli, tmp_path):
    one_line_error(cli("train", "--data", "digits", "--amp", "fp8", "--out", tmp_path / "r"), 2, "--amp must be")
    result = cli("train", "--epochs", "0")
    assert result.code == 2 and "--epochs" in result.err  # click's own range check


def test_debug_shows_the_traceback(cli, tmp_path):
    result = cli("--debug", "train", "--model", "nope_model", "--data", "digits", "--out", tmp_path / "x")
    assert result.code == 2 and "Traceback" in result.err and "unknown model 'nope_model'" in result.err

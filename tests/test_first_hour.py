"""What a new user meets in the first hour: ``--pretrained`` without network, and the files' permissions.

Offline, ``--pretrained`` used to spend about a minute in huggingface_hub's retries (22 lines of them) and then
say "drop --pretrained" to a teacher that had just been told to "add --pretrained". Now it answers at once
with one line that says how to get the weights. No test here waits for a real network timeout: the network
is either switched off the hub's way (``HF_HUB_OFFLINE``) or blocked at ``socket.create_connection``.

Files hardctl writes used to be 0600 whenever the writer made them so (safetensors does): renaming a
temporary file keeps its mode. They now get what a plain ``open()`` gives, ``0666 & ~umask``.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
import torch

from hardctl.config import RunConfig
from hardctl.errors import ModelError
from hardctl.models import create_model, save_model
from conftest import fake_hub_cache, one_line_error

hub_constants = pytest.importorskip("huggingface_hub.constants")

HOW_TO_GET_THEM = ("could not be downloaded", "Hugging Face cache", "resnet18:FILE", ".safetensors file")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, so that weights a developer happens to have cached change nothing."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every TCP connection fails at once, as with no network; returns the addresses that were tried.

    huggingface_hub's HTTP client (httpx) connects through its own socket code, so its attempts are also
    refused by blocking ``socket.socket.connect``."""
    tried: list = []

    def refuse(address, *args, **kwargs):
        tried.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    return tried


def _pretrained_resnet18() -> ModelError:
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        create_model("resnet18", num_classes=10, in_chans=3, img_size=32, pretrained=True)
    assert time.perf_counter() - start < 10  # not the minute of retries
    message = str(err.value)
    assert "\n" not in message and all(words in message for words in HOW_TO_GET_THEM), message
    assert "drop --pretrained" not in message  # a teacher needs weights: never advise going without
    return err.value


def test_hf_hub_offline_fails_at_once_with_how_to_get_the_weights(monkeypatch, empty_hub_cache):
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so the parsed constant is what counts
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    error = _pretrained_resnet18()
    assert "HF_HUB_OFFLINE is set" in error.message and "unset HF_HUB_OFFLINE" in error.hint
    assert error.exit_code == 2
    assert hub_constants.HF_HUB_OFFLINE is True  # the user's setting is left as it was


def test_no_network_fails_at_once_and_mentions_hf_hub_offline(no_network, empty_hub_cache):
    error = _pretrained_resnet18()
    assert "huggingface.co is unreachable" in error.message
    assert "HF_HUB_OFFLINE=1 skips the network" in error.hint
    assert no_network and all(address[0] == "huggingface.co" for address in no_network)
    assert len(no_network) == 1  # one quick check, no retries
    assert hub_constants.HF_HUB_OFFLINE is False  # the cache-only attempt put the switch back


def test_cached_weights_load_without_touching_the_network(tmp_path, monkeypatch, no_network):
    """Weights in the cache are used even when HF_HUB_OFFLINE is not set and no network is there."""
    import timm

    reference = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    weights = fake_hub_cache(tmp_path / "hub", monkeypatch, lambda v: torch.full_like(v, 0.125))

    model, _ = create_model("test_resnet.r160_in1k", num_classes=7, in_chans=3, img_size=32, pretrained=True)
    assert no_network == []  # the cache answered; nothing was even checked
    conv = reference.pretrained_cfg["first_conv"] + ".weight"
    assert torch.equal(model.state_dict()[conv], weights[conv])


def test_the_advertised_distill_line_offline_is_one_error_line(cli, monkeypatch, empty_hub_cache, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    result = cli("distill", "--teacher", "resnet50", "--student", "vit_small", "--augmentor", "mix",
                 "--pretrained", "--out", tmp_path / "run")
    one_line_error(result, 2, "pretrained weights of resnet50 could not be downloaded", "resnet50:FILE",
                   "Hugging Face cache")
    assert not (tmp_path / "run" / "model.safetensors").exists()


# --- file permissions -----------------------------------------------------------------------------------


@pytest.fixture
def umask():
    """Set the process umask for one test and put the previous one back."""
    previous = os.umask(0o022)

    def set_to(mask: int) -> None:
        os.umask(mask)

    yield set_to
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name == "nt", reason="Unix file modes")
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_saved_weights_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    model, info = create_model("mlp", num_classes=10, in_chans=1, img_size=8)
    path = save_model(model, info, tmp_path / "model.safetensors")
    assert _mode(path) == expected
    probe = tmp_path / "plain"
    probe.write_bytes(b"")  # what a plain open() gives, the rule the weights file must follow
    assert _mode(probe) == expected


@pytest.mark.skipif(os.name == "nt", reason="Unix file modes")
def test_an_exported_model_is_readable_by_others_under_umask_022(cli, tmp_path, umask):
    umask(0o022)
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(command="distill", data="digits", model="hard_mnist_mlp", teacher="teacher-run",
              augmentor="none").save(run)
    model, info = create_model("hard_mnist_mlp", num_classes=10, in_chans=1, img_size=16)
    save_model(model, info, run / "model.safetensors")
    out = tmp_path / "student.safetensors"
    result = cli("export", run, "--out", out)
    assert result.code == 0, result.err
    assert _mode(out) == 0o644 and _mode(run / "model.safetensors") == 0o644
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

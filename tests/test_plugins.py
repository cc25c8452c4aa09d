"""Plugins: a real third-party distribution installed with pip, broken plugins, blocking, listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import listed_plugins, pip_install_target, run_subprocess
from hardctl import hookimpl, plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hardctl-squares"


@pytest.fixture(scope="module")
def squares_site(tmp_path_factory) -> Path:
    """The README's example plugin, installed by pip into its own folder (a real dist-info)."""
    site = tmp_path_factory.mktemp("site")
    pip_install_target(EXAMPLE, site)
    assert list(site.glob("hardctl_squares-0.1.0.dist-info/entry_points.txt"))
    return site


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    """A distribution whose plugin module raises on import, declared by a hand-written dist-info."""
    site = tmp_path_factory.mktemp("broken")
    info = site / "hardctl_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hardctl-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hardctl]\nbroken = hardctl_broken\n")
    (site / "hardctl_broken.py").write_text("raise ImportError('this plugin needs a missing library')\n")
    return site


def test_third_party_plugin_is_listed_with_its_version_and_registrations(squares_site):
    listed = listed_plugins(squares_site)
    squares = listed["squares"]
    assert squares["distribution"] == "hardctl-squares"
    assert squares["version"] == "0.1.0"
    assert squares["status"] == "loaded"
    assert squares["registered"] == {"datasets": ["squares"], "eval_suites": ["corners"]}
    assert listed["builtin_datasets"]["registered"]["datasets"] == ["digits", "digits28", "fashion-mnist", "mnist", "cifar10",
                                                                    "imagefolder", "imagenet"]


@pytest.mark.slow
def test_what_a_third_party_plugin_registered_is_usable(squares_site, tmp_path):
    env = {"PYTHONPATH": str(squares_site)}
    out = tmp_path / "run"
    result = run_subprocess("train", "--model", "mnist_mlp", "--data", "squares:120", "--epochs", "3",
                            "--lr", "3e-3", "--out", out, "--json", env=env)
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["data"] == "squares:120"
    assert summary["student"]["test_acc"] == 100.0  # the four quadrants are trivially separable
    result = run_subprocess("eval", "--model", out, "--data", "squares", "--suite", "corners", "--json", env=env)
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [r["set"] for r in rows] == ["centered"] and rows[0]["images"] == 50


def test_broken_plugin_costs_one_warning_and_commands_still_work(broken_site):
    result = run_subprocess("plugins", "--json", env={"PYTHONPATH": str(broken_site)})
    assert result.code == 0
    warning = [line for line in result.err.splitlines() if "broken" in line]
    assert warning == ["hardctl: warning: plugin 'broken' failed to load: ImportError: this plugin needs a missing library"]
    listed = {p["name"]: p for p in json.loads(result.out)}
    assert listed["broken"]["status"] == "failed"
    assert "digits" in listed["builtin_datasets"]["registered"]["datasets"]


def test_strict_mode_reraises_a_broken_plugin(broken_site):
    result = run_subprocess("plugins", env={"PYTHONPATH": str(broken_site), "HARDCTL_STRICT_PLUGINS": "1"})
    assert result.code == 1
    assert "this plugin needs a missing library" in result.err


@pytest.mark.slow
def test_disable_env_blocks_plugins_by_entry_point_or_distribution_name(broken_site, squares_site):
    env = {"PYTHONPATH": f"{broken_site}:{squares_site}", "HARDCTL_DISABLE_PLUGINS": "broken,hardctl-squares"}
    result = run_subprocess("plugins", "--json", env=env)
    assert result.code == 0
    assert "warning" not in result.err
    listed = {p["name"]: p for p in json.loads(result.out)}
    assert listed["broken"]["status"] == listed["squares"]["status"] == "disabled"
    result = run_subprocess("eval", "--model", "x", "--data", "squares", env=env)
    assert result.code == 2
    assert "unknown data set 'squares'" in result.err


def test_in_process_registration_and_name_clash_warning():
    class Extra:
        __name__ = "extra"

        @staticmethod
        @hookimpl
        def register_datasets(register):
            register("digits", object, help="a clash with the built-in")
            register("tiny-extra", object, help="a new one")

    plugins.manager.register(Extra, name="extra")
    try:
        with pytest.warns(plugins.PluginWarning, match="'digits' from plugin 'extra' clashes"):
            names = plugins.datasets.names()
        assert "tiny-extra" in names
        assert plugins.datasets.get("digits").plugin == "builtin_datasets"  # the first registration wins
        listed = {i.name: i.registered for i in plugins.manager.plugin_infos()}
        assert listed["extra"] == {"datasets": ["tiny-extra"]}
        assert listed["builtin_datasets"]["datasets"].count("digits") == 1  # refilled, not appended twice
    finally:
        plugins.manager.unregister("extra")
    assert "tiny-extra" not in plugins.datasets.names()


def test_unknown_registry_name_suggests_the_closest():
    with pytest.raises(Exception) as exc:
        plugins.datasets.get("fashion-mnst")
    assert "did you mean 'fashion-mnist'" in str(exc.value)
    assert exc.value.exit_code == 2

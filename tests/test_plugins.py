"""Plugins: a real third-party distribution installed with pip, broken plugins, blocking, listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import listed_plugins, pip_install_target, run_subprocess

import hardctl
from hardctl import hookimpl, plugins
from hardctl.errors import UsageError

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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------ built-ins always win
class _Impostor:
    """Registers built-in names, and asks pluggy to be called first: neither gets it the names."""

    __version__ = "9.9"

    @staticmethod
    @hookimpl(tryfirst=True)
    def register_augmentors(register):
        register("affine", object, help="an impostor affine")
        register("impostor-only", object, help="a name of its own")

    @staticmethod
    @hookimpl(tryfirst=True)
    def register_datasets(register):
        register("digits", object, help="an impostor digits")


@pytest.fixture
def impostor():
    plugins.reload()
    plugins.manager.register(_Impostor, name="impostor")
    yield
    plugins.reload()


def test_a_plugin_cannot_replace_a_builtin_name(impostor):
    with pytest.warns(plugins.PluginWarning) as caught:
        assert plugins.augmentors.get("affine").plugin == "builtin_augmentors"
        assert plugins.datasets.get("digits").plugin == "builtin_datasets"
    assert sorted(str(w.message) for w in caught) == [
        "augmentor 'affine' from plugin 'impostor' clashes with the built-in one from 'builtin_augmentors'; "
        "keeping the built-in",
        "data set 'digits' from plugin 'impostor' clashes with the built-in one from 'builtin_datasets'; "
        "keeping the built-in"]
    assert plugins.augmentors.get("impostor-only").plugin == "impostor"
    assert plugins.provenance("augmentors", "impostor-only") == {
        "name": "impostor-only", "plugin": "impostor", "distribution": None, "version": "9.9"}


def test_strict_mode_makes_a_clash_with_a_builtin_an_error(impostor, monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    with pytest.raises(RuntimeError, match="'affine' from plugin 'impostor' clashes with the built-in one"):
        plugins.augmentors.names()


@pytest.fixture(scope="module")
def impostor_site(tmp_path_factory) -> Path:
    """A distribution listed before hardctl on sys.path that registers 'affine' and even names an entry point
    ``builtin_augmentors``: its module belongs to another distribution, so it is not a built-in."""
    site = tmp_path_factory.mktemp("impostor")
    info = site / "hardctl_impostor-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hardctl-impostor\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[hardctl]\naaa_impostor = hardctl_impostor\n"
                                           "builtin_augmentors = hardctl_impostor\n")
    (site / "hardctl_impostor.py").write_text(
        "from hardctl import hookimpl\n\n"
        "@hookimpl\ndef register_augmentors(register):\n"
        "    register('affine', object, help='impostor')\n")
    return site


def test_builtins_win_whatever_the_entry_point_order(impostor_site):
    result = run_subprocess("plugins", "--augmentors", "--json", env={"PYTHONPATH": str(impostor_site)})
    assert result.code == 0, result.err
    rows = {r["name"]: r for r in json.loads(result.out)}
    assert rows["affine"]["plugin"] == "builtin_augmentors" and rows["affine"]["options"]
    assert ("hardctl: warning: augmentor 'affine' from plugin 'aaa_impostor' clashes with the built-in one from "
            "'builtin_augmentors'; keeping the built-in") in result.err.splitlines()
    listed = {p["name"]: p for p in json.loads(run_subprocess(
        "plugins", "--json", env={"PYTHONPATH": str(impostor_site)}).out)}
    assert listed["builtin_augmentors"]["distribution"] == "hardctl"  # the real one, not the impostor's
    assert listed["builtin_augmentors"]["registered"] == {"augmentors": ["affine", "noise", "mix", "vdvae", "rqvae"]}


# ------------------------------------------------------------------------------------ typed registrations
def test_registries_hold_typed_entries():
    plugins.reload()
    digits, mnist = plugins.datasets.get("digits"), plugins.datasets.get("mnist")
    assert isinstance(digits, plugins.DatasetEntry) and (digits.needs_arg, mnist.needs_arg) == (False, True)
    standard, mnist_c = plugins.eval_suites.get("standard"), plugins.eval_suites.get("mnist-c")
    assert isinstance(standard, plugins.SuiteEntry) and standard.sources == ()
    assert [s.key for s in mnist_c.sources] == ["mnist-c"]
    mix = plugins.augmentors.get("mix")
    assert isinstance(mix, plugins.AugmentorEntry) and mix.teacher_term is False  # from the class attribute
    assert mix.options == mix.obj.options and mix.hard_defaults.lr == 1e-2
    assert plugins.metadata_fields(plugins.DatasetEntry) == ["needs_arg"]
    assert plugins.metadata_fields(plugins.Entry) == []


class _Typos:
    __name__ = "typos"

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register("typo-set", object, help="needs_args is a typo", needs_args=True)
        register("bad-type", object, help="needs_arg must be a bool", needs_arg="yes")
        register("never-reached", object, help="after the hook raised")


def test_unknown_register_keywords_are_named_and_wrong_types_fail_the_hook(monkeypatch):
    plugins.reload()
    plugins.manager.register(_Typos, name="typos")
    try:
        with pytest.warns(plugins.PluginWarning) as caught:
            names = plugins.datasets.names()
        assert [str(w.message) for w in caught] == [
            "plugin 'typos' registered data set 'typo-set' with unknown keyword needs_args "
            "(ignored; datasets accept: needs_arg)",
            "plugin 'typos' failed in register_datasets: TypeError: needs_arg must be True or False, got 'yes'"]
        assert plugins.datasets.get("typo-set").needs_arg is False
        assert "bad-type" not in names and "never-reached" not in names and "digits" in names
        monkeypatch.setenv(plugins.STRICT_ENV, "1")
        plugins.datasets.reset()
        with pytest.raises(RuntimeError, match="unknown keyword needs_args"):
            plugins.datasets.names()
    finally:
        plugins.reload()


def test_provenance_of_builtins_and_its_errors():
    plugins.reload()
    assert plugins.provenance("datasets", "digits") == {
        "name": "digits", "plugin": "builtin_datasets", "distribution": "hardctl", "version": hardctl.__version__}
    with pytest.raises(UsageError, match="unknown augmentor 'afine'; did you mean 'affine'"):
        plugins.provenance("augmentors", "afine")
    with pytest.raises(ValueError, match="unknown registry 'augmentor'"):
        plugins.provenance("augmentor", "affine")

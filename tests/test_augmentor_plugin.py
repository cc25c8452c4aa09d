"""The augmentor plugin API end to end: the README's third-party example (``examples/hardctl-brightness``)
installed with pip and run through its entry point, and in-process plugins that break the contract."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import listed_plugins, pip_install_target, run_subprocess

from hardctl import hookimpl, plugins
from hardctl.augment import Augmentor, build_augmentor
from hardctl.augment.pool import pool_files, read_entry
from hardctl.config import RunConfig
from hardctl.errors import UsageError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hardctl-brightness"
# Small and quick: one epoch of digits (21 student steps), tiny augmentor batches.
QUICK = ("--data", "digits", "--epochs", "1", "--batch-size", "64", "--aug-batch-size", "16")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hardctl: error:")]


def one_line_error(result, code: int) -> str:
    """The run ended with ``code`` and exactly one error line, no traceback; returns that line."""
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    lines = error_lines(result.err)
    assert len(lines) == 1, result.err
    return lines[0]


# ------------------------------------------------------------------------------------ the installed example
@pytest.fixture(scope="module")
def brightness_site(tmp_path_factory) -> Path:
    """The example package installed by pip into its own folder (a real dist-info with the entry point)."""
    site = tmp_path_factory.mktemp("brightness-site")
    pip_install_target(EXAMPLE, site)
    entry_points = site / "hardctl_brightness-0.1.0.dist-info" / "entry_points.txt"
    assert "brightness = hardctl_brightness" in entry_points.read_text()
    return site


def test_installed_example_is_listed_as_an_augmentor_plugin(brightness_site):
    brightness = listed_plugins(brightness_site)["brightness"]
    assert brightness["distribution"] == "hardctl-brightness"
    assert brightness["version"] == "0.1.0"
    assert brightness["status"] == "loaded" and brightness["error"] is None
    assert brightness["registered"] == {"augmentors": ["brightness"]}


@pytest.mark.slow
def test_installed_example_trains_in_a_composition_with_a_builtin(brightness_site, digits_teacher, tmp_path):
    out = tmp_path / "run"
    # l_min 0.99 / l_max 1.0: the untrained student's error is below l_min, so augmentor phases start after
    # 10 student steps and end at the 2-step cap (an error above 1.0 cannot happen): a few augmentor steps,
    # every one of them a backward pass through the plugin's module.
    result = run_subprocess(
        "distill", "--teacher", digits_teacher, *QUICK, "--augmentor", "brightness+affine",
        "--aug-opt", "brightness.gain_sigma_init=0.2", "--aug-opt", "pivot=0.25",  # a bare key only one part has
        "--aug-opt", "affine.padding_mode=border",
        "--l-min", "0.99", "--l-max", "1.0", "--switch-patience", "10", "--max-aug-steps", "2",
        "--out", out, "--json", env={"PYTHONPATH": str(brightness_site)})
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    hard = summary["hard"]
    assert hard["augmentor"] == "brightness+affine" and hard["mode"] == "phases"
    expected = {"brightness.gain_sigma_init": 0.2, "brightness.bias_sigma_init": 0.05, "brightness.pivot": 0.25,
                "brightness.per_channel": False, "affine.sigma_init": 0.01, "affine.padding_mode": "border",
                "affine.align_corners": False, "affine.min_sigma": 0.0}
    assert hard["options"] == expected
    assert hard["aug_steps"] >= 2 and hard["pool_size"] >= 2 and hard["student_steps"] == summary["steps"]

    config = RunConfig.load(out)  # the run directory's config.toml, resolved
    assert config.augmentor == "brightness+affine"
    assert config.aug_options == expected
    # a composition takes its first part's HARD defaults (brightness's learning rate) unless a flag is given
    assert config.aug_lr == 0.02 and config.aug_batch_size == 16 and config.l_min == 0.99

    first, *_, last = (read_entry(p)[0] for p in pool_files(out))
    assert set(first) == {"parts.0.gain_mean", "parts.0.gain_log_std", "parts.0.bias_mean", "parts.0.bias_log_std",
                          "parts.1.mean", "parts.1.log_std"}
    assert first["parts.0.gain_mean"].tolist() == [1.0] and first["parts.0.bias_mean"].tolist() == [0.0]
    assert not torch.equal(first["parts.0.gain_mean"], last["parts.0.gain_mean"])  # gradients reached the plugin


# ------------------------------------------------------------------------------------------- in-process
def load_example_module():
    """The example's module straight from its file: no install, no sys.path change."""
    spec = importlib.util.spec_from_file_location("hardctl_brightness_inprocess",
                                                  EXAMPLE / "hardctl_brightness" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Shrink(Augmentor):
    """Breaks the contract: halves the image size."""

    def __init__(self, *, in_chans, img_size):
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.weight = torch.nn.Parameter(torch.ones(()))

    def apply_transform(self, x, params):
        return torch.nn.functional.avg_pool2d(x * self.weight, 2)


class _Overexpose(_Shrink):
    """Breaks the contract: pixels up to 3.0 (forgot to clamp)."""

    def apply_transform(self, x, params):
        return 3.0 * x * self.weight


class _BrokenPlugin:
    @hookimpl
    def register_augmentors(self, register):
        register("shrink", _Shrink, help="returns smaller images")
        register("overexpose", _Overexpose, help="returns pixels above 1")


@pytest.fixture
def inprocess_plugins():
    """The example module and a broken plugin, registered in this process; forgotten afterwards."""
    plugins.reload()
    module = load_example_module()
    plugins.manager.register(module, "brightness-inprocess")
    plugins.manager.register(_BrokenPlugin(), "broken-augmentors")
    yield module
    plugins.reload()


def test_brightness_starts_at_the_identity_keeps_the_contract_and_is_differentiable(inprocess_plugins):
    torch.manual_seed(0)
    x = torch.rand(8, 3, 12, 12)
    aug = build_augmentor("brightness", {"per_channel": "true", "gain_sigma_init": "0.3"}, in_chans=3,
                          img_size=(12, 12))
    assert isinstance(aug, inprocess_plugins.BrightnessAugmentor) and aug.gain_mean.shape == (3,)
    identity = aug.apply_transform(x, {"gain": torch.ones(8, 3, 1, 1), "bias": torch.zeros(8, 3, 1, 1)})
    assert torch.allclose(identity, x)
    out = aug(x)
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0
    (-out.mean()).backward()
    for name, param in aug.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # a pool entry replays a draw under an old snapshot without touching the module
    params = {k: v.detach() for k, v in aug.sample_params(x).items()}
    snapshot = aug.snapshot()
    assert set(snapshot) == {"gain_mean", "gain_log_std", "bias_mean", "bias_log_std"}
    with torch.no_grad():
        expected = aug.apply_transform(x, params)
        aug.gain_mean.add_(0.5)
        assert torch.allclose(aug.forward_with(snapshot, x, params), expected)
        assert torch.allclose(aug.gain_mean, torch.full((3,), 1.5))  # forward_with left the module alone
        aug.restore(snapshot)
        assert torch.allclose(aug.apply_transform(x, params), expected)


@pytest.mark.parametrize("name, fragments", [
    ("shrink", [("augmentor 'shrink' (plugin broken-augmentors) changed the batch shape from (64, 1, 16, 16) "
                "to (64, 1, 8, 8)")]),
    ("overexpose", ["augmentor 'overexpose' (plugin broken-augmentors) returned pixels in [0, ",
                    "outside the input range [0, 1]"]),
])
def test_augmentor_breaking_the_contract_is_rejected_at_the_first_step(name, fragments, inprocess_plugins, cli,
                                                                        digits_teacher, tmp_path):
    result = cli("distill", "--teacher", digits_teacher, *QUICK, "--augmentor", name, "--out", tmp_path / "run")
    line = one_line_error(result, 1)
    assert all(fragment in line for fragment in fragments), line
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped at the first step, before any epoch ended


def test_a_broken_part_of_a_composition_is_named(inprocess_plugins, cli, digits_teacher, tmp_path):
    result = cli("distill", "--teacher", digits_teacher, *QUICK, "--augmentor", "brightness+overexpose",
                 "--out", tmp_path / "run")
    line = one_line_error(result, 1)
    assert ("augmentor 'brightness' (plugin brightness-inprocess) + augmentor 'overexpose' "
            "(plugin broken-augmentors) returned pixels in") in line


@pytest.mark.parametrize("args, message", [
    (("--augmentor", "brightness", "--aug-opt", "gain_sigma=0.2"),
     "unknown augmentor option 'gain_sigma' for brightness; did you mean 'gain_sigma_init'?"),
    (("--augmentor", "brightness", "--aug-opt", "pivot=grey"),
     "augmentor 'brightness' option 'pivot' must be a number, got 'grey'"),
    (("--augmentor", "brightness", "--aug-opt", "per_channel=maybe"),
     "augmentor 'brightness' option 'per_channel' must be true or false, got 'maybe'"),
    (("--augmentor", "brightness", "--aug-opt", "pivot=2"),
     "augmentor 'brightness' option pivot=2.0 is out of range (it must be <= 1.0)"),
    (("--augmentor", "brightness", "--aug-opt", "gain_sigma_init=0"),
     "augmentor 'brightness' option gain_sigma_init=0.0 is out of range (it must be > 0.0)"),
    (("--augmentor", "brightness+affine", "--aug-opt", "brightnes.pivot=0.2"),
     "augmentor option 'brightnes.pivot' names no part of brightness+affine; did you mean 'brightness'?"),
    (("--augmentor", "brightness+noise", "--aug-opt", "noise.pivot=0.2"),
     "unknown option 'pivot' for augmentor 'noise'"),
    (("--augmentor", "brightnes"),
     ("unknown augmentor 'brightnes'; did you mean 'brightness'? (installed: affine, brightness, mix, noise, "
     "overexpose, shrink)")),
    (("--augmentor", "brightness+afine"), "unknown augmentor 'afine'; did you mean 'affine'?"),
    (("--augmentor", "brightness", "--l-min", "0.5", "--l-max", "0.4"), "--l-min (0.5) must be below --l-max (0.4)"),
])
def test_bad_augmentor_names_and_options_are_one_line_usage_errors(args, message, inprocess_plugins, cli,
                                                                   digits_teacher, tmp_path):
    result = cli("distill", "--teacher", digits_teacher, *QUICK, *args, "--out", tmp_path / "run")
    assert message in one_line_error(result, 2)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_option_validation_happens_before_the_plugin_constructor_runs(inprocess_plugins):
    with pytest.raises(UsageError, match="out of range"):
        build_augmentor("brightness", {"bias_sigma_init": 0.9}, in_chans=1, img_size=(8, 8))

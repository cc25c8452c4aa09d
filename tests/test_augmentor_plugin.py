"""The augmentor plugin API end to end: the README's third-party example (``examples/hardctl-brightness``)
installed with pip and run through its entry point, and in-process plugins that break the contract."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import listed_plugins, pip_install_target, run_subprocess

import hardctl
from hardctl import hookimpl, plugins
from hardctl.augment import (Augmentor, AugmentorPool, AugmentorSpec, HardDefaults, Option, build_augmentor,
                             check_options)
from hardctl.augment.pool import POOL_DIR, pool_files, read_entry
from hardctl.config import RunConfig
from hardctl.errors import TrainingError, UsageError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hardctl-brightness"
# Small and quick: one epoch of digits (21 student steps), tiny augmentor batches.
QUICK = ("--data", "digits", "--epochs", "1", "--batch-size", "64", "--aug-batch-size", "16")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hardctl: error:")]


def the_error_line(result, code: int) -> str:
    """The run ended with ``code`` and exactly one error line among its log lines, no traceback; returns it."""
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


@pytest.mark.slow
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
                "affine.align_corners": False, "affine.min_sigma": 0.0,
                "brightness.lr": 0.02, "affine.lr": 0.05}  # each part's own registered learning rate
    assert hard["options"] == expected
    assert hard["aug_steps"] >= 2 and hard["pool_size"] >= 2 and hard["student_steps"] == summary["steps"]

    config = RunConfig.load(out)  # the run directory's config.toml, resolved
    assert config.augmentor == "brightness+affine"
    assert config.aug_options == expected
    # a composition takes its first part's HARD defaults (brightness's; aug_lr is its learning rate) unless a flag
    # is given
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
    line = the_error_line(result, 1)
    assert all(fragment in line for fragment in fragments), line
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped at the first step, before any epoch ended


def test_a_broken_part_of_a_composition_is_named(inprocess_plugins, cli, digits_teacher, tmp_path):
    result = cli("distill", "--teacher", digits_teacher, *QUICK, "--augmentor", "brightness+overexpose",
                 "--out", tmp_path / "run")
    line = the_error_line(result, 1)
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
     "overexpose, rqvae, shrink, vdvae)")),
    (("--augmentor", "brightness+afine"), "unknown augmentor 'afine'; did you mean 'affine'?"),
    (("--augmentor", "brightness", "--l-min", "0.5", "--l-max", "0.4"), "--l-min (0.5) must be below --l-max (0.4)"),
])
def test_bad_augmentor_names_and_options_are_one_line_usage_errors(args, message, inprocess_plugins, cli,
                                                                   digits_teacher, tmp_path):
    result = cli("distill", "--teacher", digits_teacher, *QUICK, *args, "--out", tmp_path / "run")
    assert message in the_error_line(result, 2)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_option_validation_happens_before_the_plugin_constructor_runs(inprocess_plugins):
    with pytest.raises(UsageError, match="out of range"):
        build_augmentor("brightness", {"bias_sigma_init": 0.9}, in_chans=1, img_size=(8, 8))


# ------------------------------------------------------------------------------------ the contract's checks
class _OldStyle(Augmentor):
    """Written against the old contract: ``apply(x, params)`` instead of ``apply_transform``."""

    def __init__(self, *, in_chans, img_size):
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.weight = torch.nn.Parameter(torch.ones(()))

    def apply(self, x, params):
        return x * self.weight


class _JointGain(_Shrink):
    """A phases augmentor by its class attribute, registered below as joint too."""

    options = (Option("gain", float, 1.0, "initial gain"),)
    teacher_term = True

    def __init__(self, *, in_chans, img_size, gain=1.0):
        super().__init__(in_chans=in_chans, img_size=img_size)
        with torch.no_grad():
            self.weight.fill_(gain)

    def apply_transform(self, x, params):
        return (x * self.weight).clamp(0, 1)


class _DisagreeingDefault(_JointGain):
    options = (Option("gain", float, 2.0, "the Option says 2, the constructor 1"),)


class _UnknownKeyword(_JointGain):
    options = (Option("gain", float, 1.0, "initial gain"), Option("gian", float, 1.0, "a typo of gain"))


def _function_factory(calls: list):
    """A plain function as factory (no class attributes): it records what it was called with."""

    def make(*, in_chans, img_size, **options):
        calls.append(options)
        return _JointGain(in_chans=in_chans, img_size=img_size, gain=options["gain"])

    return make


class _ContractPlugin:
    def __init__(self):
        self.calls: list = []

    @hookimpl
    def register_augmentors(self, register):
        register("old-style", _OldStyle, help="defines apply(x, params)")
        register("plain-module", lambda *, in_chans, img_size: torch.nn.Conv2d(in_chans, in_chans, 1),
                 help="a bare nn.Module")
        register("gain", _JointGain, help="phases, by the class")
        register("gain-joint", _JointGain, help="the same class, joint by its registration", teacher_term=False,
                 hard_defaults=HardDefaults(lr=0.003))
        register("disagreeing", _DisagreeingDefault, help="Option default 2.0, constructor default 1.0")
        register("unknown-keyword", _UnknownKeyword, help="an Option the constructor does not take")
        register("function", _function_factory(self.calls), help="a function factory",
                 options=(Option("gain", float, 0.5, "initial gain"),), teacher_term=False)


@pytest.fixture
def contract_plugin():
    plugins.reload()
    plugin = _ContractPlugin()
    plugins.manager.register(plugin, "contract")
    yield plugin
    plugins.reload()


def test_module_apply_is_torchs_again_for_augmentors_and_compositions():
    for name in ("affine", "noise+affine"):
        aug = build_augmentor(name, {}, in_chans=1, img_size=(8, 8))
        visited = []

        def init(module):
            visited.append(type(module).__name__)
            if hasattr(module, "log_std"):
                torch.nn.init.constant_(module.log_std, -3.0)

        assert torch.nn.Sequential(aug).apply(init)[0] is aug  # used to raise TypeError: apply(x, params)
        assert "AffineAugmentor" in visited and visited[-1] == "Sequential"
        affine = aug if name == "affine" else aug.parts[1]
        assert affine.log_std.tolist() == [-3.0] * 6


@pytest.mark.parametrize("name, message", [
    ("old-style", "augmentor 'old-style' (plugin contract) defines _OldStyle.apply(x, params), which hardctl now "
                  "calls apply_transform (rename it to apply_transform; apply is torch's nn.Module.apply(fn))"),
    ("plain-module", "augmentor 'plain-module' (plugin contract) built a Conv2d, not a hardctl.augment.Augmentor "
                     "(subclass hardctl.augment.Augmentor: the pool calls snapshot() and forward_with())"),
    ("disagreeing", "augmentor 'disagreeing' (plugin contract) declares option gain=2.0 but its constructor's "
                    "default is 1.0 (make the Option and the keyword default agree)"),
    ("unknown-keyword", "augmentor 'unknown-keyword' (plugin contract) declares option 'gian', which its "
                        "constructor does not take (its keywords: gain)"),
])
def test_a_factory_breaking_the_contract_is_refused_when_built(name, message, contract_plugin):
    with pytest.raises(TrainingError) as err:
        build_augmentor(f"affine+{name}", {}, in_chans=1, img_size=(8, 8))
    assert str(err.value) == message and err.value.exit_code == 1


def test_every_builtin_option_matches_its_constructor_keyword():
    plugins.reload()
    specs = [AugmentorSpec.from_entry(e) for e in plugins.augmentors]
    assert {s.name for s in specs} == {"affine", "mix", "noise", "vdvae", "rqvae"}
    for spec in specs:
        check_options(spec)  # raises on a disagreement
        keywords = inspect.signature(spec.factory).parameters
        declared = {o.name: o.default for o in spec.options}
        constructor = {k: p.default for k, p in keywords.items() if k not in ("in_chans", "img_size")}
        assert declared == constructor, spec.name  # every keyword is an Option, with the same default


def test_the_registration_is_the_one_source_of_teacher_term(contract_plugin, cli):
    phases = build_augmentor("gain", {}, in_chans=1, img_size=(8, 8))
    joint = build_augmentor("gain-joint", {}, in_chans=1, img_size=(8, 8))
    assert type(joint) is _JointGain and _JointGain.teacher_term is True  # the class says phases ...
    assert phases.teacher_term is True and joint.teacher_term is False  # ... the registration decides
    assert getattr(joint, "teacher_term", True) is False  # what the HARD engine reads
    assert joint.hard_defaults.lr == 0.003 and phases.hard_defaults == HardDefaults()
    assert build_augmentor("gain+gain-joint", {}, in_chans=1, img_size=(8, 8)).teacher_term is False
    assert build_augmentor("gain+affine", {}, in_chans=1, img_size=(8, 8)).teacher_term is True
    result = cli("plugins", "--augmentors", "--json")
    rows = {r["name"]: r for r in json.loads(result.out)}
    assert rows["gain"]["mode"] == "phases" and rows["gain-joint"]["mode"] == "joint"
    assert rows["gain-joint"]["hard_defaults"]["lr"] == 0.003 and rows["function"]["mode"] == "joint"


def test_the_option_default_is_what_a_factory_receives(contract_plugin):
    aug = build_augmentor("function", {}, in_chans=1, img_size=(8, 8))
    assert contract_plugin.calls == [{"gain": 0.5}] and float(aug.weight.detach()) == 0.5 and aug.teacher_term is False
    build_augmentor("function", {"gain": "0.25"}, in_chans=1, img_size=(8, 8))
    assert contract_plugin.calls[-1] == {"gain": 0.25}


# ------------------------------------------------------------------------------------ compositions
def test_a_composition_samples_each_part_on_its_input_and_replays_the_draw():
    combo = build_augmentor("noise+affine", {"noise.sigma_init": "0.2", "affine.sigma_init": "0.2"}, in_chans=1,
                            img_size=(8, 8))
    x = torch.rand(4, 1, 8, 8)
    torch.manual_seed(3)
    params = combo.sample_params(x)
    assert set(params) == {"parts.0.eps", "parts.1.theta"} and params["parts.1.theta"].shape == (4, 2, 3)
    out = combo.apply_transform(x, params)
    torch.manual_seed(3)
    assert torch.equal(combo(x), out)  # forward draws the same, in the same order
    assert torch.equal(combo.parts[1].apply_transform(combo.parts[0].apply_transform(x, {"eps": params["parts.0.eps"]}),
                                                      {"theta": params["parts.1.theta"]}), out)
    snapshot = combo.snapshot()
    with torch.no_grad():
        combo.parts[0].mu.fill_(0.3)
        assert not torch.allclose(combo.apply_transform(x, params), out)
        assert torch.equal(combo.forward_with(snapshot, x, params), out)  # the old snapshot, the same draw
        combo.restore(snapshot)
        assert torch.equal(combo.apply_transform(x, params), out)


class _Shifted(Augmentor):
    """Keeps part of its pool state in a buffer, so it overrides snapshot/restore/forward_with (README §8)."""

    def __init__(self, *, in_chans, img_size):
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))

    def apply_transform(self, x, params):
        return (x * self.scale + self.shift).clamp(0, 1)

    def snapshot(self):
        return {**super().snapshot(), "shift": self.shift.detach().clone()}

    def restore(self, snapshot):
        state = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        with torch.no_grad():
            for name in self.snapshot():
                state[name].copy_(snapshot[name])

    def forward_with(self, snapshot, x, params=None):
        saved = self.snapshot()
        self.restore(snapshot)
        try:
            return self.apply_transform(x, params if params is not None else self.sample_params(x))
        finally:
            self.restore(saved)


class _ShiftedPlugin:
    @hookimpl
    def register_augmentors(self, register):
        register("shifted", _Shifted, help="state in a buffer")


def test_a_composition_in_the_pool_keeps_each_parts_own_snapshot(tmp_path):
    plugins.reload()
    plugins.manager.register(_ShiftedPlugin(), "shifted")
    try:
        combo = build_augmentor("shifted+noise", {"noise.sigma_init": "1e-6"}, in_chans=1, img_size=(4, 4))
        pool = AugmentorPool(combo, tmp_path / POOL_DIR)
        with torch.no_grad():
            combo.parts[0].shift.fill_(0.25)
        pool.add(reason="start")
        saved, _ = read_entry(pool_files(tmp_path)[0])
        assert set(saved) == {"parts.0.scale", "parts.0.shift", "parts.1.mu", "parts.1.log_sigma"}
        assert float(saved["parts.0.shift"]) == 0.25  # the part's buffer, which the base snapshot would miss
        with torch.no_grad():
            combo.parts[0].shift.fill_(0.75)
            out = pool.augment(0, torch.zeros(2, 1, 4, 4))
        assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-4)  # augmented as the saved entry
        assert float(combo.parts[0].shift) == 0.75  # and the module left as it was
    finally:
        plugins.reload()


@pytest.mark.slow
def test_provenance_of_the_installed_example(brightness_site):
    code = ("import json; from hardctl import plugins; "
            "print(json.dumps([plugins.provenance('augmentors', n) for n in ('brightness', 'affine')]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(brightness_site)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    brightness, affine = json.loads(proc.stdout)
    assert brightness == {"name": "brightness", "plugin": "brightness", "distribution": "hardctl-brightness",
                          "version": "0.1.0"}
    assert affine == {"name": "affine", "plugin": "builtin_augmentors", "distribution": "hardctl",
                      "version": hardctl.__version__}

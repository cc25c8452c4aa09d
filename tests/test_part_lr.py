"""A composition's parts train at their own learning rates (``PART.lr``): resolution, the optimiser's groups, one
Adam step that moves each part by its own rate, and the one-line errors."""

from __future__ import annotations

import pytest
import torch

from hardctl.augment import build_augmentor, part_learning_rates, resolved_options
from hardctl.config import RunConfig
from hardctl.distill.build import resolve_config
from hardctl.distill.hard import Hard, HardSettings
from hardctl.errors import UsageError

SIZE = dict(in_chans=1, img_size=(8, 8))


def settings(name: str, options: dict, aug_lr: float = 0.05) -> HardSettings:
    return HardSettings(augmentor=name, l_min=0.1, l_max=0.6, switch_patience=5, lambda_s=1.0, lambda_t=1.0,
                        aug_lr=aug_lr, aug_batch_size=8, max_aug_steps=10, aug_options=options)


def test_each_part_gets_its_own_default_the_flag_or_its_own_option():
    # mix's registered learning rate is 1e-2, affine's 0.05
    assert {k: v for k, v in resolved_options("mix+affine", {}).items() if k.endswith(".lr")} == \
        {"mix.lr": 1e-2, "affine.lr": 0.05}
    # --aug-lr sets every part that has no PART.lr of its own
    options = resolved_options("mix+affine", {"affine.lr": "0.02"}, aug_lr=3e-3)
    assert options["mix.lr"] == 3e-3 and options["affine.lr"] == 0.02
    # a single augmentor has no lr option: its rate is --aug-lr, recorded in the config's aug_lr
    assert "lr" not in resolved_options("affine", {}, aug_lr=3e-3)


def test_the_run_config_records_every_parts_rate_and_the_first_parts_as_aug_lr():
    cfg = resolve_config(RunConfig(command="distill", augmentor="noise+affine", teacher="t",
                                   aug_options={"affine.lr": 0.2}, device="cpu"))
    assert cfg.aug_options["noise.lr"] == 0.05 and cfg.aug_options["affine.lr"] == 0.2
    assert cfg.aug_lr == 0.05  # the first part's default, as before


def test_one_adam_step_moves_each_part_by_its_own_rate():
    options = resolved_options("noise+affine", {"noise.lr": "0.01", "affine.lr": "0.2"})
    augmentor = build_augmentor("noise+affine", options, **SIZE)
    hard = Hard(augmentor, settings("noise+affine", options), device=torch.device("cpu"))
    assert [g["lr"] for g in hard.optimizer.param_groups] == [0.01, 0.2]
    assert "augmentor lr noise 0.01 + affine 0.2" in hard.describe()
    before = [p.detach().clone() for p in hard.params]
    for p in hard.params:
        p.grad = torch.ones_like(p)  # Adam's first step moves every entry by lr * g / (|g| + eps) = lr
    hard.optimizer.step()
    noise_params = {id(p) for p in augmentor.parts[0].parameters()}
    for p, old in zip(hard.params, before):
        lr = 0.01 if id(p) in noise_params else 0.2
        assert torch.allclose(old - p.detach(), torch.full_like(old, lr), rtol=1e-5)


def test_a_composition_run_of_an_older_version_keeps_its_single_group():
    options = {k: v for k, v in resolved_options("noise+affine", {}).items() if not k.endswith(".lr")}
    augmentor = build_augmentor("noise+affine", options, **SIZE)
    groups = part_learning_rates(augmentor, options, 0.003)
    assert len(groups) == 1 and groups[0][2] == 0.003
    hard = Hard(augmentor, settings("noise+affine", options, aug_lr=0.003), device=torch.device("cpu"))
    assert [g["lr"] for g in hard.optimizer.param_groups] == [0.003]
    assert len(hard.params) == len(list(augmentor.parameters()))


@pytest.mark.parametrize("name, raw, message", [
    ("affine", {"lr": "0.1"}, "augmentor option 'lr' is not an option of 'affine' (set its learning rate with --aug-lr"),
    ("noise+affine", {"lr": "0.1"}, "augmentor option 'lr' is ambiguous in noise+affine (write it as PART.lr"),
    ("noise+affine", {"affine.lr": "0"}, "augmentor 'affine' option lr=0.0 is out of range (it must be > 0.0)"),
    ("noise+affine", {"affine.lr": "fast"}, "augmentor 'affine' option 'lr' must be a number, got 'fast'"),
])
def test_bad_part_rates_are_usage_errors(name, raw, message):
    with pytest.raises(UsageError) as info:
        resolved_options(name, raw)
    assert message in info.value.oneline()  # the line the CLI prints, hint in parentheses


def test_the_config_round_trips_the_part_rates(tmp_path):
    cfg = resolve_config(RunConfig(command="distill", augmentor="noise+affine", teacher="t",
                                   aug_options={"noise.lr": 0.01}, device="cpu"))
    cfg.save(tmp_path)
    again = RunConfig.load(tmp_path)
    assert again == cfg and again.aug_options["noise.lr"] == 0.01 and again.aug_options["affine.lr"] == 0.05

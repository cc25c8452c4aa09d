"""``--pool-sampling`` and ``--clean-fraction``: which pool entry a student step uses, and how much of its batch."""

from __future__ import annotations

import pytest
import torch

from hardctl.augment import build_augmentor
from hardctl.augment.pool import AugmentorPool
from hardctl.config import RunConfig
from hardctl.distill.hard import Hard, HardSettings
from hardctl.errors import UsageError


def pool_of(n: int) -> AugmentorPool:
    pool = AugmentorPool(build_augmentor("noise", {}, in_chans=1, img_size=(4, 4)))
    for _ in range(n):
        pool.add(reason="test")
    return pool


def draws(pool: AugmentorPool, how: str, n: int = 4000) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.tensor([pool.sample(how) for _ in range(n)])


def test_uniform_draws_every_entry_alike():
    counts = torch.bincount(draws(pool_of(4), "uniform"), minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)


def test_recent_draws_the_newest_entry_half_the_time_plus_its_uniform_share():
    counts = torch.bincount(draws(pool_of(4), "recent"), minlength=4).float() / 4000
    # newest: 1/2 + 1/2 · 1/4 = 0.625; each older one: 1/2 · 1/4 = 0.125
    assert torch.allclose(counts, torch.tensor([0.125, 0.125, 0.125, 0.625]), atol=0.03)


def test_recent_with_one_entry_is_that_entry():
    assert set(draws(pool_of(1), "recent", 50).tolist()) == {0}


def settings(**overrides) -> HardSettings:
    base = dict(augmentor="noise", l_min=0.1, l_max=0.4, switch_patience=5, lambda_s=1.0, lambda_t=1.0,
                aug_lr=0.01, aug_batch_size=8, max_aug_steps=10)
    return HardSettings(**{**base, **overrides})


@pytest.mark.parametrize("fraction, clean", [(0.0, 0), (0.25, 2), (0.5, 4)])
def test_clean_fraction_keeps_the_first_images_of_the_batch(fraction, clean):
    augmentor = build_augmentor("noise", {"mu_init": "0.5", "sigma_init": "1e-6"}, in_chans=1, img_size=(4, 4))
    hard = Hard(augmentor, settings(clean_fraction=fraction), device=torch.device("cpu"))
    hard.save("identity")
    images = torch.full((8, 1, 4, 4), 0.25)
    out = hard.augment(0, images)
    assert out.shape == images.shape
    assert torch.equal(out[:clean], images[:clean])  # untouched
    assert torch.allclose(out[clean:], torch.full_like(out[clean:], 0.75), atol=1e-4)  # x + μ


@pytest.mark.parametrize("field, value, message", [
    ("pool_sampling", "newest", "--pool-sampling must be one of uniform, recent"),
    ("clean_fraction", 1.0, "--clean-fraction must be in [0, 1)"),
    ("clean_fraction", -0.1, "--clean-fraction must be in [0, 1)"),
])
def test_bad_values_are_usage_errors(field, value, message):
    cfg = RunConfig(command="distill", teacher="t", **{field: value})
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        cfg.validate()


def test_the_settings_come_from_the_run_config():
    cfg = RunConfig(command="distill", teacher="t", pool_sampling="recent", clean_fraction=0.25, l_min=0.1, l_max=0.4,
                    switch_patience=5, lambda_s=1.0, lambda_t=1.0, aug_lr=0.01, aug_batch_size=8)
    hard = HardSettings.from_config(cfg)
    assert (hard.pool_sampling, hard.clean_fraction) == ("recent", 0.25)
    assert RunConfig.from_dict(cfg.to_dict()).clean_fraction == 0.25  # recorded in config.toml and read back

"""Learned augmentors: the contract (:mod:`.base`), building by name and composition (:mod:`.compose`),
and the pool of saved augmentors HARD samples from (:mod:`.pool`)."""

from hardctl.augment.base import Augmentor, HardDefaults, Option
from hardctl.augment.compose import (NONE, AugmentorSpec, Compose, build_augmentor, check_module, check_options,
                                     check_output, part_learning_rates, resolve, resolved_options,
                                     split_name)
from hardctl.augment.pool import AugmentorPool

__all__ = ["Augmentor", "HardDefaults", "Option", "AugmentorSpec", "Compose",
           "build_augmentor", "check_module", "check_options", "check_output", "part_learning_rates", "resolve",
           "resolved_options",
           "split_name", "NONE", "AugmentorPool"]

"""Models: building them by name, reading and writing weights files, and loading what a user names.

* :mod:`~hardctl.models.factory` — timm names and aliases, :class:`ModelInfo`, :func:`create_model`,
  hardctl's own ``.safetensors`` files (:func:`save_model`); importing it registers the paper's
  ``hard_*`` architectures in timm (:mod:`hardctl.zoo`);
* :mod:`~hardctl.models.foreign` — ``NAME:FILE``: a timm architecture with someone else's weights;
* :mod:`~hardctl.models.specs` — :func:`load_model` for any spec and :func:`load_for_data`.

The package re-exports the public names, so ``from hardctl.models import load_model`` is the way in.
"""

from hardctl.models.factory import (ALIASES, TIMM_SOURCE_PREFIXES, WEIGHTS_NAME, InputNormalize, ModelInfo,
                                    create_model, describe, load_weights_file, resolve_name, save_model,
                                    state_dict_mismatch)
from hardctl.models.foreign import load_named_file, split_named_file
from hardctl.models.specs import check_accepts, check_compatible, load_for_data, load_model

__all__ = [
    "ALIASES", "TIMM_SOURCE_PREFIXES", "WEIGHTS_NAME", "InputNormalize", "ModelInfo", "check_accepts",
    "check_compatible", "create_model", "describe", "load_for_data", "load_model", "load_named_file",
    "load_weights_file", "resolve_name", "save_model", "split_named_file", "state_dict_mismatch",
]

"""The hooks a hardctl plugin can implement.

Each hook receives a ``register`` callable and calls it once per thing it contributes, so plugins
never touch hardctl's registries directly (the pattern of simonw/llm). Hooks fire once, lazily, the
first time a command needs the registry in question (see :mod:`hardctl.plugins`). The built-in data
sets, evaluation suites and augmentors are registered through these same hooks by the
``hardctl_builtins`` package, found through the same ``hardctl`` entry-point group as any plugin; they
register first, so a plugin cannot replace a built-in name (the clash is a warning naming both plugins).

``register(name, obj, help="", **meta)`` accepts, besides ``help``, exactly the keywords listed below for
its hook (the fields of :class:`hardctl.plugins.DatasetEntry`, :class:`~hardctl.plugins.AugmentorEntry`,
:class:`~hardctl.plugins.SuiteEntry`); any other keyword is ignored with a warning naming the plugin, and
``HARDCTL_STRICT_PLUGINS=1`` makes it an error.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hardctl")
hookimpl = pluggy.HookimplMarker("hardctl")


@hookspec
def register_datasets(register):
    """Register data-set formats usable as ``--data NAME[:ARG]``.

    Fires when a data spec is first parsed. Call ``register(name, builder, help=..., needs_arg=...)``
    where ``builder(arg: str | None) -> hardctl.data.ImageDatasets`` returns the
    train/test tensors of the set. ``needs_arg`` says whether ``NAME:ARG`` must carry an argument
    (usually a folder; ``True`` or ``False``, default ``False``). Returns nothing.
    """


@hookspec
def register_augmentors(register):
    """Register augmentors usable as ``hardctl distill --augmentor NAME``.

    Fires when an augmentor is first looked up. Call ``register(name, factory, help=...)`` where
    ``factory(*, in_chans, img_size, **options) -> hardctl.augment.Augmentor`` builds a batched,
    differentiable image-to-image module (pixels in ``[0, 1]`` in and out, same shape; anything but an
    ``Augmentor`` instance is refused when it is built). The factory's ``options``, ``teacher_term`` and
    ``hard_defaults`` attributes (see :mod:`hardctl.augment.base`) declare its options, whether HARD trains
    it in phases or jointly, and its HARD defaults; the keywords ``options=``, ``teacher_term=`` and
    ``hard_defaults=`` override them, and the registration is what HARD uses (the built module carries it
    as ``augmentor.teacher_term``). Returns nothing.
    """


@hookspec
def register_eval_suites(register):
    """Register evaluation suites usable as ``hardctl eval --suite NAME``.

    Fires when ``hardctl eval`` first needs a suite. Call ``register(name, suite, help=..., sources=...)``
    where ``suite(data_spec: str, **options) -> list[hardctl.eval.EvalSet]`` lists the labelled test sets
    the suite scores. ``sources`` (a sequence of :class:`hardctl.eval.sources.Source`, default empty) names
    the release folders it reads under ``--data-root``; a suite without them reads ``--data``. Returns
    nothing.
    """


@hookspec
def register_recipes(register):
    """Register recipes usable as ``hardctl recipes run NAME``.

    Fires when recipes are first listed or looked up. Call ``register(name, path, help=...)`` where
    ``path`` is a TOML recipe file (see the README's recipe format). Returns nothing.
    """

"""Plugin discovery and the registries the plugins fill.

Plugins are modules named by entry points in the ``hardctl`` group. Loading is lazy (the first time a
registry is read), one plugin at a time, and isolated: a plugin that fails to import, or whose hook
raises (``sys.exit()`` included), costs a one-line warning on stderr and nothing else.
``HARDCTL_STRICT_PLUGINS=1`` re-raises instead (a SystemExit as an error naming the plugin; for plugin
authors and CI); ``HARDCTL_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point or
distribution name.

The built-in plugins (the ``hardctl_builtins`` modules of the ``hardctl`` distribution) register first,
so a name they define is theirs whatever order site-packages lists entry points in; a plugin that
registers the same name again is refused with a warning naming both. Each registry keeps typed entries
(:class:`DatasetEntry`, :class:`AugmentorEntry`, :class:`SuiteEntry`, :class:`Entry` for recipes), and
:func:`provenance` says which plugin, distribution and version supplied a registered name.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import pluggy

from hardctl import hookspecs
from hardctl.errors import UsageError, did_you_mean

STRICT_ENV = "HARDCTL_STRICT_PLUGINS"
DISABLE_ENV = "HARDCTL_DISABLE_PLUGINS"
ENTRY_POINT_GROUP = "hardctl"
BUILTIN_DISTRIBUTION = "hardctl"  # the built-ins ship inside hardctl's own distribution ...
BUILTIN_PACKAGE = "hardctl_builtins"  # ... as modules of this package


class PluginWarning(UserWarning):
    """A plugin could not be loaded, one of its hooks failed, or it registered something refused."""


@dataclass
class PluginInfo:
    """What ``hardctl plugins`` reports about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    builtin: bool = False  # registers before every other plugin; its names cannot be taken

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "registered": self.registered,
        }


# -- typed registry entries ---------------------------------------------------------------------------
# ``register(name, obj, help=..., **meta)`` accepts exactly the extra fields of its registry's entry
# class; an unknown keyword is a plugin-named warning (an error in strict mode) instead of a silent no-op.
@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, the object itself, a help line and who registered it."""

    name: str
    obj: Any
    help: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class DatasetEntry(Entry):
    """A ``--data NAME[:ARG]`` format; ``needs_arg``: ``NAME`` alone is refused (it reads a folder)."""

    needs_arg: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.needs_arg, bool):
            raise TypeError(f"needs_arg must be True or False, got {self.needs_arg!r}")


@dataclass(frozen=True)
class SuiteEntry(Entry):
    """An evaluation suite; ``sources`` (:class:`hardctl.eval.sources.Source`): the release folders it
    reads under ``--data-root`` (empty: it reads the ``--data`` spec instead)."""

    sources: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))


@dataclass(frozen=True)
class AugmentorEntry(Entry):
    """An augmentor factory and what HARD needs to know about it.

    Each field left out of the ``register`` call is read from the factory's class attribute of the same
    name (:class:`hardctl.augment.Augmentor` declares them), so the entry, not the module, is the one
    place the engine reads them from: ``register(..., teacher_term=False)`` overrides the class.
    ``hard_defaults`` stays ``None`` when neither gives one (then the engine's defaults apply).
    """

    options: tuple | None = None
    teacher_term: bool | None = None
    hard_defaults: Any = None

    def __post_init__(self) -> None:
        options = self.options if self.options is not None else getattr(self.obj, "options", ())
        teacher_term = self.teacher_term if self.teacher_term is not None else getattr(self.obj, "teacher_term", True)
        if not isinstance(teacher_term, bool):
            raise TypeError(f"teacher_term must be True or False, got {teacher_term!r}")
        object.__setattr__(self, "options", tuple(options))
        object.__setattr__(self, "teacher_term", teacher_term)
        if self.hard_defaults is None:
            object.__setattr__(self, "hard_defaults", getattr(self.obj, "hard_defaults", None))


def metadata_fields(entry_type: type[Entry]) -> list[str]:
    """The keyword metadata ``register`` accepts for entries of ``entry_type``."""
    return [f.name for f in dataclasses.fields(entry_type) if f.name not in ("name", "obj", "help", "plugin")]


class Registry:
    """Name -> typed entry, filled by one hook of every plugin on first access."""

    def __init__(self, kind: str, hook_name: str, noun: str, entry_type: type[Entry] = Entry):
        self.kind = kind  # "datasets", "augmentors", "eval_suites", "recipes"
        self.hook_name = hook_name
        self.noun = noun  # used in error messages: "data set", "augmentor"
        self.entry_type = entry_type
        self._entries: dict[str, Entry] | None = None

    def _fill(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            manager.call_register_hook(self)
        return self._entries

    def add(self, entry: Entry) -> bool:
        """Add ``entry`` unless its name is taken (then warn); returns whether it was added.

        Built-ins register first (see :meth:`PluginManager.call_register_hook`), so the entry kept on a
        clash is the built-in one whenever a built-in is involved, and otherwise the first plugin's.
        """
        entries = self._entries if self._entries is not None else {}
        if entry.name in entries:
            kept = entries[entry.name]
            if manager.is_builtin(kept.plugin):
                whose, keeping = "the built-in one", "the built-in"
            else:
                whose, keeping = "the one", "the first"
            _warn_or_raise(f"{self.noun} {entry.name!r} from plugin {entry.plugin!r} clashes with {whose} "
                           f"from {kept.plugin!r}; keeping {keeping}")
            return False
        entries[entry.name] = entry
        self._entries = entries
        return True

    def get(self, name: str) -> Entry:
        entries = self._fill()
        if name not in entries:
            installed = ", ".join(sorted(entries)) or "none"
            raise UsageError(
                f"unknown {self.noun} {name!r}{did_you_mean(name, entries)}",
                hint=f"installed: {installed}",
            )
        return entries[name]

    def names(self) -> list[str]:
        return sorted(self._fill())

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._fill().values(), key=lambda e: e.name))

    def __contains__(self, name: str) -> bool:
        return name in self._fill()

    def reset(self) -> None:
        self._entries = None


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip() not in ("", "0", "false", "no")


def _disabled() -> set[str]:
    return {p.strip() for p in os.environ.get(DISABLE_ENV, "").split(",") if p.strip()}


# What a plugin's import or hook may raise that hardctl survives: anything but Ctrl-C, SystemExit included
# (a plugin that calls sys.exit() would otherwise end every command, without a word, with its exit code).
_NOT_A_PLUGIN_FAILURE = (KeyboardInterrupt, GeneratorExit)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({'' if exc.code is None else repr(exc.code)})"
    return f"{type(exc).__name__}: {exc}"


def _warn_or_raise(message: str, exc: BaseException | None = None) -> None:
    if _strict():
        if isinstance(exc, Exception):
            raise exc
        raise RuntimeError(message) from exc  # not the SystemExit itself: that would end hardctl without a word
    warnings.warn(message, PluginWarning, stacklevel=3)


def _is_builtin_entry_point(ep: md.EntryPoint, distribution: str | None) -> bool:
    """A ``hardctl_builtins`` module of hardctl's own distribution (another distribution cannot claim to
    be built in by naming its entry point ``builtin_...`` or its module ``hardctl_builtins...``)."""
    in_package = ep.value.split(":")[0].split(".")[0] == BUILTIN_PACKAGE
    return in_package and distribution in (BUILTIN_DISTRIBUTION, None)


class PluginManager:
    """pluggy's manager plus lazy, isolated entry-point loading and per-plugin bookkeeping."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("hardctl")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._loaded = False

    def load(self) -> None:
        """Import every plugin of the ``hardctl`` entry-point group once, the built-ins first."""
        if self._loaded:
            return
        self._loaded = True
        blocked = _disabled()
        seen: set[str] = set()
        found = []
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            distribution = dist.metadata["Name"] if dist is not None else None
            found.append((not _is_builtin_entry_point(ep, distribution), ep, dist, distribution))
        found.sort(key=lambda item: item[0])  # stable: built-ins first, the rest in entry-point order
        for not_builtin, ep, dist, distribution in found:
            if ep.name in seen:  # the same dist on sys.path twice (editable + site) lists it twice
                continue
            seen.add(ep.name)
            info = PluginInfo(name=ep.name, module=ep.value, distribution=distribution,
                              version=dist.version if dist is not None else None, builtin=not not_builtin)
            self.infos[ep.name] = info
            if ep.name in blocked or (info.distribution and info.distribution in blocked):
                info.status = "disabled"
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except BaseException as exc:  # a broken plugin must not break hardctl
                if isinstance(exc, _NOT_A_PLUGIN_FAILURE):
                    raise
                info.status, info.error = "failed", _describe(exc)
                _warn_or_raise(f"plugin {ep.name!r} failed to load: {info.error}", exc)

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin object (tests, notebooks); registries are refilled.

        Its version is the object's ``__version__`` if it has one (a module usually does)."""
        self.load()
        self.pm.register(plugin, name=name)
        self.infos[name] = PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)),
                                      version=getattr(plugin, "__version__", None))
        for registry in REGISTRIES.values():
            registry.reset()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        for registry in REGISTRIES.values():
            registry.reset()

    def is_builtin(self, plugin_name: str) -> bool:
        info = self.infos.get(plugin_name)
        return info is not None and info.builtin

    def call_register_hook(self, registry: Registry) -> None:
        """Call ``registry``'s hook plugin by plugin so that each registration knows its author.

        Built-ins are called first and the others in registration order: on a name clash the built-in,
        or else the earlier plugin, wins."""
        self.load()
        for info in self.infos.values():  # a refill (after register/unregister) starts from scratch
            info.registered.pop(registry.kind, None)
        hook = getattr(self.pm.hook, registry.hook_name)
        impls = sorted(hook.get_hookimpls(), key=lambda impl: not self.is_builtin(impl.plugin_name))
        for impl in impls:
            plugin_name = impl.plugin_name
            info = self.infos.get(plugin_name)
            register = self._register_for(registry, plugin_name, info)
            try:
                impl.function(register=register)
            except BaseException as exc:
                if isinstance(exc, _NOT_A_PLUGIN_FAILURE):
                    raise
                if info is not None:
                    info.status, info.error = "failed", _describe(exc)
                _warn_or_raise(f"plugin {plugin_name!r} failed in {registry.hook_name}: {_describe(exc)}", exc)

    @staticmethod
    def _register_for(registry: Registry, plugin_name: str, info: PluginInfo | None):
        """The ``register`` callable handed to one plugin: it records who registered what."""
        accepted = metadata_fields(registry.entry_type)

        def register(name: str, obj: Any, help: str = "", **meta: Any) -> None:
            unknown = sorted(set(meta) - set(accepted))
            if unknown:  # a typo (needs_args=) would otherwise be dropped without a word
                _warn_or_raise(
                    f"plugin {plugin_name!r} registered {registry.noun} {name!r} with unknown keyword "
                    f"{', '.join(unknown)} (ignored; {registry.kind} accept: {', '.join(accepted) or 'none'})"
                )
                meta = {k: v for k, v in meta.items() if k in accepted}
            entry = registry.entry_type(name=name, obj=obj, help=help, plugin=plugin_name, **meta)
            if registry.add(entry) and info is not None:
                info.registered.setdefault(registry.kind, []).append(name)

        return register

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin, with what it registered in each registry."""
        self.load()
        for registry in REGISTRIES.values():
            registry._fill()
        return sorted(self.infos.values(), key=lambda i: i.name)


manager = PluginManager()

datasets = Registry("datasets", "register_datasets", "data set", DatasetEntry)
augmentors = Registry("augmentors", "register_augmentors", "augmentor", AugmentorEntry)
eval_suites = Registry("eval_suites", "register_eval_suites", "evaluation suite", SuiteEntry)
recipes = Registry("recipes", "register_recipes", "recipe", Entry)
REGISTRIES: dict[str, Registry] = {r.kind: r for r in (datasets, augmentors, eval_suites, recipes)}


def provenance(kind: str, name: str) -> dict[str, str | None]:
    """Who supplied ``name`` in the registry ``kind`` (``"datasets"``, ``"augmentors"``, ``"eval_suites"``,
    ``"recipes"``): ``{"name", "plugin", "distribution", "version"}``, what a run records about each data set
    and augmentor part. ``distribution`` is ``None`` for an in-process plugin, ``version`` its ``__version__``
    if it has one. An unknown ``name`` is the registry's usual UsageError (did-you-mean, installed list)."""
    if kind not in REGISTRIES:
        raise ValueError(f"unknown registry {kind!r}; one of {', '.join(REGISTRIES)}")
    entry = REGISTRIES[kind].get(name)
    info = manager.infos.get(entry.plugin)
    return {"name": entry.name, "plugin": entry.plugin, "distribution": info.distribution if info else None,
            "version": info.version if info else None}


def reload() -> None:
    """Forget everything loaded (tests that install a plugin distribution mid-session use this)."""
    global manager
    importlib.invalidate_caches()
    manager = PluginManager()
    for registry in REGISTRIES.values():
        registry.reset()

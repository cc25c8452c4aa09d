"""Plugin discovery and the registries the plugins fill.

Plugins are modules named by entry points in the ``hardctl`` group. Loading is lazy (the first time a
registry is read), one plugin at a time, and isolated: a plugin that fails to import, or whose hook
raises, costs a one-line warning on stderr and nothing else. ``HARDCTL_STRICT_PLUGINS=1`` re-raises
instead (for plugin authors and CI); ``HARDCTL_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point or
distribution name.
"""

from __future__ import annotations

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


class PluginWarning(UserWarning):
    """A plugin could not be loaded or one of its hooks failed."""


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


@dataclass
class Entry:
    """One registered thing: its name, the object itself, a help line and who registered it."""

    name: str
    obj: Any
    help: str = ""
    plugin: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Name -> :class:`Entry`, filled by one hook of every plugin on first access."""

    def __init__(self, kind: str, hook_name: str, noun: str):
        self.kind = kind  # "datasets", "augmentors", "eval_suites"
        self.hook_name = hook_name
        self.noun = noun  # used in error messages: "data set", "augmentor"
        self._entries: dict[str, Entry] | None = None

    def _fill(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            manager.call_register_hook(self)
        return self._entries

    def add(self, entry: Entry) -> bool:
        """Add ``entry`` unless its name is taken (then warn); returns whether it was added."""
        entries = self._entries if self._entries is not None else {}
        if entry.name in entries:
            _warn_or_raise(
                f"{self.noun} {entry.name!r} from plugin {entry.plugin!r} clashes with the one from "
                f"{entries[entry.name].plugin!r}; keeping the first"
            )
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


def _warn_or_raise(message: str, exc: BaseException | None = None) -> None:
    if _strict():
        if exc is not None:
            raise exc
        raise RuntimeError(message)
    warnings.warn(message, PluginWarning, stacklevel=3)


class PluginManager:
    """pluggy's manager plus lazy, isolated entry-point loading and per-plugin bookkeeping."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("hardctl")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._loaded = False

    def load(self) -> None:
        """Import every plugin of the ``hardctl`` entry-point group once."""
        if self._loaded:
            return
        self._loaded = True
        blocked = _disabled()
        seen: set[str] = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:  # the same dist on sys.path twice (editable + site) lists it twice
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            self.infos[ep.name] = info
            if ep.name in blocked or (info.distribution and info.distribution in blocked):
                info.status = "disabled"
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not break hardctl
                info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
                _warn_or_raise(f"plugin {ep.name!r} failed to load: {info.error}", exc)

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin object (tests, notebooks); registries are refilled."""
        self.load()
        self.pm.register(plugin, name=name)
        self.infos[name] = PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)))
        for registry in REGISTRIES.values():
            registry.reset()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        for registry in REGISTRIES.values():
            registry.reset()

    def call_register_hook(self, registry: Registry) -> None:
        """Call ``registry``'s hook plugin by plugin so that each registration knows its author."""
        self.load()
        for info in self.infos.values():  # a refill (after register/unregister) starts from scratch
            info.registered.pop(registry.kind, None)
        hook = getattr(self.pm.hook, registry.hook_name)
        for impl in hook.get_hookimpls():  # registration order: on a name clash the earlier plugin wins
            plugin_name = impl.plugin_name
            info = self.infos.get(plugin_name)
            register = self._register_for(registry, plugin_name, info)
            try:
                impl.function(register=register)
            except Exception as exc:
                if info is not None:
                    info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
                _warn_or_raise(
                    f"plugin {plugin_name!r} failed in {registry.hook_name}: {type(exc).__name__}: {exc}",
                    exc,
                )

    @staticmethod
    def _register_for(registry: Registry, plugin_name: str, info: PluginInfo | None):
        """The ``register`` callable handed to one plugin: it records who registered what."""

        def register(name: str, obj: Any, help: str = "", **meta: Any) -> None:
            added = registry.add(Entry(name=name, obj=obj, help=help, plugin=plugin_name, meta=meta))
            if added and info is not None:
                info.registered.setdefault(registry.kind, []).append(name)

        return register

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin, with what it registered in each registry."""
        self.load()
        for registry in REGISTRIES.values():
            registry._fill()
        return sorted(self.infos.values(), key=lambda i: i.name)


manager = PluginManager()

datasets = Registry("datasets", "register_datasets", "data set")
augmentors = Registry("augmentors", "register_augmentors", "augmentor")
eval_suites = Registry("eval_suites", "register_eval_suites", "evaluation suite")
recipes = Registry("recipes", "register_recipes", "recipe")
REGISTRIES: dict[str, Registry] = {r.kind: r for r in (datasets, augmentors, eval_suites, recipes)}


def reload() -> None:
    """Forget everything loaded (tests that install a plugin distribution mid-session use this)."""
    global manager
    importlib.invalidate_caches()
    manager = PluginManager()
    for registry in REGISTRIES.values():
        registry.reset()

"""The plugin manager and the component registries it fills.

Plugins are loaded lazily from the ``freezebench`` entry-point group, on first use. Components
(datasets, backbones, strategies, analyses) are collected by calling every plugin's
``register_<kind>`` hook with a ``register`` callback bound to that plugin, so a duplicate name
can name both plugins. The host calls the lifecycle hooks (``hookspecs``) through :func:`hook`.

Environment switches:
- ``FREEZEBENCH_LOAD_PLUGINS=a,b``: load only these entry points ("" loads none);
- ``FREEZEBENCH_DISABLE_PLUGINS=a,b``: skip these;
- ``FREEZEBENCH_TRACE_PLUGINS=1``: log every hook call, its arguments and results, to stderr.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UserError

ENTRY_POINT_GROUP = "freezebench"
KINDS = ("datasets", "backbones", "strategies", "analyses")
_SINGULAR = {"datasets": "dataset", "backbones": "backbone", "strategies": "strategy", "analyses": "analysis"}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    plugin: str
    obj: Any

    @property
    def summary(self) -> str:
        return getattr(self.obj, "summary", "") or ""


class Registry:
    """The components of one kind, by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, obj: Any, *, plugin: str) -> None:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"Plugin {plugin!r} registered a {_SINGULAR[self.kind]} without a string 'name': {obj!r}"
            )
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"Duplicate {_SINGULAR[self.kind]} name {name!r}: registered by plugin {other!r} "
                f"and by plugin {plugin!r}. Uninstall or disable one of them "
                f"(FREEZEBENCH_DISABLE_PLUGINS=...)."
            )
        self._entries[name] = Entry(self.kind, name, plugin, obj)

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        singular = _SINGULAR[self.kind]
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        if len(self._entries) <= 30:
            installed = ", ".join(sorted(self._entries)) or "none"
            listing = f" Installed {self.kind}: {installed}."
        else:
            listing = f" {len(self._entries)} {self.kind} are installed: see `freezebench list {self.kind}`."
        return f"Unknown {singular}: {name!r}.{hint}{listing}"

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entries(self, pattern: str | None = None) -> list[Entry]:
        items = sorted(self._entries.values(), key=lambda e: e.name)
        if pattern:
            items = [e for e in items if fnmatch.fnmatchcase(e.name, pattern)]
        return items


_pm: pluggy.PluginManager | None = None
_info: dict[str, PluginInfo] = {}
_registries: dict[str, Registry] = {}


def _csv_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading entry points the first time."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("freezebench")
        pm.add_hookspecs(hookspecs)
        _load_entry_points(pm)
        if os.environ.get("FREEZEBENCH_TRACE_PLUGINS", "").strip() not in ("", "0"):
            _trace(pm)
        _pm = pm
    return _pm


def hook():
    """The lifecycle hooks, for the host to call: ``hook().trial_started(trial=...)``."""
    return get_plugin_manager().hook


def _trace(pm: pluggy.PluginManager) -> None:
    """Log each hook call with its arguments and each result (pluggy's hook-call monitoring)."""
    pm.trace.root.setwriter(lambda text: sys.stderr.write(f"[freezebench plugins] {text}"))
    pm.enable_tracing()


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    only = _csv_env("FREEZEBENCH_LOAD_PLUGINS")
    disabled = _csv_env("FREEZEBENCH_DISABLE_PLUGINS") or set()
    seen: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (only is not None and ep.name not in only) or ep.name in disabled:
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        if ep.name in seen:
            if seen[ep.name] == ep.value:  # the same package seen twice on sys.path
                continue
            raise PluginError(
                f"Two plugins are named {ep.name!r}: {seen[ep.name]} and {ep.value} "
                f"(from {dist_name or 'unknown distribution'}). Uninstall one of them."
            )
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must be reported by name
            raise PluginError(
                f"Error importing plugin {ep.name!r} ({ep.value}, from "
                f"{dist_name or 'unknown distribution'}): {type(exc).__name__}: {exc}. "
                f"Fix or uninstall it, or skip it with FREEZEBENCH_DISABLE_PLUGINS={ep.name}."
            ) from exc
        seen[ep.name] = ep.value
        _register(pm, module, ep.name)
        _info[ep.name] = PluginInfo(ep.name, ep.value, dist_name, dist.version if dist is not None else None, ())


def _register(pm: pluggy.PluginManager, plugin, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:  # e.g. a hook implementation asks for an argument no hook offers
        raise PluginError(f"Plugin {name!r} does not fit freezebench's hooks: {exc}. See docs/plugin-guide.md.") from None


def register_plugin(module_or_object, name: str) -> None:
    """Register a plugin object directly (tests, notebooks). Undo with :func:`unregister_plugin`."""
    _register(get_plugin_manager(), module_or_object, name)
    _info[name] = PluginInfo(name, getattr(module_or_object, "__name__", repr(module_or_object)), None, None, ())
    _registries.clear()


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _info.pop(name, None)
    _registries.clear()


def list_plugins() -> list[PluginInfo]:
    """Installed plugins with the hooks each implements."""
    pm = get_plugin_manager()
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = tuple(sorted(caller.name for caller in (pm.get_hookcallers(plugin) or [])))
        base = _info.get(name) or PluginInfo(name, getattr(plugin, "__name__", "?"), None, None, ())
        out.append(PluginInfo(base.name, base.module, base.distribution, base.version, hooks))
    return sorted(out, key=lambda p: p.name)


def get_registry(kind: str) -> Registry:
    if kind not in KINDS:
        raise UserError(f"Unknown component kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind not in _registries:
        pm = get_plugin_manager()
        registry = Registry(kind)
        caller = getattr(pm.hook, f"register_{kind}")
        for impl in caller.get_hookimpls():  # in plugin registration order
            def register(obj, _plugin=impl.plugin_name):
                registry.add(obj, plugin=_plugin)

            try:
                impl.function(register=register)
            except (UserError, PluginError):
                raise
            except Exception as exc:
                raise PluginError(
                    f"Plugin {impl.plugin_name!r} failed in register_{kind}: {type(exc).__name__}: {exc}"
                ) from exc
        _registries[kind] = registry
    return _registries[kind]


def datasets() -> Registry:
    return get_registry("datasets")


def backbones() -> Registry:
    return get_registry("backbones")


def strategies() -> Registry:
    return get_registry("strategies")


def analyses() -> Registry:
    return get_registry("analyses")


def reset() -> None:
    """Forget the loaded plugins and their components (tests)."""
    global _pm
    _pm = None
    _info.clear()
    _registries.clear()

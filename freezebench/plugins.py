"""The plugin manager: loads the ``freezebench`` entry-point group lazily, on first use.

Environment switches:
- ``FREEZEBENCH_LOAD_PLUGINS=a,b``: load only these entry points ("" loads none);
- ``FREEZEBENCH_DISABLE_PLUGINS=a,b``: skip these.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "freezebench"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


_pm: pluggy.PluginManager | None = None
_info: dict[str, PluginInfo] = {}


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
        _pm = pm
    return _pm


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
        pm.register(module, name=ep.name)
        _info[ep.name] = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist_name,
            version=dist.version if dist is not None else None,
            hooks=(),
        )


def register_plugin(module_or_object, name: str) -> None:
    """Register a plugin object directly (tests, notebooks). Undo with :func:`unregister_plugin`."""
    pm = get_plugin_manager()
    pm.register(module_or_object, name=name)
    _info[name] = PluginInfo(name, getattr(module_or_object, "__name__", repr(module_or_object)), None, None, ())
    from . import registry

    registry.reset()


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _info.pop(name, None)
    from . import registry

    registry.reset()


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


def reset() -> None:
    """Forget the loaded plugins (tests)."""
    global _pm
    _pm = None
    _info.clear()
    from . import registry

    registry.reset()

"""Named component registries (datasets, backbones, strategies), filled by plugin hooks.

Each registry is built on first use by calling every plugin's ``register_<kind>`` hook
with a ``register`` callback bound to that plugin, so a duplicate name can name both plugins.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from .errors import PluginError, UserError

KINDS = ("datasets", "backbones", "strategies", "analyses")
_SINGULAR = {"datasets": "dataset", "backbones": "backbone", "strategies": "strategy", "analyses": "analysis"}


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


_registries: dict[str, Registry] = {}


def get_registry(kind: str) -> Registry:
    if kind not in KINDS:
        raise UserError(f"Unknown component kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind not in _registries:
        from .plugins import get_plugin_manager

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
    _registries.clear()

"""The hooks a freezebench plugin can implement.

Each ``register_*`` hook receives a ``register`` callback; call it once per component.
The core validates names (duplicates fail naming both plugins).
"""

import pluggy

hookspec = pluggy.HookspecMarker("freezebench")
hookimpl = pluggy.HookimplMarker("freezebench")


@hookspec
def register_datasets(register):
    """Register datasets: ``register(DatasetSpec(...))``."""


@hookspec
def register_backbones(register):
    """Register backbones: ``register(BackboneSpec(...))``."""


@hookspec
def register_strategies(register):
    """Register freeze strategies: ``register(strategy)`` (see ``freezebench.strategy``)."""


@hookspec
def register_analyses(register):
    """Register analyses: ``register(analysis)`` (see ``freezebench.analysis``)."""

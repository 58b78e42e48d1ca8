"""How the unlearning package finds a run's trainer adapter: by name, from the manifest.

A run manifest (``run.json``) names its adapter as ``"module:Class"`` under ``adapter``;
manifests that only give a ``mode`` use the built-in adapter of that mode. The adapter
class is imported when a run is opened, never when :mod:`unlearning` is imported, so the
unlearning package loads no trainer (and no JAX) until a run needs one. The adapter speaks
the :class:`vfl.core.rounds.TrainerAdapter` protocol; unlearning calls nothing else.
"""

from __future__ import annotations

import importlib

from unlearning.errors import RunDirError

#: The built-in adapters, by the ``mode`` a manifest gives.
BUILTIN_ADAPTERS = {
    "vertical": "vfl.vertical.checkpointing:VerticalAdapter",
    "horizontal": "horizontal.checkpointing:HorizontalAdapter",
}


def adapter_name(spec: dict) -> str:
    """The ``module:Class`` of the adapter a manifest names (or its mode's built-in one)."""
    name = spec.get("adapter") or BUILTIN_ADAPTERS.get(spec.get("mode"))
    if not name or ":" not in str(name):
        raise RunDirError(
            f"the run manifest names no trainer adapter (mode {spec.get('mode')!r}): give "
            f"'adapter': 'module:Class', or a mode among {sorted(BUILTIN_ADAPTERS)}"
        )
    return str(name)


def adapter_class(spec: dict):
    """Import and return the adapter class a manifest names."""
    name = adapter_name(spec)
    module, _, cls = name.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise RunDirError(f"cannot load the run's trainer adapter {name!r}: {e}") from e

"""Built-in registry entries that live in higher layers register themselves when their module is imported;
the registries (models, rewards, evaluators) name those modules and import them on their first lookup, so
no low layer imports a high one at module level."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

_IMPORTED: set[str] = set()


def import_builtins(modules: Sequence[str]) -> None:
    """Import each module once. A module is marked before it is imported, so one that looks names up while it
    registers does not import itself again, and one whose import failed is not retried on every lookup."""
    for mod in modules:
        if mod not in _IMPORTED:
            _IMPORTED.add(mod)
            importlib.import_module(mod)

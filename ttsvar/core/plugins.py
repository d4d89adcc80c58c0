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


def load_import_path(path: str, what: str = "plugin") -> object:
    """Import ``"package.module:object"`` (``object`` may be dotted: ``module:Class.attr``), the form a config
    names user code in (`reward.name`, `search.features`). Errors say which `what` the path was for."""
    mod_name, sep, attr = path.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"import path {path!r} must look like 'package.module:object'")
    try:
        obj: object = importlib.import_module(mod_name)
    except ImportError as e:
        raise ImportError(f"cannot import module {mod_name!r} of {what} import path {path!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{what} import path {path!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj

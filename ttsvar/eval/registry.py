"""Evaluator registry: `create_evaluator(name, **options)`, `list_evaluators()`, `@register_evaluator`.

    @register_evaluator("my-detector")
    class MyEvaluator(Evaluator): ...

    create_evaluator("shapes", min_area=12)   # options are the class's (or factory's) keywords

The built-in evaluators register themselves when their module is imported; `_BUILTIN_MODULES` names those
modules and the first lookup imports them (the shapes testbed's module among them: nothing here imports it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.errors import ConfigError
from ..core.plugins import import_builtins
from .evaluator import Evaluator

# Modules whose @register_evaluator decorators define the built-in names, imported on the first lookup.
_BUILTIN_MODULES = ("ttsvar.testbed.evaluator", "ttsvar.eval.mask2former")

_EVALUATORS: dict[str, Callable[..., Evaluator]] = {}

T = TypeVar("T")


def register_evaluator(name: str) -> Callable[[T], T]:
    """Decorator registering an `Evaluator` subclass or a factory `(**options) -> Evaluator` under `name`."""

    def deco(obj: T) -> T:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"register_evaluator: invalid evaluator name {name!r}")
        if not callable(obj):
            raise TypeError(f"register_evaluator({name!r}): {obj!r} is not an Evaluator class or factory")
        if name in _EVALUATORS and _EVALUATORS[name] is not obj:
            raise ValueError(f"evaluator {name!r} is already registered to {_EVALUATORS[name]!r}")
        _EVALUATORS[name] = obj  # type: ignore[assignment]
        return obj

    return deco


def _load_builtins() -> None:
    import_builtins(_BUILTIN_MODULES)


def list_evaluators() -> list[str]:
    _load_builtins()
    return sorted(_EVALUATORS)


def check_evaluator_name(name: str, field: str = "evaluator") -> None:
    """Raise `ConfigError` naming `field` and the known evaluators unless `name` is registered."""
    if name not in list_evaluators():
        raise ConfigError(f"{field}={name!r} is unknown; available: {', '.join(list_evaluators())}")


def create_evaluator(name: str, field: str = "evaluator", **options: Any) -> Evaluator:
    """The evaluator registered as `name`, built with `options`. An unknown name or option raises `ConfigError`
    naming `field` (the config field or command-line option the name came from) and what is accepted."""
    check_evaluator_name(name, field)
    factory = _EVALUATORS[name]
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ConfigError(f"evaluator {name!r} has no option(s) {unknown}; its options are {sorted(accepted)}")
    ev = factory(**options)
    if not isinstance(ev, Evaluator):
        raise TypeError(f"evaluator {name!r} built a {type(ev).__name__}, not an Evaluator")
    return ev

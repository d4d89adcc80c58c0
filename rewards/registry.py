"""Reward registry: ``create_reward(name_or_obj, **options)``, ``list_rewards()``, ``@register_reward``.

``create_reward`` accepts, in this order:

1. a :class:`~rewards.base.Reward` instance (returned as is),
2. a ``Reward`` subclass (instantiated with ``options``),
3. any other callable ``f(images, prompts) -> scores`` (wrapped in :class:`~rewards.base.FunctionReward`;
   options ``name``, ``needs_prompt``, ``input_size``),
4. a registered name (built-ins and ``@register_reward`` classes or factories),
5. the name of an entry point in the group ``ttsvar.rewards`` of an installed distribution,
6. an import path ``"package.module:object"`` (only when written with the colon).

Objects found through 5 and 6 are handled like 1-3. The options ``nan_policy`` and ``batch_size`` are
common to every reward and set through :meth:`~rewards.base.Reward.configure`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from rewards.base import FunctionReward, Reward
from ttsvar.core.options import accepts_option  # noqa: F401 - re-exported: rewards.config, rewards.ensemble
from ttsvar.core.plugins import import_builtins
from ttsvar.core.plugins import load_import_path as _load_import_path

ENTRY_POINT_GROUP = "ttsvar.rewards"
COMMON_OPTIONS = ("nan_policy", "batch_size")

# Modules whose @register_reward decorators define the built-in names; imported on first use so that
# `import rewards` stays cheap (open_clip and transformers take seconds to import).
_BUILTIN_MODULES = (
    "rewards.imagereward",
    "rewards.clip_score",
    "rewards.hps",
    "rewards.pickscore",
    "rewards.aesthetic",
    "rewards.ensemble",
    "rewards.shapes_clip",
    "rewards.shapes_reward",
    "rewards.classifier",
)

_REGISTRY: dict[str, Callable[..., Reward]] = {}

T = TypeVar("T")


def register_reward(name: str | None = None, *, overwrite: bool = False,
                    score_scale: float | None = None) -> Callable[[T], T]:
    """Decorator registering a ``Reward`` subclass or a factory ``(**options) -> Reward`` under ``name``
    (default: the class's ``name`` attribute or the function's ``__name__``). ``score_scale``: a factory's
    declared scale (``rewards.base.Reward.score_scale``), which potentials read before the reward is built; a
    factory annotated ``-> SomeReward`` declares that class's instead."""

    def deco(obj: T) -> T:
        key = name
        if key is None:
            key = (
                obj.name
                if isinstance(obj, type) and issubclass(obj, Reward)
                else getattr(obj, "__name__", None)
            )
        if not isinstance(key, str) or not key or ":" in key:
            raise ValueError(f"register_reward: invalid reward name {key!r} (non-empty, no ':')")
        if key in _REGISTRY and _REGISTRY[key] is not obj and not overwrite:
            raise ValueError(
                f"reward name {key!r} is already registered to {_REGISTRY[key]!r}; "
                "pick another name or pass overwrite=True"
            )
        if not callable(obj):
            raise TypeError(f"register_reward: {obj!r} is not a class or factory function")
        if not isinstance(obj, type) and _looks_like_scorer(obj):
            raise TypeError(f"register_reward({key!r}): {getattr(obj, '__name__', obj)!r} takes (images, prompts), "
                            "a scoring function; a registered function is a factory called with the reward's options "
                            "that returns a Reward. Register `lambda **options: create_reward(fn, **options)`, "
                            "subclass rewards.Reward, or name the function by its import path 'pkg.module:fn'")
        if score_scale is not None:
            if isinstance(obj, type):
                raise TypeError(f"register_reward({key!r}, score_scale=...): a Reward class declares its scale "
                                "itself (its score_scale attribute or declared_score_scale)")
            obj.score_scale = score_scale  # type: ignore[attr-defined]
        _REGISTRY[key] = obj  # type: ignore[assignment]
        return obj

    return deco


def _looks_like_scorer(fn: Callable) -> bool:
    """A function whose first parameters are `images` (and `prompts`): `f(images, prompts) -> scores`, not a
    factory `(**options) -> Reward`."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "images"


def _load_builtins() -> None:
    import_builtins(_BUILTIN_MODULES)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_rewards() -> list[str]:
    """Registered reward names plus the names of installed ``ttsvar.rewards`` entry points."""
    _load_builtins()
    return sorted(set(_REGISTRY) | set(_entry_points()))


def load_import_path(path: str) -> Any:
    """Import ``"package.module:object"`` (``object`` may be dotted: ``module:Class.attr``)."""
    return _load_import_path(path, "reward")


def resolve_reward(reward: Any) -> Any:
    """Turn a name / entry point / import path into the object it names; other objects pass through."""
    if not isinstance(reward, str):
        return reward
    _load_builtins()
    if reward in _REGISTRY:
        eps = _entry_points()
        if reward in eps:
            raise ValueError(
                f"reward name {reward!r} is both registered in ttsvar and an entry point of "
                f"{eps[reward].value!r}; rename the entry point"
            )
        return _REGISTRY[reward]
    eps = _entry_points()
    if reward in eps:
        try:
            return eps[reward].load()
        except Exception as e:
            raise ImportError(
                f"entry point {reward!r} ({eps[reward].value}) in group "
                f"{ENTRY_POINT_GROUP!r} failed to load: {e}"
            ) from e
    if ":" in reward:
        return load_import_path(reward)
    raise KeyError(
        f"unknown reward {reward!r}. Available: {', '.join(list_rewards())}. "
        "A custom reward can also be given as an import path 'package.module:object', an entry point in "
        f"the group {ENTRY_POINT_GROUP!r}, or a Reward instance / function f(images, prompts)."
    )


def create_reward(reward: Any, **options: Any) -> Reward:
    """Build a reward from a name, import path, entry point, class, instance or plain function.

    ``options`` go to the reward's constructor, except ``nan_policy`` and ``batch_size``, which every
    reward takes (see :meth:`Reward.configure`). Unknown names raise ``KeyError`` listing the available ones.
    """
    common = {k: options.pop(k) for k in COMMON_OPTIONS if k in options}
    obj = resolve_reward(reward)
    label = reward if isinstance(reward, str) else repr(obj)
    if isinstance(obj, Reward):
        if options:
            raise TypeError(f"reward {label} is already built; options {sorted(options)} cannot be applied")
        # A shallow copy (the weights are shared) takes the common options, so the caller's instance, which
        # other jobs or ensembles may hold, keeps its own.
        built = copy.copy(obj) if common else obj
    elif isinstance(obj, type) and issubclass(obj, Reward):
        built = obj(**options)
    elif isinstance(obj, type):
        raise TypeError(
            f"reward {label} is a class but not a rewards.Reward subclass; subclass Reward or "
            "pass a function f(images, prompts) -> scores"
        )
    elif callable(obj):
        if obj in _REGISTRY.values():  # a registered factory function
            built = obj(**options)
            if not isinstance(built, Reward):
                raise TypeError(f"reward factory {label} returned {type(built).__name__}, not a Reward")
        else:
            if isinstance(reward, str) and "name" not in options:
                options["name"] = reward
            built = FunctionReward(obj, **options)
    else:
        raise TypeError(
            f"cannot make a reward from {label} ({type(obj).__name__}); pass a registered name, "
            "an import path 'pkg.mod:obj', a Reward, or a function f(images, prompts)"
        )
    return built.configure(**common)

"""Strategy registry and the search section of the job config.

    @register_strategy("my-search")
    class MySearch(PlannedStrategy): ...

    create_strategy("tts-var", potential="diff")   # options are the class's __init__ keywords
    list_strategies()                             # sorted names
    build_strategy(SearchConfig(strategy="fk", n=4, ess_threshold=0.5))

The built-in strategies are registered by importing `search.strategies`, which lists every module explicitly.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from typing import Any

from search.base import SearchPlan, Strategy, is_int

_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str):
    """Class decorator adding a Strategy subclass to the registry under `name` (also set as `cls.name`)."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"register_strategy({name!r}): {cls!r} is not a Strategy subclass")
        if name in _STRATEGIES and _STRATEGIES[name] is not cls:
            raise ValueError(f"strategy {name!r} is already registered by {_STRATEGIES[name].__qualname__}")
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    return deco


def _builtin() -> dict[str, type[Strategy]]:
    import search.strategies  # noqa: F401  (registers the built-in strategies)

    return _STRATEGIES


def list_strategies() -> list[str]:
    return sorted(_builtin())


def strategy_options(name: str) -> dict[str, Any]:
    """The options `name` accepts, with their defaults."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p: v.default for p, v in params.items() if p != "self" and v.kind in kinds}


def create_strategy(name: str, **options: Any) -> Strategy:
    """Instantiate the strategy registered as `name`; unknown names and options raise errors listing the valid
    ones. Option values are validated by the strategy (errors name the option)."""
    cls = _lookup(name)
    accepted = strategy_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"strategy {name!r} has no option(s) {unknown}; its options are {sorted(accepted)}")
    return cls(**options)


def _lookup(name: str) -> type[Strategy]:
    registry = _builtin()
    if name not in registry:
        raise ValueError(f"unknown search strategy {name!r}; available: {sorted(registry)}")
    return registry[name]


@dataclass
class SearchConfig:
    """The `search:` section of a job config (plain types, so omegaconf/JSON round-trip it).

    Fields after `n` are strategy options: a field the chosen strategy does not use must stay at its
    default, or `validate`/`build_strategy` raise naming it.
    """

    strategy: str = "tts-var"
    n: int = 1  # batch unit: TTS-VAR runs batch_schedule x n rows; best-of-n/importance/beam/fk run n rows
    batch_schedule: list[int] | None = None  # rows kept after each scale, x n (None: paper default, adapted)
    cluster_scales: list[int] | None = None  # cluster after these scales (None: paper's 2, 5, adapted)
    resample_scales: list[int] | None = None  # resample after these (None: tts-var 6, 9; importance/fk all)
    potential: str = "value"  # value | diff | max | sum
    lam: float = 10.0  # potential temperature lambda
    beam_scales: list[int] | None = None  # beam: prune after these (None: the TTS-VAR decision scales)
    beam_width: int | None = None  # beam: rows kept at a beam scale (None: max(1, n // 2))
    ess_threshold: float = 0.5  # fk: resample when ESS < ess_threshold * n
    fk_pick: str = "weights"  # fk: final choice by corrected weights ("weights") or highest reward ("reward")
    features: str = "auto"  # feature extractor for clustering (rewards.features registry); auto: the model's
    features_opts: dict[str, Any] = field(default_factory=dict)  # its options (weights path, mode, ...)

    def strategy_kwargs(self) -> dict[str, Any]:
        """The options to pass to the chosen strategy; raises if a field it ignores was changed."""
        accepted = strategy_options(self.strategy)
        out = {}
        for f in fields(self):
            if f.name in _NOT_OPTIONS:
                continue
            value = getattr(self, f.name)
            if f.name in accepted:
                out[f.name] = _plain(value)
            elif value != _default(f):
                users = [s for s in list_strategies() if f.name in strategy_options(s)]
                raise ValueError(f"search.{f.name} = {value!r} has no effect for strategy {self.strategy!r} "
                                 f"(used by: {users}); remove it or choose one of those strategies")
        return out

    def validate(self, num_scales: int) -> SearchPlan:
        """Check every field against a model with `num_scales` scales; return the plan. Errors name the
        field."""
        if not isinstance(self.strategy, str):
            raise ValueError(f"search.strategy: expected a name, got {self.strategy!r}")
        _lookup(self.strategy)
        if not is_int(self.n) or self.n < 1:
            raise ValueError(f"search.n = {self.n!r}: must be an integer >= 1")
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise ValueError(f"search.lam = {self.lam!r}: must be a finite number")
        if not isinstance(self.features, str):
            raise ValueError(f"search.features: expected a feature extractor name, got {self.features!r}")
        if not isinstance(self.features_opts, dict):
            raise ValueError(f"search.features_opts: expected a mapping, got {self.features_opts!r}")
        try:
            return build_strategy(self).plan(num_scales, int(self.n))
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("search.") else f"search.{msg}") from e


def build_strategy(cfg: SearchConfig) -> Strategy:
    """The strategy described by `cfg` (not yet planned: call `.plan(num_scales, cfg.n)`)."""
    return create_strategy(cfg.strategy, **cfg.strategy_kwargs())


_NOT_OPTIONS = {"strategy", "n", "features", "features_opts"}


def _default(f) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default


def _plain(value: Any) -> Any:
    """omegaconf ListConfig -> list, so strategies see plain Python values."""
    if value is not None and not isinstance(value, (str, int, float, bool, list, tuple, dict)):
        try:
            return list(value)
        except TypeError:
            return value
    return value

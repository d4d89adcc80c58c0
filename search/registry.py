"""Strategy registry and the search section of the job config.

    @register_strategy("my-search")
    class MySearch(PlannedStrategy): ...

    create_strategy("tts-var", potential="diff")   # options are the class's __init__ keywords
    list_strategies()                             # sorted names
    build_strategy(SearchConfig(strategy="fk", n=4, options={"ess_threshold": 0.5}))

The built-in strategies are registered by importing `search.strategies`, which lists every module explicitly.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
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
    if name not in registry and isinstance(name, str) and ":" in name:
        _import_strategy(name)
    if name not in registry:
        raise ValueError(f"unknown search strategy {name!r}; available: {sorted(registry)} (or an import path "
                         "'package.module:Class' of a Strategy subclass)")
    return registry[name]


def _import_strategy(path: str) -> None:
    """`search.strategy=my_pkg.search:MySearch`: a config naming user code. The class is imported and registered
    under the path (a class its module already registered keeps its name). Written here, not shared with the
    rewards' loader, because `search` imports no other package of the project."""
    import importlib

    mod_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import search strategy {path!r}: {type(e).__name__}: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise ValueError(f"search strategy import path {path!r} names {obj!r}, not a search.Strategy subclass")
    if obj not in _STRATEGIES.values():
        register_strategy(path)(obj)
    else:
        _STRATEGIES[path] = obj


def strategy_factory(name: str) -> type[Strategy]:
    """The class registered as `name`: its `__init__` keywords are the strategy's options (the job config
    checks `search.options` against them before anything loads)."""
    return _lookup(name)


@dataclass
class SearchConfig:
    """The `search:` section of a job config (plain types, so omegaconf/JSON round-trip it).

        search:
          strategy: fk
          n: 8
          options: {resample_scales: [3, 5], lam: 2.0, ess_threshold: 0.3}   # FK.__init__ keywords
          features: auto
          features_opts: {}

    `options` are the chosen strategy's constructor keywords (`strategy_options(name)` lists them with their
    defaults), so a plugin strategy adds options by adding keywords. The flat keys of older configs
    (`search.lam`, ...) are moved into `options` by `ttsvar.config.load_config` (`LEGACY_OPTIONS`).
    """

    strategy: str = "tts-var"
    n: int = 1  # batch unit: TTS-VAR runs batch_schedule x n rows; best-of-n/importance/beam/fk run n rows
    options: dict[str, Any] = field(default_factory=dict)  # the strategy's options (its __init__ keywords)
    features: str = "auto"  # feature extractor for clustering (rewards.features registry); auto: the model's
    features_opts: dict[str, Any] = field(default_factory=dict)  # its options (weights path, mode, ...)

    def strategy_kwargs(self) -> dict[str, Any]:
        """The options to pass to the chosen strategy; raises naming `search.options.<key>` if it has no such
        option (and which strategies do)."""
        if not isinstance(self.options, dict):
            raise ValueError(f"search.options: expected a mapping of option: value, got {self.options!r}")
        accepted = strategy_options(self.strategy)
        for key in self.options:
            if key not in accepted:
                users = [s for s in list_strategies() if key in strategy_options(s)]
                raise ValueError(f"search.options.{key} = {self.options[key]!r} has no effect for strategy "
                                 f"{self.strategy!r} (used by: {users}); its options are {sorted(accepted)}")
        return {k: _plain(v) for k, v in self.options.items()}

    def validate(self, num_scales: int) -> SearchPlan:
        """Check every field against a model with `num_scales` scales; return the plan. Errors name the
        field (`search.options.<key>` for a strategy option)."""
        if not isinstance(self.strategy, str):
            raise ValueError(f"search.strategy: expected a name, got {self.strategy!r}")
        _lookup(self.strategy)
        if not is_int(self.n) or self.n < 1:
            raise ValueError(f"search.n = {self.n!r}: must be an integer >= 1")
        if not isinstance(self.features, str):
            raise ValueError(f"search.features: expected a feature extractor name, got {self.features!r}")
        if not isinstance(self.features_opts, dict):
            raise ValueError(f"search.features_opts: expected a mapping, got {self.features_opts!r}")
        try:
            return build_strategy(self).plan(num_scales, int(self.n))
        except ValueError as e:
            raise ValueError(option_error(str(e), strategy_options(self.strategy), self.strategy)) from e


def option_error(msg: str, accepted, strategy: str | None = None) -> str:
    """A strategy's own error (`lam: -2 must be ...`) as the config field it is about: `search.options.lam: ...`
    when it starts with one of the strategy's options, `search.n: ...` for the batch, else the strategy's."""
    if msg.startswith("search."):
        return msg
    head = msg.split(":", 1)[0].split(" ", 1)[0].split("[", 1)[0]
    if head in accepted:
        return f"search.options.{msg}"
    if head == "n":
        return f"search.{msg}"
    return f"search.strategy={strategy}: {msg}" if strategy else f"search: {msg}"


def build_strategy(cfg: SearchConfig) -> Strategy:
    """The strategy described by `cfg` (not yet planned: call `.plan(num_scales, cfg.n)`)."""
    return create_strategy(cfg.strategy, **cfg.strategy_kwargs())


def _plain(value: Any) -> Any:
    """omegaconf ListConfig -> list, so strategies see plain Python values."""
    if value is not None and not isinstance(value, (str, int, float, bool, list, tuple, dict)):
        try:
            return list(value)
        except TypeError:
            return value
    return value

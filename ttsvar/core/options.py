"""Component options checked against the constructor (or factory) that takes them.

Every pluggable component of a job (model builder, search strategy, reward, feature extractor) is configured
by a free mapping `options` whose keys are the keyword parameters of the callable that builds it. The job
config checks each mapping here before anything loads, so a typo fails in a second with a one-line
`ConfigError` naming the field and the accepted options, instead of deep inside a model constructor:

    check_options(FK, {"lam": 2.0, "ess_treshold": 0.3}, "search.options", "strategy 'fk'")
    -> ConfigError: search.options.ess_treshold: strategy 'fk' has no option(s) ['ess_treshold']; its options
       are ['ess_threshold', 'fk_pick', 'lam', 'potential', 'resample_scales', 'resampler']

Callers: `ttsvar.config.validate` (model and search options), `ttsvar.jobs.preflight` (reward and feature
options), `rewards.registry.accepts_option`. `search` cannot import this (it imports no other package of the
project) and keeps its own small check for library use (`search.registry.create_strategy`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import ConfigError

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def signature_options(factory: Callable[..., Any], skip: Iterable[str] = ()) -> tuple[dict[str, Any], bool]:
    """({named keyword parameter: default (inspect.Parameter.empty if required)}, takes **kwargs) of a class
    or function; `self` and the names in `skip` (parameters the caller fills itself) are left out. A callable
    whose signature cannot be read accepts anything."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}, True
    drop = {"self", *skip}
    named = {p.name: p.default for p in params if p.kind in _NAMED and p.name not in drop}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def accepts_option(factory: Callable[..., Any], option: str) -> bool:
    """Whether `factory(**{option: ...})` is accepted (a named parameter or `**kwargs`). False when the
    signature cannot be read: an optional option (`reward.weights_dir`) is then not passed."""
    try:
        inspect.signature(factory)
    except (TypeError, ValueError):
        return False
    named, any_kw = signature_options(factory)
    return any_kw or option in named


def check_options(factory: Callable[..., Any], options: Any, where: str, what: str, skip: Iterable[str] = (),
                  also: Iterable[str] = ()) -> None:
    """Raise `ConfigError` unless `options` is a mapping whose keys `factory` takes as keywords.

    `where` is the config field holding the mapping (`search.options`), `what` names the component in the
    message (`strategy 'fk'`); `skip`: parameters the caller passes itself (not options); `also`: keys accepted
    besides the signature (options every component of the kind takes)."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where} must be a mapping of option: value, got {options!r}")
    named, any_kw = signature_options(factory, skip)
    if any_kw:
        return
    accepted = set(named) | set(also)
    unknown = sorted(str(k) for k in options if k not in accepted)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: {what} has no option(s) {unknown}; its options are "
                          f"{sorted(accepted) or 'none'}")

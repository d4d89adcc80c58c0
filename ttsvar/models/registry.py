"""Generator registry: `create_generator(name, ...)`, `list_generators()`, `@register_generator`.

Weights are local files the user names (or files shipped inside the package); nothing downloads.
A registered model also names the reward and the clustering features that suit it, used when the job
config says `auto`.

The built-in generators register themselves when their module is imported; this module names those modules
(`_BUILTIN_MODULES`) and imports them on the first lookup, so it imports no model family and the testbed,
which sits above the models, registers its own generator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..core.classes import ClassList
from ..core.errors import ConfigError, MissingFileError
from ..core.generator import Generator, SamplingConfig
from ..core.plugins import import_builtins

# Modules whose @register_generator decorators define the built-in names, imported on first lookup.
_BUILTIN_MODULES = ("ttsvar.models.infinity.builders", "ttsvar.models.var.builders", "ttsvar.testbed.model",
                    "ttsvar.testbed.var_model")


@dataclass
class ModelConfig:
    """The `model:` section of a job config. What every model family has is a field; what one family needs
    (Infinity: `vae_weights`, `text_encoder`, `h_div_w`, `pixels`) is in `options`, the keyword parameters of
    the registered builder, checked against its signature before anything loads (`builder_options`)."""

    name: str = "shapes-tiny"
    weights: str | None = None  # the main checkpoint (.pth with weights only, or .safetensors)
    device: str = "auto"  # auto: cuda if available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu; or float32 / bfloat16 / float16
    options: dict[str, Any] = field(default_factory=dict)  # the builder's keyword options


@dataclass(frozen=True)
class ModelDefaults:
    reward: str = "clip-score"
    features: str = "dinov2"
    preview_size: int | None = None
    sampling: dict = field(default_factory=dict)
    reads: tuple[str, ...] | None = None  # the ModelConfig fields the builder reads (None: all); others warn
    # checks `model.options` before anything loads; raises ValueError starting with the option's name
    check_options: Callable[[dict[str, Any]], None] | None = None
    # a class-conditional model's classes, known before it loads (the job resolves class prompts with them;
    # the built generator's `classes` must be the same list); None: a text model
    classes: Callable[[], ClassList] | None = None
    # per strategy name, default options for this model (e.g. TTS-VAR's decision scales); search.options win
    search: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the number of scales from `model.options`, known before the model loads, so a schedule that does not fit
    # is refused before minutes of loading (None: found when the model is built, as for the testbed's models,
    # whose count is in their weights and which load in a second)
    num_scales: Callable[[dict[str, Any]], int] | None = None


# f(model_cfg, sampling, **model_cfg.options) -> Generator; its keyword parameters are the model's options
Builder = Callable[..., Generator]
_BUILDERS: dict[str, Builder] = {}
_DEFAULTS: dict[str, ModelDefaults] = {}


def register_generator(name: str, defaults: ModelDefaults | None = None) -> Callable[[Builder], Builder]:
    """Decorator for a builder `f(model_cfg, sampling, **options) -> Generator`, registered as `name`; the
    keyword parameters after `sampling` are the model's `model.options`."""

    def deco(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"generator {name!r} is already registered")
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError:
            raise TypeError(f"register_generator({name!r}): the builder {fn.__qualname__} must take (cfg, sampling, "
                            "**options): the model's config and sampling, then its own options") from None
        except ValueError:  # no signature to read (a builtin): called as is
            pass
        _BUILDERS[name] = fn
        _DEFAULTS[name] = defaults or ModelDefaults()
        return fn

    return deco


def _load_builtins() -> None:
    import_builtins(_BUILTIN_MODULES)


def list_generators() -> list[str]:
    """Sorted names of the registered generators (the built-ins are imported first)."""
    _load_builtins()
    return sorted(_BUILDERS)


def model_defaults(name: str) -> ModelDefaults:
    """The reward, features, preview size and sampling that suit generator `name` (used for `auto`)."""
    _check_name(name)
    return _DEFAULTS[name]


def builder(name: str) -> Builder:
    """The builder registered as `name` (`ttsvar.config.validate` checks `model.options` against its
    signature, less `cfg` and `sampling`)."""
    _check_name(name)
    return _BUILDERS[name]


BUILDER_ARGS = ("cfg", "sampling")  # the builder's parameters that are not options


def _check_name(name: str) -> None:
    if name not in list_generators():
        raise ConfigError(f"model.name={name!r} is unknown; available: {', '.join(list_generators())}")


def create_generator(cfg: ModelConfig | str, sampling: SamplingConfig | None = None, **overrides: Any) -> Generator:
    """Build the generator `cfg.name` (or the name given) with `sampling`; `overrides` set `ModelConfig` fields
    (or, for other keys, `cfg.options`). An unknown name raises `ConfigError` naming `model.name` and the
    registered names."""
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    cfg = replace(cfg, options=dict(cfg.options or {}))
    names = {f.name for f in fields(ModelConfig)}
    for k, v in overrides.items():
        if k in names:
            setattr(cfg, k, v)
        else:
            cfg.options[k] = v
    _check_name(cfg.name)
    gen = _BUILDERS[cfg.name](cfg, sampling, **cfg.options)
    if not isinstance(gen, Generator):  # a builder that forgot `return`, or returned its nn.Module
        raise ConfigError(f"model.name={cfg.name!r}: its builder {_BUILDERS[cfg.name].__qualname__} returned "
                          f"{type(gen).__name__}, not a ttsvar Generator (ttsvar.core.generator.Generator)")
    if sampling is not None:  # what job.json records as what ran, even if the builder dropped it
        gen.set_sampling(sampling)
    return gen


def require_file(value: str | None, field_name: str, what: str) -> Path:
    """The local path `value` of config field `field_name`, which must exist (`what` says what it holds)."""
    if not value:
        raise ConfigError(f"{field_name} is not set: give the local path of {what}")
    path = Path(value).expanduser()
    if not path.exists():
        raise MissingFileError(f"{field_name}={value!r} does not exist: it should be {what}")
    return path


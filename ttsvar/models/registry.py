"""Generator registry: `create_generator(name, ...)`, `list_generators()`, `@register_generator`.

Weights are local files the user names (or files shipped inside the package); nothing downloads.
A registered model also names the reward and the clustering features that suit it, used when the job
config says `auto`.

The built-in generators register themselves when their module is imported; this module names those modules
(`_BUILTIN_MODULES`) and imports them on the first lookup, so it imports no model family and the testbed,
which sits above the models, registers its own generator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, MissingFileError
from ..core.generator import Generator, SamplingConfig

# Modules whose @register_generator decorators define the built-in names, imported on first lookup.
_BUILTIN_MODULES = ("ttsvar.models.infinity.builders", "ttsvar.testbed.model")
_builtins_loaded = False


@dataclass
class ModelConfig:
    name: str = "shapes-tiny"
    weights: str | None = None  # transformer checkpoint (.pth with weights only, or .safetensors)
    vae_weights: str | None = None  # BSQ-VAE checkpoint
    text_encoder: str | None = None  # local Hugging Face directory of the text encoder (flan-t5-xl)
    h_div_w: float = 1.0  # aspect ratio (height / width), snapped to the model's templates
    pixels: str = "1M"  # pixel budget: 0.06M, 0.25M, 0.60M, 1M
    device: str = "auto"  # auto: cuda if available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu; or float32 / bfloat16 / float16


@dataclass(frozen=True)
class ModelDefaults:
    reward: str = "clipscore"
    features: str = "dinov2"
    preview_size: int | None = None
    sampling: dict = field(default_factory=dict)
    reads: tuple[str, ...] | None = None  # the ModelConfig fields the builder reads (None: all); others warn


Builder = Callable[[ModelConfig, SamplingConfig | None], Generator]
_BUILDERS: dict[str, Builder] = {}
_DEFAULTS: dict[str, ModelDefaults] = {}


def register_generator(name: str, defaults: ModelDefaults | None = None) -> Callable[[Builder], Builder]:
    """Decorator for a builder `f(model_cfg, sampling) -> Generator`, registered as `name`."""

    def deco(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"generator {name!r} is already registered")
        _BUILDERS[name] = fn
        _DEFAULTS[name] = defaults or ModelDefaults()
        return fn

    return deco


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # first: a built-in module may look names up while it registers
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)


def list_generators() -> list[str]:
    """Sorted names of the registered generators (the built-ins are imported first)."""
    _load_builtins()
    return sorted(_BUILDERS)


def model_defaults(name: str) -> ModelDefaults:
    """The reward, features, preview size and sampling that suit generator `name` (used for `auto`)."""
    _check_name(name)
    return _DEFAULTS[name]


def _check_name(name: str) -> None:
    if name not in list_generators():
        raise ConfigError(f"model.name={name!r} is unknown; available: {', '.join(list_generators())}")


def create_generator(cfg: ModelConfig | str, sampling: SamplingConfig | None = None, **overrides: Any) -> Generator:
    """Build the generator `cfg.name` (or the name given) with `sampling`; `overrides` set `ModelConfig` fields.
    An unknown name raises `ConfigError` naming `model.name` and the registered names."""
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    _check_name(cfg.name)
    return _BUILDERS[cfg.name](cfg, sampling)


def require_file(value: str | None, field_name: str, what: str) -> Path:
    """The local path `value` of config field `field_name`, which must exist (`what` says what it holds)."""
    if not value:
        raise ConfigError(f"{field_name} is not set: give the local path of {what}")
    path = Path(value).expanduser()
    if not path.exists():
        raise MissingFileError(f"{field_name}={value!r} does not exist: it should be {what}")
    return path


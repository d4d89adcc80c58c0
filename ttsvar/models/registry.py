"""Generator registry: `create_generator(name, ...)`, `list_generators()`, `@register_generator`.

Weights are local files the user names (or files shipped inside the package); nothing downloads.
A registered model also names the reward and the clustering features that suit it, used when the job
config says `auto`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingFileError
from ..generator import Generator, SamplingConfig


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


_BUILDERS: dict[str, Callable[[ModelConfig, SamplingConfig | None], Generator]] = {}
_DEFAULTS: dict[str, ModelDefaults] = {}


def register_generator(name: str, defaults: ModelDefaults | None = None):
    """Decorator for a builder `f(model_cfg, sampling) -> Generator`."""

    def deco(fn):
        if name in _BUILDERS:
            raise ValueError(f"generator {name!r} is already registered")
        _BUILDERS[name] = fn
        _DEFAULTS[name] = defaults or ModelDefaults()
        return fn

    return deco


def list_generators() -> list[str]:
    return sorted(_BUILDERS)


def model_defaults(name: str) -> ModelDefaults:
    _check_name(name)
    return _DEFAULTS[name]


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model.name {name!r}; available: {', '.join(list_generators())}")


def create_generator(cfg: ModelConfig | str, sampling: SamplingConfig | None = None, **overrides: Any) -> Generator:
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    _check_name(cfg.name)
    return _BUILDERS[cfg.name](cfg, sampling)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device={device!r} but CUDA is not available here; use model.device=cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    from rewards.base import DTYPES  # the one dtype table, until it moves to the bottom layer (ttsvar.core)

    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def require_file(value: str | None, field_name: str, what: str) -> Path:
    if not value:
        raise ValueError(f"{field_name} is not set: give the local path of {what}")
    path = Path(value).expanduser()
    if not path.exists():
        raise MissingFileError(f"{field_name}={value!r} does not exist: it should be {what}")
    return path


# Importing the families registers their builders (explicit, not a star-import side effect).
from ..testbed import model as _testbed_model  # noqa: E402,F401
from .infinity import builders as _infinity_builders  # noqa: E402,F401

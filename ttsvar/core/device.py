"""`model.device` and `model.dtype` config strings -> torch objects, with errors that name the field."""

from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str, field: str = "model.device") -> torch.device:
    """`auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:N`, `mps`; a CUDA device on a machine without
    CUDA raises `ConfigError` naming `field`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{field}={device!r} is not a device ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}={device!r} but CUDA is not available here; use {field}=cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device, field: str = "model.dtype") -> torch.dtype:
    """`auto` (bfloat16 on CUDA, float32 elsewhere) or a name in `DTYPES`."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"{field}={dtype!r} is unknown; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]

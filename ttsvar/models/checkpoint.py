"""Safe, strict checkpoint reading shared by every model family.

Weights come only from safetensors or `torch.load(weights_only=True)`: no arbitrary unpickling.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not match the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors file or a torch pickle restricted to tensors (weights_only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path} (pass the local path of the weights file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"cannot read {path} as a tensors-only torch checkpoint: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def load_strict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str | Path = "<state dict>",
    adapt: Callable[[dict, nn.Module], dict] | None = None,
    assign: bool = False,
) -> nn.Module:
    """Copy `state_dict` into `model`, refusing any missing/unexpected key or shape mismatch.

    `adapt` is the model family's single key-remapping function, applied first. `assign=True` loads
    into a model built on the meta device without allocating it twice.
    """
    if adapt is not None:
        state_dict = adapt(state_dict, model)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(ours))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in ours if k in state_dict and tuple(state_dict[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        def _fmt(xs):
            return ", ".join(xs[:12]) + (f", ... ({len(xs)} in all)" if len(xs) > 12 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes: {_fmt(shapes)}")
        raise CheckpointError(
            f"checkpoint {source} does not match {type(model).__name__} ({'; '.join(parts)}). "
            "Check that the file is complete and that the model config (size, codebook bits) matches it."
        )
    model.load_state_dict(state_dict, strict=True, assign=assign)
    return model

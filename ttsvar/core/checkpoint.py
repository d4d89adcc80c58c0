"""Safe, strict checkpoint reading shared by every model family.

Weights come only from safetensors or `torch.load(weights_only=True)`: no arbitrary unpickling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .errors import InputError


class CheckpointError(InputError):
    """A checkpoint file is missing, unreadable, or does not match the model it is loaded into."""


def read_state_dict(path: str | Path, *, nested_key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a flat {name: tensor} dict from a .safetensors file or a torch file restricted to tensors.

    `nested_key`: the file stores the weights under this key (e.g. 'state_dict'); used when present.
    A leading 'module.' (DataParallel) on every key is stripped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path} (pass the local path of the weights file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - SafetensorError (header, truncation), OSError
            why = str(e).strip() or type(e).__name__
            raise CheckpointError(f"cannot read {path} as a safetensors file ({why}): it is truncated, corrupt or "
                                  "not a safetensors file; download or save it again") from None
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for unsafe or corrupt pickles
            raise CheckpointError(
                f"cannot read {path} as a tensors-only torch checkpoint (torch.load(weights_only=True)): {e}\n"
                "Only plain tensor checkpoints are accepted (not TorchScript archives or pickled objects); "
                "re-save the weights with torch.save(model.state_dict(), path) or safetensors.") from e
    if nested_key is not None and isinstance(obj, Mapping) and nested_key in obj:
        obj = obj[nested_key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def take_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state_dict` under `prefix` ('vae.'), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _fmt(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path = "<state dict>",
    adapt: Callable[[dict, nn.Module], dict] | None = None,
    assign: bool = False,
    hint: str = "Check that the file is complete and that the model config (size, codebook bits) matches it.",
) -> nn.Module:
    """Copy `state_dict` into `model`, refusing any missing/unexpected key or shape mismatch.

    `adapt` is the model family's single key-remapping function, applied first. `assign=True` loads
    into a model built on the meta device without allocating it twice. Errors name `source` and the keys.
    """
    state_dict = dict(state_dict) if adapt is None else adapt(dict(state_dict), model)
    ours = model.state_dict()
    missing = set(ours) - set(state_dict)
    unexpected = set(state_dict) - set(ours)
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in ours if k in state_dict and isinstance(state_dict[k], torch.Tensor)
              and tuple(state_dict[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes or not_tensors:
        lines = [f"checkpoint {source} does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if shapes:
            lines.append(f"  wrong shapes ({len(shapes)}): " + "; ".join(shapes[:10]))
        if not_tensors:
            lines.append(f"  entries that are not tensors: {_fmt(not_tensors)}")
        lines.append(hint)
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True, assign=assign)
    return model


def load_parts(
    parts: Mapping[str, nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path,
    *,
    what: str,
    fix: str,
) -> None:
    """Load one file that holds several modules, each under its key prefix (`{'gpt.': gpt, 'vae.': vae}`), strictly.

    A key under none of the prefixes, a prefix with no key, and any mismatch inside a part (`load_strict`,
    whose errors name `source [prefix*]`) raise `CheckpointError`; the first two in one line that names
    `source`, the keys, says the file is not a `what` checkpoint and ends with `fix` (how to get a right one).
    """
    prefixes = tuple(parts)
    stray = [k for k in state_dict if not k.startswith(prefixes)]
    if stray:
        raise CheckpointError(f"{source} has {len(stray)} tensor(s) outside {', '.join(p + '*' for p in prefixes)}: "
                              f"{_fmt(stray, 10)}; it is not a {what} checkpoint ({fix})")
    for prefix, module in parts.items():
        sub = take_prefix(state_dict, prefix)
        if not sub:
            raise CheckpointError(f"{source} has no '{prefix}*' tensors; it is not a {what} checkpoint ({fix})")
        load_strict(module, sub, f"{source} [{prefix}*]")

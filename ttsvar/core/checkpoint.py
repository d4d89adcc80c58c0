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
    """Read a flat {name: tensor} dict from a .safetensors file, a torch file restricted to tensors, or a folder
    of shards with a Hugging Face index (`*.index.json`, as Infinity-8B's release and `save_pretrained` write).

    `nested_key`: the file stores the weights under this key (e.g. 'state_dict'); used when present.
    A leading 'module.' (DataParallel) and '_orig_mod.' (torch.compile) on every key is stripped.
    Every error is a one-line `CheckpointError` saying what the file is and how to get a readable one.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        obj: object = _read_shards(path)
    elif not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path} (pass the local path of the weights file)")
    else:
        obj = _read_file(path)
    if nested_key is not None and isinstance(obj, Mapping) and nested_key in obj:
        obj = obj[nested_key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # in the order wrappers nest: DDP(compile(model))
        if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _read_file(path: Path) -> object:
    if path.stat().st_size == 0:  # what a failed `wget -O file` leaves behind
        raise CheckpointError(f"cannot read {path}: it is empty (0 bytes), a download that failed; download it again")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - SafetensorError (header, truncation), OSError
            why = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise CheckpointError(f"cannot read {path} as a safetensors file ({why}): it is truncated, corrupt or "
                                  "not a safetensors file; download or save it again") from None
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load: refused before that
        raise CheckpointError(
            f"cannot read {path}: it is a TorchScript archive (e.g. OpenAI's ViT-L-14.pt), which holds code; "
            f"ttsvar reads plain tensors only: use the open_clip/state-dict release of the same weights, or {_RESAVE}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for unsafe or corrupt pickles
        raise CheckpointError(f"cannot read {path}: {_torch_load_problem(e)}") from e


_RESAVE = "re-save the weights alone with torch.save(model.state_dict(), path) or as safetensors"


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torch_load_problem(e: BaseException) -> str:
    """What a failed `torch.load(weights_only=True)` says about the file, in one line (torch's own text runs to
    ten lines and suggests weights_only=False, which ttsvar never uses)."""
    import re

    text = str(e)
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if isinstance(e, PermissionError):
        return f"it cannot be read ({first}); fix its permissions"
    if "central directory" in text or "zip archive" in text or isinstance(e, (EOFError, OSError)) or \
            "Ran out of input" in text:  # a zip cut short makes torch seek past its end: OSError EINVAL
        return "it is truncated or corrupt (torch could not read its archive); download or save it again"
    if "invalid load key" in text or "Unsupported operand" in text:
        return "it is not a torch checkpoint (not a zip archive nor a pickle)"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found or "Weights only load failed" in text:
        what = f"objects other than tensors ({found.group(1)})" if found else "objects other than tensors"
        return (f"it pickles {what}, and ttsvar loads checkpoints with torch.load(weights_only=True) only, which "
                f"runs no code; {_RESAVE}")
    return f"{first} ({type(e).__name__}); it may be truncated or not a tensors-only checkpoint: {_RESAVE}"


def _read_shards(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of every shard a folder's `*.index.json` (`{"weight_map": {name: shard file}}`) lists.
    With a safetensors and a torch index side by side, the safetensors one is read."""
    import json

    indexes = sorted(folder.glob("*.index.json"), key=lambda p: (".safetensors." not in p.name, p.name))
    if not indexes:
        raise CheckpointError(f"{folder} is a folder without a shard index (*.index.json): pass the weights file "
                              "itself, or a folder of shards as save_pretrained writes it")
    try:
        weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read the shard index {indexes[0]} ({type(e).__name__}: {e}); it should be "
                              'JSON with a "weight_map" of tensor names to shard files') from None
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: the index {indexes[0].name} lists {len(missing)} shard(s) that are not "
                              f"there: {_fmt(missing, 5)}; download the whole folder")
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = _read_file(folder / shard)
        if not isinstance(part, Mapping):
            raise CheckpointError(f"{folder / shard} holds a {type(part).__name__}, expected a dict of tensors")
        sd.update(part)
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
        lines = [f"checkpoint {source} does not match {type(model).__name__}"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if shapes:
            lines.append(f"wrong shapes ({len(shapes)}): " + ", ".join(shapes[:10]))
        if not_tensors:
            lines.append(f"entries that are not tensors: {_fmt(not_tensors)}")
        lines.append(hint)
        raise CheckpointError("; ".join(lines))  # one line: the CLI prints it as is
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

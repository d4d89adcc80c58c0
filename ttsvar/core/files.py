"""What a weights path holds, cheaply: the resume fingerprint names files by path, and a checkpoint replaced at
the same path (re-trained, re-downloaded, another size) would otherwise resume as the same job.

Hashing a multi-GB checkpoint in full on every start and resume would cost seconds to minutes, so a file's
identity is its size and a hash of its first and last MiB: safetensors and torch files put the header (names,
shapes, dtypes) first and tensor data from there to the end, so other weights of the same architecture change
both ends, while a copy that only changes the modification time (rsync, cp) keeps the identity.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONTENT_SUFFIX = "#content"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz", ".json", ".model")
_EDGE = 1 << 20


def content_id(path: str | Path) -> str | None:
    """`size:hash` of a file (its size and first and last MiB); None for anything else. Folders are not
    identified: a lookup folder (`reward.weights_dir`, a models directory) gains unrelated files, which must not
    make a job another configuration, and hashing every file in one would cost seconds at each start."""
    p = Path(path).expanduser()
    return _file_id(p) if p.is_file() else None


def _file_id(p: Path) -> str:
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            h.update(f.read(_EDGE))
    return f"{size}:{h.hexdigest()[:16]}"


def _names_a_path(value: str) -> bool:
    return os.sep in value or value.startswith("~") or value.lower().endswith(WEIGHT_SUFFIXES)


def content_ids(fields: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """`{key + CONTENT_SUFFIX: content_id}` for every string in `fields` (flat keys, values may be nested
    dicts and lists, walked with dotted / indexed keys) that names an existing file, except `skip`.
    Only strings that look like paths (a separator, `~`, or a weights suffix) are tried, so a value such as
    `cpu` never matches a file of that name in the working directory."""
    out: dict[str, str] = {}

    def walk(key: str, value: Any) -> None:
        if key in skip:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{key}[{i}]", v)
        elif isinstance(value, str) and _names_a_path(value):
            try:
                cid = content_id(value)
            except OSError:  # unreadable: the load reports it with the field's name
                cid = None
            if cid is not None:
                out[key + CONTENT_SUFFIX] = cid

    for k, v in fields.items():
        walk(k, v)
    return out

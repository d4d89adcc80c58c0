"""A job's output directory: images, traces and `manifest.jsonl`, written atomically; resumable.

Layout (a contract users' scripts rely on: extend, don't rename):
    manifest.jsonl            one line per finished prompt (status ok or failed)
    images/<index>.png        best image per prompt
    candidates/<index>_<k>.png  all final candidates (optional)
    traces/<index>.json       per-prompt search trace
    summary.json              job totals, rewritten at the end
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())


def atomic_write_png(path: Path, image: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def to_uint8(images) -> np.ndarray:
    """[B,3,H,W] float in [0,1] (tensor or array) -> [B,H,W,3] uint8, rounding to nearest."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray) or hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class OutputDir:
    """Owned by the process that applies the search (the engine or the Ray coordinator): one writer."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = self.root / "manifest.jsonl"

    def done(self) -> dict[int, dict]:
        """Prompts already finished with status ok (a resumed job skips them); a later line for the same
        index supersedes an earlier one. A torn last line is ignored."""
        out: dict[int, dict] = {}
        if not self.manifest.exists():
            return out
        for line in self.manifest.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-append; the prompt is simply redone
            if rec.get("status") == "ok":
                out[int(rec["index"])] = rec
            else:
                out.pop(int(rec["index"]), None)
        return out

    def records(self) -> list[dict]:
        return list(self.done().values())

    def image_path(self, index: int) -> str:
        return f"images/{index:05d}.png"

    def write_image(self, rel: str, image: np.ndarray) -> None:
        atomic_write_png(self.root / rel, image)

    def trace_path(self, index: int) -> str:
        return f"traces/{index}.json"

    def write_trace(self, index: int, trace: dict) -> str:
        rel = self.trace_path(index)
        atomic_write_json(self.root / rel, trace)
        return rel

    def append(self, record: dict) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict]) -> None:
        """Append manifest lines after their files exist, in one write call, fsynced."""
        if not records:
            return
        data = "".join(json.dumps(r, default=_json_default) + "\n" for r in records).encode()
        with open(self.manifest, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

"""The `--data` cache of `python -m ttsvar.testbed.train_reward`: the sampled training and validation images with
the settings they were sampled under, so that a cache is reused only by a run that would sample the same data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..core.files import content_id
from ..output import atomic_write_bytes


def data_cache_path(spec: str) -> Path:
    """`--data PATH` as the file the cache lives in (`np.savez` adds `.npz` to a name without it, and the cache was
    then never found again), its folder checked before minutes of sampling (ValueError, one line)."""
    given = Path(spec).expanduser()
    path = given if given.suffix == ".npz" else given.with_name(given.name + ".npz")
    if given.is_dir() or path.is_dir() or not path.parent.is_dir():
        raise ValueError(f"--data {spec}: give a .npz file in an existing folder (the generated data is cached "
                         "there)")
    return path


def data_settings(seed: int, samples_per_prompt: int, val_per_prompt: int, generator: str | None) -> dict:
    """What the cached data depends on: the sampling seed and counts and the generator's weights (by content)."""
    from .model import WEIGHTS

    return {"seed": seed, "samples_per_prompt": samples_per_prompt, "val_per_prompt": val_per_prompt,
            "generator": content_id(generator or WEIGHTS)}


def read_data_cache(path: Path, expected: dict) -> dict:
    """The arrays of a `--data` cache built with `expected` settings (ValueError, one line, otherwise: a cache of
    other settings was reused silently, and its JSON record claimed the new ones)."""
    try:
        with np.load(path) as f:
            stored = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line, not zipfile's traceback
        raise ValueError(f"--data {path}: not a readable data cache ({type(e).__name__}); delete it to sample "
                         "again") from None
    if "settings" not in stored:
        raise ValueError(f"--data {path}: written before caches recorded their settings; delete it to sample again")
    settings = json.loads(str(stored.pop("settings")))
    if settings != expected:
        diff = sorted(k for k in set(settings) | set(expected) if settings.get(k) != expected.get(k))
        raise ValueError(f"--data {path}: built with other settings ({', '.join(diff)}); use another --data file "
                         "or delete it to sample again")
    return stored


def write_data_cache(path: Path, arrays: dict, settings: dict) -> None:
    """The arrays and their `settings` in one .npz, written atomically (a kill mid-write left a truncated cache)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays, settings=np.asarray(json.dumps(settings)))
    atomic_write_bytes(path, buf.getvalue())

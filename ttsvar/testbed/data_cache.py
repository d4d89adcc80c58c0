"""The sampled data of `python -m ttsvar.testbed.train_reward`: plain samples of shapes-tiny (in worker processes
when asked), and the `--data` cache that keeps them with the settings they were sampled under, so that a cache is
reused only by a run that would sample the same data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ..core.files import content_id
from ..core.generator import Rows, SamplingConfig
from ..output import atomic_write_bytes, to_uint8
from . import world


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


def split_data_cache(stored: dict) -> tuple[dict, dict]:
    """(training data, validation data) of a cache's arrays (`read_data_cache`): the `val_` keys are the validation
    samples'; prompts and tags as lists of str."""
    data = {k: v for k, v in stored.items() if not k.startswith("val_") and k != "settings"}
    val = {k[4:]: v for k, v in stored.items() if k.startswith("val_")}
    data["prompts"], val["prompts"], val["tags"] = ([str(x) for x in d] for d in
                                                    (data["prompts"], val["prompts"], val["tags"]))
    return data, val


def write_data_cache(path: Path, arrays: dict, settings: dict) -> None:
    """The arrays and their `settings` in one .npz, written atomically (a kill mid-write left a truncated cache)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays, settings=np.asarray(json.dumps(settings)))
    atomic_write_bytes(path, buf.getvalue())


def sample_images(gen, prompts: list[str], k: int, seeds: list[int], batch: int = 256,
                  previews: dict[int, list[np.ndarray]] | None = None, preview_size: int = 32) -> np.ndarray:
    """`k` plain samples per prompt (candidate ids 0..k-1, prompt seeds `seeds`): uint8 [P, k, H, W, 3]; with
    `previews` {scale: []}, each batch's uint8 previews [rows, size, size, 3] after that scale are appended."""
    if not prompts:
        return np.zeros((0, k, world.IMAGE_SIZE, world.IMAGE_SIZE, 3), np.uint8)
    rows = Rows.for_prompts(k, seeds)
    out = []
    for s in range(0, len(rows), batch):
        sub = rows.select(np.arange(s, min(len(rows), s + batch)))
        state = gen.start(prompts, sub)
        for sc in range(gen.num_scales):
            state = gen.step(state)
            if previews is not None and sc in previews:
                previews[sc].append(to_uint8(gen.preview(state, preview_size).float().clamp(0, 1)))
        out.append(to_uint8(gen.finish(state)))
    return np.concatenate(out).reshape(len(prompts), k, *out[0].shape[1:])


_WORKER_GEN: dict = {}


def _sample_part(gen, generator: str | None, cfg: float, tau: float, prompts: list[str], k: int, seeds: list[int],
                 batch: int) -> np.ndarray:
    """`sample_images` under one sampling setting; `gen` None (in a worker process): load `generator` first."""
    if gen is None:
        if generator not in _WORKER_GEN:  # once per worker process, not per task
            from .model import load_shapes_tiny

            torch.set_num_threads(1)
            _WORKER_GEN[generator] = load_shapes_tiny(generator)
        gen = _WORKER_GEN[generator]
    gen.set_sampling(SamplingConfig(cfg=cfg, tau=tau, top_k=0, top_p=0.0))
    return sample_images(gen, prompts, k, seeds, batch)


def sample_settings(gen, jobs: list[tuple[float, float, int, list[int]]], prompts: list[str], batch: int,
                    workers: int = 1, generator: str | None = None) -> list[np.ndarray]:
    """`sample_images` of `prompts` for each (cfg, tau, k, seeds) job; with `workers` > 1 split among that many
    processes of one torch thread each (`generator`: the weights they load; 12% faster than two threads on the
    2-core machine). Rows carry their own seeds and the CPU forward is batch-invariant: same images (tested)."""
    if workers <= 1:
        return [_sample_part(gen, generator, c, t, prompts, k, seeds, batch) for c, t, k, seeds in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    cut = np.linspace(0, len(prompts), workers + 1).astype(int)
    parts = [(a, b) for a, b in zip(cut[:-1], cut[1:])]
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    try:
        futures = [[pool.submit(_sample_part, None, generator, c, t, prompts[a:b], k, seeds[a:b], batch)
                    for a, b in parts] for c, t, k, seeds in jobs]
        out = [np.concatenate([f.result() for f in fs]) for fs in futures]
    except BaseException:  # Ctrl-C or SIGTERM (`main`): the spawned samplers would run on, orphaned
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return out

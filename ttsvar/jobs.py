"""Batch jobs: build the components from a `JobConfig`, run the units, write and resume outputs.

`run_job(job)` is what `ttsvar run` and `ttsvar generate` call. The local runtime runs units one after
another in this process; `runtime.kind=ray` hands the same units to `cluster.run_ray_job`, which uses
the same Worker/Coordinator halves and the same `ResultWriter`.
"""

from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from .config import JobConfig
from .engine import Coordinator, Report, UnitImages, Worker, WorkUnit, make_units, prompt_seed, run_unit
from .models.registry import create_generator, model_defaults
from .output import OutputDir
from .prompts import PromptItem, read_prompts

log = logging.getLogger("ttsvar")


@dataclass
class Components:
    generator: object
    reward: object
    features: object | None
    strategy: object
    plan: object
    preview_size: int | None


def build_reward_for(job: JobConfig):
    from rewards.config import build_reward

    cfg = job.reward
    if cfg.name == "auto":
        cfg = type(cfg)(**{**asdict(cfg), "name": model_defaults(job.model.name).reward})
    return build_reward(cfg)


def build_components(job: JobConfig, generator=None) -> Components:
    """Everything a Worker and a Coordinator need. Called once per process (driver or actor)."""
    from search.features import create_features
    from search.registry import build_strategy

    defaults = model_defaults(job.model.name)
    gen = generator or create_generator(job.model, job.sampling.resolve(job.model.name))
    job.search.validate(gen.num_scales)
    strategy = build_strategy(job.search)
    plan = strategy.plan(gen.num_scales, job.search.n)
    reward = build_reward_for(job)  # before the features: a custom reward's module may register features too
    features = None
    if plan.feature_scales:
        name = defaults.features if job.search.features == "auto" else job.search.features
        features = create_features(name, **job.search.features_opts)
    preview = job.runtime.preview_size or defaults.preview_size
    return Components(gen, reward, features, strategy, plan, preview)


def make_worker(job: JobConfig, comp: Components) -> Worker:
    rt = job.runtime
    return Worker(comp.generator, comp.reward, comp.features, comp.plan, max_rows_per_forward=rt.max_rows_per_forward,
                  preview_size=comp.preview_size, score_batch=rt.score_batch)


def job_items(job: JobConfig) -> list[PromptItem]:
    if not job.prompts:
        raise ValueError("prompts is not set: give a .txt or .jsonl file (prompts=path)")
    items = read_prompts(job.prompts)
    return items[: job.limit] if job.limit else items


class ResultWriter:
    """Writes finished prompts (images, trace, manifest line) and keeps the job's totals. One per job.

    Files are written by one background thread, so disk latency (every file is fsynced) overlaps with
    generation; a unit's manifest lines are appended, in one fsynced write, only after its files exist.
    `flush()` waits for the writes and re-raises any error; `summary()` flushes first.
    """

    def __init__(self, job: JobConfig, items: list[PromptItem]):
        self.job, self.out = job, OutputDir(job.output.dir)
        self.items = {it.index: it for it in items}
        self.totals: dict[str, float] = {}
        self.ok = self.failed = 0
        self.rewards: list[float] = []
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttsvar-writer")
        self._futures: list[Future] = []

    def _submit(self, files: list[tuple[str, str, object]], records: list[dict]) -> None:
        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
        self._futures.append(self._io.submit(self._persist, files, records))

    def _persist(self, files: list[tuple[str, str, object]], records: list[dict]) -> None:
        for kind, rel, payload in files:
            if kind == "image":
                self.out.write_image(rel, payload)
            else:
                self.out.write_trace(payload[0], payload[1])
        self.out.append_many(records)

    def flush(self) -> None:
        futures, self._futures = self._futures, []
        for f in futures:
            f.result()

    def pending(self) -> list[PromptItem]:
        """Prompts without an ok manifest line for the same index and prompt text (an edited line is redone)."""
        done = self.out.done()
        return [it for it in self.items.values()
                if it.index not in done or done[it.index].get("prompt") != it.prompt]

    def write_unit(self, coord: Coordinator, final: Report, picks: dict[int, int], images: UnitImages) -> list[dict]:
        recs, files = [], []
        for ga in final.groups:
            p = ga.prompt_index
            trace, counters = coord.finish_group(p)
            k = picks[p]
            imgs = images.images[p]
            rel = self.out.image_path(p)
            files.append(("image", rel, imgs[0]))
            cands = []
            if self.job.output.save_candidates:
                for j, pos in enumerate(images.positions[p]):
                    crel = f"candidates/{p:05d}_{pos}.png"
                    files.append(("image", crel, imgs[j]))
                    cands.append(crel)
            trace_rel = None
            if self.job.output.traces:
                trace_rel = self.out.trace_path(p)
                files.append(("trace", trace_rel, (p, trace)))
            r = float(ga.rewards[k]) if ga.rewards is not None else None
            it = self.items[p]
            rec = {"index": p, "prompt": it.prompt, "seed": prompt_seed(self.job.seed, p), "status": "ok",
                   "model": self.job.model.name, "strategy": self.job.search.strategy, "n": self.job.search.n,
                   "reward_name": self.job.reward.name, "reward": r if r is not None and np.isfinite(r) else None,
                   "image": rel, "trace": trace_rel, "candidates": cands, "row_id": int(ga.row_ids[k]),
                   "compute": counters}
            if it.metadata:
                rec["metadata"] = it.metadata
            self._count(rec)
            recs.append(rec)
        self._submit(files, recs)
        return recs

    def write_failure(self, unit: WorkUnit, error: str) -> None:
        for p, s in zip(unit.prompt_indices, unit.seeds):
            it = self.items[p]
            rec = {"index": p, "prompt": it.prompt, "seed": s, "status": "failed", "error": error}
            if it.metadata:
                rec["metadata"] = it.metadata
            self._submit([], [rec])
            self.failed += 1

    def _count(self, rec: dict) -> None:
        self.ok += 1
        if rec["reward"] is not None:
            self.rewards.append(rec["reward"])
        for k, v in rec["compute"].items():
            self.totals[k] = self.totals.get(k, 0) + v

    def summary(self, wall: float, extra: dict | None = None) -> dict:
        self.flush()
        s = {"prompts_ok": self.ok, "prompts_failed": self.failed, "wall_time_s": round(wall, 3),
             "prompts_per_s": round(self.ok / wall, 4) if wall > 0 else None,
             "mean_reward": float(np.mean(self.rewards)) if self.rewards else None,
             "compute": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.totals.items()}}
        s.update(extra or {})
        from .output import atomic_write_json

        atomic_write_json(self.out.root / "summary.json", s)
        return s


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=quiet, unit="prompt", desc="ttsvar", dynamic_ncols=True)


def run_job(job: JobConfig, generator=None) -> dict:
    """Run (or resume) a batch job; returns the summary (also written to output.dir/summary.json)."""
    if job.runtime.kind == "ray":
        from cluster import run_ray_job

        return run_ray_job(job)
    t0 = time.perf_counter()
    items = job_items(job)
    writer = ResultWriter(job, items)
    todo = writer.pending()
    skipped = len(items) - len(todo)
    comp = build_components(job, generator)
    worker = make_worker(job, comp)
    coord = Coordinator(comp.strategy, comp.plan)
    setup = time.perf_counter() - t0
    units = make_units([it.index for it in todo], [it.prompt for it in todo], job.seed, job.runtime.prompts_per_unit)
    bar = _progress(len(todo), job.runtime.quiet)
    S = comp.generator.num_scales
    worker.on_step = lambda uid, k: bar.set_postfix_str(f"unit {uid + 1}/{len(units)} scale {k + 1}/{S}")
    for unit in units:
        for attempt in range(job.runtime.retries + 1):
            try:
                rep, picks, imgs = run_unit(worker, coord, unit, job.output.save_candidates)
                writer.write_unit(coord, rep, picks, imgs)
                break
            except Exception:  # noqa: BLE001 - recorded in the manifest, the job goes on
                err = traceback.format_exc(limit=3)
                worker.drop(unit.unit_id)
                for p in unit.prompt_indices:
                    coord.groups.pop(p, None)
                if attempt == job.runtime.retries:
                    log.error("unit %d failed after %d attempts: %s", unit.unit_id, attempt + 1, err)
                    writer.write_failure(unit, err)
        bar.update(len(unit.prompt_indices))
    bar.close()
    writer.flush()
    wall = time.perf_counter() - t0
    return writer.summary(wall, {"skipped_done": skipped, "time_setup": round(setup, 4),
                                 "time_decide": round(coord.time_decide, 4),
                                 "runtime": "local", "output_dir": str(writer.out.root)})

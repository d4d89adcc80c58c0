"""The search engine: schedule -> step -> (decide) -> select, for many prompts at once.

The loop is split in two halves that can live in different processes (the Ray layer puts them in
different processes; the local engine calls both in one):

* `Worker` (model side) owns the generator, the reward and the feature model, and the per-row state
  of each work unit. It advances a unit scale by scale to the next decision scale and returns only
  small per-row arrays (rewards, features) keyed by row id: a `Report`.
* `Coordinator` (decision side) owns the strategy and the per-group search state. It turns a
  `Report` into a `Selection` (rows to keep, with their new row ids) and records the traces.

A work unit is a fixed group of prompts. Seeds depend only on (job seed, prompt index) and row
randomness only on (seed, row id, scale), so a prompt's result does not depend on how units are packed
or where they run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import torch

from search.base import Observation, SearchPlan, Strategy

from .core.errors import is_transient
from .core.generator import Generator, GenState, Rows, mix64
from .core.memory import release_free_memory

# ----------------------------------------------------------------------------- messages (picklable)


@dataclass
class WorkUnit:
    unit_id: int
    prompt_indices: list[int]
    prompts: list[str]
    seeds: list[int]


@dataclass
class GroupArrays:
    """One prompt group's live rows after a scale, as the coordinator sees them."""

    prompt_index: int
    row_ids: np.ndarray  # int64 [n]
    rewards: np.ndarray | None  # float32 [n]
    features: np.ndarray | None  # float32 [n, F]
    # the generator's free per-row token statistics of the scale just sampled (`Generator.confidence`), or None
    log_prob: np.ndarray | None = None  # float32 [n] mean log-probability of the sampled tokens
    entropy: np.ndarray | None = None  # float32 [n] mean entropy (nats per token)


@dataclass
class Report:
    unit_id: int
    scale: int  # index of the scale just completed
    final: bool
    groups: list[GroupArrays]
    counters: dict[int, dict]  # prompt index -> compute counters accumulated since the last report


@dataclass
class Selection:
    unit_id: int
    scale: int
    parents: dict[int, np.ndarray]  # prompt index -> positions into that group's reported rows
    row_ids: dict[int, np.ndarray]  # prompt index -> ids of the new rows (a row's id keys its randomness)


@dataclass
class UnitImages:
    unit_id: int
    images: dict[int, np.ndarray]  # prompt index -> uint8 [k,H,W,3] final candidates (picked first)
    positions: dict[int, list[int]]  # prompt index -> positions of those candidates among the final rows
    # prompt index -> [(decision scale, uint8 [n,h,w,3] thumbnails of that decision's rows, in row order)]
    previews: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict)


def prompt_seed(job_seed: int, prompt_index: int) -> int:
    return mix64(job_seed, prompt_index) & 0x7FFFFFFF


def make_units(indices: Sequence[int], prompts: Sequence[str], job_seed: int, per_unit: int) -> list[WorkUnit]:
    units = []
    for u, start in enumerate(range(0, len(indices), per_unit)):
        idx = list(indices[start:start + per_unit])
        units.append(WorkUnit(u, idx, list(prompts[start:start + per_unit]), [prompt_seed(job_seed, i) for i in idx]))
    return units


def split_unit(unit: WorkUnit, next_id: int) -> list[WorkUnit]:
    """One single-prompt unit per prompt of `unit` (ids from `next_id`): a failed unit's prompts re-run alone."""
    return [WorkUnit(next_id + k, [p], [t], [s])
            for k, (p, t, s) in enumerate(zip(unit.prompt_indices, unit.prompts, unit.seeds))]


PREVIEW_THUMB = 64  # longest side, in pixels, of the preview thumbnails a Worker keeps with save_previews


def _new_counters() -> dict:
    return {"token_forwards": 0, "preview_decodes": 0, "reward_images": 0, "feature_images": 0,
            "time_generate": 0.0, "time_decode": 0.0, "time_reward": 0.0, "time_features": 0.0}


# ----------------------------------------------------------------------------- model side


@dataclass
class _Unit:
    unit: WorkUnit
    chunks: list[GenState]
    sizes: list[int]  # rows per group, in unit order
    row_ids: list[np.ndarray]
    scale: int = 0
    counters: dict[int, dict] = field(default_factory=dict)
    final_images: torch.Tensor | None = None
    previews: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict)  # see UnitImages.previews


class Worker:
    """Model side of the engine. Driven in-process by `run_unit` (the local runtime, `ttsvar.jobs`) or hosted
    in a Ray actor (`cluster.actors`).

    Per unit: `start(unit)` -> Report; then `apply(selection)` -> Report until a report is final;
    then `collect(unit_id, picks, keep_all)` -> UnitImages, which also frees the unit.

    `preview`: "full" decodes previews from the final latent grid, "cheap" from the decision scale's own grid
    (`Generator.preview(cheap=True)`); final images are always full.
    `save_previews`: decode every decision scale (also one that needs neither rewards nor features) and keep
    thumbnails (at most `PREVIEW_THUMB` pixels) of each row until `collect` returns them.
    `save_search_data`: score and extract features of every row at every decision scale, whatever the plan needs
    (the coordinator hands the strategy only what its plan asks for, and records the rest: `output.save_search_data`).
    `batch_invariant`: every reward and feature call holds one prompt group, so a group's scores do not depend on
    which groups share the unit (with a batch-invariant generator: `runtime.batch_invariant`).
    `release_memory`: hand freed heap pages back to the OS when a unit is collected or dropped
    (`ttsvar.core.memory`, glibc; `runtime.release_memory`). Results do not change.
    """

    def __init__(self, generator: Generator, reward, features, plan: SearchPlan, *,
                 max_rows_per_forward: int = 64, preview_size: int | None = None, preview: str = "full",
                 score_batch: int = 64, save_previews: bool = False, save_search_data: bool = False,
                 batch_invariant: bool = False, release_memory: bool = False):
        if plan.num_scales != generator.num_scales:
            raise ValueError(f"search plan has {plan.num_scales} scales, model has {generator.num_scales}")
        self.gen, self.reward, self.features, self.plan = generator, reward, features, plan
        self.max_rows = max(1, int(max_rows_per_forward))
        self.preview_size = preview_size
        if preview not in ("full", "cheap"):
            raise ValueError(f"preview={preview!r}: use full or cheap (runtime.preview)")
        self.cheap_previews = preview == "cheap"
        self.score_batch = max(1, int(score_batch))
        self.save_previews = bool(save_previews)
        self.save_search_data = bool(save_search_data)
        self.batch_invariant = bool(batch_invariant)
        self.release_memory = bool(release_memory)
        self.units: dict[int, _Unit] = {}
        self.on_step = None  # optional callback(unit_id, scale) after every scale, e.g. for a progress bar

    # -- protocol ---------------------------------------------------------------------------------

    def start(self, unit: WorkUnit) -> Report:
        n = self.plan.batch_sizes[0]
        rows = Rows.for_prompts(n, unit.seeds, unit.prompt_indices)
        prompts = dict(zip(unit.prompt_indices, unit.prompts))
        state = self.gen.start(prompts, rows)
        u = _Unit(unit, self.gen.split(state, self._chunk_sizes(len(rows))), [n] * len(unit.prompt_indices),
                  [np.arange(n, dtype=np.int64) for _ in unit.prompt_indices],
                  counters={i: _new_counters() for i in unit.prompt_indices})
        self.units[unit.unit_id] = u
        return self._advance(u)

    def apply(self, sel: Selection) -> Report:
        u = self.units[sel.unit_id]
        if sel.scale != u.scale - 1:
            raise ValueError(f"selection for scale {sel.scale} but unit {sel.unit_id} is after scale {u.scale - 1}")
        index, offset, sizes, row_ids = [], 0, [], []
        for p, n in zip(u.unit.prompt_indices, u.sizes):
            parents = np.asarray(sel.parents[p], dtype=np.int64)
            if parents.size and (parents.min() < 0 or parents.max() >= n):
                raise ValueError(f"selection for prompt {p} points outside its {n} rows: {parents.tolist()}")
            index.append(parents + offset)
            offset += n
            sizes.append(len(parents))
            row_ids.append(np.asarray(sel.row_ids[p], dtype=np.int64))
        full = self.gen.concat(u.chunks) if len(u.chunks) > 1 else u.chunks[0]
        state = self.gen.select(full, np.concatenate(index), np.concatenate(row_ids))
        self._check_rows(state, np.repeat(u.unit.prompt_indices, sizes), np.concatenate(row_ids))
        u.chunks, u.sizes, u.row_ids = self.gen.split(state, self._chunk_sizes(len(state))), sizes, row_ids
        # the states before the selection hold the KV blocks of the rows it dropped: let them go before stepping on
        del full, state
        return self._advance(u)

    def _check_rows(self, state, prompts: np.ndarray, ids: np.ndarray) -> None:
        """A generator's `select` keeps the rows it is given, in order, under their new candidate ids: one that
        does not would hand one prompt's paths to another, or run duplicates as distinct rows, silently."""
        rows = getattr(state, "rows", None)
        if rows is None or (len(rows) == len(ids) and np.array_equal(rows.prompt_index, prompts)
                            and np.array_equal(rows.candidate_id, ids)):
            return
        raise ValueError(f"{type(self.gen).__name__}.select returned {len(rows)} rows of prompts "
                         f"{rows.prompt_index.tolist()[:8]} with candidate ids {rows.candidate_id.tolist()[:8]}; the "
                         f"engine asked for {len(ids)} rows of prompts {prompts.tolist()[:8]} with ids "
                         f"{ids.tolist()[:8]} (select must keep the rows at `index`, in order, as `new_ids`)")

    def collect(self, unit_id: int, picks: dict[int, int], keep_all: bool = False) -> UnitImages:
        from .output import to_uint8

        u = self.units.pop(unit_id)
        imgs = to_uint8(u.final_images)
        out, pos, offset = {}, {}, 0
        for p, n in zip(u.unit.prompt_indices, u.sizes):
            order = [picks[p]] + ([i for i in range(n) if i != picks[p]] if keep_all else [])
            out[p] = imgs[offset + np.asarray(order)]
            pos[p] = order
            offset += n
        previews = u.previews
        del u, imgs
        self._release()
        return UnitImages(unit_id, out, pos, previews)

    def drop(self, unit_id: int) -> None:
        self.units.pop(unit_id, None)
        self._release()

    # -- internals --------------------------------------------------------------------------------

    def _chunk_sizes(self, n: int) -> list[int]:
        return [min(self.max_rows, n - s) for s in range(0, n, self.max_rows)] or [0]

    def _advance(self, u: _Unit) -> Report:
        """Step until the next decision scale (or the end); then score what the decision needs."""
        S = self.gen.num_scales
        while True:
            k = u.scale
            t0 = time.perf_counter()
            u.chunks = [self.gen.step(c) for c in u.chunks]
            dt = time.perf_counter() - t0
            u.scale = k + 1
            tok = self.gen.tokens_at_scale(k) * self.gen.forward_rows_per_candidate(k)
            for p, n in zip(u.unit.prompt_indices, u.sizes):
                u.counters[p]["token_forwards"] += n * tok
            self._count(u, "time_generate", seconds=dt)
            if self.on_step is not None:
                self.on_step(u.unit.unit_id, k)
            if k == S - 1 or k in self.plan.decision_scales:
                break
        final = u.scale == S
        data = (not final) and self.save_search_data
        need_r = final or k in self.plan.reward_scales or data
        need_f = (not final) and (k in self.plan.feature_scales or data)
        need_p = (not final) and self.save_previews
        rewards = features = None
        if need_r or need_f or need_p:
            images, first, inverse = self._decode_unique(u, final)
            if final:
                u.final_images = images[torch.as_tensor(inverse)]
            if need_p:
                self._keep_previews(u, k, images, inverse)
            if need_r:
                rewards = self._score(u, images, first)[inverse]
            if need_f:
                features = self._features(u, images, first)[inverse]
        confidence = self._confidence(u)
        groups, offset = [], 0
        for p, n, ids in zip(u.unit.prompt_indices, u.sizes, u.row_ids):
            sl = slice(offset, offset + n)
            groups.append(GroupArrays(p, ids, None if rewards is None else rewards[sl],
                                      None if features is None else features[sl],
                                      None if confidence is None else confidence[sl, 0],
                                      None if confidence is None else confidence[sl, 1]))
            offset += n
        counters, u.counters = u.counters, {p: _new_counters() for p in u.unit.prompt_indices}
        return Report(u.unit.unit_id, k, final, groups, counters)

    def _release(self) -> None:
        if self.release_memory:
            release_free_memory()

    def _confidence(self, u: _Unit) -> np.ndarray | None:
        """float32 [rows, 2] (mean log-prob, mean entropy of each row's tokens at the scale just sampled), in
        row order, or None when the generator does not report them (then no strategy gets them)."""
        parts = [self.gen.confidence(c) for c in u.chunks]
        if any(p is None for p in parts):
            return None
        for c, p in zip(u.chunks, parts):
            if np.shape(p) != (len(c), 2):
                raise ValueError(f"{type(self.gen).__name__}.confidence returned shape {np.shape(p)} for "
                                 f"{len(c)} rows; expected ({len(c)}, 2)")
        return np.concatenate(parts).astype(np.float32)

    def _keep_previews(self, u: _Unit, scale: int, images: torch.Tensor, inverse: np.ndarray) -> None:
        """Thumbnails of every row after `scale` (equal rows share one decode), kept per prompt for `collect`."""
        from .output import to_uint8

        h, w = images.shape[-2:]
        if max(h, w) > PREVIEW_THUMB:  # area filter: a faithful small picture of a large preview
            size = (max(1, round(h * PREVIEW_THUMB / max(h, w))), max(1, round(w * PREVIEW_THUMB / max(h, w))))
            images = torch.nn.functional.interpolate(images.float(), size=size, mode="area")
        thumbs = to_uint8(images)[inverse]
        offset = 0
        for p, n in zip(u.unit.prompt_indices, u.sizes):
            u.previews.setdefault(p, []).append((scale, thumbs[offset:offset + n]))
            offset += n

    def _group_of_rows(self, u: _Unit) -> np.ndarray:
        return np.repeat(np.arange(len(u.sizes)), u.sizes)

    def _count(self, u: _Unit, key: str, rows: np.ndarray | None = None, seconds: float | None = None) -> None:
        """Add to each group's counter: the number of `rows` it owns, or its share of `seconds` by rows."""
        total = max(1, sum(u.sizes))
        owned = np.bincount(self._group_of_rows(u)[rows], minlength=len(u.sizes)) if rows is not None else None
        for g, (p, n) in enumerate(zip(u.unit.prompt_indices, u.sizes)):
            u.counters[p][key] += int(owned[g]) if owned is not None else seconds * n / total

    def _checked_images(self, images, n: int, method: str) -> torch.Tensor:
        """What `Generator.finish` / `preview` promise: float images [n, 3, H, W] in [0, 1], one per row asked
        for; else a ValueError naming the generator (rewards would score the wrong rows, or blame themselves)."""
        ok = isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[:2] == (n, 3) and \
            images.is_floating_point()
        if not ok:
            what = (f"{type(images).__name__} {tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor)
                    else type(images).__name__)
            raise ValueError(f"{type(self.gen).__name__}.{method} returned {what} for {n} rows; it must return float "
                             f"images [{n}, 3, H, W] in [0, 1], one per row of `rows`")
        return images

    def _decode_unique(self, u: _Unit, final: bool) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Decode one row of each set of equal rows of the same prompt.

        Returns (images of the unique rows in row order, their row positions `first`, and `inverse`
        mapping every row to its unique image).
        """
        t0 = time.perf_counter()
        owner = self._group_of_rows(u)
        seen: dict = {}
        first: list[int] = []
        inverse = np.empty(sum(u.sizes), dtype=np.int64)
        parts, offset = [], 0
        for c in u.chunks:
            keys = self.gen.row_keys(c)
            sel = []
            for j in range(len(c)):
                g = offset + j
                key = None if keys is None else (int(owner[g]), keys[j])
                if key is not None and key in seen:
                    inverse[g] = seen[key]
                    continue
                inverse[g] = len(first)
                first.append(g)
                sel.append(j)
                if key is not None:
                    seen[key] = inverse[g]
            if sel:
                part = self.gen.finish(c, rows=sel) if final else \
                    self.gen.preview(c, self.preview_size, rows=sel, cheap=self.cheap_previews)
                parts.append(self._checked_images(part, len(sel), "finish" if final else "preview"))
            offset += len(c)
        first_arr = np.asarray(first, dtype=np.int64)
        self._count(u, "time_decode", seconds=time.perf_counter() - t0)
        if not final:
            self._count(u, "preview_decodes", rows=first_arr)
        return torch.cat(parts), first_arr, inverse

    def _score(self, u: _Unit, images: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """Rewards of the decoded `rows`, with each row's prompt index as its group id. A call holds whole groups
        only (a group larger than score_batch gets a call of its own), so a group-relative reward such as a
        z-score ensemble always sees every distinct candidate of a group: the contract of `rewards.base.Reward`."""
        t0 = time.perf_counter()
        prompts = [t for t, n in zip(u.unit.prompts, u.sizes) for _ in range(n)]
        prompts = [prompts[i] for i in rows]
        groups = np.asarray(u.unit.prompt_indices, dtype=np.int64)[self._group_of_rows(u)[rows]]
        out = [np.asarray(score_images(self.reward, images[sl], prompts[sl], groups[sl]), np.float32)
               for sl in group_batches(groups, 1 if self.batch_invariant else self.score_batch)]
        self._count(u, "time_reward", seconds=time.perf_counter() - t0)
        self._count(u, "reward_images", rows=rows)
        return np.concatenate(out)

    def _checked_features(self, feats, rows: int) -> np.ndarray:
        """One chunk's features as float32 [rows, dim]; a ValueError naming the extractor when its output is not
        one row per image of its declared width (a wrong shape would mis-cluster silently)."""
        arr = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, np.float32)
        dim = getattr(self.features, "dim", None)
        if arr.ndim != 2 or arr.shape[0] != rows or (isinstance(dim, int) and arr.shape[1] != dim):
            name = getattr(self.features, "name", type(self.features).__name__)
            raise ValueError(f"feature extractor {name!r} returned an array of shape {arr.shape} for {rows} images; "
                             f"extract() must return [images, {dim if isinstance(dim, int) else 'dim'}]")
        return arr

    def _features(self, u: _Unit, images: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        if self.batch_invariant:
            slices = group_batches(self._group_of_rows(u)[rows], 1)
        else:
            slices = [slice(s, s + self.score_batch) for s in range(0, len(images), self.score_batch)]
        out = [self._checked_features(self.features.extract(images[sl]), len(images[sl])) for sl in slices]
        self._count(u, "time_features", seconds=time.perf_counter() - t0)
        self._count(u, "feature_images", rows=rows)
        return np.concatenate(out)


def group_batches(groups: np.ndarray, size: int) -> list[slice]:
    """Consecutive slices covering `groups` (ids, each group's rows adjacent) that hold at most `size` rows and
    never cut a group; a group of more than `size` rows is a slice of its own."""
    n = len(groups)
    starts = np.flatnonzero(np.diff(groups)) + 1
    out, s = [], 0
    for a, b in zip([0, *starts.tolist()], [*starts.tolist(), n]):  # the group in rows [a, b)
        if b - s > size and a > s:
            out.append(slice(s, a))
            s = a
    if n > s:
        out.append(slice(s, n))
    return out


def _takes_groups(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "groups" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def score_images(reward, images: torch.Tensor, prompts: list[str], groups: np.ndarray | None = None) -> np.ndarray:
    """Score with a reward object (`score(images, prompts[, groups])`) or a plain callable. `groups` goes to every
    scorer whose signature takes it (each `rewards.Reward` does); a plain `f(images, prompts)` gets none."""
    fn = reward.score if hasattr(reward, "score") else reward
    if groups is not None and _takes_groups(fn):
        scores = fn(images, prompts, groups=groups)
    else:
        scores = fn(images, prompts)
    scores = scores.detach().float().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores, np.float32)
    if scores.shape != (len(images),):
        raise ValueError(f"reward returned shape {scores.shape} for {len(images)} images; expected ({len(images)},)")
    return scores


# ----------------------------------------------------------------------------- decision side


@dataclass
class _GroupTrace:
    prompt_index: int
    seed: int
    state: object
    next_id: int
    parent_of: dict[int, int | None]
    decisions: list[dict] = field(default_factory=list)
    counters: dict = field(default_factory=_new_counters)
    data: list[tuple] = field(default_factory=list)  # save_search_data: see `search_data_arrays`
    final: GroupArrays | None = None


class Action(Enum):
    """What a runtime does with a unit that failed (`Coordinator.fail`) or lost its actor (`Coordinator.lost`)."""

    SPLIT = "split"  # run each of its prompts alone, before anything else (a bad prompt costs only itself)
    RETRY = "retry"  # run the same unit again (same id, same seeds)
    ABANDON = "abandon"  # record its prompts as failed


@dataclass
class Verdict:
    action: Action
    units: list[WorkUnit]  # SPLIT: the new single-prompt units; RETRY, ABANDON: [the unit]
    attempts: int  # how often this unit has failed (or, for `lost`, lost its actor) so far; 0 for SPLIT


MAX_ACTOR_LOSSES = 3  # a unit whose actor died this often is abandoned (it may be what kills the actors)


class Coordinator:
    """Decision side: applies the strategy to reports and keeps per-prompt traces; owns the retry policy.

    Called by the engine (or the Ray driver): `begin(unit)` once, `decide(report)` for every non-final
    report, `pick(report)` for the final one, then `finish_group(prompt_index)` for the output. When a unit
    fails instead, the runtime calls `fail(unit, error)` (the unit raised) or `lost(unit)` (its Ray actor
    died) and does what the returned `Verdict` says; both forget the unit's search state.
    """

    def __init__(self, strategy: Strategy, plan: SearchPlan, reward_scale: float = 1.0, retries: int = 0,
                 next_unit_id: int = 0, max_losses: int = MAX_ACTOR_LOSSES, save_search_data: bool = False):
        if not (np.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"reward_scale must be a finite number > 0, got {reward_scale!r}")
        # strategies see rewards in units of the reward's declared scale, so lam means the same for every
        # reward; traces and the manifest keep the raw scores
        self.strategy, self.plan, self.reward_scale = strategy, plan, float(reward_scale)
        self.groups: dict[int, _GroupTrace] = {}
        self.time_decide = 0.0
        self.retries, self.max_losses = int(retries), int(max_losses)
        self.next_unit_id = next_unit_id  # ids of split units start here (above every id already handed out)
        self._failures: dict[int, int] = {}
        self._losses: dict[int, int] = {}
        self.save_search_data = bool(save_search_data)  # keep every decision's arrays for `search_data`

    # -- failure policy: one for both runtimes ------------------------------------------------------------

    def forget(self, unit: WorkUnit) -> None:
        """Drop the search state of a unit that will not finish (its prompts may run again from the start)."""
        for p in unit.prompt_indices:
            self.groups.pop(p, None)

    def fail(self, unit: WorkUnit, error: BaseException, transient: bool | None = None) -> Verdict:
        """A unit raised (in the model or in the strategy). A unit of several prompts is split into one unit
        per prompt; a single prompt is retried while the error can be transient (`is_transient`, unless
        `transient` says) and it has failed at most `retries` times; else it is abandoned."""
        self.forget(unit)
        if len(unit.prompt_indices) > 1:
            singles = split_unit(unit, self.next_unit_id)
            self.next_unit_id += len(singles)
            return Verdict(Action.SPLIT, singles, 0)
        n = self._failures[unit.unit_id] = self._failures.get(unit.unit_id, 0) + 1
        transient = is_transient(error) if transient is None else transient
        return Verdict(Action.RETRY if transient and n <= self.retries else Action.ABANDON, [unit], n)

    def lost(self, unit: WorkUnit, alone: bool = True) -> Verdict:
        """The actor running a unit died. A unit of several prompts is split into one unit per prompt (any of
        them may be what killed it); a single prompt that shared the actor with other units (`alone` false) is
        re-run without blame, since any of them may have killed it; one that ran alone counts a loss and is
        abandoned after `max_losses`. The runtime runs every lost unit alone on an actor, so the next death is
        attributable."""
        self.forget(unit)
        if len(unit.prompt_indices) > 1:
            singles = split_unit(unit, self.next_unit_id)
            self.next_unit_id += len(singles)
            return Verdict(Action.SPLIT, singles, 0)
        n = self._losses.get(unit.unit_id, 0) + (1 if alone else 0)
        self._losses[unit.unit_id] = n
        return Verdict(Action.ABANDON if n >= self.max_losses else Action.RETRY, [unit], n)

    # -- decisions ----------------------------------------------------------------------------------------

    def begin(self, unit: WorkUnit) -> None:
        n = self.plan.batch_sizes[0]
        for p, s in zip(unit.prompt_indices, unit.seeds):
            self.groups[p] = _GroupTrace(p, s, self.strategy.init_group(p, s), n, {i: None for i in range(n)})

    def _absorb(self, report: Report) -> None:
        for p, c in report.counters.items():
            g = self.groups[p].counters
            for k, v in c.items():
                g[k] += v

    def decide(self, report: Report) -> Selection:
        t0 = time.perf_counter()
        self._absorb(report)
        parents_out, ids_out = {}, {}
        for full in report.groups:
            g = self.groups[full.prompt_index]
            ga = self._planned(full, report.scale)
            obs = Observation(report.scale, self.plan.num_scales, ga.row_ids, self._scaled(ga.rewards), ga.features,
                              ga.log_prob, ga.entropy)
            dec = self.strategy.decide(g.state, obs)
            parents = self._checked_parents(dec.parents, len(ga.row_ids), self.plan.batch_sizes[report.scale + 1],
                                            report.scale)
            if self.save_search_data:
                g.data.append((report.scale, full, [g.parent_of.get(int(r)) for r in full.row_ids.tolist()], parents))
            # the first child of a row continues it (same id, same random stream); extra children are new rows
            seen, new_ids = set(), []
            for q in parents.tolist():
                if q not in seen:
                    seen.add(q)
                    new_ids.append(int(ga.row_ids[q]))
                else:
                    new_ids.append(g.next_id)
                    g.next_id += 1
            children = np.bincount(parents, minlength=len(ga.row_ids)).tolist()
            g.decisions.append(self._trace_entry(g, report.scale, ga, dec.trace, dec.info, children))
            g.parent_of = {nid: int(ga.row_ids[q]) for nid, q in zip(new_ids, parents.tolist())}
            parents_out[ga.prompt_index] = parents
            ids_out[ga.prompt_index] = np.asarray(new_ids, dtype=np.int64)
        self.time_decide += time.perf_counter() - t0
        return Selection(report.unit_id, report.scale, parents_out, ids_out)

    def _checked_parents(self, parents, n_rows: int, want: int, scale: int) -> np.ndarray:
        """A strategy's `Decision.parents` as int64 row positions, refused (ValueError naming the strategy) unless
        it has the plan's next batch size of integers in 0..n_rows-1: a longer list would run more rows than
        the plan (and the memory check) counted, a float or negative one would pick rows it did not mean."""
        name = type(self.strategy).__name__
        arr = np.asarray(parents)
        if arr.ndim != 1 or len(arr) != want:
            raise ValueError(f"strategy {name}.decide after scale {scale} returned {arr.size} parents, but its plan "
                             f"has {want} rows at scale {scale + 1}")
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= n_rows):
            raise ValueError(f"strategy {name}.decide after scale {scale} returned parents {arr.tolist()[:8]}: they "
                             f"must be integer positions in 0..{n_rows - 1}")
        return arr.astype(np.int64)

    def _planned(self, ga: GroupArrays, scale: int) -> GroupArrays:
        """What the plan asks for after `scale`: a worker saving search data reports rewards and features at
        every decision, and the strategy (and the trace) must see the same as without it."""
        rewards = ga.rewards if scale in self.plan.reward_scales else None
        features = ga.features if scale in self.plan.feature_scales else None
        if rewards is ga.rewards and features is ga.features:
            return ga
        return replace(ga, rewards=rewards, features=features)

    def _scaled(self, rewards: np.ndarray | None) -> np.ndarray | None:
        if rewards is None or self.reward_scale == 1.0:
            return rewards
        return rewards / np.float32(self.reward_scale)

    def _trace_entry(self, g, scale, ga, trace, info, children=None) -> dict:
        rows = []
        for i, rid in enumerate(ga.row_ids.tolist()):
            row = {"row_id": rid, "parent": g.parent_of.get(rid)}
            if ga.rewards is not None:
                r = float(ga.rewards[i])
                row["reward"] = r if np.isfinite(r) else None
            if children is not None:
                row["children"] = children[i]
                row["kept"] = children[i] > 0
            rows.append(row)
        _merge_strategy_columns(rows, trace or {})
        return {"scale": scale, "info": info or {}, "rows": rows}

    def pick(self, report: Report) -> dict[int, int]:
        t0 = time.perf_counter()
        self._absorb(report)
        picks = {}
        for ga in report.groups:
            g = self.groups[ga.prompt_index]
            obs = Observation(report.scale, self.plan.num_scales, ga.row_ids, self._scaled(ga.rewards), None,
                              ga.log_prob, ga.entropy)
            k = self.strategy.pick(g.state, obs)
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(ga.row_ids):
                raise ValueError(f"strategy {type(self.strategy).__name__}.pick returned {k!r}: it must be the "
                                 f"position of a final row, an integer in 0..{len(ga.row_ids) - 1}")
            k = int(k)
            picks[ga.prompt_index] = k
            entry = self._trace_entry(g, report.scale, ga, None, {"kind": "final"})
            entry["picked_row"] = int(ga.row_ids[k])
            entry["picked_position"] = k
            g.decisions.append(entry)
            if self.save_search_data:
                g.final = ga
        self.time_decide += time.perf_counter() - t0
        return picks

    def trace(self, prompt_index: int) -> dict:
        g = self.groups[prompt_index]
        return {"prompt_index": prompt_index, "seed": g.seed, "strategy": self.strategy.name,
                "batch_sizes": list(self.plan.batch_sizes), "decision_scales": list(self.plan.decision_scales),
                "reward_scale": self.reward_scale,
                "decisions": g.decisions}

    def search_data(self, prompt_index: int) -> dict[str, np.ndarray] | None:
        """The prompt's search data (`output.save_search_data`), for the writer, after `pick` and before
        `finish_group`: `search_data_arrays` of its decisions; None when not kept or the prompt has no decision."""
        g = self.groups[prompt_index]
        if not self.save_search_data or not g.data or g.final is None:
            return None
        return search_data_arrays(g.data, g.final, g.decisions[-1]["picked_position"], prompt_index, g.seed,
                                  self.plan.num_scales, self.reward_scale)

    def finish_group(self, prompt_index: int) -> tuple[dict, dict]:
        """Trace and counters of a finished prompt; frees its state."""
        tr = self.trace(prompt_index)
        g = self.groups.pop(prompt_index)
        return tr, g.counters


def search_data_arrays(decisions: list[tuple], final: GroupArrays, picked: int, prompt_index: int, seed: int,
                       num_scales: int, reward_scale: float) -> dict[str, np.ndarray]:
    """One prompt's search data: per row of every decision (N rows, decisions in order) and per final row (m).

    `decisions`: per decision (scale, GroupArrays with every array the worker computed, the parent row id of each
    row (None at the first decision), parents: positions into its rows of the next decision's rows, in order).
    Rewards are raw scores (divide by `reward_scale` for the units strategies see). A row's descendants are the
    final rows whose lineage passes through it; `final_max`/`final_mean` are NaN for a row none of whose
    descendants survived. Format: docs/value.md.
    """
    n_rows = [len(ga.row_ids) for _, ga, _, _ in decisions]
    offsets = np.concatenate([[0], np.cumsum(n_rows)]).astype(np.int64)
    m, D, N = len(final.row_ids), len(decisions), int(offsets[-1])
    ancestor = np.empty((m, D), dtype=np.int64)  # final row -> index (into the N rows) of its ancestor per decision
    pos = np.arange(m)
    for d in range(D - 1, -1, -1):
        pos = decisions[d][3][pos]
        ancestor[:, d] = offsets[d] + pos
    final_reward = np.asarray(final.rewards, dtype=np.float64)
    total, count, best = np.zeros(N), np.zeros(N, dtype=np.int64), np.full(N, -np.inf)
    for j in range(m):
        total[ancestor[j]] += final_reward[j]
        count[ancestor[j]] += 1
        best[ancestor[j]] = np.maximum(best[ancestor[j]], final_reward[j])
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    best = np.where(count > 0, best, np.nan)

    def col(name: str) -> np.ndarray:
        return np.concatenate([np.full(len(ga.row_ids), np.nan, np.float32) if getattr(ga, name) is None
                               else np.asarray(getattr(ga, name), np.float32) for _, ga, _, _ in decisions])

    dims = {ga.features.shape[1] for _, ga, _, _ in decisions if ga.features is not None}
    F = dims.pop() if len(dims) == 1 else 0
    features = np.concatenate([np.asarray(ga.features, np.float32) if ga.features is not None and F
                               else np.full((len(ga.row_ids), F), np.nan, np.float32) for _, ga, _, _ in decisions])
    return {
        "scale": np.repeat(np.asarray([d[0] for d in decisions], np.int64), n_rows),
        "row_id": np.concatenate([ga.row_ids for _, ga, _, _ in decisions]).astype(np.int64),
        "parent": np.asarray([-1 if p is None else p for _, _, ps, _ in decisions for p in ps], np.int64),
        "children": np.concatenate([np.bincount(par, minlength=n) for (_, _, _, par), n in zip(decisions, n_rows)]),
        "features": features, "reward": col("rewards"), "log_prob": col("log_prob"), "entropy": col("entropy"),
        "final_mean": mean.astype(np.float32), "final_max": best.astype(np.float32), "final_count": count,
        "final_row_id": np.asarray(final.row_ids, np.int64), "final_reward": final_reward.astype(np.float32),
        "final_ancestor": ancestor, "picked": np.int64(picked), "prompt_index": np.int64(prompt_index),
        "seed": np.int64(seed), "num_scales": np.int64(num_scales), "reward_scale": np.float64(reward_scale),
    }


def _merge_strategy_columns(rows: list[dict], trace: dict) -> None:
    """Add a strategy's per-row trace columns to the coordinator's rows (`row_id`, `parent`, `reward`,
    `children`, `kept`) without losing either: a strategy column that repeats a coordinator column (same
    name, same value in every row, e.g. `row_id`) is written once; one that differs (e.g. `reward` as the
    strategy saw it, divided by the reward's score scale) is kept as `strategy.<name>`."""
    ours = set(rows[0]) if rows else set()
    for key, vals in trace.items():
        if len(vals) != len(rows):
            raise ValueError(f"strategy trace column {key!r} has {len(vals)} entries for {len(rows)} rows")
        if key in ours:
            if all(row[key] == v for row, v in zip(rows, vals)):
                continue
            key = f"strategy.{key}"
        for row, v in zip(rows, vals):
            row[key] = v


def run_unit(worker: Worker, coord: Coordinator, unit: WorkUnit, keep_all: bool = False):
    """Drive one unit to the end in-process. Returns (final report, picks, images)."""
    coord.begin(unit)
    rep = worker.start(unit)
    while not rep.final:
        rep = worker.apply(coord.decide(rep))
    picks = coord.pick(rep)
    return rep, picks, worker.collect(unit.unit_id, picks, keep_all)

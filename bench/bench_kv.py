"""Shared KV blocks (`ttsvar.models.kv`) against copying every row's cache, under TTS-VAR's schedule.

    python bench/bench_kv.py [--n 8] [--seeds 20] [--threads 1]

1. The tiny Infinity of bench_generator.py (depth 6, width 192, 7 scales, random weights, CFG) runs one prompt
   through the TTS-VAR plan for its scales at N=`--n`: clustering keeps distinct random rows, resampling draws
   with replacement (uniform weights, the neutral case). Printed: the peak bytes of KV the rows hold with shared
   blocks (`SharedKV.nbytes`, measured on the tensors), the peak the old layout held (every row its own
   [R,H,L,hd] per layer, the last scale included; old and new caches both alive inside a step), and the time of
   `SharedKV.select` (index remapping, compaction included) against the old select's gather of every
   layer's rows, at every decision.
2. Infinity-2B at 1M (13 scales, 64x64, depth 32, width 2048, bf16, CFG) with TTS-VAR's default schedule at
   N=`--n`: the same `SharedKV` code run on stand-in tensors of one value per token (bytes scale with tokens),
   so the peak is exact for the index structure of each draw; averaged over `--seeds` draws, and for the worst
   case (resampling that draws no duplicate). During a step one layer's past is gathered into one tensor
   ([R,H,L,hd] for k and v: 1/depth of the rows' private KV); the peak includes it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from search.registry import create_strategy
from search.schedule import INFINITY_1M_SIDES
from ttsvar.core.generator import Rows
from ttsvar.models.kv import SharedKV


def parents(rng: np.random.Generator, n_rows: int, keep: int, cluster: bool, distinct: bool) -> np.ndarray:
    if cluster or distinct:
        return np.sort(rng.choice(n_rows, size=keep, replace=False))
    return np.sort(rng.choice(n_rows, size=keep, replace=True))


def paired(idx: np.ndarray, B: int) -> torch.Tensor:
    i = torch.as_tensor(idx)
    return torch.cat((i, i + B))


def tiny_run(n: int, seed: int) -> dict:
    from bench_generator import build

    gen = build("tiny", "cpu", torch.float32, "0.25M")
    strat = create_strategy("tts-var")
    plan = strat.make_plan(gen.num_scales, n)
    cluster = strat._cluster  # which decisions cluster (distinct rows) rather than resample
    rng = np.random.default_rng(seed)
    B0 = plan.batch_sizes[0]
    state = gen.start({0: "p"}, Rows(np.zeros(B0), np.arange(B0), np.zeros(B0)))
    cfg = gen.model.config
    per_token_row = cfg.depth * 2 * cfg.embed_dim * 4 * 2  # k+v, every layer, float32, cond+uncond rows
    tokens = [h * w for h, w in gen.scale_schedule]
    peak_shared = peak_old = 0
    sel_new, sel_old, dup = [], [], []
    for k in range(gen.num_scales):
        R = len(state.rows)
        past = sum(tokens[:k])
        state = gen.step(state)
        stored = 0 if state.caches is None else state.caches.nbytes()
        transient = R * (past + tokens[k]) * per_token_row // cfg.depth  # one layer's gathered past + new
        peak_shared = max(peak_shared, stored + transient)
        # the old layout: every row owns [R,H,L,hd] per layer; a step builds new caches while the old ones live
        peak_old = max(peak_old, R * (2 * past + tokens[k]) * per_token_row)
        if k in plan.decision_scales:
            keep = plan.batch_sizes[k + 1]
            idx = parents(rng, R, keep, k in cluster, False)
            dup.append(keep - len(set(idx.tolist())))
            full = paired(idx, R)
            private = gen.kv_rows(state)  # what the old layout held
            t0 = time.perf_counter()
            _ = [t.index_select(0, full) for t in private]
            sel_old.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            state.caches.select(full)  # the KV part of select, what the old gather above did
            sel_new.append(time.perf_counter() - t0)
            state = gen.select(state, idx)
            peak_shared = max(peak_shared, state.caches.nbytes())
    return {"peak_shared": peak_shared, "peak_old": peak_old, "sel_new": sel_new, "sel_old": sel_old,
            "decisions": sorted(plan.decision_scales), "dup": dup, "per_token_row": per_token_row}


def infinity_2b(n: int, seed: int, distinct: bool, depth: int = 32) -> tuple[float, float, float]:
    """(peak shared, peak with private copies stored, peak of the old code inside a step) in token-rows (one
    token's k+v of every layer, cond + uncond) for one prompt."""
    S = len(INFINITY_1M_SIDES)
    tokens = [s * s for s in INFINITY_1M_SIDES]
    strat = create_strategy("tts-var")
    plan = strat.make_plan(S, n)
    rng = np.random.default_rng(seed)
    R = plan.batch_sizes[0]
    kv: SharedKV | None = None
    peak = peak_private = peak_old = 0.0
    for k in range(S):
        past = sum(tokens[:k])
        # stand-ins: one float per token and row (one layer), for the cond and the uncond row
        if k < S - 1:
            new = [(torch.zeros(2 * R, 1, tokens[k], 1), torch.zeros(2 * R, 1, 0, 1))]
            kv = (kv if kv is not None else SharedKV.empty(2 * R)).extend(new)
        stored = 0.0 if kv is None else kv.nbytes() / 4 / 2  # floats -> token-rows (cond+uncond per row)
        peak = max(peak, stored + R * (past + tokens[k]) / depth)
        peak_private = max(peak_private, R * (past + tokens[k]))
        peak_old = max(peak_old, R * (2 * past + tokens[k]))
        if k in plan.decision_scales:
            keep = plan.batch_sizes[k + 1]
            idx = parents(rng, R, keep, k in strat._cluster, distinct)
            kv = kv.select(paired(idx, R))
            R = keep
            peak = max(peak, kv.nbytes() / 4 / 2)
    return peak, peak_private, peak_old


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    runs = [tiny_run(a.n, s) for s in range(min(a.seeds, 5))]
    r0 = runs[0]
    print(f"tiny Infinity (depth 6, width 192, 7 scales), TTS-VAR N={a.n}, decisions after scales {r0['decisions']}, "
          f"CPU {torch.get_num_threads()} thread(s), {len(runs)} draws")
    print("| | shared blocks | old layout (private copies) | ratio |")
    print("|---|---|---|---|")
    ps, po = np.mean([r["peak_shared"] for r in runs]), np.mean([r["peak_old"] for r in runs])
    print(f"| peak KV bytes (mean of draws) | {ps / 2**20:.2f} MiB | {po / 2**20:.2f} MiB | {ps / po:.2f} |")
    for j, d in enumerate(r0["decisions"]):
        new = np.median([r["sel_new"][j] for r in runs]) * 1e3
        old = np.median([r["sel_old"][j] for r in runs]) * 1e3
        dups = np.mean([r["dup"][j] for r in runs])
        print(f"| select after scale {d} (ms, median; {dups:.1f} duplicates) | {new:.3f} | {old:.3f} | "
              f"{new / old:.2f} |")
    print()
    bpt = 32 * 2 * 2048 * 2 * 2  # Infinity-2B: depth 32, k+v, width 2048, bf16, cond+uncond
    draws = [infinity_2b(a.n, s, False) for s in range(a.seeds)]
    worst = infinity_2b(a.n, 0, True)
    print(f"Infinity-2B 1M (13 scales), TTS-VAR default schedule, N={a.n}: peak KV per prompt")
    print("| resampling | shared blocks | private copies stored | ratio | old code inside a step | ratio |")
    print("|---|---|---|---|---|---|")
    for name, (pk, pp, po) in (("uniform draws (mean)", tuple(np.mean(draws, axis=0))), ("no duplicates", worst)):
        print(f"| {name} | {pk * bpt / 2**30:.2f} GiB | {pp * bpt / 2**30:.2f} GiB | {pk / pp:.2f} | "
              f"{po * bpt / 2**30:.2f} GiB | {pk / po:.2f} |")


if __name__ == "__main__":
    main()

"""Time one decide() call per prompt group, for groups of 8..64 rows.

    .venv/bin/python bench/bench_search.py [--repeats 50] [--dim 1024]

Rows: tts-var's clustering decision (faiss k-means++ on 1024-d features, k = 3/4 of the rows, as in the
paper's 8 -> 6 step), tts-var's resampling decision (rows -> rows / 2), and fk's weight update (rows -> rows).
Times are the median over repeats, after one warm-up call, on CPU unless faiss sees a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from search import Observation, create_strategy


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def cluster_ms(rows: int, dim: int, repeats: int) -> tuple[int, float]:
    strategy = create_strategy("tts-var")
    plan = strategy.plan(13, rows // 8)  # 8n rows reach scale 2, clustered down to 6n
    feats = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    obs = Observation(2, 13, np.arange(rows), None, feats)
    return plan.batch_sizes[3], median_ms(lambda: strategy.decide(strategy.init_group(0, 1), obs), repeats)


def resample_ms(rows: int, repeats: int) -> float:
    strategy = create_strategy("tts-var", batch_schedule=[2] * 7 + [1] * 6, cluster_scales=[],
                               resample_scales=[6])
    strategy.plan(13, rows // 2)
    rewards = np.random.default_rng(0).normal(size=rows).astype(np.float32)
    obs = Observation(6, 13, np.arange(rows), rewards, None)
    return median_ms(lambda: strategy.decide(strategy.init_group(0, 1), obs), repeats)


def fk_ms(rows: int, repeats: int) -> float:
    strategy = create_strategy("fk", resample_scales=[6])
    strategy.plan(13, rows)
    rewards = np.random.default_rng(0).normal(size=rows).astype(np.float32)
    obs = Observation(6, 13, np.arange(rows), rewards, None)
    return median_ms(lambda: strategy.decide(strategy.init_group(0, 1), obs), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--dim", type=int, default=1024)
    args = ap.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}, GPUs seen: {faiss.get_num_gpus()}, feature dim {args.dim}, "
          f"median of {args.repeats}")
    print(f"{'rows':>5} {'k':>4} {'cluster ms':>11} {'resample ms':>12} {'fk ms':>7}")
    for rows in (8, 16, 32, 64):
        k, c = cluster_ms(rows, args.dim, args.repeats)
        print(f"{rows:>5} {k:>4} {c:>11.3f} {resample_ms(rows, args.repeats):>12.3f} "
              f"{fk_ms(rows, args.repeats):>7.3f}")


if __name__ == "__main__":
    main()

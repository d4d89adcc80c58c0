"""Density-aware selection at critical scales (VAR-Scaling, Tang et al., arXiv 2601.07293), over preview features.

VAR-Scaling maps the discrete samples of a scale into a quasi-continuous feature space, estimates their density
there with a Gaussian kernel, and treats high-density samples as stable, representative solutions: Top-k
selection in dense regions keeps quality near the modes, Random-k selection in sparse regions keeps diversity.

Here, after each `density_scales` decision, for one prompt group of n live rows with preview features x_i:

    d2_ij   = |x_i - x_j|^2                              pairwise squared distances
    h^2     = bandwidth^2 * median_{i<j} d2_ij / 2        median heuristic (scale-free in any feature space)
    dens_i  = mean_{j != i} exp(-d2_ij / (2 h^2))         leave-one-out Gaussian KDE
    dense   = {i : dens_i >= mean(dens)}                  sparse = the rest

and k = the next batch size rows are kept (distinct, no refill): ceil(top_fraction * k) of them are the dense
rows with the highest preview reward (Top-k), the rest are drawn uniformly without replacement from the sparse
rows (Random-k, seeded by group and scale). When one side has too few rows the other fills the slots (dense
rows by reward). With `top_fraction = 0` no preview reward is needed at all. The highest final reward wins.

Differences from the official code (WD7ang/VAR-Scaling, `VAR-main/models/var.py`), deliberate:
  * features: the official code sums, over the token positions of the critical scale, a KDE over the candidates'
    codebook embeddings (Cvae dims each); we use the engine's preview features (DINOv2, shapes-clip, ...), which
    every model has, so the strategy does not depend on a VQ codebook;
  * bandwidth: the official per-position Silverman factor times the mean per-dimension std would, in a 64- to
    1024-d feature space, put every pair of distinct rows at ~exp(-F) (all densities equal); the median
    heuristic keeps kernel values O(1) whatever F is;
  * dense/sparse: the official switch is per group (Top-k by density when max density >= alpha * mean density,
    else a random order), followed by a dissimilarity filter in codebook units and one density-weighted draw
    among 10 representatives; we split the kept slots between Top-k by reward over the dense rows and Random-k
    over the sparse rows, per row, and keep several rows, so the final reward still picks among them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from search.base import (
    RNG_DENSITY,
    Decision,
    GroupState,
    Observation,
    PlannedStrategy,
    SearchPlan,
    argmax_reward,
    children_counts,
    group_rng,
    jsonable,
)
from search.clustering import squared_distances
from search.registry import register_strategy
from search.schedule import check_scales, default_decisions, option_list


def kde_density(features: np.ndarray, bandwidth: float = 1.0) -> tuple[np.ndarray, float]:
    """Leave-one-out Gaussian KDE of each row among the others (float64 [n]) and the bandwidth h used.

    h^2 = bandwidth^2 * median pairwise squared distance / 2. When that median is 0 (most rows identical, e.g.
    duplicated paths) the kernel counts exact duplicates only. One row alone has density 0.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"kde_density: features must be [n, F], got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"kde_density: features of rows {bad.tolist()} contain NaN/inf; the feature extractor "
                         "produced invalid values (check its weights and input range)")
    n = x.shape[0]
    if n < 2:
        return np.zeros(n), 0.0
    d2 = squared_distances(x, x)  # [n, n]
    off = ~np.eye(n, dtype=bool)
    med = float(np.median(d2[off]))
    if med > 0:
        h2 = bandwidth * bandwidth * med / 2.0
        kernel = np.exp(-d2 / (2.0 * h2))
    else:
        h2 = 0.0
        kernel = (d2 <= 0).astype(np.float64)
    return (kernel * off).sum(axis=1) / (n - 1), math.sqrt(h2)


def select_dense_top_sparse_random(density: np.ndarray, rewards: np.ndarray | None, k: int, top_fraction: float,
                                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of k distinct kept rows (sorted), the dense mask, and how each row was kept (0 no, 1 top, 2
    random). Dense rows are ranked by reward (NaN last, ties to the lower index; by density when `rewards` is
    None); sparse rows are drawn uniformly."""
    n = len(density)
    dense = density >= density.mean() - 1e-12 * max(1.0, abs(float(density.mean())))
    if rewards is None:
        key = density
    else:
        r = np.asarray(rewards, dtype=np.float64)
        key = np.where(np.isnan(r), -np.inf, r)
    ranked_dense = [int(i) for i in np.argsort(-key, kind="stable") if dense[i]]
    sparse = np.flatnonzero(~dense)
    n_top = min(len(ranked_dense), math.ceil(top_fraction * k))
    n_random = min(len(sparse), k - n_top)
    n_top = min(len(ranked_dense), k - n_random)  # the dense side fills what the sparse side cannot
    how = np.zeros(n, dtype=np.int64)
    how[ranked_dense[:n_top]] = 1
    if n_random:
        how[rng.choice(sparse, size=n_random, replace=False)] = 2
    kept = np.flatnonzero(how > 0).astype(np.int64)
    if len(kept) != k:
        raise AssertionError(f"density selection kept {len(kept)} rows instead of {k} (n = {n})")
    return kept, dense, how


def _check_fraction(name: str, value: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    ok = (0 < value <= 1) if low_open else (0 <= value <= 1)
    if not ok:
        raise ValueError(f"{name}: {value!r} must be in {'(0, 1]' if low_open else '[0, 1]'}")
    return float(value)


def default_critical_scales(num_scales: int) -> tuple[int, ...]:
    """The first TTS-VAR clustering scale (search.schedule), the "general pattern" scale VAR-Scaling searches
    at; for models too short for the TTS-VAR defaults, scale 1 (scale 0 when there are only 2 scales)."""
    try:
        return default_decisions(num_scales)[0][:1]
    except ValueError:
        return (min(1, num_scales - 2),) if num_scales >= 2 else ()


@register_strategy("density")
class Density(PlannedStrategy):
    """Options: `density_scales` (None: `default_critical_scales`), `keep` in (0, 1] (fraction of the live rows
    kept at each density scale, at least 1), `top_fraction` in [0, 1] (share of the kept rows chosen Top-k by
    reward among the dense rows; the rest Random-k among the sparse rows; 0: no preview rewards needed),
    `bandwidth` > 0 (multiplier on the median-heuristic kernel width).

    Called by the engine (`search.base.Strategy`): `decide` after each density scale with preview features (and
    rewards unless `top_fraction` is 0), `pick` after the last scale with the final rewards.
    """

    def __init__(self, density_scales: Sequence[int] | None = None, keep: float = 0.5, top_fraction: float = 0.5,
                 bandwidth: float = 1.0) -> None:
        self.density_scales = option_list(density_scales, "density_scales")
        self.keep = _check_fraction("keep", keep, low_open=True)
        self.top_fraction = _check_fraction("top_fraction", top_fraction, low_open=False)
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth: {bandwidth!r} must be a finite number > 0 (1 = the median heuristic)")
        self.bandwidth = float(bandwidth)

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        default = default_critical_scales(num_scales)
        scales = check_scales(default if self.density_scales is None else self.density_scales, num_scales,
                              "density_scales")
        sizes = [n]
        for k in range(num_scales - 1):
            sizes.append(max(1, math.floor(sizes[-1] * self.keep)) if k in scales else sizes[-1])
        rewards = frozenset(scales) if self.top_fraction > 0 else frozenset()
        return SearchPlan(tuple(sizes), frozenset(scales), rewards, scales)

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        n, k = obs.num_rows, state.plan.batch_sizes[obs.scale + 1]
        density, h = kde_density(obs.features, self.bandwidth)
        rewards = None if obs.rewards is None else np.asarray(obs.rewards, dtype=np.float64)
        rng = group_rng(state.seed, obs.scale, RNG_DENSITY)
        parents, dense, how = select_dense_top_sparse_random(
            density, rewards if self.top_fraction > 0 else None, k, self.top_fraction, rng)
        state.past_rewards = state.past_rewards[parents]
        trace = {"row_id": jsonable(obs.row_ids), "density": jsonable(density), "dense": jsonable(dense),
                 "selected_by": [("-", "top", "random")[i] for i in how],
                 "children": children_counts(parents, n)}
        if rewards is not None:
            trace["reward"] = jsonable(rewards)
        info = {"kind": "density", "bandwidth": h, "dense_rows": int(dense.sum()),
                "top": int((how == 1).sum()), "random": int((how == 2).sum())}
        return Decision(parents, trace, info)

    def pick(self, state: GroupState, obs: Observation) -> int:
        return argmax_reward(self.check_pick(state, obs))

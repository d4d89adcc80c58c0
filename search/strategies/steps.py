"""Decision steps shared by several strategies: cluster-and-keep-representatives, and potential resampling.

Each step reads one Observation, updates the group state's per-row history in place (reordered by the
parents it returns) and returns the Decision with a per-input-row trace.
"""

from __future__ import annotations

import numpy as np

from search.base import (
    RNG_KMEANS,
    RNG_RESAMPLE,
    Decision,
    GroupState,
    Observation,
    children_counts,
    group_rng,
    jsonable,
)
from search.clustering import kmeans_pp, nearest_to_centroids, squared_distances
from search.potentials import (
    effective_sample_size,
    learned_values,
    log_potential,
    normalize_log_weights,
    resample,
)


def cluster_step(state: GroupState, obs: Observation, k: int, niter: int = 25,
                 scores: np.ndarray | None = None) -> Decision:
    """Clustering-based diversity search: k-means++ (k = next batch size) on the preview features, keep the
    member nearest to each centroid. Parents are distinct, in cluster order. With `scores` (float [n], e.g. a
    learned value V_k) each cluster keeps its highest-scoring member instead (`best_per_cluster`)."""
    n = obs.num_rows
    seed = int(group_rng(state.seed, obs.scale, RNG_KMEANS).integers(0, 2**31 - 1))
    assign, centroids = kmeans_pp(obs.features, k, seed=seed, niter=niter)
    d2 = squared_distances(obs.features, centroids)  # [n, k]
    if scores is None:
        parents = nearest_to_centroids(obs.features, assign, centroids, d2)
    else:
        parents = best_per_cluster(assign, np.asarray(scores, dtype=np.float64), k)
    distance = np.sqrt(d2[np.arange(n), assign])
    representative = np.zeros(n, dtype=bool)
    representative[parents] = True
    state.past_rewards = state.past_rewards[parents]
    trace = {
        "row_id": jsonable(obs.row_ids),
        "cluster": jsonable(assign),
        "distance": jsonable(distance),
        "representative": jsonable(representative),
        "children": children_counts(parents, n),
    }
    if scores is not None:
        trace["value"] = jsonable(scores)
    return Decision(parents, trace, {"kind": "cluster", "k": int(k)})


def best_per_cluster(assign: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """k distinct rows: each non-empty cluster's highest-scoring member (NaN lowest, ties to the lower index), in
    cluster order; slots of clusters k-means left empty go to the best rows not yet chosen. int64 [k]."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-s, kind="stable")  # best first, ties to the lower index
    chosen: list[int] = []
    for c in range(k):
        members = [i for i in order.tolist() if assign[i] == c]
        if members:
            chosen.append(members[0])
    rest = [i for i in order.tolist() if i not in set(chosen)]
    chosen += rest[: k - len(chosen)]
    return np.asarray(chosen, dtype=np.int64)


def resample_step(state: GroupState, obs: Observation, m: int, potential: str, lam: float,
                  value_model=None, resampler: str = "multinomial") -> Decision:
    """Resampling-based potential selection: draw `m` parents with replacement by `resampler`, each row an
    expected m * P(i) times, P(i) proportional to the potential of row i (see search.potentials for the NaN/inf
    policy and the resamplers); the reward joins the row history.
    `potential="learned"` weighs V_k of `value_model` (`search.value.ValueModel`) where it was fitted."""
    n = obs.num_rows
    rewards = np.asarray(obs.rewards, dtype=np.float64)
    values = learned_values(obs, value_model) if potential == "learned" else rewards
    logp = log_potential(values, state.past_rewards, potential, lam)
    probs = normalize_log_weights(logp)
    parents = resample(probs, m, group_rng(state.seed, obs.scale, RNG_RESAMPLE), resampler)
    state.past_rewards = np.concatenate([state.past_rewards, rewards[:, None]], axis=1)[parents]
    trace = {
        "row_id": jsonable(obs.row_ids),
        "reward": jsonable(rewards),
        **({"value": jsonable(values)} if potential == "learned" else {}),
        "log_potential": jsonable(logp),
        "weight": jsonable(probs),
        "children": children_counts(parents, n),
    }
    return Decision(parents, trace, {"kind": "resample", "potential": potential, "lam": lam,
                                     "resampler": resampler, "ess": effective_sample_size(probs)})

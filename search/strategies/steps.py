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
    log_potential,
    multinomial_resample,
    normalize_log_weights,
)


def cluster_step(state: GroupState, obs: Observation, k: int, niter: int = 25) -> Decision:
    """Clustering-based diversity search: k-means++ (k = next batch size) on the preview features, keep the
    member nearest to each centroid. Parents are distinct, in cluster order."""
    n = obs.num_rows
    seed = int(group_rng(state.seed, obs.scale, RNG_KMEANS).integers(0, 2**31 - 1))
    assign, centroids = kmeans_pp(obs.features, k, seed=seed, niter=niter)
    d2 = squared_distances(obs.features, centroids)  # [n, k]
    parents = nearest_to_centroids(obs.features, assign, centroids, d2)
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
    return Decision(parents, trace, {"kind": "cluster", "k": int(k)})


def resample_step(state: GroupState, obs: Observation, m: int, potential: str, lam: float) -> Decision:
    """Resampling-based potential selection: draw `m` parents with replacement, P(i) proportional to the
    potential of row i (see search.potentials for the NaN/inf policy); the reward joins the row history."""
    n = obs.num_rows
    rewards = np.asarray(obs.rewards, dtype=np.float64)
    logp = log_potential(rewards, state.past_rewards, potential, lam)
    probs = normalize_log_weights(logp)
    parents = multinomial_resample(probs, m, group_rng(state.seed, obs.scale, RNG_RESAMPLE))
    state.past_rewards = np.concatenate([state.past_rewards, rewards[:, None]], axis=1)[parents]
    trace = {
        "row_id": jsonable(obs.row_ids),
        "reward": jsonable(rewards),
        "log_potential": jsonable(logp),
        "weight": jsonable(probs),
        "children": children_counts(parents, n),
    }
    return Decision(parents, trace, {"kind": "resample", "potential": potential, "lam": lam,
                                     "ess": effective_sample_size(probs)})

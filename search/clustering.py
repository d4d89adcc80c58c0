"""k-means with k-means++ seeding (faiss) and the choice of one representative per cluster.

TTS-VAR's clustering-based diversity search keeps, from n candidates, the k members nearest to the k
centroids of a k-means on their semantic features. The official code uses sklearn `KMeans(n_clusters=k,
random_state=0)` (k-means++ seeding); we use faiss `Clustering` with `ClusteringInitMethod_KMEANS_PLUS_PLUS`
(present in faiss >= 1.14) and `min_points_per_centroid=1` (groups are tiny), seeded per group and scale.
faiss runs on GPU when it sees one (one shared `StandardGpuResources`, created on first use).
"""

from __future__ import annotations

import numpy as np

_GPU_RESOURCES = None


def _gpu_resources():
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        import faiss

        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def kmeans_pp(
    features: np.ndarray,
    k: int,
    seed: int,
    niter: int = 25,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of `features` [n, F] into `k` clusters, k-means++ seeded from `seed`.

    Returns (assign int64 [n], centroids float32 [k, F]); `assign[i]` is the nearest centroid of row i.
    Special cases: k == 1 -> the mean; k == n -> every row its own cluster; k > n raises.
    `use_gpu=None` means "on GPU iff faiss sees one".
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans_pp: features must be [n, F], got shape {x.shape}")
    n, d = x.shape
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"kmeans_pp: k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"kmeans_pp: cannot form {k} clusters from {n} rows (k must be <= n)")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"kmeans_pp: features of rows {bad.tolist()} contain NaN/inf; the feature extractor "
                         "produced invalid values (check its weights and input range)")
    if k == n:
        return np.arange(n, dtype=np.int64), x.copy()
    if k == 1:
        centroids = x.astype(np.float64).mean(axis=0, keepdims=True).astype(np.float32)
        return np.zeros(n, dtype=np.int64), centroids

    import faiss

    cp = faiss.ClusteringParameters()
    cp.niter = int(niter)
    cp.seed = int(seed) & 0x7FFFFFFF
    cp.init_method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    cp.min_points_per_centroid = 1  # groups are tiny; faiss would otherwise warn about too few points
    cp.max_points_per_centroid = 1 << 30  # never subsample
    clus = faiss.Clustering(d, int(k), cp)
    if use_gpu is None:
        use_gpu = faiss.get_num_gpus() > 0
    if use_gpu:
        clus.train(x, faiss.GpuIndexFlatL2(_gpu_resources(), d))
    else:
        # One thread: a group is at most a few hundred rows, and faiss's OpenMP team costs ~1000x the work
        # itself (0.05 ms single-threaded vs 100 ms with 2 threads on a busy machine, n=24, k=18).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            clus.train(x, faiss.IndexFlatL2(d))
        finally:
            faiss.omp_set_num_threads(threads)
    centroids = faiss.vector_to_array(clus.centroids).reshape(int(k), d).astype(np.float32)
    return nearest_centroid(x, centroids), centroids


def squared_distances(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared L2 distances [n, k] in float64: |x|^2 - 2 x.c + |c|^2 (float64 keeps the cancellation harmless
    at these sizes), clipped at 0. The dot products use einsum, not BLAS: numpy's threaded BLAS stalls for
    ~60 ms per call on a busy machine (measured, 32 x 24 x 1024), einsum takes < 1 ms at 64 x 48 x 1024."""
    x = np.asarray(features, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    xc = np.einsum("nf,kf->nk", x, c)
    d2 = np.einsum("nf,nf->n", x, x)[:, None] - 2.0 * xc + np.einsum("kf,kf->k", c, c)
    return np.maximum(d2, 0.0)


def nearest_centroid(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmin(squared_distances(features, centroids), axis=1).astype(np.int64)


def nearest_to_centroids(features: np.ndarray, assign: np.ndarray, centroids: np.ndarray,
                         d2: np.ndarray | None = None) -> np.ndarray:
    """One distinct representative row per centroid (int64 [k]).

    Each non-empty cluster keeps its member nearest to its centroid (the official rule). faiss may leave a
    cluster empty when rows are duplicated (it then splits another cluster); an empty cluster takes the
    nearest row not already chosen, so the k representatives are always distinct (needs k <= n).
    `d2`: the squared distances [n, k], if the caller already computed them.
    """
    x = np.asarray(features)
    assign = np.asarray(assign)
    k, n = len(centroids), len(x)
    if k > n:
        raise ValueError(f"nearest_to_centroids: {k} centroids but only {n} rows; cannot pick distinct "
                         "members")
    d2 = squared_distances(x, centroids) if d2 is None else d2  # [n, k]
    reps = np.full(k, -1, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if members.size:
            best = members[np.argmin(d2[members, c])]  # first of equals wins: deterministic
            reps[c] = best
            taken[best] = True
    for c in np.flatnonzero(reps < 0):
        free = np.flatnonzero(~taken)
        best = free[np.argmin(d2[free, c])]
        reps[c] = best
        taken[best] = True
    return reps

"""k-means++ (faiss) and representative selection, against numpy references on synthetic points."""

from __future__ import annotations

import numpy as np
import pytest

from search.clustering import kmeans_pp, nearest_to_centroids, squared_distances


def blobs(seed: int, k: int, per: int, dim: int = 16, sep: float = 20.0):
    rng = np.random.default_rng(seed)
    centers = sep * rng.normal(size=(k, dim))
    labels = np.repeat(np.arange(k), per)
    x = centers[labels] + rng.normal(size=(k * per, dim))
    return x.astype(np.float32), labels


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    x, labels = blobs(0, k=5, per=6)
    assign, centroids = kmeans_pp(x, 5, seed=1)
    assert centroids.shape == (5, 16) and assign.dtype == np.int64
    # a perfect partition: every blob maps to one cluster and vice versa
    pairs = set(zip(labels.tolist(), assign.tolist()))
    assert len(pairs) == 5 and len({a for _, a in pairs}) == 5
    for c in range(5):  # Lloyd's fixed point: each centroid is the mean of its members
        np.testing.assert_allclose(centroids[c], x[assign == c].mean(0), rtol=1e-4, atol=1e-4)
    again = kmeans_pp(x, 5, seed=1)
    np.testing.assert_array_equal(assign, again[0])
    np.testing.assert_array_equal(centroids, again[1])


def test_assignment_is_the_nearest_centroid():
    x = np.random.default_rng(3).normal(size=(40, 8)).astype(np.float32)
    assign, centroids = kmeans_pp(x, 7, seed=0)
    ref = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(assign, ref.argmin(1))
    np.testing.assert_allclose(squared_distances(x, centroids), ref, rtol=1e-9, atol=1e-9)


def test_representatives_are_the_members_nearest_to_their_centroids():
    x, _ = blobs(1, k=4, per=5)
    assign, centroids = kmeans_pp(x, 4, seed=2)
    reps = nearest_to_centroids(x, assign, centroids)
    for c, r in enumerate(reps):
        members = np.flatnonzero(assign == c)
        d = np.linalg.norm(x[members].astype(np.float64) - centroids[c], axis=1)
        assert r == members[np.argmin(d)]


def test_special_cases_k_equal_n_k_one_and_k_too_large():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    assign, centroids = kmeans_pp(x, 5, seed=0)
    np.testing.assert_array_equal(assign, np.arange(5))
    np.testing.assert_array_equal(nearest_to_centroids(x, assign, centroids), np.arange(5))
    assign, centroids = kmeans_pp(x, 1, seed=0)
    np.testing.assert_allclose(centroids[0], x.astype(np.float64).mean(0), rtol=1e-6)
    nearest = np.argmin(np.linalg.norm(x - centroids[0], axis=1))
    assert nearest_to_centroids(x, assign, centroids)[0] == nearest
    with pytest.raises(ValueError, match="cannot form 6 clusters from 5 rows"):
        kmeans_pp(x, 6, seed=0)


def test_duplicate_points_still_give_distinct_representatives():
    base = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    x = np.repeat(base, 4, axis=0)  # 12 rows, only 3 distinct points, 5 clusters
    for seed in range(10):
        assign, centroids = kmeans_pp(x, 5, seed=seed)
        reps = nearest_to_centroids(x, assign, centroids)
        assert len(set(reps.tolist())) == 5
        assert len({tuple(x[r]) for r in reps}) == 3  # every distinct point is represented


def test_an_empty_cluster_takes_the_nearest_unused_row():
    x = np.array([[0.0], [1.0], [10.0]], np.float32)
    centroids = np.array([[0.4], [10.0], [0.6]], np.float32)
    assign = np.array([0, 0, 1])  # cluster 2 empty
    reps = nearest_to_centroids(x, assign, centroids)
    assert reps.tolist() == [0, 2, 1]


def test_nan_features_are_refused():
    x = np.zeros((4, 2), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"rows \[2\] contain NaN"):
        kmeans_pp(x, 2, seed=0)


@pytest.mark.gpu
def test_gpu_kmeans_agrees_with_cpu():
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss sees no GPU")
    x, labels = blobs(0, k=6, per=8, dim=64)
    a_cpu, _ = kmeans_pp(x, 6, seed=0, use_gpu=False)
    a_gpu, c_gpu = kmeans_pp(x, 6, seed=0, use_gpu=True)
    same_partition = len(set(zip(a_cpu.tolist(), a_gpu.tolist()))) == 6
    assert same_partition and c_gpu.shape == (6, 64)

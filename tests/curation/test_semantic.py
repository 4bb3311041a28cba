"""SemDeDup and hierarchical balancing on synthetic embeddings with known clusters: exact expected counts."""

from __future__ import annotations

import numpy as np

from curation.balance import (allocate, assign, balanced_sample, cluster_sizes, hierarchical_kmeans, stream_rows,
                              streaming_kmeans, KMeansConfig)
from curation.select import semantic_stage
from curation.semdedup import SemDedupConfig, semdedup


def blobs(sizes, dim=32, spread=0.15, seed=0, centers=None):
    rng = np.random.default_rng(seed)
    centers = centers if centers is not None else rng.normal(size=(len(sizes), dim)) * 3
    points, labels = [], []
    for c, n in enumerate(sizes):
        points.append(centers[c] + rng.normal(size=(n, dim)) * spread * 3)
        labels += [c] * n
    return np.concatenate(points).astype(np.float32), np.asarray(labels), centers


def test_streaming_kmeans_recovers_known_clusters_in_batches():
    x, truth, _ = blobs([300, 120, 40, 40], seed=1)
    order = np.random.default_rng(2).permutation(len(x))
    x, truth = x[order], truth[order]
    centroids = streaming_kmeans(stream_rows(x, 64), KMeansConfig(k=4, seed=0))
    labels, _ = assign(x, centroids)
    # each found cluster is exactly one true cluster
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth)}
    assert len(pairs) == 4
    assert sorted(np.bincount(labels).tolist()) == [40, 40, 120, 300]


def test_semdedup_drops_exactly_the_planted_near_copies():
    x, truth, _ = blobs([50, 30, 20], dim=64, spread=1.0, seed=3)
    rng = np.random.default_rng(4)
    planted = rng.choice(len(x), size=15, replace=False)
    copies = x[planted] + rng.normal(size=(15, 64)).astype(np.float32) * 0.01
    everything = np.concatenate([x, copies])
    labels = np.concatenate([truth, truth[planted]])
    duplicate_of = semdedup(everything, labels, eps=0.05)
    assert (duplicate_of >= 0).sum() == 15
    assert np.array_equal(np.flatnonzero(duplicate_of >= 0), np.arange(len(x), len(x) + 15))
    assert np.array_equal(duplicate_of[len(x):], planted)  # each copy points at its original, kept first


def test_allocate_splits_evenly_and_small_clusters_give_all():
    assert allocate([100, 30, 10], 45).tolist() == [18, 17, 10]
    assert allocate([100, 30, 10], 30).tolist() == [10, 10, 10]
    assert allocate([100, 30, 10], 500).tolist() == [100, 30, 10]
    assert allocate([5, 5], 3).tolist() == [1, 2]


def test_hierarchical_balancing_takes_evenly_from_known_clusters():
    # three super-concepts, each made of two sub-concepts; one super-concept is very common
    rng = np.random.default_rng(5)
    supers = rng.normal(size=(3, 32)) * 4
    subs = np.concatenate([s + rng.normal(size=(2, 32)) * 1.2 for s in supers])
    x, truth, _ = blobs([400, 200, 30, 30, 12, 8], dim=32, spread=0.05, seed=6, centers=subs)
    hierarchy = hierarchical_kmeans(stream_rows(x, 100), ks=(6, 3), seed=0)
    labels, _ = assign(x, hierarchy.centroids[0])
    assert sorted(cluster_sizes(labels, 6).tolist()) == [8, 12, 30, 30, 200, 400]
    chosen = balanced_sample(labels, hierarchy, target=60, rank=np.arange(len(x)))
    assert chosen.sum() == 60
    per_truth = np.bincount(truth[chosen], minlength=6)
    # 20 per super-concept; the rare one gives 12 + 8, the others split 10 + 10
    assert per_truth.tolist() == [10, 10, 10, 10, 12, 8]
    # within a cluster the earliest in keep order are taken
    first = np.flatnonzero(truth == 0)[:10]
    assert chosen[first].all()


def _cone(seed: int):
    """Three known clusters and 15 planted near copies, squeezed into a narrow cone around one direction, as a
    barely trained encoder places clips (every pair within about 10 degrees)."""
    centers = np.random.default_rng(seed).normal(size=(3, 128)) * 4
    x, truth, _ = blobs([50, 30, 20], dim=128, spread=1.0, seed=seed, centers=centers)
    rng = np.random.default_rng(seed + 1)
    planted = rng.choice(len(x), size=15, replace=False)
    copies = x[planted] + rng.normal(size=(15, 128)).astype(np.float32) * 0.01
    axis = rng.normal(size=128).astype(np.float32)
    everything = np.concatenate([x, copies])
    squeezed = axis / np.linalg.norm(axis) * np.linalg.norm(everything, axis=1).max() * 8 + everything
    return squeezed, np.concatenate([truth, truth[planted]]), planted


def test_centred_semantic_stage_finds_exactly_the_planted_copies_in_a_narrow_cone():
    x, truth, planted = _cone(seed=3)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert (unit @ unit.T).min() > 0.98  # every pair within a few degrees
    ids = [f"c{i}" for i in range(len(x))]
    order = {c: i for i, c in enumerate(ids)}  # originals first, so each copy meets its original kept
    batches = stream_ids(ids, x, 32)

    outcome = semantic_stage(order, batches, SemDedupConfig(eps=0.05, clusters=3))
    dropped = {c: v.duplicate_of for c, v in outcome.verdicts.items() if not v.kept}
    assert dropped == {f"c{100 + j}": f"c{p}" for j, p in enumerate(planted)}
    assert sorted(outcome.sizes_before) == [20, 30, 50]  # the known clusters, each copy dropped from its own

    plain = semantic_stage(order, batches, SemDedupConfig(eps=0.05, clusters=3, center=False))
    assert sum(not v.kept for v in plain.verdicts.values()) > 100  # uncentred, nearly every clip looks alike


def test_centring_keeps_identical_embeddings_identical_even_at_the_mean():
    x = np.tile(np.float32([[3.0, 4.0, 0.0]]), (4, 1))
    ids = [f"c{i}" for i in range(4)]
    outcome = semantic_stage({c: i for i, c in enumerate(ids)}, stream_ids(ids, x, 2), SemDedupConfig(clusters=1))
    assert [outcome.verdicts[c].kept for c in ids] == [True, False, False, False]


def stream_ids(ids, x, batch):
    """Batches of (clip ids, embeddings), streamed again on every call."""
    return lambda: ((ids[s:s + batch], x[s:s + batch]) for s in range(0, len(x), batch))

"""Streaming spherical k-means, hierarchical k-means (Vo et al. 2024) and cluster-balanced sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

BatchSource = Callable[[], Iterable[np.ndarray]]  # each call streams the embeddings again, in the same order


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine geometry); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_direction(batches: BatchSource) -> np.ndarray:
    """The mean of the unit-length rows of a stream of [b, d] batches (one pass, memory O(d)); [0] if empty."""
    total, count = None, 0
    for batch in batches():
        x = normalize(batch).astype(np.float64)
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        count += len(x)
    return (total / count).astype(np.float32) if count else np.zeros(0, np.float32)


def centered(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Unit rows with `mean` (from mean_direction) taken away, scaled to unit length again: a barely trained
    encoder puts every clip in a narrow cone, and cosines measured from the cone's axis spread them out. A row at
    the mean itself keeps its own direction, so two such rows still count as identical."""
    x = normalize(x)
    if not len(mean):
        return x
    away = x - mean
    at_mean = np.linalg.norm(away, axis=1) < 1e-6
    return normalize(np.where(at_mean[:, None], x, away))


@dataclass(frozen=True)
class KMeansConfig:
    """Streaming k-means: one online mini-batch pass, then `passes - 1` streamed Lloyd passes."""

    k: int
    passes: int = 3
    seed: int = 0
    init_sample: int = 20_000  # k-means++ seeding on the first points of the stream


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [points[int(rng.integers(len(points)))]]
    closest = 1.0 - points @ centers[0]
    for _ in range(1, k):
        weights = np.maximum(closest, 0.0) ** 2
        total = weights.sum()
        pick = int(rng.choice(len(points), p=weights / total)) if total > 0 else int(rng.integers(len(points)))
        centers.append(points[pick])
        closest = np.minimum(closest, 1.0 - points @ points[pick])
    return np.stack(centers).astype(np.float32)


def assign(batch: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (by cosine) of each row, and that cosine similarity."""
    sims = normalize(batch) @ centroids.T
    labels = np.argmax(sims, axis=1)
    return labels.astype(np.int32), sims[np.arange(len(labels)), labels]


def _cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows of x, [k, d] float64 (a one-hot product: far faster than np.add.at)."""
    onehot = np.zeros((len(x), k), np.float32)
    onehot[np.arange(len(x)), labels] = 1.0
    return (onehot.T @ x).astype(np.float64)


def streaming_kmeans(batches: BatchSource, cfg: KMeansConfig) -> np.ndarray:
    """Spherical k-means over a stream of [b, d] batches in memory O(k * d + batch); returns [k', d] centroids
    (k' = min(k, number of points))."""
    rng = np.random.default_rng(cfg.seed)
    seed_rows: list[np.ndarray] = []
    have = 0
    for batch in batches():
        seed_rows.append(normalize(batch))
        have += len(batch)
        if have >= cfg.init_sample:
            break
    if not have:
        return np.zeros((0, 0), np.float32)
    seed_points = np.concatenate(seed_rows)[: cfg.init_sample]
    del seed_rows
    k = min(cfg.k, len(seed_points))
    centroids = _kmeans_pp(seed_points, k, rng)
    del seed_points
    counts = np.zeros(k, np.float64)
    # pass 1: online mini-batch updates (each centroid the running mean of what it has seen)
    for batch in batches():
        x = normalize(batch)
        labels, _ = assign(x, centroids)
        sums = _cluster_sums(x, labels, k)
        seen = np.bincount(labels, minlength=k).astype(np.float64)
        total = counts + seen
        moved = seen > 0
        centroids[moved] = ((centroids[moved] * counts[moved, None] + sums[moved]) / total[moved, None])
        counts = total
        centroids = normalize(centroids)
    # later passes: exact Lloyd steps, streamed
    for _ in range(cfg.passes - 1):
        sums = np.zeros_like(centroids, dtype=np.float64)
        seen = np.zeros(k, np.float64)
        for batch in batches():
            x = normalize(batch)
            labels, _ = assign(x, centroids)
            sums += _cluster_sums(x, labels, k)
            seen += np.bincount(labels, minlength=k)
        moved = seen > 0
        centroids[moved] = normalize(sums[moved])
    return centroids


def kmeans(points: np.ndarray, k: int, seed: int = 0, passes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """In-memory spherical k-means (for the small upper levels); returns centroids and labels."""
    points = normalize(points)
    centroids = streaming_kmeans(lambda: [points], KMeansConfig(k=k, passes=passes, seed=seed))
    labels, _ = assign(points, centroids)
    return centroids, labels


@dataclass(frozen=True)
class Hierarchy:
    """Cluster levels, finest first: parents[l][c] is the level-(l+1) cluster of level-l cluster c."""

    centroids: tuple[np.ndarray, ...]
    parents: tuple[np.ndarray, ...]


def hierarchical_kmeans(batches: BatchSource, ks: Sequence[int], seed: int = 0, passes: int = 3) -> Hierarchy:
    """Level 0 is streamed k-means over the points; each level above clusters the centroids of the one below."""
    base = streaming_kmeans(batches, KMeansConfig(k=ks[0], passes=passes, seed=seed))
    centroids = [base]
    parents = []
    for level, k in enumerate(ks[1:], start=1):
        upper, labels = kmeans(centroids[-1], k, seed=seed + level)
        centroids.append(upper)
        parents.append(labels)
    return Hierarchy(tuple(centroids), tuple(parents))


def allocate(sizes: Sequence[int], target: int) -> np.ndarray:
    """Split `target` as evenly as possible over groups of these sizes (water-filling: small groups give all
    they have, the rest share what is left; the remainder goes to the largest groups)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.zeros(len(sizes), np.int64)
    remaining = min(int(target), int(sizes.sum()))
    order = np.lexsort((np.arange(len(sizes)), sizes))  # ascending size, then index
    for position, group in enumerate(order):
        left = len(order) - position
        share = remaining // left
        out[group] = min(int(sizes[group]), share)
        remaining -= out[group]
    for group in order[::-1]:  # hand out the rounding remainder, largest groups first
        if remaining <= 0:
            break
        extra = min(remaining, int(sizes[group] - out[group]))
        out[group] += extra
        remaining -= extra
    return out


def balanced_sample(labels: np.ndarray, hierarchy: Hierarchy, target: int, rank: np.ndarray) -> np.ndarray:
    """A boolean mask choosing `target` items evenly top-down over the hierarchy; within a finest cluster the
    items with the lowest `rank` (the keep order) are taken."""
    labels = np.asarray(labels)
    n_levels = len(hierarchy.centroids)
    # level-l cluster of every item
    item_cluster = [labels]
    for parents in hierarchy.parents:
        item_cluster.append(parents[item_cluster[-1]])

    chosen = np.zeros(len(labels), bool)

    def split(members: np.ndarray, level: int, quota: int) -> None:
        if quota <= 0 or len(members) == 0:
            return
        if level < 0:
            picked = members[np.argsort(rank[members], kind="stable")[:quota]]
            chosen[picked] = True
            return
        groups = np.unique(item_cluster[level][members])
        parts = [members[item_cluster[level][members] == g] for g in groups]
        for part, share in zip(parts, allocate([len(p) for p in parts], quota)):
            split(part, level - 1, int(share))

    split(np.arange(len(labels)), n_levels - 1, target)
    return chosen


def cluster_sizes(labels: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Items per cluster (optionally only those where mask is true)."""
    labels = np.asarray(labels)
    if mask is not None:
        labels = labels[np.asarray(mask, bool)]
    return np.bincount(labels[labels >= 0], minlength=k)


def stream_rows(rows: np.ndarray, batch_size: int) -> BatchSource:
    """A BatchSource over an in-memory array, for tests and small runs."""
    return lambda: (rows[i:i + batch_size] for i in range(0, len(rows), batch_size))

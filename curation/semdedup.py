"""SemDeDup (Abbas et al. 2023): within each embedding cluster, drop items too similar to an item already kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation.balance import normalize


@dataclass(frozen=True)
class SemDedupConfig:
    """Cosine similarity above 1 - eps to a kept item of the same cluster makes an item a semantic duplicate."""

    eps: float = 0.05
    center: bool = True         # SemDeDup cosines measured from the survivors' mean direction (balance.centered)
    clusters: int = 0           # 0: about sqrt(items / 2), at least 1
    hierarchy: tuple[int, ...] = ()  # upper levels of the balancing hierarchy (cluster counts), coarse last
    target: int = 0             # clips to keep after balancing; 0: no balancing, every survivor is kept
    seed: int = 0
    batch_size: int = 4096
    passes: int = 3

    def clusters_for(self, items: int) -> int:
        return max(1, min(items, self.clusters or int(round(np.sqrt(max(items, 1) / 2)))))


def semdedup_cluster(embeddings: np.ndarray, eps: float) -> np.ndarray:
    """For items of one cluster in keep order: -1 where kept, else the position of the kept item it duplicates."""
    x = normalize(embeddings)
    duplicate_of = np.full(len(x), -1, np.int64)
    kept = np.empty_like(x)
    kept_at = np.empty(len(x), np.int64)
    count = 0
    for i in range(len(x)):
        if count:
            sims = kept[:count] @ x[i]
            j = int(np.argmax(sims))
            if sims[j] > 1.0 - eps:
                duplicate_of[i] = kept_at[j]
                continue
        kept[count], kept_at[count] = x[i], i
        count += 1
    return duplicate_of


def semdedup(embeddings: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    """Every item's duplicate (an index into embeddings) or -1 if kept; items are taken in array order within
    each cluster, so put them in keep order (earliest accepted, then quality) first."""
    labels = np.asarray(labels)
    duplicate_of = np.full(len(labels), -1, np.int64)
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        local = semdedup_cluster(embeddings[members], eps)
        hit = local >= 0
        duplicate_of[members[hit]] = members[local[hit]]
    return duplicate_of

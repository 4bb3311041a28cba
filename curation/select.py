"""The curation verdicts: per-clip analysis, then keep order, exact and near duplicates, SemDeDup and balance."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from alliance.errors import DecodeError
from curation.balance import (Hierarchy, KMeansConfig, assign, balanced_sample, centered, cluster_sizes, kmeans,
                              mean_direction, streaming_kmeans)
from curation.media import DecodedClip, decode_clip
from curation.neardup import NearDupIndex, NearDupMatch
from curation.quality import SIGNALS_VERSION, QualityConfig, QualitySignals, measure, quality_detail, quality_reason
from curation.semdedup import SemDedupConfig, semdedup_cluster
from curation.signature import NearDupConfig, Signature, signature

STAGES = ("ingest", "decode", "quality", "exact_dup", "near_dup", "semantic_dup", "balance")


@dataclass(frozen=True)
class CurateConfig:
    """Every setting of a curation run; saved next to its report."""

    quality: QualityConfig = QualityConfig()
    neardup: NearDupConfig = NearDupConfig()
    semantic: SemDedupConfig = SemDedupConfig()
    index: str = "main"  # near-duplicate index under indexes/neardup/{index}/

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClipAnalysis:
    """What the per-clip stage learned: signals and verdict, decoded-content hash, near-dup signature."""

    clip_id: str
    signals: QualitySignals | None = None
    content_hash: str = ""
    signature: Signature | None = None
    stage: str | None = None    # set when this clip is already refused: "ingest", "decode" or "quality"
    reason: str | None = None
    detail: str | None = None

    def work_columns(self) -> dict[str, Any]:
        """The columns the work table adds to a clip row."""
        return {
            "signals": self.signals.to_json() if self.signals else None,
            "content_hash": self.content_hash,
            "signature": self.signature.to_bytes() if self.signature else None,
            "stage": self.stage, "reason": self.reason, "detail": self.detail,
        }


def analyze_clip(row: dict[str, Any], data: bytes | None, cfg: CurateConfig) -> tuple[ClipAnalysis, DecodedClip | None]:
    """Decode one clip once and measure everything the later stages need; refusals come back as data."""
    clip_id, key = row["clip_id"], row.get("clip_key") or row["clip_id"]
    if (row.get("status") or "ingested") != "ingested":
        return ClipAnalysis(clip_id, stage="ingest", reason=str(row["status"]),
                            detail=f"{key}: ingest marked this clip {row['status']!r}; see the ingest rejections"), None
    if data is None:
        return ClipAnalysis(clip_id, stage="decode", reason="clip_missing",
                            detail=f"{key}: the clip file is not in the store; re-run ingest for its recording"), None
    try:
        clip = decode_clip(data, key)
    except DecodeError as e:
        return ClipAnalysis(clip_id, stage="decode", reason=e.reason, detail=str(e)), None
    source_side = min(int(row.get("source_width") or 0), int(row.get("source_height") or 0)) or None
    signals = measure(clip, source_short_side=source_side, gyro_rms=_number(row.get("imu_gyro_rms")),
                      accel_std=_number(row.get("imu_accel_std")))
    reason = quality_reason(signals, cfg.quality)
    sig = signature(clip, cfg.neardup)
    if reason:
        return ClipAnalysis(clip_id, signals, clip.content_hash, sig, "quality", reason,
                            quality_detail(reason, signals, cfg.quality, key)), clip
    return ClipAnalysis(clip_id, signals, clip.content_hash, sig), clip


def requalify(stage: str | None, reason: str | None, detail: str | None, signals: QualitySignals | None,
              clip_key: str, cfg: QualityConfig) -> tuple[str | None, str | None, str | None]:
    """The quality verdict again from stored signals under (possibly changed) thresholds, without decoding;
    refusals of other stages stand, and so does the verdict on signals measured by an older SIGNALS_VERSION (their
    figures mean something else: analyse again without --reuse-analysis to judge them by today's signals)."""
    if signals is None or stage not in (None, "quality") or signals.version != SIGNALS_VERSION:
        return stage, reason, detail
    again = quality_reason(signals, cfg)
    if again is None:
        return None, None, None
    return "quality", again, quality_detail(again, signals, cfg, clip_key)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


# --------------------------------------------------------------------------- keep order


def accepted_at(row: dict[str, Any]) -> str:
    """When the clip's recording was accepted, as far as the contract metadata says (ISO text sorts by time)."""
    try:
        meta = json.loads(row.get("recording_meta") or "{}")
    except json.JSONDecodeError:
        meta = {}
    if not isinstance(meta, dict):
        return ""
    delivery = meta.get("delivery") if isinstance(meta.get("delivery"), dict) else {}
    return str(meta.get("accepted_at") or delivery.get("accepted_at") or "")


def picture_quality(signals: QualitySignals) -> float:
    """One figure for how good a copy's picture is: its sharpness, less the share of pixels clipped to black or
    white (a brightened copy loses its highlights). Rounded, so copies that differ only in noise tie."""
    clipped = min(1.0, signals.dark_fraction + signals.bright_fraction)
    return round((signals.sharpness or 0.0) * (1.0 - clipped), 2)


def keep_order(row: dict[str, Any], signals: QualitySignals | None, accepted: str = "") -> tuple:
    """The best copy of a duplicate first: the larger source picture (pixels), then the longer clip, then the better
    picture (picture_quality), then the recording accepted first (`accepted`, else the contract metadata's; unknown
    acceptance sorts last, never first), then the delivery and the clip id (a stable tie)."""
    when = accepted or accepted_at(row)
    acceptance = (0, when) if when else (1, "")
    pixels = int(row.get("source_width") or 0) * int(row.get("source_height") or 0)
    if signals is None:
        return (-pixels, 0.0, 0.0, *acceptance, row.get("delivery") or "", row["clip_id"])
    return (-pixels, -round(signals.duration_s, 1), -picture_quality(signals), *acceptance,
            row.get("delivery") or "", row["clip_id"])


def clip_origin(clip_id: str) -> tuple[str, float] | None:
    """(recording id, start in seconds) of a clip id as `ingest.clips.clip_id` makes it (sha256-milliseconds[-fp]),
    or None for an id of another form."""
    parts = clip_id.split("-")
    if len(parts) < 2 or len(parts[0]) != 64 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]) / 1000.0


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """Kept, or the stage and reason that dropped the clip, the clip it duplicates and the cluster it fell in."""

    clip_id: str
    kept: bool
    stage: str | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    detail: str | None = None
    cluster: int = -1
    distance: float | None = None


@dataclass(frozen=True)
class Candidate:
    """The little the global stages need of one clip: its order, hashes and signature."""

    clip_id: str
    clip_key: str
    order: tuple
    content_hash: str
    signature: Signature | None
    stage: str | None
    reason: str | None
    detail: str | None
    t1: float | None = None  # the clip's end in its recording (seconds); None when unknown
    source: str = ""  # the upload the clip came from (file or store key), for messages


def _admit_within_recording(c: Candidate, spans: dict[str, tuple[str, float, float]], cfg: NearDupConfig):
    """Whether a near-duplicate match may drop `c`: always across recordings; inside one recording only a repeat
    (a loop, a segment uploaded twice) far enough in time from `c` and closer than the cross-recording bound."""
    origin = clip_origin(c.clip_id)
    if origin is None:
        return None
    recording, t0 = origin
    t1 = c.t1 if c.t1 is not None else t0

    def admit(match: NearDupMatch) -> bool:
        other = spans.get(match.clip_id) or (*(clip_origin(match.clip_id) or ("", 0.0)), None)
        if other[0] != recording:
            return True
        start = other[1]
        end = other[2] if other[2] is not None else start + (t1 - t0)
        gap = max(start, t0) - min(end, t1)
        return gap >= cfg.same_recording_gap_s and match.distance <= cfg.same_recording_max_hamming
    return admit


def decide_duplicates(candidates: Iterable[Candidate], index: NearDupIndex) -> dict[str, Verdict]:
    """Walk clips in keep order: earlier refusals stand; a clip with a known decoded-content hash or near an
    indexed clip is dropped naming that clip; the rest are kept and indexed. A clip an earlier run accepted
    stays accepted when it comes again from the same place (a new curation round over the same clips), and is a
    duplicate_recording when the same recording comes from another delivery. Windows of one recording that
    follow each other are one shot, not copies (NearDupConfig.same_recording_gap_s)."""
    verdicts: dict[str, Verdict] = {}
    candidates = sorted(candidates, key=lambda c: c.order)
    spans = {c.clip_id: (origin[0], origin[1], c.t1) for c in candidates
             if (origin := clip_origin(c.clip_id)) is not None}
    for c in candidates:
        if c.stage is not None:
            verdicts[c.clip_id] = Verdict(c.clip_id, False, c.stage, c.reason, None, c.detail)
            continue
        if c.clip_id in index.clip_ids:
            first_key = index.keys.get(c.clip_id, "")
            if first_key in ("", c.clip_key):
                verdicts[c.clip_id] = Verdict(c.clip_id, True)
            else:
                recording = (clip_origin(c.clip_id) or (c.clip_id,))[0]
                verdicts[c.clip_id] = Verdict(c.clip_id, False, "exact_dup", "duplicate_recording", c.clip_id,
                                              f"{c.source or c.clip_key}: the same bytes (recording {recording}) "
                                              f"were accepted by an earlier curation run as {first_key}; this "
                                              f"upload's clip is refused, that one stands")
            continue
        if c.content_hash in index.content:
            first = index.content[c.content_hash]
            verdicts[c.clip_id] = Verdict(c.clip_id, False, "exact_dup", "duplicate_content", first,
                                          f"{c.clip_key}: decodes to the same frames as clip {first}")
            continue
        match = index.query(c.signature, _admit_within_recording(c, spans, index.cfg))
        if match is not None:
            verdicts[c.clip_id] = Verdict(c.clip_id, False, "near_dup", "near_duplicate", match.clip_id,
                                          f"{c.clip_key}: {match.distance:.1f} of 63 hash bits from clip "
                                          f"{match.clip_id} at the best alignment", distance=match.distance)
            continue
        index.add(c.clip_id, c.content_hash, c.signature, c.clip_key)
        verdicts[c.clip_id] = Verdict(c.clip_id, True)
    return verdicts


EmbeddingBatches = Callable[[], Iterator[tuple[list[str], np.ndarray]]]  # (clip ids, [b, d]) per batch


@dataclass(frozen=True)
class SemanticOutcome:
    """What the semantic stages did: verdict changes, each survivor's cluster, and cluster sizes before/after."""

    verdicts: dict[str, Verdict]
    clusters: int
    sizes_before: list[int] = field(default_factory=list)
    sizes_after: list[int] = field(default_factory=list)
    upper_levels: tuple[int, ...] = ()


def semantic_stage(order: dict[str, int], batches: EmbeddingBatches, cfg: SemDedupConfig,
                   spill_dir: str | None = None) -> SemanticOutcome:
    """K-means over the survivors' embeddings (streamed), SemDeDup within each cluster in keep order (cosines
    from the survivors' mean direction when cfg.center), then hierarchical balancing to cfg.target. `order` maps
    each survivor to its keep rank; other ids are ignored."""
    def survivors() -> Iterator[np.ndarray]:
        for ids, emb in batches():
            mask = np.fromiter((i in order for i in ids), bool, len(ids))
            if mask.any():
                yield emb[mask]

    k = cfg.clusters_for(len(order))
    # clusters from the plain directions: centring would leave the commonest concept near the origin, its
    # directions mostly noise, and split it; SemDeDup's cosines are then measured from the mean direction
    centroids = streaming_kmeans(survivors, KMeansConfig(k=k, passes=cfg.passes, seed=cfg.seed))
    mean = mean_direction(survivors) if cfg.center and len(centroids) else np.zeros(0, np.float32)
    k = len(centroids)
    if k == 0:
        return SemanticOutcome({}, 0)
    ids_all: list[str] = []
    rank_list: list[int] = []
    label_list: list[int] = []
    verdicts: dict[str, Verdict] = {}
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix="semdedup-") as spill:
        files: dict[int, list[str]] = {}
        for ids, emb in batches():  # one pass: each survivor to its cluster's spill file, bounded memory
            keep = [j for j, i in enumerate(ids) if i in order]
            if not keep:
                continue
            labels, _ = assign(emb[keep], centroids)
            x = centered(emb[keep], mean)
            for cluster in np.unique(labels):
                rows = np.flatnonzero(labels == cluster)
                with open(os.path.join(spill, f"{cluster}.f32"), "ab") as f:
                    f.write(x[rows].astype(np.float32).tobytes())
                files.setdefault(int(cluster), []).extend(ids[keep[r]] for r in rows)
        dim = centroids.shape[1]
        cosine = "centred cosine" if cfg.center else "cosine"
        for cluster, members in sorted(files.items()):
            x = np.fromfile(os.path.join(spill, f"{cluster}.f32"), dtype=np.float32).reshape(-1, dim)
            rank = np.asarray([order[m] for m in members])
            by_rank = np.argsort(rank, kind="stable")
            duplicate_of = semdedup_cluster(x[by_rank], cfg.eps)
            for position, dup in enumerate(duplicate_of):
                member = members[by_rank[position]]
                if dup >= 0:
                    first = members[by_rank[dup]]
                    sim = float(x[by_rank[position]] @ x[by_rank[dup]])
                    verdicts[member] = Verdict(member, False, "semantic_dup", "semantic_duplicate", first,
                                               f"clip {member}: {cosine} {sim:.3f} to kept clip {first} in "
                                               f"cluster {cluster} (threshold {1 - cfg.eps:.3f})", cluster)
                else:
                    ids_all.append(member)
                    rank_list.append(order[member])
                    label_list.append(cluster)
    ranks = np.asarray(rank_list, np.int64)
    labels_all = np.asarray(label_list, np.int64)
    sizes_before = cluster_sizes(labels_all, k).tolist()
    hierarchy = Hierarchy((centroids,), ())
    if cfg.hierarchy:
        levels, parents = [centroids], []
        for level, upper_k in enumerate(cfg.hierarchy, start=1):
            upper, up_labels = kmeans(levels[-1], min(upper_k, len(levels[-1])), seed=cfg.seed + level)
            levels.append(upper)
            parents.append(up_labels)
        hierarchy = Hierarchy(tuple(levels), tuple(parents))
    chosen = (balanced_sample(labels_all, hierarchy, cfg.target, ranks) if cfg.target
              else np.ones(len(ids_all), bool))
    for member, cluster, keep in zip(ids_all, labels_all.tolist(), chosen.tolist()):
        if keep:
            verdicts[member] = Verdict(member, True, cluster=int(cluster))
        else:
            verdicts[member] = Verdict(member, False, "balance", "balanced_out", None,
                                       f"clip {member}: cluster {cluster} already gives its even share of the "
                                       f"{cfg.target} clips asked for", int(cluster))
    sizes_after = cluster_sizes(labels_all, k, chosen).tolist()
    return SemanticOutcome(verdicts, k, sizes_before, sizes_after, tuple(len(c) for c in hierarchy.centroids[1:]))


def merge(verdicts: dict[str, Verdict], semantic: SemanticOutcome | None) -> dict[str, Verdict]:
    """Duplicate verdicts updated by the semantic stages (which only see the clips kept so far)."""
    if semantic is None:
        return verdicts
    out = dict(verdicts)
    for clip_id, verdict in semantic.verdicts.items():
        out[clip_id] = replace(verdict, distance=out[clip_id].distance if clip_id in out else None)
    return out

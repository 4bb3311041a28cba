"""Near-duplicate clips: perceptual video signatures, an LSH banding index (incremental, persistent in the store)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from alliance.errors import AllianceError, StoreError
from alliance.store import ObjectStore
from curation.media import DecodedClip, luma, resize_area

HASH_BITS = 63  # 8x8 low-frequency DCT block without its DC term


@dataclass(frozen=True)
class NearDupConfig:
    """How signatures are made and when two clips count as near duplicates."""

    sample_fps: float = 3.0          # frames hashed per second, on a fixed grid from the clip's start
    phases: int = 4                  # a query is also hashed on grids shifted by 1/phases of a step: any trim aligns
    max_samples: int = 48
    scales: tuple[float, ...] = (1.0, 0.8)  # centre crops hashed per frame: a cropped copy matches the 0.8 view
    band_bits: tuple[int, ...] = (16, 16, 16, 15)  # LSH bands over the 63 hash bits (each at most 24 bits)
    min_band_hits: int = 3           # band collisions (from one query view) before a clip is compared in full;
    short_clip_samples: int = 8      # ... one fewer for clips of at most this many samples (they have fewer bands)
    max_bucket: int = 50_000         # a bucket this full says nothing (flat frames); it is ignored
    max_mean_hamming: float = 12.0   # mean bits apart over the best temporal alignment: near duplicate
    min_overlap: float = 0.5         # share of the shorter clip's samples the alignment must cover


@dataclass(frozen=True)
class Signature:
    """Per sampled frame, one 63-bit DCT hash per scale, plain and mirrored, on each shifted sampling grid:
    uint64 [phases, 2 (mirror), scales, frames]. Phase 0, plain, is what the index keeps."""

    hashes: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.hashes.shape[-1])

    @property
    def plain(self) -> np.ndarray:
        """[scales, frames]: the hashes an index stores."""
        return self.hashes[0, 0]

    @property
    def views(self) -> np.ndarray:
        """[phases * 2, scales, frames]: every view a query tries."""
        return self.hashes.reshape(-1, *self.hashes.shape[-2:])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.hashes.astype(np.uint64), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Signature":
        return cls(np.load(io.BytesIO(data), allow_pickle=False))


@dataclass(frozen=True)
class NearDupMatch:
    """The indexed clip a query duplicates, and how far apart they are (mean hamming bits)."""

    clip_id: str
    distance: float


_DCT = None


def _dct_matrix(n: int = 32) -> np.ndarray:
    global _DCT
    if _DCT is None:
        k = np.arange(n)[:, None]
        x = np.arange(n)[None, :]
        m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
        m[0] /= np.sqrt(2.0)
        _DCT = m.astype(np.float64)
    return _DCT


def _bits(coefficients: np.ndarray) -> np.ndarray:
    """[..., 63] coefficients -> uint64 hashes: bit i set when coefficient i is above the median."""
    median = np.median(coefficients, axis=-1, keepdims=True)
    bits = (coefficients > median).astype(np.uint64)
    weights = (np.uint64(1) << np.arange(HASH_BITS, dtype=np.uint64))
    return (bits * weights).sum(axis=-1, dtype=np.uint64)


def frame_coefficients(gray: np.ndarray, scale: float) -> np.ndarray:
    """The 63 low-frequency DCT coefficients of a centre crop of `scale` of a luma frame, at 32x32."""
    h, w = gray.shape
    ch, cw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    small = resize_area(gray[y0:y0 + ch, x0:x0 + cw], 32, 32).astype(np.float64)
    dct = _dct_matrix() @ small @ _dct_matrix().T
    return dct[:8, :8].reshape(-1)[1:]


_MIRROR_SIGN = np.array([(-1.0 if (i % 8) % 2 else 1.0) for i in range(64)])[1:]  # odd horizontal frequencies flip


def signature(clip: DecodedClip, cfg: NearDupConfig = NearDupConfig()) -> Signature:
    """Hash frames on a fixed time grid from the clip's start (and on grids shifted by fractions of a step), so a
    trimmed copy aligns with one of them at a whole-step offset."""
    start = float(clip.times[0])
    step = 1.0 / cfg.sample_fps
    grid = np.arange(0.0, max(clip.duration_s, 1e-9), step)[: cfg.max_samples]
    phases = max(1, cfg.phases)
    coefficients = np.empty((phases, len(cfg.scales), len(grid), HASH_BITS))
    cache: dict[int, np.ndarray] = {}
    for p in range(phases):
        for f, t in enumerate(grid + p * step / phases):
            index = int(np.argmin(np.abs(clip.times - start - t)))
            if index not in cache:
                gray = luma(clip.frames[index])
                cache[index] = np.stack([frame_coefficients(gray, scale) for scale in cfg.scales])
            coefficients[p, :, f] = cache[index]
    return Signature(np.stack([_bits(coefficients), _bits(coefficients * _MIRROR_SIGN)], axis=1))


def distance(query: Signature, indexed: np.ndarray, cfg: NearDupConfig) -> float:
    """Mean hamming bits at the best alignment of a query against one indexed clip's plain hashes [scales, frames]."""
    return float(distances(query, indexed[None], cfg)[0])


def distances(query: Signature, indexed: np.ndarray, cfg: NearDupConfig,
              lengths: np.ndarray | None = None) -> np.ndarray:
    """Best-alignment mean hamming of the query (every view) against C indexed clips [C, scales, frames]."""
    views = np.broadcast_to(query.views[None], (len(indexed), *query.views.shape))
    return view_distances(views, indexed, cfg, lengths)


def view_distances(views: np.ndarray, indexed: np.ndarray, cfg: NearDupConfig,
                   lengths: np.ndarray | None = None) -> np.ndarray:
    """Best-alignment mean hamming of query views [C, V, scales, Fq] against C indexed clips [C, scales, Fi]
    (zero-padded to `lengths`): the minimum over views, scale pairs and temporal offsets."""
    count, _, width = indexed.shape
    lengths = np.full(count, width) if lengths is None else np.asarray(lengths)
    fq = views.shape[-1]
    # [C, V, Sq, Si, Fq, Fi]
    ham = np.bitwise_count(views[:, :, :, None, :, None] ^ indexed[:, None, None, :, None, :]).astype(np.float32)
    # every temporal offset at once: cell (q, i) belongs to offset q - i; a one-hot product sums each diagonal
    offset = (np.arange(fq)[:, None] - np.arange(width)[None, :] + width - 1).ravel()
    onehot = np.zeros((fq * width, fq + width - 1), np.float32)
    onehot[np.arange(fq * width), offset] = 1.0
    valid = np.broadcast_to(np.arange(width)[None, None, :] < lengths[:, None, None], (count, fq, width))
    valid = valid.reshape(count, -1).astype(np.float32)  # [C, Fq*Fi]
    overlap = valid @ onehot  # [C, offsets]
    sums = (ham.reshape(*ham.shape[:4], -1) * valid[:, None, None, None, :]) @ onehot  # [C, V, Sq, Si, offsets]
    means = sums / np.maximum(overlap, 1.0)[:, None, None, None, :]
    need = np.maximum(2, np.ceil(cfg.min_overlap * np.minimum(fq, lengths)))
    means[np.broadcast_to((overlap < need[:, None])[:, None, None, None, :], means.shape)] = np.inf
    return means.reshape(count, -1).min(axis=1)


def _band_keys(hashes: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    """uint64 keys (band index above the band's bits, band value below) for each hash: [..., bands]."""
    keys = []
    shift = 0
    width = np.uint64(max(cfg.band_bits))
    for band, bits in enumerate(cfg.band_bits):
        value = (hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
        keys.append(value | (np.uint64(band) << width))
        shift += bits
    return np.stack(keys, axis=-1)


DENSE_KEYS = 1 << 22  # band key spaces up to this size get a directory (int64, 32 MiB at most)


def _directory(keys: np.ndarray) -> np.ndarray | None:
    """Where each possible key's bucket starts in the sorted keys (one more entry for the end), if the key space
    is small (bands of up to ~20 bits); lookups then cost no binary search over millions of entries."""
    space = int(keys[-1]) + 1 if len(keys) else 1
    if space > DENSE_KEYS:
        return None
    return np.searchsorted(keys, np.arange(space + 1, dtype=np.uint64), "left").astype(np.int64)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's hash-based unique is much slower on large uint64 arrays)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


@dataclass
class Segment:
    """A batch of indexed clips (one curation run): ids, content hashes, signatures and a sorted band table."""

    clip_ids: list[str]
    content_hashes: list[str]
    clip_keys: list[str]
    hashes: np.ndarray            # uint64 [n, scales, frames], zero-padded
    lengths: np.ndarray           # int32 [n]
    keys: np.ndarray = field(default=None)     # sorted uint64 band keys
    entries: np.ndarray = field(default=None)  # int32 clip position of each key
    directory: np.ndarray | None = field(default=None, repr=False)  # first position of each key, when dense

    def __post_init__(self) -> None:
        if self.keys is not None and self.directory is None:
            self.directory = _directory(self.keys)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start positions and bucket sizes of these keys: O(1) each through the directory, else binary search."""
        if self.directory is not None:
            inside = keys < np.uint64(len(self.directory) - 1)
            k = np.where(inside, keys, 0).astype(np.int64)
            lo = self.directory[k]
            return lo, np.where(inside, self.directory[k + 1] - lo, 0)
        lo = np.searchsorted(self.keys, keys, "left")
        return lo, np.searchsorted(self.keys, keys, "right") - lo

    @classmethod
    def build(cls, clip_ids: list[str], content_hashes: list[str], clip_keys: list[str],
              signatures: list[np.ndarray], cfg: NearDupConfig) -> "Segment":
        n = len(clip_ids)
        scales = len(cfg.scales)
        width = max([s.shape[1] for s in signatures], default=1)
        hashes = np.zeros((n, scales, width), np.uint64)
        lengths = np.zeros(n, np.int32)
        for i, plain in enumerate(signatures):
            hashes[i, :, : plain.shape[1]] = plain
            lengths[i] = plain.shape[1]
        segment = cls(list(clip_ids), list(content_hashes), list(clip_keys), hashes, lengths)
        segment._index(cfg)
        return segment

    def _index(self, cfg: NearDupConfig) -> None:
        n, scales, width = self.hashes.shape
        valid = np.arange(width)[None, None, :] < self.lengths[:, None, None]  # [n, 1, F]
        valid = np.broadcast_to(valid, self.hashes.shape)
        keys = _band_keys(self.hashes, cfg)  # [n, S, F, B]
        owner = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None, None, None], keys.shape)
        mask = np.broadcast_to(valid[..., None], keys.shape)
        # one entry per (key, clip), sorted by key: repeated frames would only inflate hit counts
        packed = _sorted_unique((keys[mask] << np.uint64(32)) | owner[mask].astype(np.uint64))
        self.keys = packed >> np.uint64(32)
        self.entries = (packed & np.uint64(0xFFFFFFFF)).astype(np.int32)
        self.directory = _directory(self.keys)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, clip_ids=np.asarray(self.clip_ids, dtype=str),
                 content_hashes=np.asarray(self.content_hashes, dtype=str),
                 clip_keys=np.asarray(self.clip_keys, dtype=str),
                 hashes=self.hashes, lengths=self.lengths, keys=self.keys, entries=self.entries)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Segment":
        z = np.load(io.BytesIO(data), allow_pickle=False)
        return cls([str(c) for c in z["clip_ids"]], [str(c) for c in z["content_hashes"]],
                   [str(c) for c in z["clip_keys"]], z["hashes"], z["lengths"], z["keys"], z["entries"])


class NearDupIndex:
    """Frozen segments (earlier runs, loaded from the store) plus the clips kept so far in this run."""

    def __init__(self, cfg: NearDupConfig = NearDupConfig(), segments: list[Segment] | None = None):
        self.cfg = cfg
        self.segments: list[Segment] = list(segments or [])  # committed by earlier runs, in commit order
        self.clip_ids: set[str] = {c for s in self.segments for c in s.clip_ids}
        self.content: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # clip id -> clip key, to show pairs side by side
        for segment in self.segments:
            for clip_id, content_hash, clip_key in zip(segment.clip_ids, segment.content_hashes, segment.clip_keys):
                self.content.setdefault(content_hash, clip_id)
                self.keys[clip_id] = clip_key
        self._live_ids: list[str] = []
        self._live_content: list[str] = []
        self._live_keys: list[str] = []
        self._live_hashes: list[np.ndarray] = []
        self._live_table: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return sum(len(s.clip_ids) for s in self.segments) + len(self._live_ids)

    def add(self, clip_id: str, content_hash: str, sig: Signature, clip_key: str = "") -> None:
        """Index a kept clip (its plain hashes only; queries try the mirrored view)."""
        position = len(self._live_ids)
        plain = sig.plain
        self._live_ids.append(clip_id)
        self._live_content.append(content_hash)
        self._live_keys.append(clip_key)
        self.keys[clip_id] = clip_key
        self._live_hashes.append(plain)
        self.clip_ids.add(clip_id)
        self.content.setdefault(content_hash, clip_id)
        for key in _sorted_unique(_band_keys(plain, self.cfg).ravel()).tolist():
            self._live_table.setdefault(key, []).append(position)

    def query(self, sig: Signature) -> NearDupMatch | None:
        """The closest indexed clip within the threshold (ties: the earliest indexed), or None. A clip becomes a
        candidate when one view of the query (a phase, plain or mirrored) collides with it in enough bands."""
        per_view = [_sorted_unique(_band_keys(view, self.cfg).ravel()) for view in sig.views]
        keys = np.concatenate(per_view)
        view_of = np.repeat(np.arange(len(per_view)), [len(k) for k in per_view])
        best: NearDupMatch | None = None
        for segment in self.segments:
            lo, sizes = segment.lookup(keys)
            keep = (sizes > 0) & (sizes <= self.cfg.max_bucket)
            if not keep.any():
                continue
            lo, sizes = lo[keep], sizes[keep]
            flat = np.repeat(lo - np.cumsum(np.r_[0, sizes[:-1]]), sizes) + np.arange(sizes.sum())
            pairs = segment.entries[flat].astype(np.int64) * len(per_view) + np.repeat(view_of[keep], sizes)
            best = self._better(best, self._verify(sig, self._hit(pairs, len(per_view), sig.frames), len(per_view),
                                                   segment.hashes, segment.lengths, segment.clip_ids))
        if self._live_ids:
            pairs_list = [position * len(per_view) + view
                          for key, view in zip(keys.tolist(), view_of.tolist())
                          if len(self._live_table.get(key, ())) <= self.cfg.max_bucket
                          for position in self._live_table.get(key, ())]
            coded = self._hit(np.asarray(pairs_list, np.int64), len(per_view), sig.frames)
            if len(coded):
                candidates = _sorted_unique(coded // len(per_view))
                width = max(self._live_hashes[i].shape[1] for i in candidates)
                stacked = np.zeros((len(candidates), len(self.cfg.scales), width), np.uint64)
                lengths = np.zeros(len(candidates), np.int32)
                for row, i in enumerate(candidates):
                    stacked[row, :, : self._live_hashes[i].shape[1]] = self._live_hashes[i]
                    lengths[row] = self._live_hashes[i].shape[1]
                found = self._verify(sig, coded, len(per_view), stacked, lengths, self._live_ids,
                                     at=np.searchsorted(candidates, coded // len(per_view)))
                best = self._better(best, found)
        return best

    def _hit(self, pairs: np.ndarray, views: int, samples: int) -> np.ndarray:
        """(position, view) pairs with enough band collisions (pairs coded as position * views + view)."""
        if len(pairs) == 0:
            return np.zeros(0, np.int64)
        need = self.cfg.min_band_hits - (1 if samples <= self.cfg.short_clip_samples else 0)
        pairs = np.sort(pairs)
        starts = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])
        hits = np.diff(np.r_[starts, len(pairs)])
        return pairs[starts][hits >= max(1, need)]

    def _verify(self, sig: Signature, coded: np.ndarray, views: int, hashes: np.ndarray, lengths: np.ndarray,
                ids: list[str], at: np.ndarray | None = None) -> NearDupMatch | None:
        """Full comparison of each colliding (clip, view) pair; the closest clip within the threshold wins.
        `at`: where each pair's clip lies in `hashes`, when that is not its position in `ids`."""
        if len(coded) == 0:
            return None
        rows, view = coded // views, coded % views
        at = rows if at is None else at
        d = view_distances(sig.views[view][:, None], hashes[at], self.cfg, lengths[at])
        first = np.lexsort((rows, d))[0]
        if d[first] > self.cfg.max_mean_hamming:
            return None
        return NearDupMatch(ids[int(rows[first])], float(d[first]))

    @staticmethod
    def _better(a: NearDupMatch | None, b: NearDupMatch | None) -> NearDupMatch | None:
        if a is None:
            return b
        if b is None:
            return a
        return b if b.distance < a.distance else a  # ties keep the earlier segment's clip

    def live_segment(self) -> Segment:
        """The clips added in this run as a frozen segment, ready to persist."""
        return Segment.build(self._live_ids, self._live_content, self._live_keys, self._live_hashes, self.cfg)


# --------------------------------------------------------------------------- persistence in the store


def index_prefix(name: str) -> str:
    return f"indexes/neardup/{name}"


class IndexChanged(AllianceError):
    """Another run committed to the near-duplicate index while this one was deciding against it."""


def load_index(store: ObjectStore, name: str, cfg: NearDupConfig = NearDupConfig(),
               before_run: str | None = None) -> NearDupIndex:
    """The index as committed by earlier runs; a re-run of `before_run` sees only what was there before it."""
    segments = []
    for entry in read_manifest(store, name)["segments"]:
        if entry["run"] == before_run:
            break
        segments.append(Segment.from_bytes(store.get_bytes(entry["key"])))
    return NearDupIndex(cfg, segments)


def read_manifest(store: ObjectStore, name: str) -> dict:
    """The committed segments in commit order: one create-once record per commit under commits/."""
    segments = []
    for info in store.list(f"{index_prefix(name)}/commits/"):
        try:
            segments.append(json.loads(store.get_bytes(info.key)))
        except json.JSONDecodeError as e:
            raise StoreError(f"{store.describe(info.key)}: near-duplicate index commit is not JSON ({e}); restore "
                             f"it from a backup or delete the index prefix to rebuild it") from e
    return {"index": name, "segments": segments}


def commit_segment(store: ObjectStore, name: str, run: str, segment: Segment, seen: int) -> str:
    """Write this run's segment, then its commit record, created only if no other run committed since the
    `seen` segments this run decided against (the record's name is its position); a re-run changes nothing."""
    committed = read_manifest(store, name)["segments"]
    key = f"{index_prefix(name)}/segments/{run}.npz"
    if any(entry["run"] == run for entry in committed):
        return key
    if len(committed) != seen:
        raise IndexChanged(f"near-duplicate index {name!r} gained {len(committed) - seen} segment(s) "
                           f"({', '.join(e['run'] for e in committed[seen:])}) while run {run!r} was deciding; "
                           f"re-run {run!r} so that it checks against them")
    store.put_bytes(key, segment.to_bytes())
    record = json.dumps({"run": run, "key": key, "clips": len(segment.clip_ids)}).encode()
    if not store.put_if_absent(f"{index_prefix(name)}/commits/{seen:08d}.json", record):
        raise IndexChanged(f"near-duplicate index {name!r}: another run committed position {seen} first; "
                           f"re-run {run!r} so that it checks against it")
    return key

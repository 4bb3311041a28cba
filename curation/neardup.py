"""Near-duplicate clips: an LSH banding index over signatures (segments, incremental within a run) and its queries;
stored by curation/index_store.py, signatures made by curation/signature.py."""

from __future__ import annotations
import hashlib
import io
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from curation.signature import HASH_BITS, NearDupConfig, Signature, view_distances

SEGMENT_FORMAT = 2  # 1: four fixed bands of 16 bits; 2: `bands` pseudo-random bit subsets, stored with the segment


@dataclass(frozen=True)
class NearDupMatch:
    """The indexed clip a query duplicates, and how far apart they are (mean hamming bits)."""

    clip_id: str
    distance: float


@lru_cache(maxsize=8)
def band_positions(bits: int, bands: int) -> np.ndarray:
    """Which hash bits each band reads, [bands, bits]: band b takes the bits ranked first by sha256("b:bit"), a
    choice fixed forever (no dependence on numpy's random streams, which stored segments must outlive)."""
    if not 1 <= bits <= 24 or not 1 <= bands <= 128:
        raise ValueError(f"near-dup bands: {bands} bands of {bits} bits; need 1-24 bits and 1-128 bands")
    rows = [sorted(sorted(range(HASH_BITS), key=lambda i: hashlib.sha256(f"{band}:{i}".encode()).digest())[:bits])
            for band in range(bands)]
    positions = np.asarray(rows, np.int64)
    positions.flags.writeable = False
    return positions


@lru_cache(maxsize=8)
def _band_tables(bits: int, bands: int) -> np.ndarray:
    """uint32 [bands, 8, 256]: what byte k of a hash, having value v, contributes to band b's key (the band's index
    included), so a key is the OR of 8 table reads instead of `bits` bit extractions."""
    tables = np.zeros((bands, 8, 256), np.uint32)
    values = np.arange(256)
    for band, positions in enumerate(band_positions(bits, bands)):
        tables[band] |= np.uint32(band << bits)
        for j, position in enumerate(positions.tolist()):
            byte, bit = divmod(position, 8)
            tables[band, byte, (values >> bit) & 1 == 1] |= np.uint32(1 << j)
    tables.flags.writeable = False
    return tables


def _band_keys(hashes: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    """uint32 keys [..., bands]: the band's index above its bits, the hash's bits at the band's positions below."""
    tables = _band_tables(cfg.band_bits, cfg.bands)
    octets = np.ascontiguousarray(hashes, dtype="<u8").reshape(-1).view(np.uint8).reshape(-1, 8)
    if len(octets) <= 4096:  # a query: every read in one gather
        reads = tables.reshape(-1)[_TABLE_OFFSETS[: cfg.bands][None] + octets[:, None, :]]
        return np.bitwise_or.reduce(reads, axis=2).reshape(*np.shape(hashes), cfg.bands)
    by_byte = np.ascontiguousarray(octets.T)  # a segment: band by band, no [n, bands, 8] temporaries
    keys = np.empty((cfg.bands, len(octets)), np.uint32)
    for band in range(cfg.bands):
        np.take(tables[band, 0], by_byte[0], out=keys[band])
        for byte in range(1, 8):
            keys[band] |= tables[band, byte][by_byte[byte]]
    return keys.T.reshape(*np.shape(hashes), cfg.bands)


_TABLE_OFFSETS = (np.arange(128)[:, None] * 2048 + np.arange(8)[None, :] * 256).astype(np.intp)  # [band, byte]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's hash-based unique is much slower on large uint64 arrays)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _key_space(cfg: NearDupConfig) -> int:
    return cfg.bands << cfg.band_bits


@dataclass
class Segment:
    """A batch of indexed clips (one curation run): ids, content hashes, signatures and their band table, one
    entry per distinct (band key, clip) sorted by key, found through a directory of where each key prefix
    (key >> shift) starts. A table covering a good part of the key space has one directory slot per key (shift 0)
    and needs no keys; a smaller one has about one slot per entry and keeps its keys to check each match."""

    clip_ids: list[str]
    content_hashes: list[str]
    clip_keys: list[str]
    hashes: np.ndarray            # uint64 [n, scales, frames], zero-padded
    lengths: np.ndarray           # int32 [n]
    entries: np.ndarray           # int32 clip position of each entry, sorted by key
    bands: np.ndarray             # the band positions the table was made with [bands, bits]
    directory: np.ndarray         # [prefixes + 1] where the entries of each key prefix start
    shift: int = 0                # prefix = key >> shift
    keys: np.ndarray | None = field(default=None, repr=False)  # uint32 sorted keys, when shift > 0

    def lookup(self, keys: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """The positions of the entries holding these keys, and which key (an index into `keys`) each holds;
        a prefix bucket of more than max_bucket entries says nothing (flat frames) and is skipped."""
        prefix = keys >> np.uint32(self.shift)
        lo = self.directory[prefix].astype(np.int64)
        sizes = self.directory[prefix + 1] - lo
        sizes[sizes > max_bucket] = 0
        flat = np.repeat(lo - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
        which = np.repeat(np.arange(len(keys)), sizes)
        if self.keys is None:
            return flat, which
        match = self.keys[flat] == keys[which]
        return flat[match], which[match]

    def sorted_keys(self) -> np.ndarray:
        """The table's keys in entry order (uint32), whichever way it is held."""
        if self.keys is not None:
            return self.keys
        counts = np.diff(self.directory)
        return np.repeat(np.arange(len(counts), dtype=np.uint32), counts)

    @classmethod
    def build(cls, clip_ids: list[str], content_hashes: list[str], clip_keys: list[str],
              signatures: list[np.ndarray], cfg: NearDupConfig) -> "Segment":
        """A segment of these clips' plain hashes [scales, frames] each."""
        hashes, lengths = _stack(signatures, len(cfg.scales))
        return cls.of(list(clip_ids), list(content_hashes), list(clip_keys), hashes, lengths, cfg)

    @classmethod
    def of(cls, clip_ids: list[str], content_hashes: list[str], clip_keys: list[str], hashes: np.ndarray,
           lengths: np.ndarray, cfg: NearDupConfig) -> "Segment":
        """A segment with its band table computed from the hashes."""
        n, _, width = hashes.shape
        packed = []
        for start in range(0, n, _BUILD_CLIPS):  # bounded temporaries: a few thousand clips at a time
            part = hashes[start:start + _BUILD_CLIPS]
            keys = _band_keys(part, cfg)  # [c, S, F, B]
            valid = np.arange(width)[None, None, :, None] < lengths[start:start + len(part), None, None, None]
            owner = np.arange(start, start + len(part), dtype=np.uint64)[:, None, None, None]
            # one entry per (key, clip): repeated frames would only inflate hit counts
            packed.append(_sorted_unique(((keys.astype(np.uint64) << np.uint64(32)) | owner)[
                np.broadcast_to(valid, keys.shape)]))
        merged = np.sort(np.concatenate(packed)) if packed else np.zeros(0, np.uint64)
        return cls.from_table(clip_ids, content_hashes, clip_keys, hashes, lengths,
                              (merged >> np.uint64(32)).astype(np.uint32),
                              (merged & np.uint64(0xFFFFFFFF)).astype(np.int32), cfg)

    @classmethod
    def from_table(cls, clip_ids: list[str], content_hashes: list[str], clip_keys: list[str], hashes: np.ndarray,
                   lengths: np.ndarray, keys: np.ndarray, entries: np.ndarray, cfg: NearDupConfig) -> "Segment":
        space = _key_space(cfg)
        shift = 0
        if len(keys) * 8 < space:  # a small table: about one directory slot per entry
            while (space >> shift) > max(len(keys), 1):
                shift += 1
        directory = _directory(keys >> np.uint32(shift) if shift else keys, ((space - 1) >> shift) + 1)
        return cls(clip_ids, content_hashes, clip_keys, hashes, lengths, entries,
                   band_positions(cfg.band_bits, cfg.bands), directory, shift, keys if shift else None)

    @classmethod
    def concat(cls, segments: list["Segment"], cfg: NearDupConfig) -> "Segment":
        """One segment of these, in order."""
        if not segments:
            return cls.build([], [], [], [], cfg)
        width = max(s.hashes.shape[2] for s in segments)
        hashes = np.concatenate([np.pad(s.hashes, ((0, 0), (0, 0), (0, width - s.hashes.shape[2])))
                                 for s in segments])
        return cls.of([c for s in segments for c in s.clip_ids], [c for s in segments for c in s.content_hashes],
                      [c for s in segments for c in s.clip_keys], hashes,
                      np.concatenate([s.lengths for s in segments]), cfg)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, format=np.int64(SEGMENT_FORMAT), bands=self.bands,
                 clip_ids=np.asarray(self.clip_ids, dtype=str),
                 content_hashes=np.asarray(self.content_hashes, dtype=str),
                 clip_keys=np.asarray(self.clip_keys, dtype=str),
                 hashes=self.hashes, lengths=self.lengths, keys=self.sorted_keys(), entries=self.entries)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, cfg: NearDupConfig) -> "Segment":
        """A stored segment. One written with other bands (or by format 1, four fixed bands) keeps its
        signatures: its band table is rebuilt from them in memory, nothing is decoded again."""
        z = np.load(io.BytesIO(data), allow_pickle=False)
        ids = [str(c) for c in z["clip_ids"]]
        content = [str(c) for c in z["content_hashes"]]
        clip_keys = [str(c) for c in z["clip_keys"]]
        hashes, lengths = z["hashes"], z["lengths"]
        same_bands = ("format" in z.files and int(z["format"]) == SEGMENT_FORMAT
                      and np.array_equal(z["bands"], band_positions(cfg.band_bits, cfg.bands)))
        if not same_bands:
            return cls.of(ids, content, clip_keys, hashes, lengths, cfg)
        return cls.from_table(ids, content, clip_keys, hashes, lengths, z["keys"], z["entries"], cfg)


_BUILD_CLIPS = 4096


def _directory(prefixes: np.ndarray, slots: int) -> np.ndarray:
    """[slots + 1]: where each prefix's run starts in the sorted `prefixes` (and the end), counted a million slots
    at a time so that no temporary is larger than that."""
    directory = np.zeros(slots + 1, np.int32 if len(prefixes) < 2**31 else np.int64)
    done = 0
    for first in range(0, slots, 1 << 20):
        last = min(slots, first + (1 << 20))
        end = int(np.searchsorted(prefixes, last))
        counts = np.bincount((prefixes[done:end] - first).astype(np.intp), minlength=last - first)
        directory[first + 1:last + 1] = np.cumsum(counts) + done
        done = end
    return directory


def _stack(plains: list[np.ndarray], scales: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain hashes [scales, frames] of clips as one zero-padded uint64 [n, scales, frames] and their lengths."""
    width = max([p.shape[1] for p in plains], default=1)
    hashes = np.zeros((len(plains), scales, width), np.uint64)
    lengths = np.zeros(len(plains), np.int32)
    for i, plain in enumerate(plains):
        hashes[i, :, : plain.shape[1]] = plain
        lengths[i] = plain.shape[1]
    return hashes, lengths


LIVE_BATCH = 1024  # clips added in this run are frozen into in-memory segments of this many, merged as they grow


class NearDupIndex:
    """Frozen segments (earlier runs, loaded from the store) plus the clips kept so far in this run: those are
    frozen into segments every LIVE_BATCH clips and merged pairwise as they grow (like a binary counter), so a
    run's memory is its band table, not a dictionary, and lookups stay array reads however many clips it adds."""

    def __init__(self, cfg: NearDupConfig = NearDupConfig(), segments: list[Segment] | None = None,
                 committed: int | None = None):
        self.cfg = cfg
        self.segments: list[Segment] = list(segments or [])  # committed by earlier runs, in commit order
        self.committed = len(self.segments) if committed is None else committed  # commit records they came from
        self.clip_ids: set[str] = {c for s in self.segments for c in s.clip_ids}
        self.content: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # clip id -> clip key, to show pairs side by side
        for segment in self.segments:
            for clip_id, content_hash, clip_key in zip(segment.clip_ids, segment.content_hashes, segment.clip_keys):
                self.content.setdefault(content_hash, clip_id)
                self.keys[clip_id] = clip_key
        self._live: list[Segment] = []  # this run's frozen clips, oldest first
        self._pending_ids: list[str] = []
        self._pending_content: list[str] = []
        self._pending_keys: list[str] = []
        self._pending_hashes: list[np.ndarray] = []
        self._pending_table: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return sum(len(s.clip_ids) for s in self.segments + self._live) + len(self._pending_ids)

    def add(self, clip_id: str, content_hash: str, sig: Signature, clip_key: str = "") -> None:
        """Index a kept clip (its plain hashes only; queries try the mirrored view)."""
        position = len(self._pending_ids)
        plain = sig.plain
        self._pending_ids.append(clip_id)
        self._pending_content.append(content_hash)
        self._pending_keys.append(clip_key)
        self._pending_hashes.append(plain)
        self.keys[clip_id] = clip_key
        self.clip_ids.add(clip_id)
        self.content.setdefault(content_hash, clip_id)
        for key in np.unique(_band_keys(plain, self.cfg)).tolist():
            self._pending_table.setdefault(key, []).append(position)
        if len(self._pending_ids) >= LIVE_BATCH:
            self._live.append(self._pending_segment())
            self._pending_ids, self._pending_content, self._pending_keys = [], [], []
            self._pending_hashes, self._pending_table = [], {}
            while len(self._live) > 1 and len(self._live[-2].clip_ids) <= len(self._live[-1].clip_ids):
                newer = self._live.pop()
                self._live.append(Segment.concat([self._live.pop(), newer], self.cfg))

    def _pending_segment(self) -> Segment:
        return Segment.build(self._pending_ids, self._pending_content, self._pending_keys, self._pending_hashes,
                             self.cfg)

    def query(self, sig: Signature, admit: Callable[[NearDupMatch], bool] | None = None) -> NearDupMatch | None:
        """The closest indexed clip within the threshold (ties: the earliest indexed) that `admit` accepts, or None.
        A clip becomes a candidate when one view of the query (a phase, plain or mirrored) collides with it in
        enough bands."""
        views = sig.views.shape[0]  # at most 256: a view's number takes the low byte of a coded key
        keys = _band_keys(sig.views, self.cfg)  # [V, S, F, B]
        view = np.arange(views, dtype=np.uint64)[:, None]
        tagged = (keys.reshape(views, -1).astype(np.uint64) << np.uint64(8)) | view
        coded = _sorted_unique(tagged.ravel())  # one per distinct (key, view)
        view_of = (coded & np.uint64(0xFF)).astype(np.int64)
        keys = (coded >> np.uint64(8)).astype(np.uint32)
        need = max(1, self.cfg.min_band_hits - (1 if sig.frames <= self.cfg.short_clip_samples else 0))
        best: NearDupMatch | None = None
        for segment in self.segments + self._live:
            flat, which = segment.lookup(keys, self.cfg.max_bucket)
            if not len(flat):
                continue
            pairs = segment.entries[flat].astype(np.int64) * views + view_of[which]
            best = self._better(best, self._verify(sig, _hits(pairs, need), views, segment.hashes, segment.lengths,
                                                   segment.clip_ids, admit=admit))
        if self._pending_ids:
            table = self._pending_table
            held = np.fromiter(table.keys() & set(keys.tolist()), np.uint32)  # few: Python touches only these
            rows = np.flatnonzero(np.isin(keys, held)).tolist()
            pairs_list = [position * views + view
                          for key, view in zip(keys[rows].tolist(), view_of[rows].tolist())
                          if len(table[key]) <= self.cfg.max_bucket for position in table[key]]
            coded = _hits(np.asarray(pairs_list, np.int64), need)
            if len(coded):
                candidates = _sorted_unique(coded // views)
                hashes, lengths = _stack([self._pending_hashes[i] for i in candidates], len(self.cfg.scales))
                found = self._verify(sig, coded, views, hashes, lengths, self._pending_ids,
                                     at=np.searchsorted(candidates, coded // views), admit=admit)
                best = self._better(best, found)
        return best

    def _verify(self, sig: Signature, coded: np.ndarray, views: int, hashes: np.ndarray, lengths: np.ndarray,
                ids: list[str], at: np.ndarray | None = None,
                admit: Callable[[NearDupMatch], bool] | None = None) -> NearDupMatch | None:
        """Full comparison of each colliding (clip, view) pair; the closest clip within the threshold that `admit`
        accepts wins. `at`: where each pair's clip lies in `hashes`, when that is not its position in `ids`."""
        if len(coded) == 0:
            return None
        rows, view = coded // views, coded % views
        at = rows if at is None else at
        d = view_distances(sig.views[view][:, None], hashes[at], self.cfg, lengths[at])
        for pick in np.lexsort((rows, d)).tolist():
            if d[pick] > self.cfg.max_mean_hamming:
                return None
            match = NearDupMatch(ids[int(rows[pick])], float(d[pick]))
            if admit is None or admit(match):
                return match
        return None

    @staticmethod
    def _better(a: NearDupMatch | None, b: NearDupMatch | None) -> NearDupMatch | None:
        if a is None:
            return b
        if b is None:
            return a
        return b if b.distance < a.distance else a  # ties keep the earlier segment's clip

    def live_segment(self) -> Segment:
        """The clips added in this run as one frozen segment, ready to persist."""
        return Segment.concat(self._live + [self._pending_segment()], self.cfg)


def _hits(pairs: np.ndarray, need: int) -> np.ndarray:
    """The distinct (position, view) pairs (coded as position * views + view) that occur at least `need` times."""
    if len(pairs) == 0:
        return np.zeros(0, np.int64)
    pairs = np.sort(pairs)
    starts = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])
    hits = np.diff(np.r_[starts, len(pairs)])
    return pairs[starts][hits >= need]


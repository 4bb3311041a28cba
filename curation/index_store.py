"""The near-duplicate index in the store: committed segments, one create-once commit record per run, loading them
back (coalesced), and refusing a commit when another run committed meanwhile."""

from __future__ import annotations

import json

from alliance.errors import AllianceError, StoreError
from alliance.store import ObjectStore
from curation.neardup import NearDupConfig, NearDupIndex, Segment

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
        segments.append(Segment.from_bytes(store.get_bytes(entry["key"]), cfg))
    return NearDupIndex(cfg, coalesce(segments, cfg), committed=len(segments))


COALESCE_CLIPS = 16_384


def coalesce(segments: list[Segment], cfg: NearDupConfig) -> list[Segment]:
    """Adjacent small segments (one per run) merged in memory, in order, into segments of up to COALESCE_CLIPS
    clips: a query costs a few lookups per segment, and an index fed by many small runs would have hundreds."""
    out: list[Segment] = []
    group: list[Segment] = []
    for segment in segments + [None]:
        size = sum(len(s.clip_ids) for s in group)
        if segment is None or size + len(segment.clip_ids) > COALESCE_CLIPS:
            if group:
                out.append(group[0] if len(group) == 1 else Segment.concat(group, cfg))
            group = []
        if segment is not None:
            group.append(segment)
    return out


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

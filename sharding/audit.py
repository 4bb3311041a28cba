"""Checking a committed version against its manifest and index, and comparing two versions."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date
from typing import BinaryIO, Callable, Collection

from alliance.errors import KeyNotFound
from alliance.store import ObjectStore
from alliance.tables import Rejection
from sharding.manifest import load_manifest, load_withdrawal
from sharding.tario import split_name
from sharding.versions import read_index


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n) if n is not None and n >= 0 else self.stream.read()
        self.digest.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on one version: what was checked and every problem found, as rejections."""

    ref: str
    shards: int
    samples: int
    bytes_read: int
    problems: tuple[Rejection, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_version(store: ObjectStore, name: str, version: int, *, decode: bool = False,
                   revoked: Collection[str] = (), today: date | None = None) -> VerifyReport:
    """Every shard present with its size and sha256, the index matching the manifest, every index row found
    in its shard at its offset and size with a parseable json and an mp4 (decoded too when decode=True); and no
    sample outside its consent: withdrawn (`revoked` recording ids), expired before `today`, or outside the purpose
    the version was sharded for."""
    ref = f"{name}@v{version}"
    manifest = load_manifest(store, name, version, allow_withdrawn=True)
    problems: list[Rejection] = []

    def problem(key: str, reason: str, detail: str) -> None:
        problems.append(Rejection(key, "verify", reason, detail))

    withdrawal = load_withdrawal(store, name, version)
    if withdrawal is not None:
        problem(ref, "withdrawn", f"{ref} was withdrawn after redaction; read {name}@v{withdrawal.successor}")
    try:
        index_data = store.get_bytes(manifest.index["key"])
    except KeyNotFound:
        problem(manifest.index["key"], "index_missing", f"{store.describe(manifest.index['key'])} is missing; "
                f"rebuild {ref} by re-running its shard command")
        return VerifyReport(ref, len(manifest.shards), 0, 0, tuple(problems))
    if hashlib.sha256(index_data).hexdigest() != manifest.index["sha256"]:
        problem(manifest.index["key"], "index_sha256_mismatch", f"{store.describe(manifest.index['key'])} does not "
                f"match the sha256 in the manifest; it was changed after commit: rebuild {ref}")
    rows = read_index(store, name, version).to_pylist()
    if len(rows) != manifest.samples:
        problem(manifest.index["key"], "index_count_mismatch",
                f"index has {len(rows)} rows, the manifest says {manifest.samples} samples; rebuild {ref}")
    _consent_problems(store, manifest, rows, revoked, today, problem)
    expected: dict[int, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        expected[row["shard"]][row["key"]] = row
    bytes_read = 0
    for position, entry in enumerate(manifest.shards):
        where = store.describe(entry.key)
        try:
            stream = store.open_read(entry.key)
        except KeyNotFound:
            problem(entry.key, "shard_missing", f"{where} is missing; rebuild {ref} by re-running its shard command")
            continue
        reader = _HashingReader(stream)
        seen: dict[str, dict[str, list[int]]] = defaultdict(dict)
        samples: dict[str, dict[str, bytes]] = defaultdict(dict)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:
                for info in archive:
                    key, ext = split_name(info.name)
                    if key is None or not info.isreg():
                        continue
                    seen[key][ext] = [info.offset_data, info.size]
                    if ext in ("json", "mp4"):
                        samples[key][ext] = archive.extractfile(info).read()
            reader.drain()
        except tarfile.TarError as e:
            problem(entry.key, "shard_unreadable", f"{where}: not a readable tar ({e}); rebuild {ref}")
            continue
        finally:
            stream.close()
        bytes_read += reader.count
        if reader.count != entry.bytes or reader.digest.hexdigest() != entry.sha256:
            problem(entry.key, "shard_sha256_mismatch", f"{where}: {reader.count} bytes, sha256 "
                    f"{reader.digest.hexdigest()[:12]}..., the manifest says {entry.bytes} bytes, "
                    f"{entry.sha256[:12]}...; the shard was changed after commit: rebuild {ref}")
        for key, row in expected.get(position, {}).items():
            spans = json.loads(row["members"])
            if seen.get(key) != spans:
                problem(key, "index_row_unreadable", f"{where}: sample {key} is not at the offsets the index gives "
                        f"({spans} vs {dict(seen.get(key, {}))}); the shard or index changed after commit: "
                        f"rebuild {ref}")
                continue
            try:
                json.loads(samples[key]["json"])
            except (KeyError, ValueError) as e:
                problem(key, "bad_json", f"{where}: {key}.json does not parse ({e}); rebuild {ref}")
            mp4 = samples[key].get("mp4", b"")
            if mp4[4:8] != b"ftyp":
                problem(key, "bad_mp4", f"{where}: {key}.mp4 does not start with an mp4 'ftyp' box; rebuild {ref}")
            elif decode:
                problem_detail = _decode_problem(mp4)
                if problem_detail:
                    problem(key, "mp4_decode_failed", f"{where}: {key}.mp4: {problem_detail}; rebuild {ref} "
                                f"from a good clip")
        extra = set(seen) - set(expected.get(position, {}))
        if extra:
            problem(entry.key, "unindexed_samples", f"{where}: {len(extra)} sample(s) not in the index, "
                    f"e.g. {sorted(extra)[0]}; rebuild {ref}")
    return VerifyReport(ref, len(manifest.shards), len(rows), bytes_read, tuple(problems))


def _consent_problems(store: ObjectStore, manifest, rows: list[dict], revoked: Collection[str], today: date | None,
                      problem: Callable[[str, str, str], None]) -> None:
    """One problem per recording the version holds outside its consent (reason consent_revoked, consent_expired or
    consent_scope), with what to run."""
    from sharding.consent import held_outside_consent, version_purpose

    withdrawal = load_withdrawal(store, manifest.name, manifest.version)
    purpose = version_purpose(store, manifest)
    fix = (f"read {manifest.name}@v{withdrawal.successor}" if withdrawal else
           "run `alliance consent sweep` to write a version without it")
    for held in held_outside_consent(rows, purpose, today=today, revoked=revoked):
        if held.reason == "consent_scope":
            fix_here = f"shard the selection again with --purpose {purpose}"
        else:
            fix_here = fix
        problem(held.recording, held.reason, f"{manifest.ref} holds {held.samples} sample(s) "
                f"({held.seconds / 3600:.4f} h) of partner {held.partner}'s recording {held.recording}: "
                f"{held.detail}; {fix_here}")


def _decode_problem(mp4: bytes) -> str | None:
    import av

    try:
        with av.open(io.BytesIO(mp4), format="mp4") as container:
            frames = sum(1 for _ in container.decode(video=0))
    except (av.error.FFmpegError, IndexError) as e:
        return str(e)
    return None if frames else "decodes to no frames"


@dataclass(frozen=True)
class VersionDiff:
    """Samples added and removed from A to B, by partner."""

    a: str
    b: str
    added: dict[str, int]
    removed: dict[str, int]
    unchanged: int
    added_hours: float
    removed_hours: float
    added_keys: tuple[str, ...]
    removed_keys: tuple[str, ...]


def diff_versions(store: ObjectStore, a: tuple[str, int], b: tuple[str, int]) -> VersionDiff:
    rows_a = {r["clip_id"]: r for r in read_index(store, *a).select(["clip_id", "partner", "seconds"]).to_pylist()}
    rows_b = {r["clip_id"]: r for r in read_index(store, *b).select(["clip_id", "partner", "seconds"]).to_pylist()}
    added = sorted(set(rows_b) - set(rows_a))
    removed = sorted(set(rows_a) - set(rows_b))
    return VersionDiff(
        f"{a[0]}@v{a[1]}", f"{b[0]}@v{b[1]}",
        dict(sorted(Counter(rows_b[k]["partner"] for k in added).items())),
        dict(sorted(Counter(rows_a[k]["partner"] for k in removed).items())),
        len(set(rows_a) & set(rows_b)),
        round(sum(rows_b[k]["seconds"] for k in added) / 3600, 6),
        round(sum(rows_a[k]["seconds"] for k in removed) / 3600, 6),
        tuple(added), tuple(removed))

"""Consent in datasets: which clips a purpose may use, which samples expired or were withdrawn, and the verdicts."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Collection, Iterable, Mapping

from alliance.store import ObjectStore
from alliance.tables import Rejection
from sharding.errors import DatasetError
from sharding.manifest import Manifest, load_manifest

# The contract's consent scopes (partners.contract.CONSENT_SCOPES, repeated here so that sharding does not load the
# contract's pydantic models); a test keeps the two equal. A purpose is one of them: a clip may serve a purpose
# when its consent scope lists that purpose, nothing else implies it ("research" does not cover "pretraining").
PURPOSES = ("pretraining", "evaluation", "research", "commercial")
# What `alliance train` needs from a version.
TRAINING_PURPOSE = "pretraining"
# The scope of a clip without a contract (a folder or store-prefix ingest): the operator's own data, any purpose.
NO_CONTRACT_SCOPE = "any"


class ConsentError(DatasetError):
    """A dataset version (or clip) used outside its consent: wrong purpose, expired or withdrawn."""


def today_utc() -> date:
    return datetime.now(timezone.utc).date()


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ConsentError(f"purpose {purpose!r}: use one of {', '.join(PURPOSES)} (the contract's consent scopes)")
    return purpose


def parse_consent(consent: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The consent of a sample (index column or sample json) as a dict; {} when it has none."""
    if consent in (None, ""):
        return {}
    if isinstance(consent, str):
        try:
            consent = json.loads(consent)
        except ValueError:
            return {"scope": consent}
    return dict(consent) if isinstance(consent, Mapping) else {"scope": consent}


def scopes(consent: str | Mapping[str, Any] | None) -> tuple[str, ...]:
    """The scopes a sample's consent lists; ("any",) for a clip without a contract (no scope at all)."""
    scope = parse_consent(consent).get("scope")
    if scope in (None, "", []):
        return (NO_CONTRACT_SCOPE,)
    if isinstance(scope, str):
        return (scope,)
    return tuple(str(s) for s in scope)


def expires(consent: str | Mapping[str, Any] | None) -> date | None:
    """The last day the consent holds (the contract's `expires`), or None when it never ends (no contract)."""
    value = parse_consent(consent).get("expires")
    if value in (None, ""):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return date.min  # an unreadable expiry is treated as expired: consent must be proven, never assumed


def covers(consent: str | Mapping[str, Any] | None, purpose: str) -> bool:
    found = scopes(consent)
    return NO_CONTRACT_SCOPE in found or purpose in found


def consent_reason(consent: str | Mapping[str, Any] | None, purpose: str, today: date) -> str | None:
    """The first reason a clip may not serve `purpose` today: consent_expired, consent_scope; or None."""
    ends = expires(consent)
    if ends is not None and ends < today:
        return "consent_expired"
    if not covers(consent, purpose):
        return "consent_scope"
    return None


def explain(reason: str, consent: str | Mapping[str, Any] | None, purpose: str) -> str:
    if reason == "consent_expired":
        return f"consent expired on {expires(consent)}"
    if reason == "consent_scope":
        return f"consent scope {', '.join(scopes(consent))} does not include {purpose}"
    return reason.replace("_", " ")


# --------------------------------------------------------------------------- shard time


@dataclass(frozen=True)
class ConsentFilter:
    """What `filter_rows` kept for a purpose, what it left out (one rejection per clip), and the manifest's note."""

    kept: list[dict[str, Any]]
    rejections: tuple[Rejection, ...]
    note: dict[str, Any]  # recorded under the manifest's source["consent"]

    @property
    def left_out(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for rejection in self.rejections:
            counts[rejection.reason] += 1
        return dict(sorted(counts.items()))


def filter_rows(rows: Iterable[Mapping[str, Any]], purpose: str, *, today: date | None = None,
                revoked: Collection[str] = ()) -> ConsentFilter:
    """Selection rows a dataset for `purpose` may hold: not revoked, consent not expired, scope listing the purpose
    (clips without a contract have scope "any"). Every clip left out becomes a rejection naming its partner and
    recording, with reason consent_revoked, consent_expired or consent_scope."""
    from sharding.plan import row_consent

    check_purpose(purpose)
    today = today or today_utc()
    kept: list[dict[str, Any]] = []
    rejections: list[Rejection] = []
    no_contract = 0
    earliest: date | None = None
    for row in rows:
        consent = row_consent(row)
        where = f"partner {row['partner']}, recording {row['recording_id']}"
        if row["recording_id"] in revoked:
            rejections.append(Rejection(row["clip_id"], "consent", "consent_revoked",
                                        f"{where}: consent withdrawn (revoked in the catalog)"))
            continue
        reason = consent_reason(consent, purpose, today)
        if reason is not None:
            rejections.append(Rejection(row["clip_id"], "consent", reason,
                                        f"{where}: {explain(reason, consent, purpose)}; a {purpose} dataset "
                                        f"may not hold it"))
            continue
        kept.append(dict(row))
        if scopes(consent) == (NO_CONTRACT_SCOPE,):
            no_contract += 1
        ends = expires(consent)
        if ends is not None and (earliest is None or ends < earliest):
            earliest = ends
    note = {"purpose": purpose, "rule": "a clip's consent scope lists the purpose; consent not expired or revoked "
                                        "on the day of sharding",
            "no_contract_scope": NO_CONTRACT_SCOPE, "no_contract_samples": no_contract,
            "earliest_expiry": earliest.isoformat() if earliest else None}
    return ConsentFilter(kept, tuple(rejections), note)


def rejections_key(name: str, version: int) -> str:
    """Where a shard run lists the clips it left out (outside datasets/, which gc keeps to committed content)."""
    return f"reports/shards/{name}/v{version}/rejections.jsonl"


def write_rejections(store: ObjectStore, name: str, version: int, rejections: Iterable[Rejection]) -> str:
    key = rejections_key(name, version)
    body = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in rejections)
    store.put_bytes(key, body.encode())
    return key


# --------------------------------------------------------------------------- reading a version


def version_purpose(store: ObjectStore, manifest: Manifest) -> str | None:
    """The purpose a version was sharded for; a redacted version inherits its parent's. None: sharded before
    purposes were recorded (then only its samples' scopes tell)."""
    seen = set()
    while manifest.ref not in seen:
        seen.add(manifest.ref)
        consent = manifest.source.get("consent")
        if isinstance(consent, dict) and consent.get("purpose"):
            return str(consent["purpose"])
        parent = manifest.source.get("redaction_of")
        if parent is None:
            return None
        manifest = load_manifest(store, manifest.name, int(parent), allow_withdrawn=True)
    return None


@dataclass(frozen=True)
class HeldRecording:
    """A recording a version holds that it may not: why, how many samples and seconds."""

    partner: str
    recording: str
    reason: str  # consent_revoked, consent_expired, consent_scope
    detail: str
    samples: int
    seconds: float


def held_outside_consent(rows: Iterable[Mapping[str, Any]], purpose: str | None, *, today: date | None = None,
                         revoked: Collection[str] = ()) -> list[HeldRecording]:
    """Recordings among index rows (partner, recording_id, consent, seconds) that are revoked, expired or (when a
    purpose is given) outside it; one entry per recording, sorted by partner and recording."""
    today = today or today_utc()
    found: dict[str, list] = {}
    for row in rows:
        recording = row["recording_id"]
        if recording in revoked:
            reason, detail = "consent_revoked", "consent withdrawn"
        else:
            reason = consent_reason(row["consent"], purpose or PURPOSES[0], today)
            if reason == "consent_scope" and purpose is None:
                reason = None
            if reason is None:
                continue
            detail = explain(reason, row["consent"], purpose or "")
        entry = found.setdefault(recording, [row["partner"], reason, detail, 0, 0.0])
        entry[3] += 1
        entry[4] += float(row.get("seconds") or 0.0)
    return [HeldRecording(p, r, reason, detail, n, s)
            for r, (p, reason, detail, n, s) in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]))]


def describe_held(held: list[HeldRecording], limit: int = 3) -> str:
    """'glassco: ab12cd34ef56 (consent expired on 2024-01-01), ...; robofleet: ...' with at most `limit` per partner."""
    by_partner: dict[str, list[HeldRecording]] = defaultdict(list)
    for entry in held:
        by_partner[entry.partner].append(entry)
    parts = []
    for partner, entries in sorted(by_partner.items()):
        shown = ", ".join(f"{e.recording[:12]} ({e.detail})" for e in entries[:limit])
        more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
        parts.append(f"{partner}: {shown}{more}")
    return "; ".join(parts)


def require_purpose(store: ObjectStore, name: str, version: int, purpose: str = TRAINING_PURPOSE, *,
                    today: date | None = None, revoked: Collection[str] = ()) -> Manifest:
    """NAME@vN if it may be used for `purpose` today, else ConsentError naming the partners and recordings.

    A version sharded for another purpose is refused as a whole; any version is refused while it holds a sample
    whose consent does not list the purpose, has expired, or (given `revoked`) was withdrawn."""
    from sharding.versions import read_index

    check_purpose(purpose)
    manifest = load_manifest(store, name, version)
    rows = read_index(store, name, version).select(["partner", "recording_id", "consent", "seconds"]).to_pylist()
    sharded_for = version_purpose(store, manifest)
    if sharded_for is not None and sharded_for != purpose:
        partners = sorted({r["partner"] for r in rows})
        recordings = sorted({r["recording_id"] for r in rows})
        raise ConsentError(
            f"{manifest.ref} was sharded for {sharded_for}, not {purpose}: its {len(recordings)} recording(s) of "
            f"{', '.join(partners) or 'no partner'} (e.g. {', '.join(r[:12] for r in recordings[:3])}) were chosen "
            f"for {sharded_for} only; shard the selection again with `alliance pipeline shard --purpose {purpose}`")
    successor = redacted_successor(store, manifest)
    if successor is not None:
        removed = set((successor.redaction or {}).get("revoked_recordings", ()))
        gone = [HeldRecording(r["partner"], r["recording_id"], "redacted", "redacted out", 1, r["seconds"])
                for r in rows if r["recording_id"] in removed]
        raise ConsentError(
            f"{manifest.ref} was redacted into {successor.ref}: it holds {len(gone)} sample(s) of recordings whose "
            f"consent was withdrawn or expired ({describe_held(_per_recording(gone))}); train on {successor.ref}")
    held = held_outside_consent(rows, purpose, today=today, revoked=revoked)
    if held:
        partners = sorted({h.partner for h in held})
        raise ConsentError(
            f"{manifest.ref} may not be used for {purpose}: it holds {sum(h.samples for h in held)} sample(s) of "
            f"{len(held)} recording(s) of {len(partners)} partner(s) outside their consent: {describe_held(held)}; "
            f"run `alliance consent sweep` (expired or withdrawn consent) or shard again with "
            f"`alliance pipeline shard --purpose {purpose}`")
    return manifest


def redacted_successor(store: ObjectStore, manifest: Manifest) -> Manifest | None:
    """The newest version redacted from this one (by `datasets redact` or the consent sweep), if any."""
    from sharding.manifest import latest_version

    found = None
    for version in range(manifest.version + 1, (latest_version(store, manifest.name) or 0) + 1):
        later = load_manifest(store, manifest.name, version, allow_withdrawn=True)
        if later.source.get("redaction_of") == manifest.version:
            found = later
    return found


def _per_recording(entries: list[HeldRecording]) -> list[HeldRecording]:
    merged: dict[str, HeldRecording] = {}
    for e in entries:
        before = merged.get(e.recording)
        merged[e.recording] = e if before is None else HeldRecording(
            e.partner, e.recording, e.reason, e.detail, before.samples + 1, before.seconds + e.seconds)
    return sorted(merged.values(), key=lambda h: (h.partner, h.recording))

"""The validation report a partner reads: a pydantic model (JSON) and one self-contained HTML page rendered from it."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

CREDIT = "recording.credit"  # the ledger: one audit event per recording a partner is credited with

# How to fix each refusal, in the partner's words; every reason the validator can give is here.
FIXES: dict[str, str] = {
    "file_missing": "upload the file (re-run `alliance deliver`, it resumes), or remove it from the manifest",
    "size_mismatch": "the stored file's size differs from the manifest: re-hash the file and deliver again",
    "sha256_mismatch": "the bytes changed in transit or after hashing: re-run `alliance deliver` to re-hash and re-send",
    "oversize_upload": "more bytes arrived than the manifest declares: re-hash the file and deliver again",
    "empty_file": "the file has zero bytes: export the recording again",
    "not_video": "the bytes are not a video container (mp4/mov, mkv/webm, avi, mpeg-ts): export it as a video",
    "no_video_stream": "the container holds no video stream: export the video track",
    "truncated": "the file ends early (an interrupted copy or export): copy or export it again",
    "corrupt": "the container or stream is damaged: export the recording again",
    "resolution_too_large": "the frame size is above the limit: downscale to at most 7680 px per side",
    "decode_timeout": "the file took too long to probe: re-encode it (H.264 or H.265 in mp4)",
    "decode_failed": "no frame could be decoded: re-encode it (H.264 or H.265 in mp4)",
    "too_short": "too few frames: deliver recordings of at least half a second",
    "unsupported_codec": "the video codec has no decoder here: re-encode it (H.264 or H.265 in mp4 is safest)",
    "corrupt_frames": "frames decode with errors (damaged data): copy or export the recording again",
    "resolution_out_of_bounds": "deliver between 32 and 7680 pixels per side",
    "fps_out_of_bounds": "deliver between 1 and 240 frames per second",
    "duration_out_of_bounds": "deliver recordings between 0.5 s and 4 h; split longer ones",
    "duration_mismatch": "the measured length differs from duration_s in the manifest: correct duration_s or omit it",
    "sensor_unreadable": "export the sensor stream as CSV with a header row, or as a 2-D float .npy",
    "sensor_columns": "make the manifest's columns match the file's header (names and count)",
    "timestamps_not_monotonic": "timestamps must strictly increase: sort the rows and drop repeated samples",
    "rate_mismatch": "the measured sample rate differs from rate_hz by more than 10%: correct rate_hz",
    "nan_run": "a gap of missing samples is longer than 0.1 s: fill or cut the gap, or split the recording",
    "sensor_rejected": "one of this recording's sensor files was refused: fix it (see its row) and deliver again",
    "consent_expired": "renew the consent and set consent.expires to the new date",
    "duplicate_entry": "list each file once in the manifest",
    "already_delivered": "nothing to do: you delivered these exact bytes before; the earlier recording stands",
    "recording_revoked": "you withdrew consent for these exact bytes before: leave them out, or contact us",
}


def fix_for(reason: str) -> str:
    return FIXES.get(reason, "see the detail; contact the data team if it is unclear")


class Problem(BaseModel):
    """One refusal of one file."""

    reason: str
    detail: str
    fix: str


class FileReport(BaseModel):
    """One delivered file: its verdict, what was measured, and every problem found."""

    path: str
    kind: str  # recording, sensor
    recording: str  # the recording path it belongs to (itself for a recording)
    verdict: str  # accepted, rejected
    bytes: int
    sha256: str
    recording_id: str | None = None  # the catalog id (sha256) of an accepted recording
    facts: dict[str, Any] = Field(default_factory=dict)
    problems: list[Problem] = Field(default_factory=list)


class CheckReport(BaseModel):
    """One expectation of the suite and how many files failed it."""

    check: str
    success: bool
    failing: int
    status: str = ""  # pass, fail, or "not measured" (no file had the facts this check reads, e.g. all refused)

    def shown(self) -> str:
        if self.status:
            return self.status
        return "pass" if self.success else ("fail" if self.failing else "not measured")


def privacy_treatment(faces_allowed: bool, audio_allowed: bool) -> dict[str, str]:
    """What ingest does to every clip of a recording under these contract flags, in the partner's words."""
    return {
        "faces": ("kept as delivered: the contract sets faces_allowed = true" if faces_allowed else
                  "hidden in every frame of every clip (detected and mosaiced before the clip is encoded; "
                  "a clip where this cannot run is refused, never stored in clear)"),
        "audio": ("dropped: clips carry the picture only (audio_allowed = true is recorded, no audio is kept yet)"
                  if audio_allowed else "dropped: clips carry the picture only"),
        "container metadata": "dropped: location, device make, model and serial, creation time and user data "
                              "never reach a clip",
    }


class DeliveryReport(BaseModel):
    """Everything the validation of one delivery found, in the order a partner reads it."""

    partner: str
    delivery: str
    delivery_id: str
    contract_version: str
    suite_version: str
    status: str  # accepted, partial, rejected
    validated_at: datetime
    recordings_accepted: int
    recordings_rejected: int
    reasons: dict[str, int]
    delivery_problems: list[Problem] = Field(default_factory=list)
    files: list[FileReport]
    checks: list[CheckReport]
    report_keys: dict[str, str] = Field(default_factory=dict)
    privacy: dict[str, str] = Field(default_factory=dict)  # privacy_treatment of the contract, for every recording


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;
padding:0 1rem}h1{font-size:1.6rem;margin:0 0 .2rem}h2{font-size:1.15rem;margin:2rem 0 .6rem}
.meta{color:#5b6472}.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;font-weight:600;color:#fff}
.accepted{background:#1f8a4c}.rejected{background:#c0392b}.partial{background:#d68910}
.cards{display:flex;gap:1rem;margin:1.2rem 0}.card{flex:1;border:1px solid #dde1e7;border-radius:.6rem;padding:.8rem}
.card b{font-size:1.6rem;display:block}table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border-bottom:1px solid #e6e9ee;padding:.45rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f6f9}tr.bad td{background:#fdf1f0}code{background:#f1f3f6;padding:0 .25rem;border-radius:.2rem}
.reason{font-family:ui-monospace,monospace;font-weight:600;color:#a93226}.fix{color:#1d5a8a}.ok{color:#1f8a4c}
.facts{color:#5b6472;font-size:12.5px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _facts(facts: dict[str, Any]) -> str:
    shown = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items() if v is not None]
    return _e(", ".join(shown))


def render_html(report: DeliveryReport) -> str:
    """One HTML file with its styles inline: no script, no fonts or images fetched, readable offline."""
    rows = []
    for file in report.files:
        if file.problems:
            problems = "".join(
                f"<div><span class='reason'>{_e(p.reason)}</span>: {_e(p.detail)}<br>"
                f"<span class='fix'>How to fix: {_e(p.fix)}</span></div>" for p in file.problems)
        else:
            problems = "<span class='ok'>passed every check</span>"
        rows.append(
            f"<tr class='{'bad' if file.verdict == 'rejected' else ''}'><td><code>{_e(file.path)}</code>"
            f"<div class='facts'>{_e(file.kind)}, {file.bytes} bytes</div></td>"
            f"<td><span class='badge {_e(file.verdict)}'>{_e(file.verdict)}</span></td>"
            f"<td>{problems}<div class='facts'>{_facts(file.facts)}</div></td></tr>")
    delivery_problems = "".join(
        f"<li><span class='reason'>{_e(p.reason)}</span>: {_e(p.detail)} <span class='fix'>How to fix: "
        f"{_e(p.fix)}</span></li>" for p in report.delivery_problems)
    reasons = "".join(f"<tr><td class='reason'>{_e(r)}</td><td>{n}</td><td class='fix'>{_e(fix_for(r))}</td></tr>"
                      for r, n in sorted(report.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    privacy = "".join(f"<tr><td>{_e(what)}</td><td>{_e(how)}</td></tr>" for what, how in report.privacy.items())
    css = {"pass": "ok", "fail": "reason"}
    checks = "".join(f"<tr><td><code>{_e(c.check)}</code></td><td class='{css.get(c.shown(), 'facts')}'>"
                     f"{_e(c.shown())}</td><td>{c.failing if c.shown() != 'not measured' else '&ndash;'}</td></tr>"
                     for c in report.checks)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Delivery {_e(report.delivery)}: {_e(report.status)}</title><style>{_CSS}</style></head><body>
<h1>Delivery <code>{_e(report.delivery)}</code> from {_e(report.partner)}
 <span class="badge {_e(report.status)}">{_e(report.status)}</span></h1>
<div class="meta">contract {_e(report.contract_version)}, expectation suite {_e(report.suite_version)},
 validated {_e(report.validated_at.strftime('%Y-%m-%d %H:%M:%S UTC'))}, delivery id <code>{_e(report.delivery_id)}</code></div>
<div class="cards"><div class="card"><b>{report.recordings_accepted}</b>recordings accepted</div>
<div class="card"><b>{report.recordings_rejected}</b>recordings refused</div>
<div class="card"><b>{len(report.files)}</b>files checked</div></div>
{f"<h2>Problems with the whole delivery</h2><ul>{delivery_problems}</ul>" if delivery_problems else ""}
{f"<h2>Refusals by reason</h2><table><tr><th>reason</th><th>files</th><th>how to fix</th></tr>{reasons}</table>"
 if reasons else "<h2>Every file passed</h2>"}
<h2>Files</h2><table><tr><th>file</th><th>verdict</th><th>why</th></tr>{''.join(rows)}</table>
{f"<h2>What happens to every accepted recording</h2><table><tr><th>what</th><th>in every clip</th></tr>{privacy}"
 f"</table>" if privacy else ""}
<h2>Expectation suite</h2><table><tr><th>expectation</th><th>result</th><th>failing files</th></tr>{checks}</table>
</body></html>
"""

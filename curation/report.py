"""The curation report: one static HTML page with inline SVG charts and JPEG thumbnails next to it."""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alliance.errors import DecodeError, StoreError
from alliance.store import ObjectStore
from curation.media import decode_clip, thumbnail_jpeg
from curation.quality import QualitySignals
from curation.select import STAGES, Candidate, CurateConfig, SemanticOutcome, Verdict

KEPT_SAMPLE = 8
PER_REASON_SAMPLE = 4
PAIRS = 8
SIGNALS = ("luma_mean", "dark_fraction", "bright_fraction", "letterbox_fraction", "frame_diff_median",
           "frame_diff_mean", "sharpness",
           "duration_s", "motion_speed", "motion_jitter", "gyro_rms", "accel_std")


@dataclass(frozen=True)
class ReportInput:
    """Everything the report shows; built by the pipeline after the verdicts."""

    run: str
    clips_run: str
    config: CurateConfig
    summary: dict[str, Any]
    candidates: list[Candidate]
    verdicts: dict[str, Verdict]
    signals: dict[str, QualitySignals]
    semantic: SemanticOutcome | None
    index_keys: dict[str, str] = field(default_factory=dict)  # clip id -> clip key, earlier runs included
    partners: dict[str, dict[str, int]] = field(default_factory=dict)
    repeats: int = 0  # rows of a recording delivered twice in this run: rejected, not in the selection


def report_prefix(run: str) -> str:
    return f"reports/curation/{run}"


def write_report(store: ObjectStore, data: ReportInput) -> str:
    """Render the page and its thumbnails under reports/curation/{run}/; returns the page's key."""
    prefix = report_prefix(data.run)
    keys = {c.clip_id: c.clip_key for c in data.candidates}
    keys.update({k: v for k, v in data.index_keys.items() if v})
    thumbs = _Thumbnails(store, prefix, keys)
    body = [
        f"<h1>Curation report <code>{_e(data.run)}</code></h1>",
        f"<p class=meta>clip table <code>{_e(data.clips_run)}</code> &middot; {data.summary['clips_in']} clips in, "
        f"<b>{data.summary['kept']} kept</b> &middot; semantic stages: {_e(data.summary['semantic'])}</p>",
        _section("Funnel", _funnel(data)),
        _section("Per partner", _partners(data.partners)),
        _section("Quality signals", _histograms(data)),
        _section("Kept clips (sample)", _gallery([c for c in _ordered(data) if data.verdicts[c].kept][:KEPT_SAMPLE],
                                                  data, thumbs)),
        _section("Dropped clips by reason (sample)", _dropped(data, thumbs)),
        _section("Near-duplicate pairs", _pairs(data, thumbs)),
        _section("Clusters before and after balancing", _clusters(data.semantic)),
    ]
    page = _PAGE.format(title=_e(f"Curation {data.run}"), body="\n".join(body))
    key = f"{prefix}/index.html"
    store.put_bytes(key, page.encode())
    return key


# --------------------------------------------------------------------------- sections


def _funnel(data: ReportInput) -> str:
    counts = Counter((v.stage, v.reason) for v in data.verdicts.values() if not v.kept)
    if data.repeats:
        counts[("exact_dup", "duplicate_recording")] += data.repeats
    total = len(data.verdicts) + data.repeats
    remaining = total
    rows = [("in", "", total, total)]
    for stage in STAGES:
        dropped = sum(n for (s, _), n in counts.items() if s == stage)
        remaining -= dropped
        if dropped:
            reasons = ", ".join(f"{r} {n}" for (s, r), n in sorted(counts.items()) if s == stage)
            rows.append((stage, reasons, dropped, remaining))
    width = 520
    svg = [f'<svg width="{width + 260}" height="{26 * len(rows) + 6}" role="img" aria-label="funnel">']
    for i, (stage, _, _, left) in enumerate(rows):
        w = 0 if total == 0 else max(1, int(width * left / total))
        svg.append(f'<rect x="140" y="{i * 26 + 4}" width="{w}" height="20" fill="#3b7dd8"/>'
                   f'<text x="132" y="{i * 26 + 19}" text-anchor="end">{_e("after " + stage if i else "in")}</text>'
                   f'<text x="{146 + w}" y="{i * 26 + 19}">{left}</text>')
    svg.append("</svg>")
    table = ["<table><tr><th>stage</th><th>dropped</th><th>reasons</th><th>remaining</th></tr>"]
    for stage, reasons, dropped, left in rows[1:]:
        table.append(f"<tr><td>{_e(stage)}</td><td>{dropped}</td><td>{_e(reasons)}</td><td>{left}</td></tr>")
    table.append("</table>")
    return "".join(svg) + "".join(table)


def _partners(partners: dict[str, dict[str, int]]) -> str:
    if not partners:
        return "<p>no clips</p>"
    total_kept = sum(p.get("kept", 0) for p in partners.values()) or 1
    rows = ["<table><tr><th>partner</th><th>clips in</th><th>kept</th><th>kept share</th>"
            "<th>share of the selection</th></tr>"]
    for name, tally in sorted(partners.items()):
        n, k = tally.get("in", 0), tally.get("kept", 0)
        rows.append(f"<tr><td>{_e(name)}</td><td>{n}</td><td>{k}</td><td>{k / max(n, 1):.0%}</td>"
                    f"<td>{_bar(k / total_kept)} {k / total_kept:.0%}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _histograms(data: ReportInput) -> str:
    thresholds = data.config.quality.thresholds()
    charts = []
    for name in SIGNALS:
        values = np.asarray([getattr(s, name) for s in data.signals.values() if getattr(s, name) is not None],
                            dtype=np.float64)
        if len(values) == 0:
            continue
        charts.append(_histogram(name, values, thresholds.get(name, [])))
    if not charts:
        return "<p>no clip was decoded, so there are no signals to show</p>"
    return '<p class=note>red lines: the thresholds of QualityConfig</p><div class=grid>' + "".join(charts) + "</div>"


def _histogram(name: str, values: np.ndarray, lines: list[float], bins: int = 24) -> str:
    lo = float(min(values.min(), *lines)) if lines else float(values.min())
    hi_values = float(np.quantile(values, 0.98)) if len(values) > 20 else float(values.max())
    hi = float(max(hi_values, *lines)) if lines else hi_values
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    w, h, pad = 300, 120, 20
    top = max(int(counts.max()), 1)
    parts = [f'<figure><svg width="{w}" height="{h + pad + 14}" role="img" aria-label="{_e(name)}">']
    bar_w = w / bins
    for i, c in enumerate(counts):
        bh = h * c / top
        parts.append(f'<rect x="{i * bar_w:.1f}" y="{h - bh + pad:.1f}" width="{bar_w - 1:.1f}" height="{bh:.1f}" '
                     f'fill="#7aa6e0"/>')
    for line in lines:
        x = (line - lo) / (hi - lo) * w
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad - 6}" y2="{h + pad}" stroke="#d22" '
                     f'stroke-width="2"/><text x="{min(max(x, 14), w - 14):.1f}" y="{pad - 9}" font-size="10" '
                     f'text-anchor="middle" fill="#d22">{_num(line)}</text>')
    parts.append(f'<text x="0" y="{h + pad + 12}" font-size="10">{_num(lo)}</text>'
                 f'<text x="{w}" y="{h + pad + 12}" font-size="10" text-anchor="end">{_num(hi)}</text>')
    parts.append(f'</svg><figcaption>{_e(name)} ({len(values)} clips)</figcaption></figure>')
    return "".join(parts)


def _dropped(data: ReportInput, thumbs: "_Thumbnails") -> str:
    by_reason: dict[tuple[str, str], list[str]] = {}
    for clip_id in _ordered(data):
        v = data.verdicts[clip_id]
        if not v.kept:
            by_reason.setdefault((v.stage, v.reason), []).append(clip_id)
    if not by_reason:
        return "<p>nothing was dropped</p>"
    out = ['<div class=grid>']
    for (stage, reason), ids in sorted(by_reason.items(), key=lambda kv: STAGES.index(kv[0][0])
                                       if kv[0][0] in STAGES else 99):
        out.append(f"<div class=group><h3>{_e(stage)} / {_e(reason)} ({len(ids)})</h3>")
        out.append(_gallery(ids[:PER_REASON_SAMPLE], data, thumbs))
        out.append("</div>")
    return "".join(out) + "</div>"


def _gallery(ids: list[str], data: ReportInput, thumbs: "_Thumbnails") -> str:
    if not ids:
        return "<p>none</p>"
    cells = []
    for clip_id in ids:
        v = data.verdicts[clip_id]
        caption = _why(v, thumbs.keys.get(clip_id, ""))
        cells.append(f'<figure class=thumb>{thumbs.img(clip_id)}<figcaption title="{_e(v.detail or "kept")}">'
                     f'{_e(_short(clip_id))}<br><small>{_e(caption[:160])}</small></figcaption></figure>')
    return '<div class=grid>' + "".join(cells) + "</div>"


KEEP_RULE = ("Which copy stays: the larger source picture, then the longer clip, then the better picture "
             "(sharpness less clipped pixels), then the recording accepted first (unknown acceptance last), "
             "then the delivery and clip id.")


def _pairs(data: ReportInput, thumbs: "_Thumbnails") -> str:
    pairs = [v for v in (data.verdicts[c] for c in _ordered(data))
             if v.duplicate_of and v.stage in ("near_dup", "exact_dup", "semantic_dup")]
    if not pairs:
        return "<p>no duplicates found</p>"
    rows = [f"<p class=note>{_e(KEEP_RULE)}</p><table class=pairs><tr><th>kept</th><th>dropped</th><th>why</th></tr>"]
    for v in pairs[:PAIRS]:
        rows.append(f"<tr><td>{thumbs.img(v.duplicate_of)}<br><small>{_e(_short(v.duplicate_of))}</small></td>"
                    f"<td>{thumbs.img(v.clip_id)}<br><small>{_e(_short(v.clip_id))}</small></td>"
                    f"<td>{_e(v.reason)}<br><small>{_e(_why(v, thumbs.keys.get(v.clip_id, '')))}</small></td></tr>")
    rows.append(f"</table><p class=note>{len(pairs)} pairs in all; the first {min(len(pairs), PAIRS)} shown</p>")
    return "".join(rows)


def _clusters(semantic: SemanticOutcome | None) -> str:
    if semantic is None or not semantic.sizes_before:
        return "<p><b>skipped</b>: no encoder was given, so there are no embeddings, no semantic dedup and no " \
               "balancing. Pass <code>--encoder CHECKPOINT_RUN</code> once training has exported one.</p>"
    before, after = semantic.sizes_before, semantic.sizes_after
    order = np.argsort(before)[::-1]
    w, h = 640, 160
    bar = w / max(len(before), 1)
    top = max(max(before), 1)
    svg = [f'<svg width="{w}" height="{h + 20}" role="img" aria-label="cluster sizes">']
    for i, c in enumerate(order):
        hb, ha = h * before[c] / top, h * after[c] / top
        svg.append(f'<rect x="{i * bar:.1f}" y="{h - hb:.1f}" width="{max(bar - 1, 1):.1f}" height="{hb:.1f}" '
                   f'fill="#c9d6ea"/><rect x="{i * bar + bar * 0.2:.1f}" y="{h - ha:.1f}" '
                   f'width="{max(bar * 0.6, 1):.1f}" height="{ha:.1f}" fill="#2a6bcc"/>')
    svg.append(f'<text x="0" y="{h + 14}" font-size="11">{len(before)} clusters, largest first; light: after '
               f'SemDeDup, dark: after balancing</text></svg>')
    levels = f"; upper levels: {', '.join(map(str, semantic.upper_levels))}" if semantic.upper_levels else ""
    return "".join(svg) + f"<p class=note>{sum(before)} clips before balancing, {sum(after)} after{levels}</p>"


# --------------------------------------------------------------------------- helpers


class _Thumbnails:
    """Middle-frame JPEGs of clips, written next to the page once each and linked relatively."""

    def __init__(self, store: ObjectStore, prefix: str, keys: dict[str, str]):
        self.store, self.prefix, self.keys = store, prefix, keys
        self.done: dict[str, str | None] = {}

    def img(self, clip_id: str) -> str:
        if clip_id not in self.done:
            self.done[clip_id] = self._make(clip_id)
        name = self.done[clip_id]
        if name is None:
            return '<div class=nothumb>no picture</div>'
        return f'<img src="{_e(name)}" alt="{_e(_short(clip_id))}" width="160">'

    def _make(self, clip_id: str) -> str | None:
        key = self.keys.get(clip_id)
        if not key:
            return None
        try:
            clip = decode_clip(self.store.get_bytes(key), key)
        except (StoreError, DecodeError):
            return None  # a clip that cannot be read is shown as such; its verdict says why
        name = f"thumbs/{clip_id}.jpg"
        self.store.put_bytes(f"{self.prefix}/{name}", thumbnail_jpeg(clip.frames[len(clip.frames) // 2]))
        return name


def _why(verdict: Verdict, clip_key: str) -> str:
    """The verdict's detail without the clip key it starts with (the thumbnail already names the clip)."""
    detail = verdict.detail or ("kept" if verdict.kept else verdict.reason or "")
    for prefix in (f"{clip_key}: " if clip_key else None, f"clip {verdict.clip_id}: "):
        if prefix and detail.startswith(prefix):
            return detail[len(prefix):]
    return detail


def _ordered(data: ReportInput) -> list[str]:
    return [c.clip_id for c in sorted(data.candidates, key=lambda c: c.order)]


def _short(clip_id: str) -> str:
    return clip_id if len(clip_id) <= 24 else f"{clip_id[:10]}…{clip_id[-12:]}"


def _num(x: float) -> str:
    return f"{x:.3g}"


def _bar(fraction: float) -> str:
    return f'<svg width="100" height="10"><rect width="{100 * fraction:.0f}" height="10" fill="#3b7dd8"/></svg>'


def _section(title: str, content: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{content}</section>"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1240px; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ font-size: 17px; border-bottom: 1px solid #ddd; }}
h3 {{ font-size: 14px; margin: 12px 0 4px; }}
code {{ background: #f3f3f3; padding: 0 3px; }} .meta, .note {{ color: #555; }}
table {{ border-collapse: collapse; margin: 8px 0; max-width: 100%; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }} figure {{ margin: 0; }}
figure.thumb {{ width: 170px; }} .group {{ margin-right: 18px; }}
figcaption {{ font-size: 11px; color: #444; word-break: break-all; }}
.nothumb {{ width: 160px; height: 90px; background: #eee; color: #888; display: flex; align-items: center;
  justify-content: center; }}
svg text {{ font-family: system-ui, sans-serif; font-size: 12px; }}
</style></head><body>
{body}
</body></html>
"""

"""Every hostile file through the media probe: refused with a stable reason, within the time bound, in bounded memory."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from ingest.errors import DECODE_REASONS, DecodeError
from ingest.probe import probe
from tests.reliability.conftest import FULL, record
from tests.reliability.harness import Measured, measure
from tests.reliability.hostile import HostileFile, good_video

TIMEOUT_S = 10.0 if FULL else 3.0  # the probe's per-file bound (its default is 10 s)
SLACK_S = 5.0  # killing and reaping the decoder child, on 2 busy cores
MEMORY_BOUND_MB = 512  # above what probing the good file takes


def _probe(path) -> Measured:
    return measure(functools.partial(probe, path, timeout_s=TIMEOUT_S), (DecodeError,), hang_after_s=TIMEOUT_S + 60)


@pytest.fixture(scope="module")
def outcomes(hostile_corpus) -> dict[str, tuple[HostileFile, Measured]]:
    """Each file probed once, in its own forked process whose peak memory is measured."""
    results = {h.name: (h, _probe(h.path)) for h in hostile_corpus}
    by_reason = Counter(m.reason or m.outcome for _, m in results.values())
    record("hostile_probe", files=len(results), by_reason=dict(by_reason),
           families=dict(Counter(h.family for h in hostile_corpus)),
           max_elapsed_s=max(m.elapsed_s for _, m in results.values()),
           max_peak_rss_mb=max(m.peak_rss_mb for _, m in results.values()))
    return results


@pytest.fixture(scope="module")
def good_peak_mb(hostile_corpus) -> float:
    control = _probe(good_video(hostile_corpus[0].path.parent))
    assert control.outcome == "ok", f"the control file was refused: {control.value}"
    return control.peak_rss_mb


def _table(rows) -> str:
    return "\n".join(f"  {h.name} ({h.family}): {m.outcome} {m.value if m.outcome != 'ok' else ''} "
                     f"in {m.elapsed_s:.1f} s, {m.peak_rss_mb:.0f} MB" for h, m in rows)


def test_the_corpus_covers_every_family(hostile_corpus):
    families = Counter(h.family for h in hostile_corpus)
    assert set(families) == {"empty", "truncated", "garbage", "wrong_magic", "corrupt_atom", "absurd_size",
                             "endless", "polyglot", "playlist", "link"}
    assert len(hostile_corpus) >= 70 and len({h.name for h in hostile_corpus}) == len(hostile_corpus)


def test_nothing_crashes_and_nothing_hangs(outcomes):
    bad = [(h, m) for h, m in outcomes.values() if m.outcome not in ("ok", "refused")]
    assert not bad, "the probe crashed or hung on:\n" + _table(bad)


def test_every_unreadable_file_is_refused_with_its_reason(outcomes):
    wrong = [(h, m) for h, m in outcomes.values()
             if not (m.outcome == "refused" and m.reason in h.reasons) and not (h.probe_may_accept and m.outcome == "ok")]
    assert not wrong, "refused for another reason, or accepted:\n" + _table(wrong)
    for h, m in outcomes.values():
        if m.outcome == "refused":
            name, reason, message = m.value
            assert name == "DecodeError" and reason in DECODE_REASONS
            assert str(h.path) in message, f"{h.name}: the refusal does not name the file: {message}"


def test_files_the_probe_accepts_are_reported_as_they_are(outcomes):
    """What the probe lets through (a real picture with odd metadata) must be measured honestly for the contract."""
    for h, m in outcomes.values():
        if m.outcome != "ok":
            continue
        result = m.value
        assert result.width * result.height <= 4096 * 4096, h.name
        assert result.frames is None and result.packets >= 1, h.name
    accepted = {h.name: m.value for h, m in outcomes.values() if m.outcome == "ok"}
    assert accepted["ts_timestamps_10_hours"].duration_s > 4 * 3600  # the contract's 4 h bound can see it
    assert accepted["sps_64x65520_in_ts"].height == 65520  # and its 7680-pixel side bound this one


def test_no_file_holds_the_probe_past_its_time_bound(outcomes):
    slow = [(h, m) for h, m in outcomes.values() if m.elapsed_s > TIMEOUT_S + SLACK_S]
    assert not slow, f"past the {TIMEOUT_S:g} s bound:\n" + _table(slow)


def test_no_file_reaches_a_file_outside_through_links_or_playlists(outcomes):
    for h, m in outcomes.values():
        if h.family in ("link", "playlist"):
            assert m.outcome == "refused", f"{h.name} was accepted: it reached a file outside"


def test_probe_memory_stays_bounded_on_absurd_declared_sizes(outcomes, good_peak_mb):
    """Regression (found here, fixed in 8977530): an H.264 SPS declaring 16000x16000 makes FFmpeg's stream-info probe (inside av.open) decode a
    frame at that size before the probe's max_pixels check runs: ~1.2 GB and the whole time bound for MPEG-TS and
    Matroska, ~700 MB for MP4. Fix: av.open(..., options={"max_pixels": str(max_pixels)}) in
    ingest.container.open_container (tried: 0.1 s, no extra memory), and a memory limit on the bounded child."""
    heavy = [(h, m) for h, m in outcomes.values() if m.peak_rss_mb > good_peak_mb + MEMORY_BOUND_MB]
    assert not heavy, f"more than {MEMORY_BOUND_MB} MB above the good file's {good_peak_mb:.0f} MB:\n" + _table(heavy)


def test_absurd_sizes_are_refused_as_too_large_not_as_timeouts(outcomes):
    """Regression (found here, fixed in 8977530), same cause as above: the 16000x16000 SPS in MPEG-TS/Matroska is refused as decode_timeout
    after the whole bound, not as resolution_too_large at once."""
    names = [n for n in outcomes if n.startswith("sps_16000px")]
    assert len(names) == 3
    reasons = {n: outcomes[n][1].reason for n in names}
    assert set(reasons.values()) == {"resolution_too_large"}, reasons

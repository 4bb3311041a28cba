"""Jobs to kill: ingest, shard writing and a partner delivery, each run in its own process with settings from ALLIANCE_*.

Usage: python -m tests.reliability.workers ingest FOLDER RUN [BEAM_FLAG...]
       python -m tests.reliability.workers shard NAME SELECTION_RUN TARGET_BYTES [--beam]
       python -m tests.reliability.workers deliver FOLDER URL TOKEN
Each prints `ready` when its real work starts (so a killer can aim past the interpreter's start) and `done ...` at
the end.
"""

from __future__ import annotations

import sys


def ingest(folder: str, run: str, *flags: str) -> None:
    from alliance.settings import load_settings
    from ingest.clips import ClipConfig
    from pipelines.ingest import run_ingest

    settings = load_settings()
    print("ready", flush=True)
    summary = run_ingest(settings, folder, run, list(flags), partner="crash", config=ClipConfig(clip_s=1.0))
    print(f"done {summary.clips_written} {summary.rejections}", flush=True)


def shard(name: str, selection_run: str, target: str, *rest: str) -> None:
    import pipelines.shard as shard_pipeline
    from alliance.settings import load_settings
    from alliance.store import open_store
    from pipelines.shard import run_shard
    from sharding.plan import ShardConfig

    settings = load_settings()
    slow = next((float(a.split("=", 1)[1]) for a in rest if a.startswith("--slow=")), 0.0)
    if slow:  # every write waits first, so a server can be restarted in the middle of the shard writes
        from tests.sharding.writer_proc import SlowStore

        shard_pipeline.open_store = lambda url=None, settings=None: SlowStore(open_store(url, settings), slow)
    print("ready", flush=True)
    flags = ["--direct_running_mode=in_memory"] if "--beam" in rest else []
    summary = run_shard(settings, name, selection_run, flags, config=ShardConfig(target_bytes=int(target), seed=4),
                        use_beam="--beam" in rest)
    print(f"done {summary.ref} {summary.samples}", flush=True)


def deliver(folder: str, url: str, token: str) -> None:
    from partners.client import deliver as deliver_folder

    print("ready", flush=True)
    verdict = deliver_folder(folder, url, token, wait_s=120)
    print(f"done {verdict.status} {verdict.recordings_accepted} {verdict.skipped_parts}", flush=True)


if __name__ == "__main__":
    jobs = {"ingest": ingest, "shard": shard, "deliver": deliver}
    jobs[sys.argv[1]](*sys.argv[2:])

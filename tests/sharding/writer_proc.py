"""A shard writer to kill: runs `run_shard` (no Beam) over a store slowed down so a test can SIGKILL it mid-way.

Usage: python -m tests.sharding.writer_proc NAME SELECTION_RUN DELAY_S TARGET_BYTES  (store and catalog from ALLIANCE_*)
"""

from __future__ import annotations

import sys
import time

import pipelines.shard as shard_pipeline
from alliance.settings import load_settings
from alliance.store import ObjectStore, ObjectWriter, open_store
from sharding.plan import ShardConfig


class SlowWriter(ObjectWriter):
    def __init__(self, inner: ObjectWriter, delay: float):
        self.inner, self.delay, self.key = inner, delay, inner.key

    def write(self, data: bytes) -> int:
        time.sleep(self.delay / 20)
        return self.inner.write(data)

    def close(self) -> None:
        time.sleep(self.delay)
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


class SlowStore(ObjectStore):
    """Every write waits `delay` seconds first, so the process is killed between well-defined steps."""

    def __init__(self, inner: ObjectStore, delay: float):
        self.inner, self.delay, self.url = inner, delay, inner.url

    def put_bytes(self, key, data):
        time.sleep(self.delay)
        self.inner.put_bytes(key, data)

    def put_if_absent(self, key, data):
        time.sleep(self.delay)
        return self.inner.put_if_absent(key, data)

    def open_write(self, key, *, sync=True):
        return SlowWriter(self.inner.open_write(key, sync=sync), self.delay)

    def sync(self, keys):
        self.inner.sync(keys)

    def get_bytes(self, key):
        return self.inner.get_bytes(key)

    def open_read(self, key):
        return self.inner.open_read(key)

    def exists(self, key):
        return self.inner.exists(key)

    def size(self, key):
        return self.inner.size(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def delete(self, key):
        self.inner.delete(key)

    def describe(self, key):
        return self.inner.describe(key)


def main(argv: list[str]) -> None:
    name, run, delay, target = argv[0], argv[1], float(argv[2]), int(argv[3])
    settings = load_settings()
    shard_pipeline.open_store = lambda url=None, settings=None: SlowStore(open_store(url, settings), delay)
    summary = shard_pipeline.run_shard(settings, name, run, config=ShardConfig(target_bytes=target, seed=4),
                                       use_beam=False)
    print(f"done {summary.ref} {summary.samples}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

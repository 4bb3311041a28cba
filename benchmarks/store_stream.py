"""Benchmark: stream a large file to S3 and back through ObjectStore; peak RSS and throughput vs boto3.upload_file.

Starts its own SeaweedFS server. Each measured path runs in a fresh child process so its peak RSS is its own.
Usage: python benchmarks/store_stream.py [--mb 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(mode: str, endpoint: str, key_id: str, secret: str, path: str) -> None:
    from alliance.settings import S3Settings
    from alliance.store import S3Store

    settings = S3Settings(endpoint_url=endpoint, access_key_id=key_id, secret_access_key=secret)
    store = S3Store("s3://bench/stream", settings)
    size = os.path.getsize(path)
    started = time.perf_counter()
    if mode == "ours":
        store.put_file(f"{mode}.bin", path)
        up = time.perf_counter() - started
        started = time.perf_counter()
        store.get_file(f"{mode}.bin", path + ".back")
    else:  # the baseline: boto3's managed transfer (threads, 8 MiB parts by default)
        store.client.upload_file(path, "bench", f"stream/{mode}.bin")
        up = time.perf_counter() - started
        started = time.perf_counter()
        store.client.download_file("bench", f"stream/{mode}.bin", path + ".back")
    down = time.perf_counter() - started
    same = os.path.getsize(path + ".back") == size
    os.unlink(path + ".back")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"up_s": up, "down_s": down, "peak_rss_mb": peak_mb, "round_trip_ok": same}))


def measure(mode: str, server, path: Path) -> dict:
    admin = server.identity("admin")
    out = subprocess.run([sys.executable, __file__, "--child", mode, server.endpoint_url, admin.access_key,
                          admin.secret_key, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--child", nargs=5, metavar=("MODE", "ENDPOINT", "KEY", "SECRET", "PATH"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from alliance.devservers import SeaweedS3
    from alliance.settings import S3Settings
    from alliance.store import S3Store

    with tempfile.TemporaryDirectory() as tmp, SeaweedS3(Path(tmp) / "weed") as server:
        admin = server.identity("admin")
        S3Store("s3://bench", S3Settings(endpoint_url=server.endpoint_url, access_key_id=admin.access_key,
                                         secret_access_key=admin.secret_key)).ensure_bucket()
        path = Path(tmp) / "payload.bin"
        with open(path, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1 << 20))
        baseline = measure("boto3", server, path)
        ours = measure("ours", server, path)
        mb = args.mb
        print(f"file: {mb} MB, SeaweedFS on loopback, each path in its own process")
        print(f"{'path':<28}{'up MB/s':>10}{'down MB/s':>11}{'peak RSS MB':>13}")
        for name, r in (("boto3 upload/download_file", baseline), ("ObjectStore put/get_file", ours)):
            print(f"{name:<28}{mb / r['up_s']:>10.1f}{mb / r['down_s']:>11.1f}{r['peak_rss_mb']:>13.1f}")
        print(f"upload throughput ratio ours/boto3:   {baseline['up_s'] / ours['up_s']:.2f}x")
        print(f"download throughput ratio ours/boto3: {baseline['down_s'] / ours['down_s']:.2f}x")
        verdict = "PASS" if ours["peak_rss_mb"] < 150 and ours["round_trip_ok"] else "FAIL"
        print(f"peak RSS of the streaming round trip: {ours['peak_rss_mb']:.1f} MB (goal < 150 MB): {verdict}")


if __name__ == "__main__":
    main()

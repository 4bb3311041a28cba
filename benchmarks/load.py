"""Load benchmark: N partners delivering at once to one delivery service on loopback (SeaweedFS S3, SQLite catalog).

Baseline measured in the same run: one partner delivering alone. Under load: throughput, p50/p99 latency of the API
calls (the service's own endpoints; part PUTs go to S3 and are timed apart), errors, the service's peak RSS (its
process and the probe children it starts), and a check that nothing accepted was lost or stored twice.
Figures are printed, never asserted. Run: .venv/bin/python benchmarks/load.py [--quick | --full] [--partners N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alliance.catalog import Catalog  # noqa: E402
from alliance.devservers import SeaweedS3, wait_for_port, free_port  # noqa: E402
from alliance.settings import S3Settings  # noqa: E402
from alliance.store import S3Store  # noqa: E402
from ingest.synth import ImuSpec, VideoSpec, imu_table, write_imu_csv, write_video  # noqa: E402
from partners.samples import delivery_toml  # noqa: E402



@dataclass
class PartnerRun:
    """What one partner's delivery did."""

    partner: str
    latencies: dict[str, list[float]] = field(default_factory=dict)  # API operation -> seconds per call
    put_s: list[float] = field(default_factory=list)  # part PUTs to S3
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    verdict: str = ""
    accepted: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0


def make_folder(root: Path, partner: str, files: int, frames: int, seed: int) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        write_video(root / f"{partner}-{i}.mp4", VideoSpec(width=128, height=128, frames=frames, fps=10,
                                                          scene="noise", seed=seed * 100 + i))
        write_imu_csv(root / f"{partner}-{i}.imu.csv", imu_table(ImuSpec(seconds=frames / 10, rate_hz=100)))
    (root / "delivery.toml").write_text(delivery_toml(
        delivery=f"{partner}-load", license="load-benchmark", device={"kind": "glasses", "model": "load", "mounting": "head"},
        scope=("pretraining",), expires="2099-01-01", imu_units=False))
    return root


def deliver_timed(url: str, token: str, folder: Path, partner: str, wait_s: float) -> PartnerRun:
    """The partner protocol, call by call, each API call timed (429s are retried after Retry-After)."""
    import httpx

    from partners.folder import build_manifest, load_metadata

    run = PartnerRun(partner)
    started = time.perf_counter()
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    store = httpx.Client(timeout=120)

    def call(op: str, method: str, path: str, **kw) -> httpx.Response:
        for _ in range(20):
            t = time.perf_counter()
            response = api.request(method, path, **kw)
            run.latencies.setdefault(op, []).append(time.perf_counter() - t)
            run.statuses[response.status_code] += 1
            if response.status_code != 429:
                break
            time.sleep(float(response.headers.get("retry-after", "1")))
        if response.status_code >= 400:
            run.errors.append(f"{op} {method} {path}: {response.status_code} {response.text[:200]}")
            raise RuntimeError(run.errors[-1])
        return response

    try:
        manifest = build_manifest(folder, load_metadata(folder), partner)
        status = call("open_delivery", "POST", "/deliveries", content=manifest.canonical_json(),
                      headers={"Content-Type": "application/json"}).json()
        for file in status["files"]:
            plan = call("plan_upload", "POST", f"/deliveries/{status['id']}/files/{file['index']}/upload").json()
            with open(folder / file["path"], "rb") as source:
                for part in plan["urls"]:
                    source.seek((part["part"] - 1) * plan["part_size"])
                    data = source.read(part["bytes"])
                    t = time.perf_counter()
                    response = store.put(part["url"], content=data)
                    run.put_s.append(time.perf_counter() - t)
                    if response.status_code >= 300:
                        run.errors.append(f"part PUT {file['path']}: {response.status_code}")
                        raise RuntimeError(run.errors[-1])
                    run.bytes_sent += len(data)
            call("complete_file", "POST", f"/deliveries/{status['id']}/files/{file['index']}/complete")
        call("complete_delivery", "POST", f"/deliveries/{status['id']}/complete")
        deadline = time.monotonic() + wait_s
        while True:
            status = call("get_delivery", "GET", f"/deliveries/{status['id']}").json()
            if status["status"] in ("accepted", "partial", "rejected", "error") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        run.verdict = status["status"]
        if status["status"] in ("accepted", "partial", "rejected"):
            report = call("get_report_json", "GET", f"/deliveries/{status['id']}/report.json").json()
            run.accepted = report["recordings_accepted"]
        call("list_recordings", "GET", "/recordings")
    except RuntimeError:
        run.verdict = run.verdict or "failed"
    finally:
        api.close()
        store.close()
    run.seconds = time.perf_counter() - started
    return run


class RssWatcher:
    """Polls the resident set of a process and its children; keeps the peak of their sum."""

    def __init__(self, pid: int, every_s: float = 0.05):
        import psutil

        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                total = self.process.memory_info().rss
                for child in self.process.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self.stop.wait(self.every_s)

    def __enter__(self) -> "RssWatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def summarize(runs: list[PartnerRun]) -> dict:
    api = [x for r in runs for values in r.latencies.values() for x in values]
    puts = [x for r in runs for x in r.put_s]
    by_op: dict[str, list[float]] = {}
    for r in runs:
        for op, values in r.latencies.items():
            by_op.setdefault(op, []).extend(values)
    statuses = sum((r.statuses for r in runs), Counter())
    return {"calls": len(api), "p50_ms": percentile(api, 50) * 1e3, "p99_ms": percentile(api, 99) * 1e3,
            "max_ms": max(api, default=0) * 1e3, "put_p50_ms": percentile(puts, 50) * 1e3,
            "put_p99_ms": percentile(puts, 99) * 1e3, "by_op": {op: (percentile(v, 50) * 1e3, percentile(v, 99) * 1e3,
                                                                   len(v)) for op, v in sorted(by_op.items())},
            "statuses": dict(sorted(statuses.items())), "errors": sum(len(r.errors) for r in runs),
            "bytes": sum(r.bytes_sent for r in runs), "accepted": sum(r.accepted for r in runs),
            "verdicts": dict(Counter(r.verdict for r in runs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 partners x 2 recordings (default)")
    parser.add_argument("--full", action="store_true", help="50 partners x 4 recordings")
    parser.add_argument("--partners", type=int, default=0, help="override the number of partners")
    args = parser.parse_args()
    partners, files, frames = (50, 4, 60) if args.full else (20, 2, 40)
    partners = args.partners or partners
    wait_s = 900.0

    from partners.accounts import add_partner

    with tempfile.TemporaryDirectory() as tmp, SeaweedS3(Path(tmp) / "seaweed") as seaweed:
        tmp = Path(tmp)
        started = time.perf_counter()
        folders = {f"p{k:02d}": make_folder(tmp / f"p{k:02d}", f"p{k:02d}", files, frames, k)
                   for k in range(partners + 1)}
        size = sum(p.stat().st_size for f in folders.values() for p in f.iterdir() if p.suffix in (".mp4", ".csv"))
        admin = seaweed.identity("admin")
        s3 = S3Settings(endpoint_url=seaweed.endpoint_url, access_key_id=admin.access_key,
                        secret_access_key=admin.secret_key)
        store = S3Store("s3://load/service", s3)
        store.ensure_bucket()
        catalog_url = f"sqlite:///{tmp / 'catalog.db'}"
        catalog = Catalog(catalog_url)
        catalog.prepare()
        tokens = {name: add_partner(catalog, name).token for name in folders}
        port = free_port()
        env = {**os.environ, "ALLIANCE_HOME": str(tmp / ".alliance"), "ALLIANCE_STORE": store.url,
               "ALLIANCE_CATALOG": catalog_url, "ALLIANCE_S3_ENDPOINT": seaweed.endpoint_url,
               "ALLIANCE_S3_ACCESS_KEY_ID": admin.access_key, "ALLIANCE_S3_SECRET_ACCESS_KEY": admin.secret_key,
               "GX_ANALYTICS_ENABLED": "false"}
        log = open(tmp / "service.log", "wb")
        service = subprocess.Popen([str(Path(sys.executable).parent / "alliance"), "serve", "--port", str(port),
                                    "--part-size-mb", "5"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, service, 60, tmp / "service.log", "delivery service")
            url = f"http://127.0.0.1:{port}"
            print(f"== {partners} partners x {files} recordings (+ IMU each), {size / 2**20:.1f} MiB in all "
                  f"(made in {time.perf_counter() - started:.1f}s); service pid {service.pid} on {url} ==")
            with RssWatcher(service.pid) as idle:
                time.sleep(1.0)
            baseline_rss = idle.peak
            with RssWatcher(service.pid) as alone_rss:
                alone = deliver_timed(url, tokens["p00"], folders["p00"], "p00", wait_s)
            base = summarize([alone])
            names = [n for n in folders if n != "p00"]
            started = time.perf_counter()
            with RssWatcher(service.pid) as load_rss, ThreadPoolExecutor(partners) as pool:
                runs = list(pool.map(lambda n: deliver_timed(url, tokens[n], folders[n], n, wait_s), names))
            wall = time.perf_counter() - started
        finally:
            service.terminate()
            service.wait(30)
            log.close()
        loaded = summarize(runs)
        lost, doubled = check_nothing_lost(catalog, store, folders)
        catalog.dispose()

    mib = loaded["bytes"] / 2**20
    print(f"\nbaseline, one partner alone: {alone.seconds:.2f}s, verdict {alone.verdict}, API p50 "
          f"{base['p50_ms']:.1f} ms p99 {base['p99_ms']:.1f} ms over {base['calls']} calls; service RSS "
          f"{alone_rss.peak / 2**20:.0f} MiB (idle {baseline_rss / 2**20:.0f} MiB)")
    print(f"load, {partners} partners at once: wall {wall:.1f}s, {partners / wall:.2f} deliveries/s, "
          f"{mib / wall:.2f} MiB/s uploaded, {loaded['calls'] / wall:.1f} API calls/s")
    print(f"API latency under load: p50 {loaded['p50_ms']:.1f} ms, p99 {loaded['p99_ms']:.1f} ms, max "
          f"{loaded['max_ms']:.0f} ms (p50 {loaded['p50_ms'] / base['p50_ms']:.1f}x, p99 "
          f"{loaded['p99_ms'] / base['p99_ms']:.1f}x the lone partner's)")
    print(f"part PUTs to S3: p50 {loaded['put_p50_ms']:.1f} ms, p99 {loaded['put_p99_ms']:.1f} ms")
    print(f"{'operation':<20}{'p50 ms':>10}{'p99 ms':>10}{'calls':>8}")
    for op, (p50, p99, n) in loaded["by_op"].items():
        print(f"{op:<20}{p50:>10.1f}{p99:>10.1f}{n:>8}")
    print(f"statuses {loaded['statuses']}; errors {loaded['errors']} (goal 0); verdicts {loaded['verdicts']}; "
          f"recordings accepted {loaded['accepted']} of {partners * files}")
    print(f"service peak RSS under load: {load_rss.peak / 2**20:.0f} MiB (process + probe children; idle "
          f"{baseline_rss / 2**20:.0f} MiB, {load_rss.peak / max(1, alone_rss.peak):.2f}x the lone delivery's)")
    print(f"nothing lost: {lost} accepted recordings missing or damaged in the store, {doubled} stored twice")
    print(json.dumps({"partners": partners, "wall_s": round(wall, 2), "p50_ms": round(loaded["p50_ms"], 1),
                      "p99_ms": round(loaded["p99_ms"], 1), "errors": loaded["errors"],
                      "peak_rss_mib": round(load_rss.peak / 2**20), "lost": lost, "doubled": doubled}))


def check_nothing_lost(catalog: Catalog, store: S3Store, folders: dict[str, Path]) -> tuple[int, int]:
    """Every delivered video is one accepted recording whose landing object has the right bytes."""
    from sqlalchemy import select

    from alliance.models import Recording

    with catalog.session() as session:
        rows = session.scalars(select(Recording)).all()
    by_id = Counter(r.id for r in rows)
    lost = 0
    for folder in folders.values():
        for video in folder.glob("*.mp4"):
            digest = hashlib.sha256(video.read_bytes()).hexdigest()
            row = next((r for r in rows if r.id == digest), None)
            if row is None or hashlib.sha256(store.get_bytes(row.key)).hexdigest() != digest:
                lost += 1
    return lost, sum(n - 1 for n in by_id.values() if n > 1)


if __name__ == "__main__":
    main()

"""Delivery benchmark: upload throughput through the service (presigned multipart) vs plain boto3, resume, refusals.

Everything runs here: a real SeaweedFS, the service on loopback, the partner client. Figures are printed, never asserted.
Run: .venv/bin/python benchmarks/delivery.py [--quick | --full]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alliance.catalog import Catalog  # noqa: E402
from alliance.devservers import SeaweedS3  # noqa: E402
from alliance.settings import S3Settings, Settings  # noqa: E402
from alliance.store import S3Store  # noqa: E402
from ingest.synth import ImuSpec, VideoSpec, imu_table, write_imu_csv, write_video  # noqa: E402
from partners.samples import delivery_toml  # noqa: E402

GLASSES = {"kind": "glasses", "model": "bench", "mounting": "head"}
METADATA = delivery_toml(license="benchmark", device=GLASSES, scope=("pretraining",), expires="2099-01-01",
                         imu_units=False)


def make_folder(root: Path, files: int, frames: int, seed: int = 0) -> Path:
    """`files` noise videos (they barely compress: about 43 KB a frame at 256x256) and one IMU file."""
    root.mkdir(parents=True)
    for i in range(files):
        write_video(root / f"rec-{i:02d}.mp4", VideoSpec(width=256, height=256, frames=frames, fps=10,
                                                        scene="noise", seed=seed + i))
    write_imu_csv(root / "rec-00.imu.csv", imu_table(ImuSpec(seconds=frames / 10, rate_hz=100)))
    (root / "delivery.toml").write_text(METADATA)
    return root


def bad_folder(root: Path, good: Path) -> Path:
    """One of each refusal a file can earn after upload."""
    root.mkdir(parents=True)
    data = good.read_bytes()
    write_video(root / "ok.mp4", VideoSpec(frames=30, seed=7))
    (root / "again.mp4").write_bytes(data)  # delivered before: refused as already_delivered, stored once
    (root / "empty.mp4").write_bytes(b"")
    (root / "cut.mp4").write_bytes(data[: len(data) // 3])
    (root / "photo.mp4").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 512)
    (root / "noise.mp4").write_bytes(hashlib.sha256(b"x").digest() * 300)
    (root / "ok2.mp4").write_bytes(data + b"\0")
    lines = imu_table(ImuSpec(seconds=4, rate_hz=100))
    lines[100:120, 0] = lines[100:120, 0][::-1]
    write_imu_csv(root / "ok2.imu.csv", lines)
    (root / "delivery.toml").write_text(METADATA)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 files of about 10 MiB (default)")
    parser.add_argument("--full", action="store_true", help="8 files of about 40 MiB")
    args = parser.parse_args()
    files, frames = (8, 1000) if args.full else (4, 250)

    from partners.accounts import add_partner
    from partners.client import deliver
    from partners.server import serving
    from partners.service import ServiceConfig

    with tempfile.TemporaryDirectory() as tmp, SeaweedS3(Path(tmp) / "seaweed") as seaweed:
        tmp = Path(tmp)
        started = time.perf_counter()
        folder = make_folder(tmp / "folder", files, frames)
        paths = sorted(folder.glob("*.mp4")) + sorted(folder.glob("*.csv"))
        total = sum(p.stat().st_size for p in paths)
        print(f"== {len(paths)} files, {total / 2**20:.1f} MiB (made in {time.perf_counter() - started:.1f}s); "
              f"SeaweedFS on loopback, 8 MiB parts, 4 parts in flight (the service path: across up to 4 files, "
              "each part with its SHA-256 signed into its URL) ==")

        admin = seaweed.identity("admin")
        s3 = S3Settings(endpoint_url=seaweed.endpoint_url, access_key_id=admin.access_key,
                        secret_access_key=admin.secret_key)
        store = S3Store("s3://bench/service", s3)
        store.ensure_bucket()

        # baseline: boto3's managed upload of the same files, same part size and concurrency
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
        started = time.perf_counter()
        for path in paths:
            store.client.upload_file(str(path), "bench", f"baseline/{path.name}", Config=transfer)
        boto3_s = time.perf_counter() - started

        settings = Settings(home=tmp / ".alliance")
        catalog = Catalog(settings.effective_catalog_url)
        catalog.prepare()
        token = add_partner(catalog, "bench").token
        config = ServiceConfig(rate_per_s=1000, rate_burst=5000)
        with serving(settings, config, store=store, catalog=catalog) as service:
            # phase 1: hash + open + upload + complete + validate; the upload window comes from the audit log
            started = time.perf_counter()
            verdict = deliver(folder, service.url, token)
            delivery_s = time.perf_counter() - started
            upload_window = _upload_window(catalog, verdict.delivery_id)

            # phase 2: an interrupted delivery of new files, resumed
            folder2 = make_folder(tmp / "folder2", 2, frames, seed=100)
            sent: list[int] = []

            def drop(path: str, part: int) -> None:
                sent.append(part)
                if len(sent) == 2:
                    raise KeyboardInterrupt

            try:
                deliver(folder2, service.url, token, on_part=drop, concurrency=1)
            except KeyboardInterrupt:
                pass
            resumed = deliver(folder2, service.url, token)
            size2 = sum(p.stat().st_size for p in folder2.glob("rec-*"))

            # phase 3: refusals by reason, and what the audit log counted
            refused = deliver(bad_folder(tmp / "bad", paths[0]), service.url, token)
            again = deliver(folder, service.url, token)  # a re-sent delivery: nothing moves
        from sqlalchemy import func, select

        from alliance.models import AuditEvent, Recording

        with catalog.session() as session:
            requests = session.scalar(select(func.count()).select_from(AuditEvent))
            recordings = session.scalar(select(func.count()).select_from(Recording))

    mib = total / 2**20
    print(f"\n{'':<38}{'seconds':>9}{'MiB/s':>9}")
    print(f"{'plain boto3 upload_file':<38}{boto3_s:>9.2f}{mib / boto3_s:>9.1f}")
    print(f"{'service: presigned parts (upload)':<38}{upload_window:>9.2f}{mib / upload_window:>9.1f}")
    print(f"{'service: whole delivery (hash..verdict)':<38}{delivery_s:>9.2f}{mib / delivery_s:>9.1f}")
    print(f"upload throughput ratio service/boto3: {boto3_s / upload_window:.2f}x "
          f"(whole delivery incl. hashing, probing and GX validation: {boto3_s / delivery_s:.2f}x)")
    print(f"verdict: {verdict.status}, {verdict.recordings_accepted} accepted, {verdict.recordings_rejected} refused")
    print(f"\nresume: interrupted after {len(sent)} parts; the resumed run skipped {resumed.skipped_parts} parts "
          f"and sent {resumed.uploaded_bytes / 2**20:.1f} of {size2 / 2**20:.1f} MiB; verdict {resumed.status}")
    print(f"re-sent delivery: status {again.status}, {again.uploaded_bytes} bytes sent, same id "
          f"{again.delivery_id == verdict.delivery_id}")
    reasons = Counter({reason: n for reason, n in refused.reasons.items()})
    print(f"\nrefusals by reason ({refused.status}, {refused.recordings_accepted} accepted): "
          + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())))
    print(f"requests recorded in the audit log: {requests}; recordings in the catalog: {recordings}")


def _upload_window(catalog: Catalog, delivery_id: str) -> float:
    """Seconds from the first upload plan to the last file completed, from the audit log the service keeps."""
    from sqlalchemy import select

    from alliance.models import AuditEvent

    with catalog.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.target == delivery_id)
                                 .order_by(AuditEvent.id)).all()
    plans = [e.at for e in events if e.action == "plan_upload"]
    completes = [e.at for e in events if e.action == "complete_file"]
    return (max(completes) - min(plans)).total_seconds()


if __name__ == "__main__":
    main()

"""Workers that share nothing with the launcher (issue 20): ingest, curate and shard through PortableRunner with an
EXTERNAL environment, served by Beam's SDK worker pool in processes of their own (own working directory, HOME and
temp dir, only the S3 endpoint and their own credentials in their environment), give what the local runner gives;
and no DoFn carries a secret."""

from __future__ import annotations

import base64
import bz2
import io
import os
import socket
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from apache_beam.internal import pickler

from alliance.catalog import Catalog
from alliance.models import Run
from alliance.settings import RunnerSettings, S3Settings, Settings, StoreAddress
from alliance.store import open_store
from curation.quality import QualityConfig
from curation.select import CurateConfig
from ingest.clips import ClipConfig
from ingest.synth import VideoSpec, write_video
from pipelines.curate import AnalyzeClip, ReadClipRows, WriteWorkPart
from pipelines.curate import build_pipeline as build_curate
from pipelines.curate import run_curate
from pipelines.ingest import run_ingest
from pipelines.ingest_graph import DeadLetters, FirstOfIdentical, IdentifyRecording, IngestWindow, PlanRecording
from pipelines.ingest_graph import build_pipeline as build_ingest
from pipelines.shard import run_shard, write_shard_dofn
from pipelines.sinks import WriteParts, WriteRejections, _WritePart, read_table
from pipelines.sources import RecordingRef
from tests.conftest import s3_settings

SECRET = "sEcReT-0123456789-never-pickled"
KEY_ID = "AKIA-launcher-only"
CATALOG_PASSWORD = "catalog-pw-never-pickled"
CONFIG = ClipConfig(clip_s=1.0, window_timeout_s=60)
CURATE = CurateConfig(quality=QualityConfig(min_short_side=32))  # the test's recordings are 64x64


def secret_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", store_url="s3://bucket/prefix",
                    catalog_url=f"postgresql+psycopg://alliance:{CATALOG_PASSWORD}@db:5432/catalog",
                    s3=S3Settings(endpoint_url="http://s3.internal:8333", access_key_id=KEY_ID,
                                  secret_access_key=SECRET))


def beam_pickled(obj) -> bytes:
    """The bytes Beam ships to its workers, unpacked (its pickler compresses and base64-encodes them)."""
    data = base64.b64decode(pickler.dumps(obj))
    for unpack in (bz2.decompress, zlib.decompress):
        try:
            return unpack(data)
        except (OSError, ValueError, zlib.error):
            continue
    return data


def assert_no_secret(obj, what: str, address: bool = True) -> None:
    data = beam_pickled(obj)
    for secret in (SECRET, KEY_ID, CATALOG_PASSWORD):
        assert secret.encode() not in data, f"{what} carries {secret!r} when pickled"
    assert not address or b"s3.internal" in data, f"{what} lost the endpoint it needs"


def test_no_dofn_carries_a_secret_only_the_store_address(tmp_path):
    from curation.embed import EncoderSpec
    from pipelines.embed_handler import StoreTorchScriptHandler  # torch only here

    settings = secret_settings(tmp_path)

    spec = EncoderSpec(run="r", frames=4, size=16, embed_dim=8, model_key="checkpoints/r/encoder.pt")
    dofns = {
        "IdentifyRecording": IdentifyRecording(settings, "r"), "FirstOfIdentical": FirstOfIdentical(settings, "r"),
        "PlanRecording": PlanRecording(settings, CONFIG, "r"), "IngestWindow": IngestWindow(settings, CONFIG, "r"),
        "DeadLetters": DeadLetters(settings, "r"), "_WritePart": _WritePart(settings, "t/p", None, "k"),
        "ReadClipRows": ReadClipRows(settings), "AnalyzeClip": AnalyzeClip(settings, CurateConfig(), None, 4),
        "WriteWorkPart": WriteWorkPart(settings, "r"), "WriteShard": write_shard_dofn()(settings, "ego", 1),
        "StoreTorchScriptHandler": StoreTorchScriptHandler(settings, spec),
        "WriteParts": WriteParts(settings, "t/p", None, "k"), "WriteRejections": WriteRejections(settings, "r"),
    }
    for name, dofn in dofns.items():
        assert_no_secret(dofn, name)

    # and the whole graphs, even built from the launcher's settings: every ParDo's function and arguments
    for build in (lambda p: build_ingest(p, settings, [RecordingRef("in/a.mp4", False, "p", "d")], "r", CONFIG),
                  lambda p: build_curate(p, settings, ["tables/clips/r/part-00000.parquet"], "c", CurateConfig(),
                                         None, 4)):
        pipeline = beam.Pipeline()
        build(pipeline)
        seen = []

        class Visitor(beam.pipeline.PipelineVisitor):
            def visit_transform(self, node):
                if isinstance(node.transform, beam.ParDo):
                    seen.append(node.full_label)
                    assert_no_secret((node.transform.fn, node.transform.args, node.transform.kwargs),
                                     node.full_label, address=False)

        pipeline.visit(Visitor())
        assert len(seen) >= 5


def test_a_worker_opens_the_address_with_its_own_credentials(monkeypatch):
    address = StoreAddress("s3://bucket/prefix", S3Settings(endpoint_url="http://s3.internal:8333"))
    monkeypatch.setenv("ALLIANCE_S3_ACCESS_KEY_ID", "worker-key")
    monkeypatch.setenv("ALLIANCE_S3_SECRET_ACCESS_KEY", "worker-secret")
    monkeypatch.delenv("ALLIANCE_S3_ENDPOINT", raising=False)
    store = address.open()
    assert (store.url, store.settings.endpoint_url) == ("s3://bucket/prefix", "http://s3.internal:8333")
    assert (store.settings.access_key_id, store.settings.secret_access_key) == ("worker-key", "worker-secret")
    monkeypatch.delenv("ALLIANCE_S3_ACCESS_KEY_ID")
    monkeypatch.delenv("ALLIANCE_S3_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aws-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    assert address.open().settings.secret_access_key == "aws-secret"


# --------------------------------------------------------------------------- EXTERNAL workers


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], port: int, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[2]} did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path, seaweed):
    """A job service and an SDK worker pool, each in its own directory with its own HOME and temp dir; the pool's
    environment holds the S3 credentials and nothing of the launcher (no store URL, no catalog, no home)."""
    admin = seaweed.identity("admin")
    processes = []
    bare = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1"}
    roots = {}
    for name in ("jobs", "workers"):
        root = tmp_path / name
        for sub in ("cwd", "home", "tmp"):
            (root / sub).mkdir(parents=True)
        roots[name] = root
    job_port, pool_port = _port(), _port()
    job_env = {**bare, "HOME": str(roots["jobs"] / "home"), "TMPDIR": str(roots["jobs"] / "tmp")}
    worker_env = {**bare, "HOME": str(roots["workers"] / "home"), "TMPDIR": str(roots["workers"] / "tmp"),
                  "ALLIANCE_S3_ACCESS_KEY_ID": admin.access_key, "ALLIANCE_S3_SECRET_ACCESS_KEY": admin.secret_key}
    try:
        processes.append(_start([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                 f"--service_port={pool_port}"], pool_port, roots["workers"] / "cwd", worker_env,
                                tmp_path / "workers.log"))
        processes.append(_start([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                 "--port", str(job_port)], job_port, roots["jobs"] / "cwd", job_env,
                                tmp_path / "jobs.log"))
        yield {"flags": ("--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                         "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"),
               "worker_tmp": roots["workers"] / "tmp", "log": tmp_path / "workers.log"}
    finally:
        for process in processes:
            os.killpg(process.pid, 15)
            process.wait(20)


def _launcher(tmp_path: Path, seaweed, name: str, store_url: str) -> Settings:
    """A launching process with its own home (and catalog); both launchers share the store URL, which names the
    deliveries a prefix source gives."""
    return Settings(home=tmp_path / name, store_url=store_url, s3=s3_settings(seaweed),
                    runner=RunnerSettings(direct_num_workers=2))


def _all_stages(settings: Settings, flags: tuple[str, ...], videos: list[Path]):
    store = open_store(settings=settings)
    store.ensure_bucket()
    for old in list(store.list()):  # what an earlier run left: this one starts from the recordings alone
        store.delete(old.key)
    for video in videos:
        store.put_file(f"incoming/cam/{video.name}", video)
    ingest = run_ingest(settings, "incoming/cam/", "in-1", flags, partner="cam", config=CONFIG)
    curate = run_curate(settings, "in-1", "cur-1", beam_flags=flags, config=CURATE)
    shard = run_shard(settings, "ego", "cur-1", flags)
    clips = sorted(read_table(store, ingest.clip_table_prefix).to_pylist(), key=lambda r: r["clip_id"])
    selection = sorted(read_table(store, curate.selection_prefix).to_pylist(), key=lambda r: r["clip_id"])
    manifest = store.get_bytes(shard.manifest_key)
    index = pq.read_table(io.BytesIO(store.get_bytes(f"datasets/ego/v{shard.version}/index.parquet"))).to_pylist()
    return store, ingest, curate, shard, clips, selection, manifest, index


def test_ingest_curate_shard_on_workers_that_share_nothing_with_the_launcher(tmp_path, seaweed, cluster):
    videos = [write_video(tmp_path / "media" / f"{scene}.mp4", VideoSpec(frames=25, scene=scene))
              for scene in ("counter", "head_motion", "pan")]
    store_url = f"s3://alliance/t-{uuid.uuid4().hex[:12]}"
    local = _all_stages(_launcher(tmp_path, seaweed, "local", store_url), (), videos)
    settings = _launcher(tmp_path, seaweed, "portable", store_url)
    remote = _all_stages(settings, cluster["flags"], videos)

    store, ingest, curate, shard = remote[:4]
    assert ingest.clips_written >= 6 and ingest.accounted and curate.kept >= 1 and shard.samples == curate.kept
    # the same clip table, selection, shard manifest and index, byte for byte where bytes are canonical
    assert remote[4] == local[4]
    assert remote[5] == local[5]
    assert remote[6] == local[6]
    assert remote[7] == local[7]
    # the work ran in the pool's processes: they copied the recordings into their own temp dir, never the launcher's
    copies = list(cluster["worker_tmp"].glob("alliance-ingest-*/*.mp4"))
    assert copies, f"no local copies under the workers' temp dir:\n{cluster['log'].read_text()[-3000:]}"
    # the launcher, not the workers, recorded the three runs
    catalog = Catalog(settings.effective_catalog_url)
    with catalog.session() as session:
        runs = {run.kind: run.status for run in session.query(Run)}
    catalog.dispose()
    assert runs == {"ingest": "succeeded", "curate": "succeeded", "shard": "succeeded"}

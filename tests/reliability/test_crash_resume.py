"""SIGKILL at seeded random points of shard writing, a partner delivery and ingest; a re-run must give exactly what an
uninterrupted run gives: the same dataset version bytes, the same clip table, no orphan a reader sees, no duplicate."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from alliance.catalog import Catalog
from alliance.settings import RunnerSettings, Settings
from alliance.store import LocalStore, ObjectStore, S3Store
from tests.reliability.conftest import count, record
from tests.reliability.crash import kill_at, run_to_end, worker

TRIALS = {"shard": count(2, 20), "deliver": count(2, 20), "ingest": count(1, 20)}


def store_env(store: ObjectStore, home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ALLIANCE_HOME": str(home), "ALLIANCE_STORE": store.url, **extra}
    if isinstance(store, S3Store):
        env.update(ALLIANCE_S3_ENDPOINT=store.settings.endpoint_url, ALLIANCE_S3_ACCESS_KEY_ID=store.settings.access_key_id,
                   ALLIANCE_S3_SECRET_ACCESS_KEY=store.settings.secret_access_key)
    return env


def digests(store: ObjectStore, prefix: str) -> dict[str, str]:
    return {o.key: hashlib.sha256(store.get_bytes(o.key)).hexdigest() for o in store.list(prefix)}


# --------------------------------------------------------------------------- shard writing

SHARD_TARGET = 24_000


def test_shard_writing_killed_at_random_points_resumes_to_the_same_version(tmp_path):
    from pipelines.shard import run_shard
    from sharding.audit import verify_version
    from sharding.manifest import latest_version
    from sharding.plan import ShardConfig
    from sharding.records import recorded_versions
    from tests.sharding.helpers import make_selection, write_selection_table

    reference = LocalStore(tmp_path / "reference")
    write_selection_table(reference, make_selection(reference, tmp_path / "ref-media"))
    run_shard(Settings(home=tmp_path / ".ref", store_url=reference.url), "ego", "sel-1",
              config=ShardConfig(target_bytes=SHARD_TARGET, seed=4), use_beam=False)
    expected = {k.removeprefix(reference.url): v for k, v in digests(reference, "datasets/").items()}

    timing_store = LocalStore(tmp_path / "timing")
    write_selection_table(timing_store, make_selection(timing_store, tmp_path / "timing-media"))
    args = worker("shard", "ego", "sel-1", str(SHARD_TARGET))
    code, out, work_s = run_to_end(args, store_env(timing_store, tmp_path / ".timing"))
    assert code == 0, out

    killed = 0
    for seed in range(TRIALS["shard"]):
        store = LocalStore(tmp_path / f"store-{seed}")
        write_selection_table(store, make_selection(store, tmp_path / f"media-{seed}"))
        env = store_env(store, tmp_path / f".home-{seed}")
        trial = kill_at(args, env, seed, work_s)
        killed += trial.killed
        visible = latest_version(store, "ego")
        assert visible in (None, 1), trial
        if visible == 1:  # the commit marker is written last: what it names is whole
            assert verify_version(store, "ego", 1).ok, trial
        code, out, _ = run_to_end(args, env)
        assert code == 0 and "done ego@v1" in out, (trial, out)
        assert digests(store, "datasets/") == expected, f"seed {seed}: the re-run differs from an uninterrupted run"
        catalog = Catalog(Settings(home=tmp_path / f".home-{seed}").effective_catalog_url)
        assert [(v.name, v.version) for v in recorded_versions(catalog)] == [("ego", 1)], trial
        catalog.dispose()
    record("crash_shard", trials=TRIALS["shard"], killed=killed, work_s=round(work_s, 2), lost=0)


# --------------------------------------------------------------------------- a partner delivery


@pytest.fixture(scope="module")
def delivery_folder(tmp_path_factory) -> Path:
    from ingest.synth import ImuSpec, VideoSpec, imu_table, write_imu_csv, write_video

    root = tmp_path_factory.mktemp("crash-delivery")
    for i in range(3):  # ~0.5 MB each: 8 parts of 64 KiB per file
        write_video(root / f"rec-{i}.mp4", VideoSpec(width=128, height=128, frames=20, scene="noise", seed=i))
    write_imu_csv(root / "rec-0.imu.csv", imu_table(ImuSpec(seconds=2.0, rate_hz=100.0)))
    (root / "delivery.toml").write_text('delivery = "crash-batch"\nlicense = "CC-BY-4.0"\n[consent]\n'
                                        'scope = ["pretraining"]\nexpires = 2099-12-31\n[device]\nkind = "glasses"\n'
                                        'model = "K1"\nmounting = "head"\n[sensors.imu]\nrate_hz = 100\n')
    return root


def _delivery_state(catalog: Catalog, store: ObjectStore, partner: str) -> dict:
    from alliance.models import Delivery, DeliveryFile, Recording

    with catalog.session() as session:
        deliveries = session.scalars(select(Delivery).where(Delivery.partner_id == partner)).all()
        files = session.scalars(select(DeliveryFile).order_by(DeliveryFile.idx)).all()
        recordings = session.scalars(select(Recording).where(Recording.partner_id == partner)).all()
        return {"deliveries": [(d.status, d.manifest_sha256) for d in deliveries],
                "files": [(f.idx, f.path, f.state, f.reason) for f in files],
                "recordings": sorted((r.id, r.key, r.bytes, r.status) for r in recordings),
                "landing": {k: v for k, v in digests(store, f"landing/{partner}/").items()},
                "staging": sorted(o.key for o in store.list("uploads/"))}


def test_delivery_killed_at_random_points_resumes_to_the_same_state(tmp_path, delivery_folder):
    from partners.accounts import add_partner
    from partners.server import serving
    from partners.service import ServiceConfig

    config = ServiceConfig(part_size=64 << 10, rate_per_s=5000.0, rate_burst=50_000, probe_timeout_s=20.0)

    def deploy(name: str):
        store = LocalStore(tmp_path / name / "store")
        settings = Settings(home=tmp_path / name / ".alliance")
        catalog = Catalog(settings.effective_catalog_url)
        catalog.upgrade()
        return store, settings, catalog, add_partner(catalog, "crashco")

    store, settings, catalog, token = deploy("reference")
    with serving(settings, config, store=store, catalog=catalog) as running:
        args = worker("deliver", str(delivery_folder), running.url, token.token)
        code, out, work_s = run_to_end(args, dict(os.environ))
        assert code == 0 and "done accepted 3" in out, out
        expected = _delivery_state(catalog, store, "crashco")
    catalog.dispose()
    assert expected["staging"] == [] and len(expected["recordings"]) == 3
    # the first delivery paid the validator's one-time imports in this process: time a second one for the kills
    store, settings, catalog, token = deploy("timing")
    with serving(settings, config, store=store, catalog=catalog) as running:
        code, out, work_s = run_to_end(worker("deliver", str(delivery_folder), running.url, token.token),
                                       dict(os.environ))
        assert code == 0, out
    catalog.dispose()

    killed = 0
    for seed in range(TRIALS["deliver"]):
        store, settings, catalog, token = deploy(f"trial-{seed}")
        with serving(settings, config, store=store, catalog=catalog) as running:
            args = worker("deliver", str(delivery_folder), running.url, token.token)
            trial = kill_at(args, dict(os.environ), seed, work_s)
            killed += trial.killed
            code, out, _ = run_to_end(args, dict(os.environ))
            assert code == 0 and "done accepted 3" in out, (trial, out)
            state = _delivery_state(catalog, store, "crashco")
        catalog.dispose()
        assert state == expected, f"seed {seed} (killed after {trial.kill_after_s:.2f}s): {state}"
    record("crash_deliver", trials=TRIALS["deliver"], killed=killed, work_s=round(work_s, 2), lost=0)


# --------------------------------------------------------------------------- ingest


INGEST_FLAGS = [] if TRIALS["ingest"] > 1 else ["--direct_running_mode=in_memory"]
STABLE = ("clip_id", "recording_id", "partner", "clip_key", "t0", "t1", "frames", "width", "height", "fps",
          "sensor_keys", "sensor_channels", "sensor_status")


def _ingest_state(home: Path, folder: Path) -> dict:
    from alliance.models import Clip, Run
    from alliance.store import open_store
    from pipelines.sinks import read_table

    settings = Settings(home=home, runner=RunnerSettings(direct_num_workers=2))
    store = open_store(settings=settings)
    table = read_table(store, "tables/clips/crash").to_pylist()
    rows = sorted(tuple(json.dumps(r.get(c), sort_keys=True, default=str) for c in STABLE if c in r) for r in table)
    rejections = sorted((r["key"].replace(str(folder), ""), r["reason"])
                        for r in read_table(store, "tables/rejections/crash").to_pylist())
    catalog = Catalog(settings.effective_catalog_url)
    with catalog.session() as session:
        clips = session.scalar(select(func.count()).select_from(Clip))
        distinct = session.scalar(select(func.count(func.distinct(Clip.key))))
        run = session.get(Run, "crash")
        status = run.status if run else None
    catalog.dispose()
    objects = {o.key: hashlib.sha256(store.get_bytes(o.key)).hexdigest() for o in store.list("clips/")}
    referenced = {r["clip_key"] for r in table}
    return {"rows": rows, "rejections": rejections, "catalog_clips": clips, "catalog_distinct": distinct,
            "run": status, "clip_objects": objects,
            "orphans": sorted(k for k in objects if k.endswith(".mp4") and k not in referenced),
            "work": sorted(o.key for o in store.list("tables/ingest-work/"))}


@pytest.mark.slow
def test_ingest_killed_at_random_points_resumes_to_the_same_clip_table(tmp_path):
    from ingest.synth import ImuSpec, VideoSpec, imu_table, write_bad_inputs, write_imu_csv, write_video

    folder = tmp_path / "recordings"
    walk = write_video(folder / "walk.mp4", VideoSpec(frames=30, scene="pan", seed=1))
    write_imu_csv(folder / "walk.imu.csv", imu_table(ImuSpec(seconds=3.5)))
    write_video(folder / "desk.mp4", VideoSpec(frames=30, seed=2))
    bad = write_bad_inputs(tmp_path / "bad", walk)
    os.link(bad["truncated_50"], folder / "truncated.mp4")
    args = worker("ingest", str(folder), "crash", *INGEST_FLAGS)
    env = {**os.environ, "ALLIANCE_BEAM_WORKERS": "2"}

    code, out, work_s = run_to_end(args, {**env, "ALLIANCE_HOME": str(tmp_path / ".reference")})
    assert code == 0, out
    expected = _ingest_state(tmp_path / ".reference", folder)
    assert len(expected["rows"]) == 6 and expected["orphans"] == [] and expected["run"] == "succeeded"

    killed = 0
    for seed in range(TRIALS["ingest"]):
        home = tmp_path / f".home-{seed}"
        trial = kill_at(args, {**env, "ALLIANCE_HOME": str(home)}, seed + 100, work_s)
        killed += trial.killed
        code, out, _ = run_to_end(args, {**env, "ALLIANCE_HOME": str(home)})
        assert code == 0, (trial, out)
        state = _ingest_state(home, folder)
        assert state == expected, f"seed {seed} (killed after {trial.kill_after_s:.2f}s of {work_s:.2f}s)"
    record("crash_ingest", trials=TRIALS["ingest"], killed=killed, work_s=round(work_s, 2), lost=0)

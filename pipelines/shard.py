"""The shard pipeline: Beam writes a selection's shards in parallel; the launching process plans, commits, records."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Sequence

from alliance.errors import AllianceError
from alliance.settings import Settings, StoreAddress
from alliance.store import ObjectStore, open_store
from alliance.tables import Rejection

if TYPE_CHECKING:
    from datetime import date

    from sharding.plan import ShardConfig


@dataclass(frozen=True)
class ShardSummary:
    """What `run_shard` produced: the committed version and its figures."""

    name: str
    version: int
    samples: int
    shards: int
    bytes: int
    hours: float
    manifest_key: str
    selection: str
    partners: dict[str, dict[str, float]] = field(default_factory=dict)
    shards_written: int = 0  # by this run; 0 when the version already existed
    revoked_skipped: int = 0  # selected clips of revoked recordings, left out
    already_committed: bool = False
    purpose: str = "pretraining"
    left_out: dict[str, int] = field(default_factory=dict)  # consent_revoked / consent_expired / consent_scope -> clips
    rejections_key: str | None = None  # the clips left out, one json line each with partner, recording and why

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


def read_selection(store: ObjectStore, run: str) -> list[dict[str, Any]]:
    """The kept rows of tables/selections/{run}/part-*.parquet, in file order."""
    import pyarrow.parquet as pq

    from sharding.errors import DatasetError

    prefix = f"tables/selections/{run}/"
    parts = [o.key for o in store.list(prefix) if o.key.endswith(".parquet")]
    if not parts:
        raise DatasetError(f"no selection table at {store.describe(prefix)}part-*.parquet; run "
                           f"`alliance pipeline curate` first or pass the run id it printed")
    rows: list[dict[str, Any]] = []
    for key in parts:
        table = pq.read_table(io.BytesIO(store.get_bytes(key)))
        if "kept" not in table.column_names:
            raise DatasetError(f"{store.describe(key)} has no `kept` column: not a selection table")
        rows += [r for r in table.to_pylist() if r["kept"]]
    return rows


@cache
def write_shard_dofn() -> type:
    """The Beam DoFn class, built on first use so that importing this module (the demo, the CLI) skips Beam."""
    import apache_beam as beam

    class WriteShard(beam.DoFn):
        """Writes one planned shard (skipped when its receipt is there); a failure leaves as a tagged rejection."""

        def __init__(self, settings: Settings | StoreAddress, name: str, version: int, resume: bool = True):
            self.store_address = StoreAddress.of(settings)  # never a secret: workers bring their own
            self.name, self.version, self.resume = name, version, resume
            self.store: ObjectStore | None = None
            self.written = beam.metrics.Metrics.counter("shard", "shards_written")
            self.failed = beam.metrics.Metrics.counter("shard", "shard_write_failed")

        def setup(self) -> None:
            self.store = self.store_address.open()

        def process(self, shard):
            from sharding.versions import write_planned_shard

            try:
                receipt = write_planned_shard(self.store, self.name, self.version, shard, resume=self.resume)
            except AllianceError as e:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput("rejected", Rejection(
                    f"datasets/{self.name}/v{self.version}/shard-{shard.index:06d}.tar", "shard",
                    "shard_write_failed", f"{e}; re-run the same command to retry this shard"))
                return
            self.written.inc()
            yield receipt.index

    return WriteShard


def store_rejection(rejection: Rejection, address: StoreAddress, prefix: str) -> None:
    """Workers hand failures to the launching process through the store, never the catalog."""
    body = json.dumps(rejection.to_dict(), sort_keys=True).encode()
    address.open().put_bytes(f"{prefix}{hashlib.sha256(body).hexdigest()[:16]}.json", body)


def write_shards_with_beam(settings: Settings, name: str, version: int, shards: Sequence[Any],
                           beam_flags: Sequence[str], *, resume: bool = True) -> list[Rejection]:
    """Run the shard writes as a Beam job; returns the shards that failed, as rejections."""
    import apache_beam as beam

    from pipelines.options import credentials_for_local_workers, pipeline_options, worker_log_path, worker_output_to

    store, address = open_store(settings=settings), settings.store_address()
    prefix = f"datasets/{name}/v{version}/_work/rejections/"
    for info in list(store.list(prefix)):
        store.delete(info.key)
    with credentials_for_local_workers(settings), \
            worker_output_to(worker_log_path(settings, "shard", f"{name}-v{version}")), \
            beam.Pipeline(options=pipeline_options(settings, beam_flags)) as pipeline:
        write = beam.ParDo(write_shard_dofn()(address, name, version, resume)).with_outputs("rejected",
                                                                                             main="written")
        results = (pipeline
                   | "Shards" >> beam.Create(list(shards))
                   | "Spread" >> beam.Reshuffle()
                   | "Write" >> write)
        _ = results.rejected | "Report" >> beam.Map(store_rejection, address, prefix)
    return [Rejection(**json.loads(store.get_bytes(info.key))) for info in store.list(prefix)]


def run_shard(settings: Settings, name: str, selection_run: str, beam_flags: Sequence[str] = (), *,
              config: "ShardConfig | None" = None, record: bool = True, use_beam: bool = True,
              purpose: str = "pretraining", today: "date | None" = None) -> ShardSummary:
    """Shard the kept clips of selection `selection_run` into the next version of dataset `name`, for `purpose`.

    Re-running the same command (after a crash, a kill -9, or success) finishes or returns the same version.
    Only clips whose consent scope lists the purpose and has not expired (on `today`) go in; clips of recordings
    revoked in the catalog are left out too; each clip left out is listed with its reason in
    reports/shards/NAME/vN/rejections.jsonl. Beam flags go to the runner as given.
    """
    from alliance.catalog import Catalog
    from sharding.layout import check_name
    from sharding.plan import ShardConfig

    check_name(name)
    config = config or ShardConfig()
    store = open_store(settings=settings)
    catalog = Catalog(settings.effective_catalog_url).prepare() if record else None
    try:
        return _shard(settings, store, catalog, name, selection_run, beam_flags, config, use_beam, purpose, today)
    finally:
        if catalog is not None:
            catalog.dispose()


def _shard(settings: Settings, store: ObjectStore, catalog: "Catalog | None", name: str, selection_run: str,
           beam_flags: Sequence[str], config: "ShardConfig", use_beam: bool, purpose: str,
           today: "date | None") -> ShardSummary:
    """run_shard once the catalog is open: the run is recorded as running once its id (version and plan) is
    known, then as succeeded with its version, or failed with the error."""
    from alliance.runs import RUNNING, record_failure, record_run
    from sharding.consent import filter_rows, write_rejections
    from sharding.errors import DatasetError
    from sharding.layout import manifest_key
    from sharding.plan import plan_samples, plan_version
    from sharding.records import record_version, revoked_recordings
    from sharding.versions import claim_version, clean_work, collect_receipts, finish_version, shard_done, write_shards

    rows = read_selection(store, selection_run)
    revoked = revoked_recordings(catalog) if catalog is not None else set()
    consent = filter_rows(rows, purpose, today=today, revoked=revoked)
    source = {"selection": selection_run, "consent": {**consent.note, "left_out": consent.left_out}}
    if not consent.kept and rows:
        raise DatasetError(f"nothing to shard for {purpose}: all {len(rows)} kept clips of selection "
                           f"{selection_run!r} are outside their consent ("
                           + ", ".join(f"{reason} {n}" for reason, n in consent.left_out.items())
                           + f"), e.g. {consent.rejections[0].detail}; pick the purpose their consent lists "
                             f"(--purpose) or another selection")
    plan = plan_version(plan_samples(consent.kept, store), config, source)
    claim = claim_version(store, name, plan.sha256, samples=plan.samples, shards=len(plan.shards))
    run_id = f"shard-{name}-v{claim.version}-{claim.plan_sha256[:12]}"
    run_config = {"selection": selection_run, "purpose": purpose, **plan.config, "beam_flags": list(beam_flags)}
    written = 0
    if claim.committed is not None:
        manifest = claim.committed
        clean_work(store, name, manifest.version)  # a run killed right after its commit left these
    else:
        if catalog is not None:
            record_run(catalog, run_id, "shard", RUNNING, config=run_config, summary={})
        try:
            # A claim made by this run has nothing to resume: no receipt lookups.
            todo = list(plan.shards) if claim.fresh else [
                s for s in plan.shards if shard_done(store, name, claim.version, s.index) is None]
            if todo and use_beam:
                rejected = write_shards_with_beam(settings, name, claim.version, todo, beam_flags,
                                                  resume=not claim.fresh)
                if rejected:
                    raise DatasetError(f"{len(rejected)} shard(s) of {name}@v{claim.version} failed: "
                                       f"{rejected[0].detail}")
            elif todo:
                write_shards(store, claim, todo, resume=False)  # todo holds only shards without a receipt
            written = len(todo)
            manifest = finish_version(store, claim, plan, collect_receipts(store, claim, plan))
        except BaseException as e:
            if catalog is not None:
                record_failure(catalog, run_id, "shard", e)
            raise
    rejections = write_rejections(store, name, manifest.version, consent.rejections) if consent.rejections else None
    if catalog is not None:
        record_version(catalog, manifest, run_id=run_id, config=run_config,
                       extra={"in": len(rows), "kept": manifest.samples, "purpose": purpose,
                              "rejections": consent.left_out, "rejections_key": rejections})
    return ShardSummary(name, manifest.version, manifest.samples, len(manifest.shards), manifest.bytes,
                        manifest.hours, manifest_key(name, manifest.version), selection_run, manifest.partners,
                        written, consent.left_out.get("consent_revoked", 0), claim.committed is not None, purpose,
                        consent.left_out, rejections)

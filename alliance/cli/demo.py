"""`alliance demo ...`: the whole story on the embedded defaults, on data the project makes itself.

Every step runs the very `alliance` command a user would type, in a child process, and the demo prints it
first: what you see is what you would run. Steps are idempotent, so a second `make demo` reuses what exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from alliance.cli.common import console, settings
from alliance.errors import AllianceError

app = typer.Typer(help="Run the end-to-end demo on sample data the project makes.", no_args_is_help=True)

DATASET = "demo"
INGEST_RUN = "demo-ingest"
CURATE_RUNS = ("demo-curate-1", "demo-curate-2")
TRAIN_RUN = "demo-jepa"
REVOKED_FILE = ("glassco", "workshop-03.mp4")


class DemoStepFailed(AllianceError):
    """A demo step's command failed; its own output above says why."""


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of the story: small enough for a laptop, large enough for every stage to have work."""

    seconds: float = 8.0
    size: int = 128  # at least QualityConfig.min_short_side (112): smaller samples would all be too_small
    fps: int = 10
    clip_s: float = 2.0
    short_side: int = 64
    train_steps: int = 60
    batch_size: int = 8


@dataclass
class StepRecord:
    step: str
    seconds: float
    outcome: str


@dataclass
class Story:
    """What the steps learn along the way and hand to the next ones."""

    options: DemoOptions
    data: Path
    records: list[StepRecord] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    service_url: str = ""
    server: subprocess.Popen | None = None

    def stop_service(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(30)


def alliance(*args: str) -> None:
    """Run one `alliance` command as a user would, echoing it first; its output streams through."""
    console.print(f"[bold cyan]$ alliance {' '.join(args)}[/bold cyan]")
    env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "120")}
    result = subprocess.run([sys.executable, "-m", "alliance.cli.main", *args], env=env)
    if result.returncode != 0:
        raise DemoStepFailed(f"`alliance {' '.join(args)}` exited with {result.returncode}")


# --------------------------------------------------------------------------- the steps


def step_make_data(story: Story) -> str:
    from partners.samples import default_plan, make_sample_deliveries

    o = story.options
    recordings = make_sample_deliveries(story.data, default_plan(o.seconds, o.size, o.fps))
    planted = sorted({r.expect for r in recordings} - {"kept"})
    partners = sorted({r.partner for r in recordings})
    return f"{len(recordings)} recordings from {len(partners)} partners in {story.data}; planted: {', '.join(planted)}"


def step_deliver(story: Story) -> str:
    """Start the delivery service, give each partner a token, and let each deliver with the partner CLI."""
    from alliance.catalog import Catalog
    from partners.accounts import ensure_partner
    from partners.samples import delivery_folders

    catalog = Catalog(settings().effective_catalog_url)
    catalog.prepare()
    port = _start_service(story)
    outcomes = []
    for partner, folder in delivery_folders(story.data):
        if partner not in story.tokens:
            console.print(f"[bold cyan]$ alliance partners add {partner}[/bold cyan]  (the token goes to the partner)")
            story.tokens[partner] = ensure_partner(catalog, partner).token
        code = _deliver(folder, port, story.tokens[partner])
        outcomes.append(f"{partner}/{folder.name}: {'accepted' if code == 0 else 'refused, see its report'}")
    return "; ".join(outcomes)


def _start_service(story: Story) -> int:
    from alliance.devservers import free_port, wait_for_port

    port = free_port()
    console.print(f"[bold cyan]$ alliance serve --port {port} &[/bold cyan]")
    log = settings().home / "demo-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        story.server = subprocess.Popen([sys.executable, "-m", "alliance.cli.main", "serve", "--port", str(port)],
                                        stdout=sink, stderr=subprocess.STDOUT)
    wait_for_port(port, story.server, 60, log, "the delivery service")
    story.service_url = f"http://127.0.0.1:{port}"
    return port


def _deliver(folder: Path, port: int, token: str) -> int:
    """`alliance deliver` with the token in the environment, so it never shows in a process list or the output."""
    console.print(f"[bold cyan]$ ALLIANCE_TOKEN=... alliance deliver {folder} --to http://127.0.0.1:{port} --quiet"
                  f"[/bold cyan]")
    env = {**os.environ, "ALLIANCE_TOKEN": token, "COLUMNS": os.environ.get("COLUMNS", "120")}
    result = subprocess.run([sys.executable, "-m", "alliance.cli.main", "deliver", str(folder), "--to",
                             f"http://127.0.0.1:{port}", "--quiet"], env=env)
    if result.returncode not in (0, 3):
        raise DemoStepFailed(f"`alliance deliver {folder}` exited with {result.returncode}")
    return result.returncode


def step_ingest(story: Story) -> str:
    o = story.options
    alliance("pipeline", "ingest", "--run", INGEST_RUN, "--clip-s", str(o.clip_s), "--short-side", str(o.short_side))
    summary = _run_summary(INGEST_RUN)
    return _funnel_line(summary.get("recordings_in"), summary.get("clips_written"), summary.get("rejections", {}),
                        "recordings in", "clips written")


def _curate(story: Story, run: str, encoder: str | None) -> str:
    args = ["pipeline", "curate", "--clips", INGEST_RUN, "--run", run]
    if encoder:
        # SemDeDup at the CLI's default eps (0.05, cosines centred on the clips' mean direction): what it drops in
        # the demo is mostly the next window of the same scene
        args += ["--encoder", encoder]
    alliance(*args)
    summary = _run_summary(run)
    dropped = {f"{stage}:{reason}": n for stage, reasons in summary.get("dropped", {}).items()
               for reason, n in reasons.items()}
    return _funnel_line(summary.get("clips_in"), summary.get("kept"), dropped, "clips in", "kept") + \
        f"; semantic: {summary.get('semantic', '')}"


def step_curate_round_1(story: Story) -> str:
    return _curate(story, CURATE_RUNS[0], None)


def _shard(story: Story, selection: str, label: str) -> str:
    version = _version_from(selection)
    if version is None:
        alliance("pipeline", "shard", "--name", DATASET, "--selection", selection, "--max-samples", "16")
        version = _version_from(selection)
    else:  # sharding it again now would leave out the recording revoked later in the story: a new version
        console.print(f"{DATASET}@v{version} was made from {selection} by an earlier run: reusing it")
    if version is None:
        raise DemoStepFailed(f"`alliance pipeline shard` committed no version of {DATASET!r} from {selection}")
    story.versions[label] = version
    return _version_line(version)


def step_shard_v1(story: Story) -> str:
    return _shard(story, CURATE_RUNS[0], "round1")


def step_train(story: Story) -> str:
    o = story.options
    version = story.versions["round1"]
    alliance("train", "--dataset", f"{DATASET}@v{version}", "--set", f"run.steps={o.train_steps}",
             "--set", f"run.name={TRAIN_RUN}", "--set", f"data.batch_size={o.batch_size}", "--set", "data.workers=1",
             "--set", f"run.checkpoint_every={o.train_steps}", "--set", "run.log_every=10")
    alliance("train", "export", TRAIN_RUN)
    record = json.loads(_store().get_bytes(f"checkpoints/{TRAIN_RUN}/run.json"))
    return f"{TRAIN_RUN}: {record.get('steps')} steps on {DATASET}@v{version}; encoder at checkpoints/{TRAIN_RUN}/encoder.pt"


def step_curate_round_2(story: Story) -> str:
    return _curate(story, CURATE_RUNS[1], TRAIN_RUN)


def step_shard_v2(story: Story) -> str:
    return _shard(story, CURATE_RUNS[1], "round2")


def step_revoke_and_redact(story: Story) -> str:
    """The partner withdraws consent for one recording; the dataset gets a version without it."""
    import hashlib

    from partners.client import revoke

    partner, name = REVOKED_FILE
    folder = next(p for p in story.data.glob(f"{partner}/*") if (p / name).is_file())
    recording = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    console.print(f"[bold cyan]POST {story.service_url}/recordings/{recording}/revoke[/bold cyan]  ({partner} "
                  f"withdraws consent for {name})")
    revoke(story.service_url, story.tokens[partner], recording, "consent withdrawn by the wearer")
    version = story.versions["round2"]
    alliance("datasets", "redact", f"{DATASET}@v{version}")
    redacted = _version_from(None) or version
    story.versions["redacted"] = redacted
    return f"{name} ({recording[:12]}) revoked; " + _version_line(redacted)


def step_ledger(story: Story) -> str:
    version = story.versions["redacted"]
    alliance("datasets", "ledger", f"{DATASET}@v{version}")
    from sharding.ledger import ledger

    book = ledger(_store(), DATASET, version)
    return f"{book.clips} clips, {book.hours * 3600:.0f} s credited to " + \
        ", ".join(f"{p.partner} {p.clips}" for p in book.partners)


STEPS = [
    ("sample data", step_make_data),
    ("deliveries", step_deliver),
    ("ingest", step_ingest),
    ("curate round 1", step_curate_round_1),
    ("shard v1", step_shard_v1),
    ("train + export", step_train),
    ("curate round 2", step_curate_round_2),
    ("shard v2", step_shard_v2),
    ("revoke + redact", step_revoke_and_redact),
    ("ledger", step_ledger),
]


# --------------------------------------------------------------------------- reading back what a step did


def _store():
    from alliance.store import open_store

    return open_store(settings=settings())


def _run_summary(run_id: str) -> dict:
    from alliance.catalog import Catalog
    from alliance.models import Run

    with Catalog(settings().effective_catalog_url).session() as session:
        run = session.get(Run, run_id)
        return dict(run.summary or {}) if run else {}


def _version_from(selection: str | None) -> int | None:
    """The newest committed version of the demo dataset (with a selection: the one made from it), or None."""
    from sqlalchemy import select

    from alliance.catalog import Catalog
    from alliance.models import DatasetVersion, Run

    with Catalog(settings().effective_catalog_url).session() as session:
        rows = session.execute(select(DatasetVersion, Run).outerjoin(Run, DatasetVersion.run_id == Run.id)
                               .where(DatasetVersion.name == DATASET).order_by(DatasetVersion.version.desc())).all()
    for version, run in rows:
        if selection is None or (run is not None and (run.config or {}).get("selection") == selection):
            return version.version
    return None


def _version_line(version: int) -> str:
    from sharding.manifest import load_manifest

    manifest = load_manifest(_store(), DATASET, version)
    return (f"{DATASET}@v{version}: {manifest.samples} samples in {len(manifest.shards)} shards, "
            f"{manifest.hours * 3600:.0f} s of video")


def _funnel_line(count_in, kept, refused: dict, in_label: str, kept_label: str) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items())) or "none"
    return f"{count_in} {in_label}, {kept} {kept_label}, refused: {reasons}"


# --------------------------------------------------------------------------- commands


@app.command("make-data")
def make_data(out: Path = typer.Option(None, "--out", help="Folder (default: $ALLIANCE_HOME/demo-data).")) -> None:
    """Write the sample partner deliveries (deterministic; existing files are kept)."""
    story = Story(DemoOptions(), out or settings().home / "demo-data")
    console.print(step_make_data(story))


@app.command("run")
def run(seconds: float = typer.Option(DemoOptions.seconds, help="Length of each sample recording."),
        size: int = typer.Option(DemoOptions.size, help="Frame size of the sample recordings."),
        train_steps: int = typer.Option(DemoOptions.train_steps, help="Steps of the tiny JEPA run."),
        data: Path = typer.Option(None, "--data", help="Sample data folder (default: $ALLIANCE_HOME/demo-data).")) -> None:
    """The whole story: deliver, ingest, curate, shard v1, train, export, curate with embeddings, shard v2,
    revoke and redact to v3, ledger; then a summary of every stage and the reports to open."""
    options = DemoOptions(seconds=seconds, size=size, train_steps=train_steps)
    story = Story(options, (data or settings().home / "demo-data").resolve())
    console.print(f"[bold]Alliance demo[/bold]: store {settings().effective_store_url}")
    try:
        for name, step in STEPS:
            console.rule(f"[bold]{name}")
            started = time.perf_counter()
            outcome = step(story)
            story.records.append(StepRecord(name, time.perf_counter() - started, outcome))
            console.print(f"[green]{name}:[/green] {outcome}")
    finally:
        story.stop_service()
    _print_summary(story)


def _print_summary(story: Story) -> None:
    from rich.table import Table

    table = Table(title="demo summary", title_justify="left")
    table.add_column("step")
    table.add_column("s", justify="right")
    table.add_column("outcome")
    for record in story.records:
        table.add_row(record.step, f"{record.seconds:.1f}", record.outcome)
    console.print(table)
    store = _store()
    console.print("[bold]reports to open[/bold]")
    for info in store.list("reports/"):
        if info.key.endswith(".html"):
            console.print(f"  {store.describe(info.key)}")
    console.print("next: `alliance status`, `alliance datasets show demo@v1`, `alliance store ls datasets/`")

"""`alliance pipeline ...`: launch the Beam jobs (ingest, curate, shard) with Beam's own options."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(
    help="Run the Beam pipelines. Any Beam flag after `--` goes to Beam, e.g. -- --runner=PortableRunner "
         "--job_endpoint=localhost:8099 --environment_type=LOOPBACK.",
    no_args_is_help=True,
)


@app.command("shard", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def shard(ctx: typer.Context,
          name: str = typer.Option(..., "--name", help="Dataset name, e.g. ego-pretrain."),
          selection: str = typer.Option(..., "--selection", help="Curation run whose kept clips to shard."),
          target_mb: float = typer.Option(256.0, "--target-mb", help="Close a shard before it passes this size (MB)."),
          max_samples: int = typer.Option(0, "--max-samples", help="Also close a shard at this many samples (0: no "
                                          "limit)."),
          seed: int = typer.Option(0, "--seed", help="Seed of the shuffle that mixes partners across shards."),
          purpose: str = typer.Option("pretraining", "--purpose", help="What the version is for: pretraining, "
                                      "evaluation, research or commercial. Only clips whose consent scope lists it "
                                      "(and has not expired) go in; clips without a contract count as scope 'any'.")
          ) -> None:
    """Shard a selection into the next version of NAME; re-running finishes or returns the same version."""
    from alliance.cli.common import console, settings
    from pipelines.shard import run_shard
    from sharding.plan import ShardConfig

    config = ShardConfig(target_bytes=int(target_mb * (1 << 20)), max_samples=max_samples, seed=seed)
    summary = run_shard(settings(), name, selection, tuple(ctx.args), config=config, purpose=purpose)
    state = "already committed" if summary.already_committed else f"wrote {summary.shards_written} shard(s)"
    console.print(f"{summary.ref}: {summary.samples:,} samples in {summary.shards} shards, {summary.bytes:,} bytes, "
                  f"{summary.hours:.4f} h ({state}); manifest {summary.manifest_key}")
    for partner, figures in summary.partners.items():
        console.print(f"  {partner}: {int(figures['samples'])} samples, {figures['hours']:.4f} h")
    console.print(f"  purpose {summary.purpose}: "
                  + ("every selected clip's consent allows it" if not summary.left_out else
                     "left out " + ", ".join(f"{reason} {n}" for reason, n in summary.left_out.items())
                     + f" (each clip and why: {summary.rejections_key})"))


@app.command("curate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def curate(ctx: typer.Context,
           clips: str = typer.Option(..., "--clips", help="Ingest run whose clip table to curate."),
           encoder: str = typer.Option("", "--encoder", help="Training run whose exported encoder embeds the clips "
                                       "(checkpoints/RUN/encoder.pt); without it the semantic stages are skipped."),
           run: str = typer.Option("", "--run", help="Run id (default: curate-CLIPS[-ENCODER]); re-running it "
                                   "gives the same selection."),
           index: str = typer.Option("main", "--index", help="Near-duplicate index under indexes/neardup/."),
           target: int = typer.Option(0, "--target", help="Balance the selection to this many clips (0: no "
                                      "balancing)."),
           eps: float = typer.Option(0.05, "--eps", help="SemDeDup: drop a clip whose cosine to a kept one in its "
                                     "cluster is above 1 - eps."),
           center: bool = typer.Option(True, "--center/--no-center", help="SemDeDup: measure cosines from the "
                                       "survivors' mean direction (an early encoder's narrow cone of embeddings "
                                       "then no longer makes every clip a duplicate)."),
           quality: list[str] = typer.Option([], "--quality", help="A quality threshold, NAME=VALUE (a field of "
                                             "curation.quality.QualityConfig), e.g. --quality min_sharpness=0.02."),
           reuse: bool = typer.Option(False, "--reuse-analysis", help="Decide again from this run's stored signals "
                                      "(new thresholds, no decoding) when its clip table and encoder are unchanged.")
           ) -> None:
    """Curate a clip table: quality, exact and near duplicates, embeddings, SemDeDup, balance, report."""
    from alliance.cli.common import console, settings
    from curation.quality import parse_overrides
    from curation.select import CurateConfig
    from curation.semdedup import SemDedupConfig
    from pipelines.curate import run_curate

    run_id = run or f"curate-{clips}" + (f"-{encoder}" if encoder else "")
    semantic = SemDedupConfig(eps=eps, target=target, center=center)
    config = CurateConfig(quality=parse_overrides(quality), semantic=semantic, index=index)
    summary = run_curate(settings(), clips, run_id, encoder or None, tuple(ctx.args), config=config,
                         reuse_analysis=reuse)
    console.print(f"{summary.run}: {summary.clips_in} clips in, {summary.kept} kept ({summary.seconds:.1f} s)")
    for stage, reasons in summary.dropped.items():
        console.print(f"  {stage}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())))
    console.print(f"  semantic stages: {summary.semantic}")
    console.print(f"  selection {summary.selection_prefix}/  report {summary.report_key}")


@app.command("ingest", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ingest(ctx: typer.Context,
           source: str = typer.Option("catalog", "--source", help="'catalog' (accepted recordings), a local folder "
                                      "of videos, or a store prefix such as landing/glassco/"),
           run: str = typer.Option("", "--run", help="Run id (default: ingest-UTCTIME); clips are shared between "
                                   "runs, tables are per run."),
           partner: str = typer.Option("local", "--partner", help="Partner of folder/prefix sources."),
           clip_s: float = typer.Option(4.0, "--clip-s", help="Clip length in seconds."),
           stride_s: float = typer.Option(0.0, "--stride-s", help="Distance between clip starts (0: back to back)."),
           short_side: int = typer.Option(256, "--short-side", help="Training resolution: the short side in pixels."),
           fps: float = typer.Option(0.0, "--fps", help="Fixed output rate (0: the source's)."),
           scene_split: bool = typer.Option(False, "--scene-split", help="Split clips on hard cuts."),
           preset: str = typer.Option("superfast", "--preset", help="x264 preset of the re-encode (ultrafast ... "
                                      "veryslow): speed against bytes."),
           timeout_s: float = typer.Option(120.0, "--timeout-s", help="Time bound per clip window; a hang becomes "
                                           "a decode_timeout rejection."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Rewrite clip files that already exist (e.g. "
                                          "after an FFmpeg upgrade; other settings already give other clip ids).")
           ) -> None:
    """Decode, cut, re-encode and align sensors: recordings -> clips/ + tables/clips/RUN + tables/rejections/RUN."""
    import logging
    from datetime import datetime, timezone

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from alliance.cli.common import console, settings
    from ingest.clips import ClipConfig
    from pipelines.ingest import run_ingest

    run = run or f"ingest-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    config = ClipConfig(clip_s=clip_s, stride_s=stride_s, short_side=short_side, fps=fps, scene_split=scene_split,
                        preset=preset, window_timeout_s=timeout_s)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        recordings = bar.add_task("recordings done", total=None, extra="")
        windows = bar.add_task("clip windows done", total=None, extra="")

        def show(counts: dict[str, int], recordings_in: int) -> None:
            refused = sum(v for k, v in counts.items() if k.startswith("rejected_"))
            bar.update(recordings, total=recordings_in, completed=counts.get("recordings_done", 0),
                       extra=f"{counts.get('recordings_refused', 0)} refused")
            bar.update(windows, total=counts.get("windows_planned") or None, completed=counts.get("windows_done", 0),
                       extra=f"{counts.get('clips_out', 0)} clips, {refused} rejections")

        summary = run_ingest(settings(), source, run, tuple(ctx.args), partner=partner, config=config,
                             overwrite=overwrite, on_progress=show)
    console.print(ingest_table(summary))
    console.print(accounting_line(summary))
    console.print(f"clip table {summary.clip_table_prefix}/, rejections {summary.rejection_table_prefix}/ "
                  f"(rejections.jsonl for reading)")


def ingest_table(summary) -> "Table":
    """An IngestSummary as the table the command prints: recordings, how they ended, clips, every rejection."""
    from rich.table import Table

    table = Table(title=f"ingest {summary.run_id}: {summary.seconds:.1f} s")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("recordings in", str(summary.recordings_in))
    table.add_row("recordings with clips", str(summary.recordings_with_clips))
    for reason, n in summary.recordings_refused.items():
        table.add_row(f"recordings refused: {reason}", str(n))
    table.add_row("clips written", str(summary.clips_written))
    table.add_row("clip files new this run", str(summary.clip_files_new))
    for reason, n in summary.rejections.items():
        table.add_row(f"rejections: {reason}", str(n))
    return table


def accounting_line(summary) -> str:
    """The check that every recording ended as clips or as a refusal, or the recordings that did not."""
    from rich.markup import escape

    refused = sum(summary.recordings_refused.values())
    if summary.accounted:
        return (f"every recording accounted for: {summary.recordings_in} in = {summary.recordings_with_clips} with "
                f"clips + {refused} refused")
    lost = escape(", ".join(summary.unaccounted[:10])) + (" ..." if len(summary.unaccounted) > 10 else "")
    return (f"[red]not every recording is accounted for:[/red] {summary.recordings_in} in, "
            f"{summary.recordings_with_clips} with clips, {refused} refused; no outcome for "
            f"{len(summary.unaccounted)}: {lost or '-'} (an ingest bug: report it with the log)")

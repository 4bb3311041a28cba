"""`alliance pipeline ...`: launch the Beam jobs (ingest, curate, shard) with Beam's own options."""

from __future__ import annotations

import typer

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
          seed: int = typer.Option(0, "--seed", help="Seed of the shuffle that mixes partners across shards.")) -> None:
    """Shard a selection into the next version of NAME; re-running finishes or returns the same version."""
    from alliance.cli.common import console, settings
    from pipelines.shard import run_shard
    from sharding.plan import ShardConfig

    config = ShardConfig(target_bytes=int(target_mb * (1 << 20)), max_samples=max_samples, seed=seed)
    summary = run_shard(settings(), name, selection, tuple(ctx.args), config=config)
    state = "already committed" if summary.already_committed else f"wrote {summary.shards_written} shard(s)"
    console.print(f"{summary.ref}: {summary.samples:,} samples in {summary.shards} shards, {summary.bytes:,} bytes, "
                  f"{summary.hours:.4f} h ({state}); manifest {summary.manifest_key}")
    for partner, figures in summary.partners.items():
        console.print(f"  {partner}: {int(figures['samples'])} samples, {figures['hours']:.4f} h")
    if summary.revoked_skipped:
        console.print(f"left out {summary.revoked_skipped} selected clip(s) of revoked recordings")


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
                                     "cluster is above 1 - eps.")) -> None:
    """Curate a clip table: quality, exact and near duplicates, embeddings, SemDeDup, balance, report."""
    from alliance.cli.common import console, settings
    from curation.select import CurateConfig
    from curation.semdedup import SemDedupConfig
    from pipelines.curate import run_curate

    run_id = run or f"curate-{clips}" + (f"-{encoder}" if encoder else "")
    config = CurateConfig(semantic=SemDedupConfig(eps=eps, target=target), index=index)
    summary = run_curate(settings(), clips, run_id, encoder or None, tuple(ctx.args), config=config)
    console.print(f"{summary.run}: {summary.clips_in} clips in, {summary.kept} kept ({summary.seconds:.1f} s)")
    for stage, reasons in summary.dropped.items():
        console.print(f"  {stage}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())))
    console.print(f"  semantic stages: {summary.semantic}")
    console.print(f"  selection {summary.selection_prefix}/  report {summary.report_key}")

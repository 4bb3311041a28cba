"""`alliance train ...`: stream a dataset version into the JEPA loop, probe a checkpoint, export its encoder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from alliance.cli.common import console, settings, store
from alliance.errors import ConfigError

app = typer.Typer(
    help="The JEPA loop: `alliance train --dataset NAME@vN [--config FILE]` trains (or resumes) a run; "
         "`probe` and `export` work on its checkpoints. Several GPUs: `torchrun --nproc-per-node=8 -m "
         "alliance.cli.main train --dataset NAME@vN --config FILE`.",
    invoke_without_command=True,
)


def _parse_dataset(ref: str) -> tuple[str, int]:
    name, sep, version = ref.partition("@")
    version = version.lstrip("v")
    if not sep or not name or not version.isdigit():
        raise ConfigError(f"--dataset {ref!r}: use NAME@vN, e.g. ego@v3 (`alliance datasets list` shows versions); "
                          f"the built-in moving-object task is synthetic@v0")
    return name, int(version)


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: use SECTION.FIELD=VALUE, e.g. --set run.steps=100")
        out[key.strip()] = value.strip()
    return out


@app.callback()
def train_run(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="NAME@vN to train on (synthetic@v0: the "
                                                                       "built-in moving-object clips)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML or JSON training config."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny_cpu, vit_l or vit_h (default tiny_cpu)."),
    set_: list[str] = typer.Option([], "--set", help="Override one setting, e.g. --set run.steps=100 (repeatable)."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop (with a checkpoint) after this step."),
) -> None:
    """Train or resume: the run id comes from the dataset version and config, so re-running continues it."""
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None:
        console.print(ctx.get_help())
        raise typer.Exit(0)
    from dataclasses import replace

    from training.config import load_config
    from training.loop import run_id, train

    name, version = _parse_dataset(dataset)
    if (name, version) != ("synthetic", 0):  # refuse a version outside its consent, naming partners and recordings
        from sharding.consent import require_purpose

        require_purpose(store(), name, version, "pretraining")
    cfg = load_config(config, preset_name=preset, overrides=_parse_sets(set_))
    if name == "synthetic" and version == 0:
        cfg = replace(cfg, data=replace(cfg.data, source="synthetic"))
    effective = settings()
    run = run_id(name, version, cfg)
    metrics = effective.home / "runs" / run / "metrics.jsonl"
    if os.environ.get("RANK", "0") == "0":
        console.print(f"run {run}: {name}@v{version}, preset {cfg.preset}, objective {cfg.objective.kind}, "
                      f"{cfg.run.steps} steps; metrics -> {metrics}")
    summary = train(store(), name, version, cfg, stop_after=stop_after, metrics_path=metrics, echo=console.print)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports and records
        return
    _record_run(summary, cfg.to_dict())
    stats = summary.collapse
    console.print(f"[bold]{'finished' if summary.finished else 'stopped'}[/bold] {summary.run} at step "
                  f"{summary.steps}: loss {summary.final_loss:.4f}, std {stats.get('std_mean', float('nan')):.3f}, "
                  f"rankme {stats.get('rankme', float('nan')):.1f}, content share "
                  f"{stats.get('content_share_normed', float('nan')):.3f} (layer-normed; near 0: features of the "
                  f"position alone); checkpoint {summary.checkpoint_key}")


def _record_run(summary, config: dict) -> None:
    """The launching command records the run in the catalog (the loop itself only writes the store)."""
    from alliance.cli.common import catalog
    from alliance.runs import RUNNING, SUCCEEDED, record_run

    cat = catalog(upgrade=True)
    try:
        record_run(cat, summary.run, "train", SUCCEEDED if summary.finished else RUNNING, config=config,
                   summary={"dataset": f"{summary.dataset}@v{summary.version}", "steps": summary.steps,
                            "final_loss": summary.final_loss, "checkpoint": summary.checkpoint_key,
                            "collapse": summary.collapse})
    finally:
        cat.dispose()


@app.command("probe")
def probe(
    checkpoint: str = typer.Argument(..., help="checkpoints/RUN/step-K.pt, or a run id for its latest checkpoint."),
    train_clips: int = typer.Option(512, "--train-clips"),
    test_clips: int = typer.Option(256, "--test-clips"),
    seed: int = typer.Option(0, "--seed"),
    pool: str = typer.Option("time", "--pool", help="time (per-tubelet means over space: a random encoder cannot read "
                                                    "the motion off them), tokens (every token) or mean (the "
                                                    "exported mean-pooled vector)."),
    encoder: str = typer.Option("target", "--encoder", help="target (the EMA teacher, what export writes and "
                                                             "V-JEPA evaluates) or context."),
) -> None:
    """Linear probe of the frozen encoder on the 8-direction moving-object task vs random-init encoders."""
    from training.checkpoint import resolve_checkpoint
    from training.probe import probe_checkpoint

    st = store()
    key = resolve_checkpoint(st, checkpoint)
    result = probe_checkpoint(st, key, n_train=train_clips, n_test=test_clips, seed=seed, pool=pool, which=encoder)
    console.print(f"probe of {key} (step {result.step}, {result.encoder} encoder), {result.n_train} train / "
                  f"{result.n_test} test clips, pool {result.pool}:")
    console.print(f"  trained encoder      {result.accuracy:6.1%}")
    randoms = result.random_init_accuracies
    console.print(f"  random-init encoders {result.random_init_accuracy:6.1%}  (mean of {len(randoms)}: "
                  + ", ".join(f"{a:.1%}" for a in randoms) + ")")
    console.print(f"  frame-diff pixels    {result.pixel_baseline_accuracy:6.1%}")
    console.print(f"  chance               {result.chance:6.1%}")


@app.command("export")
def export(checkpoint: str = typer.Argument(..., help="checkpoints/RUN/step-K.pt, or a run id."),
           encoder: str = typer.Option("target", "--encoder", help="target (the EMA teacher, as V-JEPA evaluates; a "
                                                                    "SIGReg run has only the context encoder) or "
                                                                    "context.")) -> None:
    """Write the encoder as TorchScript + encoder.json for curation's embedding stage."""
    from training.checkpoint import resolve_checkpoint
    from training.export import export_encoder

    st = store()
    key = export_encoder(st, resolve_checkpoint(st, checkpoint), which=encoder)
    console.print(f"encoder {st.describe(key)} (+ encoder.json beside it)")

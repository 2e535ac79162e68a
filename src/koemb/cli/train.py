"""`koemb run`, `koemb train`, `koemb validate`: a thin layer over `koemb.train.pipeline`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from koemb.cli import app

console = Console()
def _main_process() -> bool:
    # Under torchrun / accelerate launch every process runs the command; one of them reports.
    return int(os.environ.get("RANK", "0")) == 0


SET_HELP = "Override a config value, e.g. --set stages.0.lr=1e-4 (repeatable)."


@app.command("run")
def run_cmd(
    config: Path = typer.Option(..., "--config", help="Pipeline YAML (see configs/demo.yaml)."),
    out: Path = typer.Option(..., "--out", help="Output folder: expanded/, stages/<name>/, final/, eval/, checkpoints/, config.yaml."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Everything: expand the tokenizer, expand + initialise the model, train every stage, evaluate, report."""
    from koemb.errors import UserError
    from koemb.train.pipeline import load_pipeline, run_pipeline, validate_pipeline

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    cfg = load_pipeline(config, set_)
    # Everything checkable without running (files, suite, model, LoRA target names) fails here,
    # before the output folder is touched, not hours later in the stage that needs it.
    validate_pipeline(cfg, str(config))
    run_pipeline(cfg, out, resume=resume, overwrite=overwrite)
    report = out / "eval" / "report.md"
    if _main_process():
        console.print(f"done: final model in {out / 'final'}" + (f", report in {report}" if report.is_file() else ""))


@app.command("train")
def train_cmd(
    config: Path = typer.Option(..., "--config", help="Pipeline YAML; its `stages:` are run."),
    out: Path = typer.Option(..., "--out", help="Output folder (stages/<name>/, checkpoints/, logs/)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Expanded model to start from (default: `expanded_model` or OUT/expanded)."),
    resume: bool = typer.Option(False, "--resume", help="Skip finished stages; continue the current one from its last checkpoint."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Run the stages only, from an expanded model."""
    from koemb.config import dump_yaml_model
    from koemb.train.pipeline import load_pipeline, train_stages

    from koemb.train.lock import RunLock

    cfg = load_pipeline(config, set_)
    lock = RunLock(out, takeover=resume) if _main_process() else None
    if lock is not None:
        lock.acquire()
    try:
        if _main_process() and not resume:
            dump_yaml_model(cfg, out / "config.yaml")
        last = train_stages(cfg, out, model=model, resume=resume)
    finally:
        if lock is not None:
            lock.release()
    if _main_process():
        console.print(f"done: last stage in {last}")


@app.command("validate")
def validate_cmd(
    config: Path = typer.Option(..., "--config", help="Pipeline YAML to check."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check a pipeline config without running it: schema, files, suite, model and LoRA target names."""
    from koemb.train.pipeline import load_pipeline, validate_pipeline

    cfg = load_pipeline(config, set_)
    notes = validate_pipeline(cfg, str(config))
    for n in notes:
        console.print(f"[yellow]not checked:[/] {n}", highlight=False)
    def kinds(stages) -> str:
        return ", ".join(f"{s.name} ({s.train.kind}, {'+'.join(s.objective.parts())})" for s in stages)

    refit = f"; then refit: {kinds(cfg.refit)}" if cfg.refit else ""
    console.print(f"{config}: valid; {len(cfg.stages)} stages: {kinds(cfg.stages)}{refit}", highlight=False)

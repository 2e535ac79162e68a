"""`koemb evaluate`: a thin layer over `koemb.eval.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from koemb.cli import app
from koemb.errors import UserError

console = Console()


@app.command("evaluate")
def evaluate_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="Model under test: folder or hub id."),
    baseline: list[str] = typer.Option([], "--baseline", help="Baseline model(s) to compare against (repeatable); the first is the Δ reference."),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Suite YAML (see configs/suites/); relative paths in it resolve against its folder."),
    out: Path = typer.Option(..., "--out", help="Output folder: results.json, report.md, charts/."),
    label: Optional[str] = typer.Option(None, "--label", help="Label of --model in the results (default: its folder name)."),
    baseline_label: list[str] = typer.Option([], "--baseline-label", help="Labels of the baselines, in order."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset for every model (qwen3-embedding, e5, ...); default: detected from each model's files."),
    preset_set: list[str] = typer.Option([], "--preset-set", help="Override a preset field for every model, e.g. --preset-set max_length=256 (repeatable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)."),
    mteb: Optional[str] = typer.Option(None, "--mteb", help="Comma-separated official MTEB tasks, e.g. Ko-StrategyQA,AutoRAGRetrieval (needs mteb and a network)."),
    set_: list[str] = typer.Option([], "--set", help="Override a suite field, e.g. --set tasks.0.limit=100."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's; on a busy machine fewer can be faster)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Re-encode corpora instead of reusing cached embeddings."),
) -> None:
    """Evaluate a model (and baselines) on a suite: retrieval, STS, separation, tokenizer and row statistics."""
    from koemb.config import parse_override
    from koemb.eval.run import evaluate
    from koemb.eval.suite import Suite, load_suite
    from koemb.eval.tasks import TASK_TYPES

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    preset_overrides = {}
    for item in preset_set:
        path, value = parse_override(item)
        if len(path) != 1:
            raise UserError(f"--preset-set {item!r}: expected FIELD=VALUE with a top-level preset field")
        preset_overrides[path[0]] = value
    mteb_tasks = [t.strip() for t in (mteb or "").split(",") if t.strip()]
    if suite is None and not mteb_tasks:
        raise UserError("give --suite SUITE.yaml and/or --mteb TASKS")
    if model is None and not baseline:
        raise UserError("give --model and/or --baseline")
    suite_obj = load_suite(suite, set_) if suite is not None else Suite.model_construct(tasks=[], max_length=None, batch_size=None, top_k=100)
    doc = evaluate(
        model, suite_obj, out, baselines=baseline, label=label, baseline_labels=baseline_label or None, preset=preset,
        preset_overrides=preset_overrides, device=device, mteb_tasks=mteb_tasks, seed=seed, use_cache=not no_cache,
    )
    results = doc["results"]
    main = {t.name: TASK_TYPES[t.type].main_metric for t in suite_obj.tasks}
    for label_results in results.values():
        main.update({t: "main_score" for t, m in label_results.items() if "main_score" in m})
    table = Table("task", "metric", *results)
    for task, metric in main.items():
        table.add_row(task, metric, *[f"{100 * results[lab][task][metric]:.2f}" if metric in results[lab].get(task, {}) else "–" for lab in results])
    console.print(table)
    console.print(f"wrote {out / 'results.json'} and {out / 'report.md'}")

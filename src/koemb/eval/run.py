"""`evaluate`: every model (baselines first) on every task of a suite -> results.json, report.md, charts.

results.json:
```
{"results":    {label: {task: {metric: value}}},       # fractions, as MTEB stores them
 "provenance": {"versions": {...}, "seed": 0, "git_commit": "...", "suite": {...},
                "models": {label: {"source", "role", "preset", "prompts": {task: {...}}}}}}
```
Per task, next to its quality metrics: tokenizer statistics (`tokens_per_char`, `tokens_per_hangul`,
`truncated_share`, `new_token_share` for expanded models) and throughput (`texts_per_second` over
the texts actually encoded; a corpus served from the cache is not counted). An expanded model (its
folder has `expansion.json`) also gets the pseudo-task `embedding-rows`.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from koemb.errors import UserError
from koemb.eval.report import markdown_report, write_charts
from koemb.eval.rowstats import embedding_row_stats, first_new_id
from koemb.eval.suite import Suite, TaskSpec, load_suite
from koemb.eval.tasks import TASK_TYPES, read_task_data
from koemb.eval.tokstats import tokenizer_stats
from koemb.model.encoder import Encoder

log = logging.getLogger(__name__)

VERSIONED = ("koemb", "torch", "transformers", "tokenizers", "sentence-transformers", "pytrec-eval-terrier", "mteb", "numpy")


@dataclass
class ModelEntry:
    """A model to evaluate: a folder / hub id, or an already loaded `Encoder` (e.g. the training loop's)."""

    source: str | Path | Encoder
    label: str
    role: str  # "baseline" or "model"


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the koemb checkout (with `-dirty` when it has local changes); None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _labels(entries: list[tuple[str | Path | Encoder, str | None, str]]) -> list[ModelEntry]:
    out, seen = [], set()
    for source, label, role in entries:
        if label is None:
            label = source.name if isinstance(source, Encoder) else (Path(source).name or str(source))
        base, n = label, 2
        while label in seen:
            label, n = f"{base}-{n}", n + 1
        seen.add(label)
        out.append(ModelEntry(source, label, role))
    return out


def prompts_used(encoder: Encoder, task: TaskSpec) -> dict[str, str]:
    """The exact prefixes this task put before its texts, for provenance."""
    p = encoder.preset
    if task.type == "retrieval":
        return {"query": p.query_prefix(task.instruction), "document": p.document_prompt}
    return {"both": p.symmetric_prefix(task.instruction)}


def evaluate_encoder(
    encoder: Encoder, suite: Suite, *, data_cache: dict[str, Any] | None = None, first_new: int | None = None, use_cache: bool = True
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """All tasks of `suite` for one encoder: (task -> metrics, task -> prompts used)."""
    data_cache = data_cache if data_cache is not None else {}
    results: dict[str, dict[str, float]] = {}
    prompts: dict[str, dict[str, str]] = {}
    for task in suite.tasks:
        tt = TASK_TYPES[task.type]
        if task.name not in data_cache:
            data = read_task_data(task.type, task.reader, suite.resolve_path(task), task.split)
            data_cache[task.name] = tt.limit(data, task.limit) if task.limit else data
        data = data_cache[task.name]
        texts0, secs0 = encoder.stats.texts, encoder.stats.seconds
        metrics = dict(tt.run(encoder, data, task.instruction, suite.top_k, use_cache))
        n_texts, secs = encoder.stats.texts - texts0, encoder.stats.seconds - secs0
        metrics.update(
            tokenizer_stats(encoder.tokenizer, tt.raw_texts(data), tt.prompted(encoder, data, task.instruction), encoder.preset.max_length, first_new)
        )
        metrics["texts_encoded"] = float(n_texts)
        metrics["texts_per_second"] = n_texts / secs if secs > 0 else float("nan")
        results[task.name] = metrics
        prompts[task.name] = prompts_used(encoder, task)
        log.info("%s / %s: %s", encoder.name, task.name, {k: round(v, 4) for k, v in metrics.items() if k == tt.main_metric})
    return results, prompts


def evaluate(
    model: str | Path | Encoder | None,
    suite: Suite | str | Path,
    out: str | Path,
    *,
    baselines: Sequence[str | Path | Encoder] = (),
    label: str | None = None,
    baseline_labels: Sequence[str] | None = None,
    preset: str | None = None,
    preset_overrides: dict[str, Any] | None = None,
    device: str | None = None,
    mteb_tasks: Sequence[str] = (),
    seed: int = 0,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (and its baselines) on a suite; write `out/results.json`, `out/report.md`, charts.

    Args:
        model: folder or hub id (or a loaded `Encoder`) of the model under test; None for baselines only.
        suite: a `Suite` or the path of a suite YAML.
        out: output folder (created).
        baselines: models to compare against; the first one is the reference of the Δ columns.
        label: the model's label (default: its folder name); baseline_labels likewise.
        preset: a preset name for every model, instead of detecting each from its files.
        preset_overrides: preset fields to replace for every model (e.g. `{"pooling": "mean"}`);
            the suite's `max_length` wins over one given here.
        mteb_tasks: official MTEB task names to run too (needs `mteb` and, for downloads, a network).
        seed: recorded and set (evaluation itself is deterministic).
        use_cache: reuse cached corpus embeddings (per model fingerprint, preset and texts).

    Returns:
        The mapping written to results.json.
    """
    torch.manual_seed(seed)
    suite_obj = load_suite(suite) if not isinstance(suite, Suite) else suite
    if model is None and not baselines:
        raise UserError("nothing to evaluate: give a model and/or baselines")
    if len(baseline_labels or []) > len(baselines):
        raise UserError(f"{len(baseline_labels or [])} baseline labels for {len(baselines)} baselines")
    b_labels = list(baseline_labels or []) + [None] * (len(baselines) - len(baseline_labels or []))
    entries = _labels([*[(b, lab, "baseline") for b, lab in zip(baselines, b_labels, strict=True)], *([(model, label, "model")] if model is not None else [])])
    out = Path(out)  # created only once there is something to write: a bad input leaves nothing behind

    overrides = dict(preset_overrides or {})
    if suite_obj.max_length is not None:
        overrides["max_length"] = suite_obj.max_length
    results: dict[str, dict[str, dict[str, float]]] = {}
    models_prov: dict[str, Any] = {}
    data_cache: dict[str, Any] = {}
    for entry in entries:
        if isinstance(entry.source, Encoder):
            # A view on the caller's model with this suite's settings; the caller's Encoder is untouched.
            src = entry.source
            enc = Encoder(src.model, src.tokenizer, src.preset.with_overrides(**overrides) if overrides else src.preset,
                          batch_size=suite_obj.batch_size or src.batch_size, device=src.device, show_progress=src.show_progress)
            enc.fingerprint, enc.source = src.fingerprint, src.source
            first_new = None
        else:
            enc = Encoder.load(entry.source, preset=preset, overrides=overrides, device=device, batch_size=suite_obj.batch_size or 32)
            first_new = first_new_id(entry.source) if Path(entry.source).is_dir() else None
        enc.name = entry.label
        task_results, prompts = evaluate_encoder(enc, suite_obj, data_cache=data_cache, first_new=first_new, use_cache=use_cache)
        if first_new is not None:
            task_results["embedding-rows"] = embedding_row_stats(enc.model.get_input_embeddings().weight, first_new, end=len(enc.tokenizer))
        if mteb_tasks:
            from koemb.eval.mteb_tasks import run_mteb

            task_results.update(run_mteb(enc, list(mteb_tasks), out / "mteb" / entry.label))
        results[entry.label] = task_results
        models_prov[entry.label] = {
            "source": str(entry.source.source if isinstance(entry.source, Encoder) else entry.source),
            "role": entry.role,
            "preset": enc.preset.model_dump(),
            "prompts": prompts,
            "device": str(enc.device),
            "dtype": str(next(enc.model.parameters()).dtype),
        }
        if not isinstance(entry.source, Encoder):
            del enc
            gc.collect()

    main_metric = {t.name: TASK_TYPES[t.type].main_metric for t in suite_obj.tasks}
    for label_results in results.values():
        main_metric.update({t: "main_score" for t, m in label_results.items() if "main_score" in m})
    doc = {
        "results": results,
        "provenance": {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "seed": seed,
            "git_commit": git_commit(),
            "suite": suite_obj.model_dump(mode="json"),
            "suite_base_dir": str(suite_obj._base_dir) if suite_obj._base_dir else None,
            "mteb_tasks": list(mteb_tasks),
            "models": models_prov,
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2, allow_nan=True), encoding="utf-8")
    b = [e.label for e in entries if e.role == "baseline"]
    m = [e.label for e in entries if e.role == "model"]
    (out / "report.md").write_text(markdown_report(results, b, m, main_metric), encoding="utf-8")
    charts = write_charts(results, [*b, *m], main_metric, out / "charts", baseline=b[0] if b else None)
    if charts:
        with (out / "report.md").open("a", encoding="utf-8") as fh:
            fh.write("\n" + "\n".join(f"![{c.stem}](charts/{c.name})" for c in charts) + "\n")
    return doc

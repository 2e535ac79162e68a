"""`report.md` and PNG charts from a results mapping (label -> task -> metric -> value).

Quality metrics are fractions in results.json (as MTEB stores them) and shown x100 in the report;
each table puts the baseline(s) first and then, per model, the absolute and relative change against
the first baseline, as the seed presented its results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

QUALITY = ("main_score", "ndcg@10", "map@10", "recall@10", "precision@10", "mrr@10", "spearman", "pearson", "separation", "similar_mean", "different_mean")
# Matplotlib's default fonts have no Hangul: chart labels use these English names of the seed's domains.
DOMAIN_EN = {
    "일상대화": "daily talk", "기술/IT": "tech/IT", "경제/금융": "economy", "의료/건강": "health", "비즈니스": "business",
    "교육": "education", "사회/문화": "society", "법률/정치": "law/politics", "스포츠": "sports", "과학": "science",
}

Results = Mapping[str, Mapping[str, Mapping[str, float]]]


def _fmt(metric: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if metric in QUALITY or metric.startswith("separation["):
        return f"{100 * v:.2f}"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _delta(metric: str, base: float | None, new: float | None) -> tuple[str, str]:
    if base is None or new is None or any(isinstance(x, float) and math.isnan(x) for x in (base, new)):
        return "–", "–"
    scale = 100 if (metric in QUALITY or metric.startswith("separation[")) else 1
    rel = f"{100 * (new - base) / abs(base):+.1f}%" if base else "–"
    return f"{scale * (new - base):+.2f}", rel


def _tasks(results: Results, labels: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(t for lab in labels for t in results.get(lab, {})))


def markdown_report(results: Results, baselines: Sequence[str], models: Sequence[str], main_metric: Mapping[str, str], title: str = "koemb evaluation") -> str:
    """The whole report as Markdown text."""
    labels = [*baselines, *models]
    base = baselines[0] if baselines else None
    lines = [f"# {title}", "", "Quality metrics x100 (results.json holds fractions). Δ: change against the first baseline."
             if base else "Quality metrics x100 (results.json holds fractions).", ""]

    def header(cols: list[str]) -> list[str]:
        return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def row_cells(task: str, metric: str) -> list[str]:
        cells = [_fmt(metric, results.get(lab, {}).get(task, {}).get(metric)) for lab in labels]
        if base:
            b = results.get(base, {}).get(task, {}).get(metric)
            for lab in models:
                cells.extend(_delta(metric, b, results.get(lab, {}).get(task, {}).get(metric)))
        return cells

    delta_cols = [c for lab in models for c in (f"Δ {lab}", f"Δ% {lab}")] if base else []
    tasks = [t for t in _tasks(results, labels) if t in main_metric]
    lines += ["## Summary (main metric per task)", "", *header(["task", "metric", *labels, *delta_cols])]
    for task in tasks:
        m = main_metric[task]
        lines.append("| " + " | ".join([task, m, *row_cells(task, m)]) + " |")
    for task in _tasks(results, labels):
        metrics = list(dict.fromkeys(m for lab in labels for m in results.get(lab, {}).get(task, {})))
        lines += ["", f"## {task}", "", *header(["metric", *labels, *delta_cols])]
        for m in metrics:
            lines.append("| " + " | ".join([m, *row_cells(task, m)]) + " |")
    lines.append("")
    return "\n".join(lines)


def write_charts(results: Results, labels: Sequence[str], main_metric: Mapping[str, str], out_dir: Path,
                 baseline: str | None = None) -> list[Path]:
    """`main_metrics.png` (main metric per task, one bar per model), with a `baseline` also
    `main_metrics_change.png` (each other model's change against it, in points), and, if present,
    `separation_domains.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tasks = [t for t in _tasks(results, labels) if t in main_metric]
    if tasks:
        x = np.arange(len(tasks))
        width = 0.8 / max(len(labels), 1)
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
        for i, lab in enumerate(labels):
            vals = [100 * results.get(lab, {}).get(t, {}).get(main_metric[t], float("nan")) for t in tasks]
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=lab)
        ax.set_xticks(x, [f"{t}\n{main_metric[t]}" for t in tasks], fontsize=8)
        ax.set_ylabel("x100")
        # Beside the axes, not inside: with many models the legend would cover the last task's bars.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("main metric per task")
        fig.tight_layout()
        path = out_dir / "main_metrics.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
        others = [lab for lab in labels if lab != baseline]
        if baseline in labels and others:
            written.append(_change_chart(results, baseline, others, tasks, main_metric, out_dir / "main_metrics_change.png"))
    sep_tasks = [t for t in tasks if main_metric[t] == "separation"]
    for task in sep_tasks[:1]:
        domains = list(dict.fromkeys(
            m[len("separation["):-1] for lab in labels for m in results.get(lab, {}).get(task, {}) if m.startswith("separation[")
        ))
        if not domains:
            continue
        x = np.arange(len(domains))
        width = 0.8 / max(len(labels), 1)
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(domains)), 4))
        for i, lab in enumerate(labels):
            vals = [100 * results.get(lab, {}).get(task, {}).get(f"separation[{d}]", float("nan")) for d in domains]
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=lab)
        ax.set_xticks(x, [DOMAIN_EN.get(d, d) for d in domains], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("separation x100 (similar - different cosine)")
        ax.legend(fontsize=8)
        ax.set_title(f"{task}: separation per domain")
        fig.tight_layout()
        path = out_dir / "separation_domains.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def change_points(results: Results, baseline: str, labels: Sequence[str], tasks: Sequence[str],
                  main_metric: Mapping[str, str]) -> dict[str, list[float]]:
    """label -> [100 * (label's main metric - the baseline's) per task]; NaN where either lacks the task; pure."""
    nan = float("nan")
    out = {}
    for lab in labels:
        row = []
        for t in tasks:
            b = results.get(baseline, {}).get(t, {}).get(main_metric[t], nan)
            v = results.get(lab, {}).get(t, {}).get(main_metric[t], nan)
            row.append(100 * (v - b))
        out[lab] = row
    return out


def _change_chart(results: Results, baseline: str, labels: Sequence[str], tasks: Sequence[str],
                  main_metric: Mapping[str, str], path: Path) -> Path:
    """Grouped bars of 100 * (model - baseline) per task: the differences that matter here are a point or
    two on scores near 80-95, which bars drawn from zero (`main_metrics.png`) cannot show. A task the
    baseline lacks is a gap, not a zero."""
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(tasks))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    for i, (lab, vals) in enumerate(change_points(results, baseline, labels, tasks, main_metric).items()):
        # C0 is the baseline's colour in main_metrics.png (it comes first there): each model keeps its colour.
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=lab, color=f"C{i + 1}")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, [f"{t}\n{main_metric[t]}" for t in tasks], fontsize=8)
    ax.set_ylabel(f"change against {baseline} (points, x100)")
    ax.grid(axis="y", lw=0.3, alpha=0.6)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"main metric per task: change against {baseline}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_training_log(path: Path) -> dict[str, list[tuple[int, dict[str, float]]]]:
    """logs/train.jsonl -> stage -> [(step, {loss..., lr, grad_norm})]: stages in file order, steps ascending.

    A resumed run appends to the same file, so a step can repeat: the last record of a step wins.
    Lines that are not step records (stage_end events, a torn last line after a kill) are skipped.
    """
    import json

    stages: dict[str, dict[int, dict[str, float]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "event" in rec or not isinstance(rec.get("step"), int):
            continue
        vals = {k: float(v) for k, v in rec.items() if k not in ("stage", "step") and isinstance(v, (int, float))}
        stages.setdefault(str(rec.get("stage")), {})[rec["step"]] = vals
    return {s: sorted(steps.items()) for s, steps in stages.items()}


def write_training_chart(log_file: Path, out_path: Path) -> Path | None:
    """`training.png`: each loss term against the run's global step, stages side by side with
    dashed boundaries (stages have different objectives, so one stage's loss is not comparable with
    another's; the chart shows whether each stage's loss went down). None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = read_training_log(log_file) if log_file.is_file() else {}
    stages = {s: recs for s, recs in stages.items() if recs}
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    offset = 0
    colors = {}
    for name, recs in stages.items():
        steps = [offset + s for s, _ in recs]
        terms = [k for k in recs[0][1] if k.startswith("loss_")] or ["loss"]
        for term in terms:
            color = colors.setdefault(term, f"C{len(colors)}")
            ax.plot(steps, [v.get(term, float("nan")) for _, v in recs], color=color, lw=1,
                    label=term if term not in ax.get_legend_handles_labels()[1] else None)
        ax.axvline(offset, color="grey", ls="--", lw=0.7)
        ax.text(offset, 0.98, f"{name} ", transform=ax.get_xaxis_transform(), va="top", ha="right", rotation=90, fontsize=7)
        offset = steps[-1]
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step (stages in order)")
    ax.set_ylabel("loss (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path

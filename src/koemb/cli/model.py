"""`koemb model ...`: give a model rows for an expanded tokenizer (a thin layer over `koemb.model`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from koemb.cli import app

model_app = typer.Typer(help="Model work: expand the embedding for an expanded tokenizer, prune new tokens (and measure the saving per number kept), interpolate towards the base.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("expand")
def expand(
    model: str = typer.Option(..., "--model", help="Base model: folder (transformers or sentence-transformers) or hub id."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Expanded tokenizer folder (from `koemb vocab expand`)."),
    out: Path = typer.Option(..., "--out", help="Output folder (sentence-transformers layout + expansion.json)."),
    init: str = typer.Option("mean", "--init", help="Init method for new rows: mean (FVT), mean_norm (mean at the pieces' mean norm), first, random."),
    noise_std: float = typer.Option(0.0, "--noise-std", help="Gaussian noise on new rows, std relative to the old rows' scale."),
    seed: int = typer.Option(0, "--seed", help="Seed for noise and random init."),
    preset: str | None = typer.Option(None, "--preset", help="Pooling/padding/prompt preset; default: detected."),
    base_tokenizer: str | None = typer.Option(None, "--base-tokenizer", help="The model's own tokenizer, if its folder has none."),
    max_seq_length: int | None = typer.Option(None, "--max-seq-length", help="Override the preset's max length."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .bin/.pt pickle weights (they can run code)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Resize the embedding to the expanded tokenizer and initialise the new rows."""
    from koemb.model.expand import expand_model

    folder = expand_model(
        model, tokenizer, out, init=init, noise_std=noise_std, seed=seed, preset=preset,
        base_tokenizer=base_tokenizer, max_seq_length=max_seq_length, trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle, overwrite=overwrite,
    )
    info = json.loads((folder / "expansion.json").read_text(encoding="utf-8"))
    rows = info["rows"]
    typer.echo(
        f"wrote {folder}: {len(info['tokens'])} new tokens, rows {rows['before']} -> {rows['after']} "
        f"({rows['spare_rows_overwritten']} spare rows reused), init {info['init']['method']}"
    )


@model_app.command("prune")
def prune(
    model: Path = typer.Option(..., "--model", help="Expanded model folder written by koemb (with expansion.json)."),
    keep: int = typer.Option(..., "--keep", help="How many new tokens to keep."),
    out: Path = typer.Option(..., "--out", help="Output folder (sentence-transformers layout)."),
    rank_by: str = typer.Option(
        "order", "--rank-by",
        help="Which KEEP: order = the first in expansion order; usage = the most emitted on --corpus "
        "(without it, on the expansion's corpus as expansion.json counted it); balanced = usage with each "
        "--corpus file weighing the same; fidelity = most base pieces saved per unit of damage (how far one occurrence "
        "moves the model's embedding of a chunk of --corpus text from the chunk spelt out in base pieces; runs the model).",
    ),
    corpus: list[Path] = typer.Option(
        [], "--corpus", help="Training files to count uses on (.txt, .jsonl text or pairs), one source each; repeatable.",
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Keep only KEEP new tokens (and their rows): rare, barely trained rows cost quality."""
    from koemb.errors import UserError
    from koemb.model.prune import corpus_sources, prune_model

    if corpus and rank_by == "order":
        raise UserError("--corpus counts token uses: it needs --rank-by usage, balanced or fidelity")
    folder = prune_model(
        model, out, keep, rank_by=rank_by, sources=corpus_sources(corpus) if corpus else None,
        overwrite=overwrite, trust_remote_code=trust_remote_code,
    )
    info = json.loads((folder / "expansion.json").read_text(encoding="utf-8"))
    p = info["pruned"]
    typer.echo(
        f"wrote {folder}: kept {p['kept']} of {p['from']} new tokens ({p['rank_by']}), rows {p['rows']['before']} -> {p['rows']['after']}"
    )


def _keeps(spec: str) -> list[int]:
    from koemb.errors import UserError

    try:
        return [int(x.replace("_", "")) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--keep: expected numbers separated by commas (e.g. 10000,12000,14000); got {spec!r}") from None


@model_app.command("prune-curve")
def prune_curve_cmd(
    model: Path = typer.Option(..., "--model", help="Expanded folder with expansion.json: a model, or a tokenizer from `koemb vocab expand`."),
    keep: str = typer.Option(None, "--keep", help="Numbers of new tokens to measure, comma-separated (e.g. 10000,12000,14000)."),
    step: int = typer.Option(None, "--step", help="Measure every STEP new tokens, from STEP up to all of them (instead of --keep)."),
    text: list[Path] = typer.Option([], "--text", help="Text to count tokens on (.txt, .jsonl text or pairs), one set per file; repeatable."),
    suite: Path = typer.Option(None, "--suite", help="An evaluation suite YAML: count tokens on its tasks' texts (raw, without prompts)."),
    task: list[str] = typer.Option([], "--task", help="With --suite: only these tasks (repeatable); default every task whose text is mostly Hangul."),
    rank_by: str = typer.Option("usage", "--rank-by", help="Which tokens stay, as in `koemb model prune --rank-by`."),
    corpus: list[Path] = typer.Option([], "--corpus", help="Training files to count uses on, as in `koemb model prune --corpus`; repeatable."),
    config: Path = typer.Option(None, "--config", help="A `koemb run` config: count uses on its tokenizer corpus and stage data, as its `prune:` does."),
    target: float = typer.Option(None, "--target", help="Report the smallest measured N that makes EVERY set at least this many percent shorter."),
    out: Path = typer.Option(None, "--out", help="Write the curve as JSON here."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG of the curve here."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """How much shorter text gets with N new tokens kept, for several N: pick `prune.keep_new_tokens` on compression alone."""
    from rich.console import Console
    from rich.table import Table

    from koemb.errors import UserError
    from koemb.model.prune import corpus_sources
    from koemb.model.prune_curve import expansion_of, prune_curve, step_keeps, suite_text_sets, write_curve_plot

    if (keep is None) == (step is None):
        raise UserError("give either --keep N,N,... or --step N")
    if step is not None and step < 1:
        raise UserError(f"--step must be at least 1; got {step}")
    if corpus and config is not None:
        raise UserError("give --corpus or --config, not both (both name the text to count token uses on)")
    if (corpus or config is not None) and rank_by == "order":
        raise UserError("--corpus / --config count token uses: they need --rank-by usage, balanced or fidelity")
    if target is not None and not 0 < target < 100:
        raise UserError(f"--target is a percentage between 0 and 100; got {target}")
    if task and suite is None:
        raise UserError("--task picks tasks of a suite: give --suite too")
    sets: dict[str, list[str]] = {}
    for f in text:
        # A set is named by its file's stem (its path when two files share one).
        name = str(f) if f.stem in sets or any(g.stem == f.stem for g in text if g != f) else f.stem
        sets[name] = [t for texts in corpus_sources([f]).values() for t in texts if t.strip()]
    if suite is not None:
        sets.update(suite_text_sets(suite, task))
    keeps = step_keeps(len(expansion_of(model)["tokens"]), step) if step is not None else _keeps(keep)
    sources = corpus_sources(corpus) if corpus else None
    if config is not None:
        from koemb.train.pipeline import load_pipeline, training_sources

        sources = training_sources(load_pipeline(config))
    curve = prune_curve(model, keeps, sets, rank_by=rank_by, sources=sources, trust_remote_code=trust_remote_code)
    table = Table(title=f"fewer tokens than the base, {model.name} ({curve.new_tokens:,} new tokens, ranked by {rank_by})")
    table.add_column("kept", justify="right")
    for name in curve.base_tokens:
        table.add_column(name, justify="right")
    for p in curve.points:
        table.add_row(f"{p.keep:,}", *(f"{100 * p.reduction[n]:.2f}%" for n in curve.base_tokens))
    Console().print(table)
    frac = target / 100 if target is not None else None
    if frac is not None:
        best = curve.smallest_keep(frac)
        typer.echo(f"smallest measured N with >= {target:g}% fewer tokens on every set: {best:,}" if best is not None
                   else f"no measured N makes every set {target:g}% shorter")
    if out is not None:
        doc = curve.to_json()
        if frac is not None:
            doc["target"] = {"reduction": frac, "smallest_keep": curve.smallest_keep(frac)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
        typer.echo(f"wrote {out}")
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        typer.echo(f"wrote {write_curve_plot(curve, plot, frac)}")


@model_app.command("interpolate")
def interpolate(
    model: Path = typer.Option(..., "--model", help="Trained model folder (a stage, final/)."),
    anchor: str = typer.Option(..., "--anchor", help="Where the line starts: the base model (folder or hub id), the run's expanded/ (the new rows move towards their init too) or an earlier stage's folder."),
    alpha: float = typer.Option(0.5, "--alpha", help="0 = the anchor, 1 = the trained model; 0.5 is the usual default."),
    out: Path = typer.Option(..., "--out", help="Output folder (sentence-transformers layout)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow the anchor's .bin/.pt pickle weights (they can run code)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Move a trained model back towards its base: anchor + ALPHA * (model - anchor), weight by weight (WiSE-FT).

    Rows of the tokens both models have are interpolated (new tokens matched by text after a prune ranked by
    use); with the base as the anchor the new rows stay as trained.
    """
    from koemb.model.interpolate import interpolate_models

    folder = interpolate_models(
        anchor, model, out, alpha, overwrite=overwrite, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
    )
    typer.echo(f"wrote {folder}: {model} interpolated towards {anchor} at alpha {alpha:g}")

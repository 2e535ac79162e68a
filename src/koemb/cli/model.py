"""`koemb model ...`: give a model rows for an expanded tokenizer (a thin layer over `koemb.model`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from koemb.cli import app

model_app = typer.Typer(help="Model work: expand the embedding for an expanded tokenizer, prune new tokens, interpolate towards the base.", no_args_is_help=True)
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


@model_app.command("interpolate")
def interpolate(
    model: Path = typer.Option(..., "--model", help="Trained model folder (a stage, final/)."),
    anchor: str = typer.Option(..., "--anchor", help="Where the line starts: the base model (folder or hub id) or an earlier stage's folder."),
    alpha: float = typer.Option(0.5, "--alpha", help="0 = the anchor, 1 = the trained model; 0.5 is the usual default."),
    out: Path = typer.Option(..., "--out", help="Output folder (sentence-transformers layout)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow the anchor's .bin/.pt pickle weights (they can run code)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Move a trained model back towards its base: anchor + ALPHA * (model - anchor), weight by weight (WiSE-FT).

    Rows of the ids both tokenizers share are interpolated; new rows stay as trained.
    """
    from koemb.model.interpolate import interpolate_models

    folder = interpolate_models(
        anchor, model, out, alpha, overwrite=overwrite, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
    )
    typer.echo(f"wrote {folder}: {model} interpolated towards {anchor} at alpha {alpha:g}")

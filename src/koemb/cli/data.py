"""`koemb data ...`: training files from the Korean data (a thin layer over `koemb.data.build_train`)."""

from __future__ import annotations

from pathlib import Path

import typer

from koemb.cli import app

data_app = typer.Typer(help="Data work: build training files (pairs, unlabeled text).", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@data_app.command("build-train")
def build_train_cmd(
    data: Path | None = typer.Option(None, "--data", help="Korean data folder (korsts/, chatbot_data/, ...)."),
    out: Path = typer.Option(..., "--out", help="Output folder: pairs/, unlabeled/, manifest.json."),
    config: Path | None = typer.Option(None, "--config", help="YAML with BuildTrainConfig fields (sources, hub data sets, ...)."),
    pair_sources: str | None = typer.Option(None, "--pair-sources", help="Comma-separated pair sources (default: all)."),
    text_sources: str | None = typer.Option(None, "--text-sources", help="Comma-separated unlabeled-text sources (default: all)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: KEY=VALUE (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Turn the Korean data into training pairs and unlabeled text, leaving evaluation data out."""
    from koemb.config import apply_overrides, load_yaml_model, validate_model
    from koemb.data.build_train import BuildTrainConfig, build_train

    if config is not None:
        cfg = load_yaml_model(BuildTrainConfig, config, set_)
    else:
        cfg = validate_model(BuildTrainConfig, apply_overrides({}, set_), "--set")
    if pair_sources is not None:
        cfg.pair_sources = _split(pair_sources)
    if text_sources is not None:
        cfg.text_sources = _split(text_sources)
    manifest = build_train(data, out, cfg, overwrite=overwrite)
    for section in ("pairs", "unlabeled"):
        for name, entry in manifest[section].items():
            typer.echo(f"{section:9s} {name:16s} {entry['rows']:7d}  {entry['file']}")
    t = manifest["totals"]
    typer.echo(f"wrote {out}: {t['pairs']} pairs, {t['unlabeled_texts']} texts; manifest.json lists what was read, dropped and excluded")


@data_app.command("mine-negatives")
def mine_negatives_cmd(
    model: str = typer.Option(..., "--model", help="Model folder or hub id that ranks the candidates (usually the base model)."),
    pairs: Path = typer.Option(..., "--pairs", help="Pairs JSONL (query, positive, ...) to give a hard negative each."),
    out: Path = typer.Option(..., "--out", help="Pairs JSONL to write (with `negative`); a summary goes to OUT.mine.json."),
    extra_docs: list[Path] = typer.Option([], "--extra-docs", help="Corpus files whose texts join the candidates (repeatable)."),
    margin: float = typer.Option(0.95, "--margin", help="Pass over candidates scoring above MARGIN x the query's positive (likely false negatives)."),
    skip: int = typer.Option(0, "--skip", help="Take the (SKIP+1)-th permitted candidate instead of the hardest."),
    depth: int = typer.Option(50, "--depth", help="How many best-ranked documents per query are looked at."),
    replace_negatives: bool = typer.Option(False, "--replace-negatives", help="Also mine for pairs that already have a negative."),
    keep_unmatched: bool = typer.Option(
        False, "--keep-unmatched", help="Keep pairs no candidate passed for, without a negative (default: leave them out; in a batch they take the hard negatives from every other example)."
    ),
    prompts: bool = typer.Option(True, "--prompts/--no-prompts", help="Prompt texts as the model's card says (off when the data has them written in)."),
    task: str | None = typer.Option(None, "--task", help="Query instruction for an instruction-prompted model (default: the preset's)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Truncate texts to this many tokens (default: the model's)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Give each query -> answer pair a hard negative: a document the model ranks high that is not its answer."""
    import json
    from dataclasses import asdict

    from koemb.data.corpus import iter_documents
    from koemb.data.mine import MineSettings, mine_negatives
    from koemb.data.pairs import read_pairs, write_pairs
    from koemb.errors import UserError
    from koemb.model.encoder import Encoder

    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists; pass --overwrite to replace it")
    settings = MineSettings(margin=margin, skip=skip, depth=depth, overwrite=replace_negatives)
    rows = read_pairs(pairs)
    extra = list(iter_documents(extra_docs)) if extra_docs else []
    enc = Encoder.load(model, overrides={"max_length": max_length} if max_length else None, batch_size=batch_size)
    mined, stats = mine_negatives(rows, enc, settings, prompts=prompts, task=task, extra=extra, keep_unmatched=keep_unmatched)
    n = write_pairs(out, mined)
    summary = {"model": model, "pairs_file": str(pairs), "settings": asdict(settings), **stats.summary()}
    side = out.with_name(out.name + ".mine.json")
    side.write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    s = stats.summary()
    typer.echo(
        f"wrote {out}: {n} pairs, {s['mined']} with a mined negative (median rank {s['median_rank']}), "
        f"{s['kept_own']} kept their own, {s['none_found']} without ({s['dropped']} left out); {s['above_margin']} candidates passed over "
        f"as likely false negatives; summary in {side}"
    )

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

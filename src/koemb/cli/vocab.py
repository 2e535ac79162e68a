"""`koemb vocab ...`: donor training, the vocabulary diff, analysis and expansion."""

from __future__ import annotations

import typer

from koemb.cli import app

vocab_app = typer.Typer(help="Tokenizer work: train a donor, diff, analyze, expand.", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")

"""`koemb vocab ...`: donor training, the vocabulary diff, analysis and expansion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from koemb.cli import app

vocab_app = typer.Typer(help="Tokenizer work: train a donor, diff, analyze, expand.", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")
console = Console()

CORPUS_HELP = "Corpus file(s): .txt (a document per line) or .jsonl with a 'text' field, optionally .gz; or builtin:ko-sample."
SPLIT_PARTICLES_HELP = ("Drop new tokens (donor tokens; merges for the BPE methods) that are a known word plus a Korean "
                        "particle (' 정부의' = ' 정부' + '의'), so the word keeps its piece in every case form.")


@vocab_app.command("train-donor")
def train_donor_cmd(
    corpus: list[str] = typer.Option(..., "--corpus", help=CORPUS_HELP),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Donor vocabulary size."),
    like: str = typer.Option(..., "--like", help="Base tokenizer (folder or hub id) whose model type and text pipeline to copy."),
    out: Path = typer.Option(..., "--out", help="Output folder (tokenizer.json + donor.json)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Train a Korean donor tokenizer with the same model type, normaliser and pre-tokeniser as BASE."""
    from koemb.data.corpus import read_documents
    from koemb.vocab.donor import train_donor
    from koemb.vocab.io import load_tokenizer

    base = load_tokenizer(like, trust_remote_code)
    docs, _ = read_documents(corpus)
    tok = train_donor(base, docs, vocab_size, out)
    console.print(f"donor: {tok.get_vocab_size():,} tokens from {len(docs):,} documents -> {out}")


@vocab_app.command("diff")
def diff_cmd(
    base: str = typer.Option(..., "--base", help="Base tokenizer: folder, tokenizer.json or hub id."),
    donor: str = typer.Option(..., "--donor", help="Donor tokenizer: folder, tokenizer.json or hub id."),
    corpus: list[str] = typer.Option([], "--corpus", help=CORPUS_HELP + " Used for frequencies."),
    chars: Optional[str] = typer.Option(None, "--chars", help="Regex character class a token must consist of (default: Hangul syllables)."),
    no_leading_space: bool = typer.Option(False, "--no-leading-space", help="Reject tokens that start with a word-start space."),
    min_frequency: int = typer.Option(0, "--min-frequency", help="Keep donor tokens seen at least N times on the corpus."),
    max_count: Optional[int] = typer.Option(None, "--max-count", help="Keep at most N tokens, most frequent first."),
    split_particles: bool = typer.Option(False, "--split-particles", help=SPLIT_PARTICLES_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Write statistics and candidates as JSON here."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Donor tokens missing from the base, compared in one canonical text form, with filters."""
    from koemb.data.corpus import read_documents
    from koemb.vocab.diff import DiffFilters, vocab_diff
    from koemb.vocab.io import load_tokenizer

    kw = {"leading_space": not no_leading_space, "min_frequency": min_frequency, "max_count": max_count,
          "split_particles": split_particles}
    if chars:
        kw["chars"] = chars
    filters = DiffFilters(**kw)
    docs = read_documents(corpus)[0] if corpus else None
    res = vocab_diff(load_tokenizer(base, trust_remote_code), load_tokenizer(donor, trust_remote_code), docs, filters)
    table = Table("statistic", "value", title="vocabulary diff")
    for k, v in res.stats.items():
        if not isinstance(v, dict):
            table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
    console.print("most frequent candidates: " + " | ".join(repr(c.text) for c in res.candidates[:20]))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        console.print(f"written: {out}")


@vocab_app.command("analyze")
def analyze_cmd(
    tokenizer: list[str] = typer.Option(..., "--tokenizer", help="Tokenizer(s) to compare: folder, tokenizer.json or hub id."),
    corpus: list[str] = typer.Option(..., "--corpus", help=CORPUS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the rows as JSON here."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Side-by-side vocabulary sizes, overlap, Hangul tokens, and token cost on a corpus."""
    from koemb.data.corpus import read_documents
    from koemb.vocab.io import load_tokenizer
    from koemb.vocab.stats import analyze

    docs, _ = read_documents(corpus)
    rows = analyze([load_tokenizer(t, trust_remote_code) for t in tokenizer], docs)
    table = Table(title=f"tokenizers on {len(docs):,} documents")
    cols = ["vocab_size", "overlap_with_first", "hangul_tokens", "hangul_only_tokens", "incomplete_utf8_tokens",
            "tokens", "tokens_per_char", "tokens_per_hangul", "tokens_per_word"]
    table.add_column("statistic")
    for r in rows:
        table.add_column(str(r["tokenizer"]))
    for c in cols:
        table.add_row(c, *[f"{r[c]:.3f}" if isinstance(r[c], float) else f"{r[c]:,}" for r in rows])
    console.print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


@vocab_app.command("expand")
def expand_cmd(
    base: str = typer.Option(..., "--base", help="Base tokenizer: folder or hub id."),
    out: Path = typer.Option(..., "--out", help="Output tokenizer folder (with expansion.json)."),
    donor: Optional[str] = typer.Option(None, "--donor", help="Donor tokenizer: folder, tokenizer.json or hub id."),
    corpus: list[str] = typer.Option([], "--corpus", help=CORPUS_HELP),
    method: str = typer.Option("auto", "--method", help="auto | bpe-continue | bpe-donor | added-tokens | unigram | wordpiece"),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Minimum corpus count of a new merge / donor token."),
    max_new_tokens: int = typer.Option(40_000, "--max-new-tokens", help="Cap on added rows, intermediates included."),
    chars: Optional[str] = typer.Option(None, "--chars", help="Regex character class for donor tokens (default: Hangul syllables)."),
    split_particles: bool = typer.Option(False, "--split-particles", help=SPLIT_PARTICLES_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Expand BASE with the donor's Korean tokens; write a tokenizer folder AutoTokenizer loads."""
    from koemb.data.corpus import read_documents
    from koemb.vocab.diff import DiffFilters
    from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
    from koemb.config import validate_model

    filters: dict = {"chars": chars} if chars else {}
    filters["split_particles"] = split_particles
    settings = validate_model(
        ExpansionSettings,
        {"method": method, "min_frequency": min_frequency, "max_new_tokens": max_new_tokens, "filters": DiffFilters(**filters)},
        "command-line options",
    )
    docs = read_documents(corpus)[0] if corpus else []
    res = expand_tokenizer(base, out, donor, docs, settings, overwrite=overwrite, trust_remote_code=trust_remote_code)
    i = res.info
    used = "-" if i["used_on_corpus"] is None else f"{i['used_on_corpus']:.2%}"
    console.print(f"{i['method']}: added {i['added']:,} rows (ids {i['first_new_id']:,}..{i['vocab_size'] - 1:,}), "
                  f"kinds {i['kinds']}, used on the corpus: {used} -> {out}")

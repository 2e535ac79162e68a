"""Expand a base tokenizer with Korean tokens: the method registry and the output folder.

Methods (`--method`):
- `bpe-continue`: continue BPE training on the base's segmentation of the corpus, with merges
  restricted to Hangul bytes (see `bpe_extend`). Needs a byte-level BPE base and a corpus; a
  donor only labels which new tokens it also has.
- `bpe-donor`: the same, but a merge is allowed only if its text is a piece of one of the
  donor's new tokens ("donor − base", with every row reachable).
- `added-tokens`: the seed's way, kept for comparison: donor tokens (real text, word-start space
  included) as AddedTokens, matched before pre-tokenisation.
- `unigram`: SentencePiece-Unigram bases: donor pieces appended with scores that let them win
  over the base's segmentation of their own text.
- `wordpiece`: WordPiece (BERT) bases: donor entries appended; greedy longest-match uses them.
`auto` picks the measured best for the base's model type (see `DEFAULT_METHOD`).

Output: a folder `AutoTokenizer.from_pretrained` loads, plus `expansion.json`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from koemb import __version__
from koemb.config import StrictModel
from koemb.errors import UserError
from koemb.files import atomic_write_text
from koemb.vocab.bpe_extend import donor_substrings, extend_bpe, hangul_word_counts
from koemb.vocab.canonical import bl_to_bytes, family_of, raw_form
from koemb.vocab.diff import DiffFilters, DiffResult, vocab_diff
from koemb.vocab.io import LoadedTokenizer, load_tokenizer, save_tokenizer, with_specials_in_vocab

MethodName = Literal["auto", "bpe-continue", "bpe-donor", "added-tokens", "unigram", "wordpiece"]


class ExpansionSettings(StrictModel):
    """How to expand; the same fields as `koemb vocab expand`'s options and the pipeline YAML."""

    method: MethodName = "auto"
    max_new_tokens: int = Field(40_000, ge=1, description="Cap on added ROWS, intermediates included.")
    min_frequency: int = Field(2, ge=1, description="Minimum count of a merge (BPE) or donor token on the corpus.")
    filters: DiffFilters = DiffFilters()
    unigram_bonus: float = Field(1.0, gt=0, description="Unigram: log-score bonus per base piece a new piece replaces.")


@dataclass
class Context:
    base: LoadedTokenizer
    donor: LoadedTokenizer | None
    docs: list[str]
    diff: DiffResult | None
    settings: ExpansionSettings

    @property
    def target_texts(self) -> set[str]:
        return {c.text for c in self.diff.candidates} if self.diff else set()


@dataclass
class MethodOutput:
    tok_json: dict
    new_texts: list[str]  # canonical text per added id, in id order
    kinds: list[str]  # "target" | "intermediate" | "learned", per added id
    info: dict[str, Any] = field(default_factory=dict)


Method = Callable[[Context], MethodOutput]


@dataclass
class MethodSpec:
    fn: Method
    model_types: tuple[str, ...]
    needs_donor: bool
    needs_corpus: bool


METHODS: dict[str, MethodSpec] = {}
# Measured with benchmarks/tokenizer.py; see the README.
DEFAULT_METHOD = {"BPE": "bpe-continue", "Unigram": "unigram", "WordPiece": "wordpiece"}


def method(name: str, model_types: tuple[str, ...], needs_donor: bool, needs_corpus: bool):
    def deco(fn: Method) -> Method:
        METHODS[name] = MethodSpec(fn, model_types, needs_donor, needs_corpus)
        return fn

    return deco


def _bpe(ctx: Context, restrict_to_donor: bool) -> MethodOutput:
    tok_json = with_specials_in_vocab(ctx.base.json)
    if family_of(tok_json) != "byte_level":
        raise UserError(f"{ctx.base.spec}: the BPE methods need a byte-level BPE base (Qwen, GPT-2 style)")
    targets = ctx.target_texts
    allowed = None
    if restrict_to_donor:
        subs = donor_substrings(targets)
        allowed = subs.__contains__
    counts = hangul_word_counts(ctx.base.backend, ctx.docs)
    if not counts:
        raise UserError("the corpus has no Hangul words to learn merges from")
    ext = extend_bpe(ctx.base.backend, counts, ctx.settings.max_new_tokens, ctx.settings.min_frequency, allowed,
                     split_particles=ctx.settings.filters.split_particles)
    vocab = tok_json["model"]["vocab"]
    next_id = len(ctx.base)
    texts, kinds = [], []
    for raw in ext.new_tokens:
        vocab[raw] = next_id
        next_id += 1
        text = bl_to_bytes(raw).decode("utf-8", errors="backslashreplace")
        texts.append(text)
        kinds.append("target" if text in targets else ("intermediate" if restrict_to_donor else "learned"))
    tok_json["model"]["merges"].extend([a, b] for a, b in ext.merges)
    info = {"words": ext.word_types, "word_occurrences": ext.word_tokens, "stop_reason": ext.stop_reason,
            "rejected_particle_merges": ext.rejected_particle}
    return MethodOutput(tok_json, texts, kinds, info)


@method("bpe-continue", ("BPE",), needs_donor=False, needs_corpus=True)
def _bpe_continue(ctx: Context) -> MethodOutput:
    return _bpe(ctx, restrict_to_donor=False)


@method("bpe-donor", ("BPE",), needs_donor=True, needs_corpus=True)
def _bpe_donor(ctx: Context) -> MethodOutput:
    return _bpe(ctx, restrict_to_donor=True)


@method("added-tokens", ("BPE", "Unigram", "WordPiece"), needs_donor=True, needs_corpus=False)
def _added_tokens(ctx: Context) -> MethodOutput:
    tok_json = with_specials_in_vocab(ctx.base.json)
    cands = ctx.diff.candidates[: ctx.settings.max_new_tokens]
    next_id = len(ctx.base)
    added = tok_json.setdefault("added_tokens", [])
    texts = []
    for c in cands:
        # normalized=True: matched on the normalised (NFC) text, like ordinary words.
        added.append({"id": next_id, "content": c.text, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": True, "special": False})
        texts.append(c.text)
        next_id += 1
    return MethodOutput(tok_json, texts, ["target"] * len(texts))


@method("unigram", ("Unigram",), needs_donor=True, needs_corpus=False)
def _unigram(ctx: Context) -> MethodOutput:
    tok_json = ctx.base.json
    model = tok_json["model"]
    pieces: list[list] = model["vocab"]
    if len(pieces) != len(ctx.base):
        raise UserError(f"{ctx.base.spec}: Unigram vocab has {len(pieces)} pieces but the tokenizer has {len(ctx.base)} ids; "
                        "cannot append pieces after every existing id")
    score_of = [float(s) for _, s in pieces]
    have = {p for p, _ in pieces}
    base_model = ctx.base.backend.model
    bonus = ctx.settings.unigram_bonus
    texts = []
    for c in ctx.diff.candidates:
        if len(texts) >= ctx.settings.max_new_tokens:
            break
        raw = raw_form(c.text, "metaspace")
        if raw in have:
            continue
        # Score = the base's best segmentation of this text + a bonus per piece saved, so the new
        # piece wins on its own text and a segmentation with fewer, longer pieces wins overall.
        seg = base_model.tokenize(raw)
        base_score = sum(score_of[t.id] for t in seg)
        pieces.append([raw, base_score + bonus * max(len(seg) - 1, 1)])
        have.add(raw)
        texts.append(c.text)
    return MethodOutput(tok_json, texts, ["target"] * len(texts))


@method("wordpiece", ("WordPiece",), needs_donor=True, needs_corpus=False)
def _wordpiece(ctx: Context) -> MethodOutput:
    # WordPiece matches the longest vocab entry greedily, so a new entry is used wherever its
    # text occurs at that position; Hangul-only entries cannot change other scripts.
    tok_json = ctx.base.json
    model = tok_json["model"]
    prefix = model.get("continuing_subword_prefix") or "##"
    vocab = model["vocab"]
    next_id = len(ctx.base)
    texts = []
    for c in ctx.diff.candidates[: ctx.settings.max_new_tokens]:
        raw = raw_form(c.text, "wordpiece", prefix)
        if raw in vocab:
            continue
        vocab[raw] = next_id
        next_id += 1
        texts.append(c.text)
    return MethodOutput(tok_json, texts, ["target"] * len(texts))


@dataclass
class ExpansionResult:
    out_dir: Path
    info: dict[str, Any]


def _usage(tok, first_new_id: int, docs: list[str]) -> Counter[int]:
    used: Counter[int] = Counter()
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        used.update(i for i in enc.ids if i >= first_new_id)
    return used


def resolve_method(base: LoadedTokenizer, name: str) -> str:
    model_type = base.json["model"]["type"]
    if name == "auto":
        if model_type not in DEFAULT_METHOD:
            raise UserError(f"{base.spec}: no expansion method for a {model_type} tokenizer; choose one of {', '.join(METHODS)}")
        return DEFAULT_METHOD[model_type]
    spec = METHODS[name]
    if model_type not in spec.model_types:
        raise UserError(f"--method {name} works on {'/'.join(spec.model_types)} tokenizers, but {base.spec} is {model_type}")
    return name


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def expand_tokenizer(
    base: str | LoadedTokenizer,
    out_dir: str | os.PathLike,
    donor: str | LoadedTokenizer | None = None,
    docs: list[str] | None = None,
    settings: ExpansionSettings | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> ExpansionResult:
    """Expand `base` with new (Korean) tokens and write the tokenizer folder + `expansion.json`.

    `docs` is the corpus the expansion learns from and is measured on (every added row should be
    emitted at least once on it). Returns the output folder and the expansion info.
    """
    settings = settings or ExpansionSettings()
    base = base if isinstance(base, LoadedTokenizer) else load_tokenizer(base, trust_remote_code)
    donor = donor if donor is None or isinstance(donor, LoadedTokenizer) else load_tokenizer(donor, trust_remote_code)
    docs = docs or []
    name = resolve_method(base, settings.method)
    spec = METHODS[name]
    if spec.needs_donor and donor is None:
        raise UserError(f"--method {name} needs a donor tokenizer (--donor)")
    if spec.needs_corpus and not docs:
        raise UserError(f"--method {name} learns from text: give the corpus with --corpus")
    diff = vocab_diff(base, donor, docs or None, settings.filters) if donor is not None else None
    if diff is not None and not diff.candidates and spec.needs_donor:
        raise UserError(
            f"donor {donor.spec} has no tokens that the base {base.spec} lacks after filtering "
            f"({diff.stats['not_in_base']} not in base, {diff.stats['rejected_chars']} outside the character class, "
            f"{diff.stats['rejected_min_frequency']} below min_frequency): nothing to add"
        )
    out = Path(out_dir)
    ctx = Context(base, donor, docs, diff, settings)
    res = spec.fn(ctx)
    if not res.new_texts:
        raise UserError(f"method {name} found no new tokens to add (corpus too small, or min_frequency too high?)")
    first_new_id = len(base)
    prepare_out_dir(out, overwrite)
    reloaded = save_tokenizer(base, res.tok_json, out)
    backend = reloaded.backend_tokenizer if hasattr(reloaded, "backend_tokenizer") else reloaded
    _check_ids(base, backend, first_new_id, len(res.new_texts))
    used = _usage(backend, first_new_id, docs) if docs else Counter()
    n_new = len(res.new_texts)
    info: dict[str, Any] = {
        "koemb_version": __version__,
        "base": base.spec,
        "donor": donor.spec if donor else None,
        "method": name,
        "base_vocab_size": len(base),
        "donor_vocab_size": len(donor) if donor else None,
        "candidates": len(diff.candidates) if diff else None,
        "added": n_new,
        "first_new_id": first_new_id,
        "vocab_size": first_new_id + n_new,
        "settings": settings.model_dump(),
        "corpus_documents": len(docs),
        "used_on_corpus": (sum(1 for i in range(first_new_id, first_new_id + n_new) if used[i]) / n_new) if docs else None,
        "kinds": dict(Counter(res.kinds)),
        **res.info,
        "diff": diff.stats if diff else None,
        "tokens": [
            {"id": first_new_id + k, "text": t, "kind": kind, **({"corpus_count": used[first_new_id + k]} if docs else {})}
            for k, (t, kind) in enumerate(zip(res.new_texts, res.kinds))
        ],
    }
    atomic_write_text(out / "expansion.json", json.dumps(info, ensure_ascii=False, indent=1))
    return ExpansionResult(out, info)


def _check_ids(base: LoadedTokenizer, new, first_new_id: int, n_new: int) -> None:
    """The expanded tokenizer must keep every special token's id and end exactly at the new rows."""
    for a in base.json.get("added_tokens", []):
        got = new.token_to_id(a["content"])
        if got != a["id"]:
            raise RuntimeError(f"special token {a['content']!r} moved from id {a['id']} to {got} in the expanded tokenizer")
    size = new.get_vocab_size(with_added_tokens=True)
    if size != first_new_id + n_new:
        raise RuntimeError(f"expanded tokenizer has {size} ids, expected {first_new_id} + {n_new}")

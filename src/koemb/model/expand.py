"""Give a model rows for an expanded tokenizer's new tokens (`koemb model expand`).

Flow: load the base model (safetensors only) and its tokenizer -> check that the expanded
tokenizer really extends that tokenizer (every base token at its old id) -> split each new
token into BASE pieces -> resize the embedding (and an untied output head) -> fill the new rows
through the init registry (`koemb.model.init_methods`) -> save a sentence-transformers folder
with `expansion.json` and a model card.

Rows. Old rows are never rewritten: the resized matrix keeps them bit-identical. New ids start
at `len(base tokenizer)`. A model may already have more rows than its tokenizer has tokens
(multilingual-e5-small: 250,037 rows for 250,002 tokens); new tokens then take those spare rows
first, and the matrix only grows when the expanded tokenizer needs more:
`rows_after = max(rows_before, len(expanded tokenizer))`.

Pieces. A new token's pieces are what the BASE tokenizer makes of the token. For a token of the
tokenizer's model vocabulary (BPE, Unigram) the base MODEL is applied to the token's own vocab
string (`Ġíķľ...`, `▁한국`): that is exactly the base's split of that pre-token, it needs no
special tokens or EOS, and it also works for byte-level tokens that are incomplete UTF-8 (cut
Hangul syllables), which have no text to tokenise. For an added token (and for WordPiece, whose
model does not take `##` strings) the token's canonical text is tokenised by the full base
tokenizer WITHOUT special tokens (Qwen3-Embedding would otherwise append `<|endoftext|>`). For
complete byte-level BPE tokens both ways give the same ids (tested). WordPiece pieces keep their
place in the word: a `##` continuation token splits into `##` pieces (`_wordpiece_pieces`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from koemb.errors import UserError
from koemb.model.files import PICKLE_SUFFIXES, check_weights_safe, transformer_dir  # noqa: F401 (re-exported)
from koemb.faults import fault
from koemb.model.init_methods import InitInputs, add_relative_noise, get_init

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class NewToken:
    id: int
    text: str | None
    """Canonical text (leading space = word start), None when the token is not complete UTF-8."""
    kind: str = "target"


@dataclass
class ExpandReport:
    """What `expand_embeddings` did; written into expansion.json as `rows` and `init`."""

    rows_before: int
    rows_after: int
    base_tokenizer: int
    expanded_tokenizer: int
    spare_rows_overwritten: int
    init: str
    noise_std: float
    noise_std_abs: float
    seed: int
    output_head: str
    pieces: list[list[int]] = field(repr=False, default_factory=list)

    def rows_json(self) -> dict[str, Any]:
        return {
            "before": self.rows_before,
            "after": self.rows_after,
            "base_tokenizer": self.base_tokenizer,
            "expanded_tokenizer": self.expanded_tokenizer,
            "spare_rows_overwritten": self.spare_rows_overwritten,
            "rule": "after = max(before, expanded_tokenizer); new ids from base_tokenizer overwrite spare rows first",
            "output_head": self.output_head,
        }

    def init_json(self) -> dict[str, Any]:
        return {"method": self.init, "noise_std": self.noise_std, "noise_std_abs": self.noise_std_abs, "seed": self.seed}


# --------------------------------------------------------------------------- loading


def load_base_model(spec: str | os.PathLike, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> tuple[Any, str]:
    """Load the bare encoder (AutoModel) from a folder or hub id; return (model, transformers dir or id).

    Accepts a transformers folder, a sentence-transformers folder (Transformer module at the root
    or in a sub-folder), or a hub id. Weights keep their stored dtype (so old rows stay bit-identical).
    """
    from transformers import AutoModel

    spec = str(spec)
    path = Path(spec)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{spec}: expected a model folder or a hub id")
        tdir = transformer_dir(path)
        if not (tdir / "config.json").is_file():
            raise UserError(f"{tdir}: no config.json (expected a transformers or sentence-transformers model folder)")
        check_weights_safe(tdir, allow_pickle)
        where = str(tdir)
    else:
        where = spec
    try:
        model, info = AutoModel.from_pretrained(
            where, dtype="auto", use_safetensors=None if allow_pickle else True, trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except OSError as exc:
        kind = "folder" if path.exists() else "hub id (offline, or no such repository?)"
        raise UserError(f"{spec}: cannot load model from {kind}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(f"{spec}: this model needs custom code; pass --trust-remote-code only if you trust it") from None
        raise UserError(f"{spec}: cannot load model: {str(exc).splitlines()[0]}") from None
    missing = list(info.get("missing_keys") or [])
    if missing and all(k.startswith("pooler.") for k in missing) and getattr(model, "pooler", None) is not None:
        # AutoModel adds a BERT pooler that an embedding checkpoint (e5) does not have: drop the
        # random one, or it would be saved as if it were part of the model.
        model.pooler = None
    elif missing:
        log.warning("%s: %d weight(s) missing from the checkpoint and randomly initialised: %s", spec, len(missing), missing[:5])
    return model.eval(), where


def read_expansion(tokenizer_dir: Path) -> dict[str, Any] | None:
    path = tokenizer_dir / "expansion.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    for key in ("base_vocab_size", "first_new_id", "tokens"):
        if key not in data:
            raise UserError(f"{path}: missing field '{key}' (expected the file `koemb vocab expand` writes)")
    return data


def new_tokens(expansion: dict[str, Any] | None, expanded: Any, base_len: int, source: str) -> list[NewToken]:
    """The new tokens in id order: from expansion.json, else every id from `base_len` on."""
    n = expanded.get_vocab_size(with_added_tokens=True)
    if expansion is None:
        # No expansion.json: a tokenizer extended some other way. Text from decoding the id;
        # decoding cannot say whether it starts a word, so model-vocab tokens use their raw piece.
        return [NewToken(i, expanded.decode([i]) or None) for i in range(base_len, n)]
    toks = []
    for k, t in enumerate(expansion["tokens"]):
        if not isinstance(t, dict) or "id" not in t:
            raise UserError(f"{source}: tokens[{k}] must be an object with 'id', 'text', 'kind'")
        toks.append(NewToken(int(t["id"]), t.get("text"), t.get("kind", "target")))
    ids = [t.id for t in toks]
    if ids != list(range(base_len, base_len + len(ids))):
        raise UserError(f"{source}: tokens must be the ids {base_len}..{base_len + len(ids) - 1} in order (got {ids[:3]}...)")
    if base_len + len(ids) != n:
        raise UserError(f"{source}: lists {len(ids)} new tokens but the tokenizer has {n - base_len} ids after {base_len}")
    return toks


def check_extends(base: Any, expanded: Any, source: str) -> None:
    """Every base token must keep its id in the expanded tokenizer, or old rows would mean other tokens."""
    exp_vocab = expanded.get_vocab(with_added_tokens=True)
    for tok, idx in base.get_vocab(with_added_tokens=True).items():
        if exp_vocab.get(tok) != idx:
            raise UserError(
                f"{source}: does not extend the model's tokenizer: base token {tok!r} has id {idx} in the base "
                f"but {exp_vocab.get(tok)} in the expanded tokenizer (was it expanded from another base?)"
            )


def base_pieces(tokens: list[NewToken], base: Any, expanded: Any) -> list[list[int]]:
    """For each new token, the BASE ids it splits into (see the module docstring for why this way)."""
    added_ids = set(expanded.get_added_tokens_decoder())
    model_type = type(base.model).__name__
    model_route = model_type in ("BPE", "Unigram")
    prefix = getattr(base.model, "continuing_subword_prefix", "##") if model_type == "WordPiece" else None
    # A Unigram model maps what it cannot cover to <unk>; such a split says nothing about the token.
    unk = {i for i in (base.token_to_id(u) for u in ("<unk>", "[UNK]")) if i is not None}
    out: list[list[int]] = []
    for t in tokens:
        ids: list[int] = []
        if model_route and t.id not in added_ids:
            raw = expanded.id_to_token(t.id)
            ids = [p.id for p in base.model.tokenize(raw)] if raw is not None else []
            if unk.intersection(ids):
                ids = []
        elif prefix is not None and t.id not in added_ids:
            ids = _wordpiece_pieces(expanded.id_to_token(t.id) or "", base, prefix)
        if not ids and t.text:
            ids = base.encode(t.text, add_special_tokens=False).ids
        if not ids:
            raise UserError(f"new token id {t.id} ({t.text!r}): the base tokenizer splits it into no pieces; cannot initialise it")
        out.append(ids)
    return out


def _wordpiece_pieces(raw: str, base: Any, prefix: str) -> list[int]:
    """Base WordPiece split of one vocab string, keeping its position in the word.

    A continuation piece (`##습니다`) must split into continuation pieces (`##습`, `##니다`);
    tokenising its text as a word would give a word-initial `습` instead. The WordPiece model
    only splits whole words, so split the core and re-mark the first piece as a continuation.
    """
    cont = raw.startswith(prefix)
    core = raw[len(prefix):] if cont else raw
    toks = base.model.tokenize(core) if core else []
    if not toks or any(t.value == base.model.unk_token for t in toks):
        return []
    ids = [t.id for t in toks]
    if cont:
        first = base.token_to_id(prefix + toks[0].value)
        if first is None:
            return []  # no continuation form of the first piece: fall back to the text route
        ids[0] = first
    return ids


# --------------------------------------------------------------------------- resizing


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or a.data_ptr() == b.data_ptr()


@torch.no_grad()
def expand_embeddings(
    model: Any,
    base_len: int,
    new_len: int,
    pieces: list[list[int]],
    *,
    init: str = "mean",
    noise_std: float = 0.0,
    seed: int = 0,
) -> ExpandReport:
    """Resize `model`'s embeddings in place for tokens `base_len..new_len-1` and initialise them.

    pieces[k]: base ids of token `base_len + k`. Rows `[0, base_len)` and untouched spare rows stay
    bit-identical; rows `[base_len, new_len)` are set by the init method (+ relative noise). An
    untied output head gets the same treatment on its own rows; a tied one stays tied.
    """
    if len(pieces) != new_len - base_len:
        raise ValueError(f"pieces for {len(pieces)} tokens, but ids {base_len}..{new_len - 1} need {new_len - base_len}")
    method = get_init(init)
    emb = model.get_input_embeddings()
    rows_before = int(emb.weight.shape[0])
    if base_len > rows_before:
        raise UserError(
            f"the base tokenizer has {base_len} tokens but the model has only {rows_before} embedding rows: "
            "this tokenizer does not belong to this model"
        )
    out_head = model.get_output_embeddings()
    tied = out_head is not None and _same_storage(out_head.weight, emb.weight)
    old_head = None if out_head is None or tied else out_head.weight[:base_len].detach().float().clone()
    old_in = emb.weight[:base_len].detach().float().clone()  # (V_base, D)

    rows_after = max(rows_before, new_len)
    if rows_after > rows_before:
        # mean_resizing=False: the new rows are overwritten below; no need to pay for the covariance.
        model.resize_token_embeddings(rows_after, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    targets = [("input", model.get_input_embeddings().weight, old_in)]
    head = model.get_output_embeddings()
    if old_head is not None and head is not None:
        targets.append(("output", head.weight, old_head))
    noise_abs = 0.0
    for _name, weight, old in targets:
        new_rows = method(InitInputs(old=old, pieces=pieces, generator=gen))  # (N, D) float32
        new_rows, noise_abs_t = add_relative_noise(new_rows, old, noise_std, gen)
        noise_abs = noise_abs or noise_abs_t
        weight[base_len:new_len] = new_rows.to(weight.dtype)
    if tied:
        # resize_token_embeddings re-ties; make sure, since old rows of the head are the input rows.
        assert _same_storage(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    return ExpandReport(
        rows_before=rows_before,
        rows_after=rows_after,
        base_tokenizer=base_len,
        expanded_tokenizer=new_len,
        spare_rows_overwritten=max(0, min(rows_before, new_len) - base_len),
        init=init,
        noise_std=noise_std,
        noise_std_abs=noise_abs,
        seed=seed,
        output_head="none" if out_head is None else ("tied" if tied else "untied, resized and initialised the same way"),
        pieces=pieces,
    )


# --------------------------------------------------------------------------- the command


def expand_model(
    model: str | os.PathLike,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    init: str = "mean",
    noise_std: float = 0.0,
    seed: int = 0,
    preset: str | None = None,
    base_tokenizer: str | os.PathLike | None = None,
    max_seq_length: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    overwrite: bool = False,
) -> Path:
    """Expand `model` to the expanded `tokenizer` and write a sentence-transformers folder at `out`.

    model: folder (transformers or sentence-transformers layout) or hub id.
    tokenizer: the expanded tokenizer's folder (normally from `koemb vocab expand`, with expansion.json).
    init: a method of `koemb.model.init_methods.INIT_METHODS` (`mean` = FVT, `first`, `random`).
    noise_std: Gaussian noise added to new rows, std RELATIVE to the old rows' scale (0 = none).
    preset: pooling/padding/prompts preset; default: detected from the model's files.
    base_tokenizer: the model's own tokenizer, if its folder has none.
    Returns the output folder; its expansion.json extends the tokenizer's with `init`, `rows`,
    `base_model` and each token's `base_ids`.
    """
    from transformers import AutoTokenizer

    from koemb.model.presets import resolve_preset
    from koemb.model.save import check_out_dir, save_sentence_transformer

    check_out_dir(out, overwrite)
    tok_dir = Path(tokenizer)
    if not (tok_dir / "tokenizer.json").is_file():
        raise UserError(f"{tok_dir}: expected an expanded tokenizer folder with tokenizer.json")
    exp_source = str(tok_dir / "expansion.json")
    expansion = read_expansion(tok_dir)

    net, where = load_base_model(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    # An older sentence-transformers folder keeps model AND tokenizer in its Transformer sub-folder.
    base_spec = str(base_tokenizer or where)
    try:
        base_hf = AutoTokenizer.from_pretrained(base_spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"{base_spec}: cannot load the model's own tokenizer ({str(exc).splitlines()[0]}); pass --base-tokenizer") from None
    base = base_hf.backend_tokenizer
    out_tok = AutoTokenizer.from_pretrained(str(tok_dir))
    expanded = out_tok.backend_tokenizer
    base_len = base.get_vocab_size(with_added_tokens=True)
    new_len = expanded.get_vocab_size(with_added_tokens=True)
    rows = int(net.get_input_embeddings().weight.shape[0])

    if expansion is not None:
        if expansion["base_vocab_size"] != base_len:
            raise UserError(
                f"{exp_source}: base_vocab_size is {expansion['base_vocab_size']} but the model's tokenizer "
                f"({base_spec}) has {base_len} tokens: the tokenizer was expanded from another base"
            )
        if expansion["first_new_id"] != base_len:
            raise UserError(f"{exp_source}: first_new_id is {expansion['first_new_id']}, expected {base_len} (= len(base tokenizer))")
    if base_len > rows:
        raise UserError(
            f"{base_spec}: the base tokenizer has {base_len} tokens but the model has only {rows} embedding rows; "
            "the tokenizer does not belong to this model"
        )
    if new_len <= base_len:
        raise UserError(f"{tok_dir}: has {new_len} tokens, no more than the base's {base_len}: nothing to add")
    check_extends(base, expanded, str(tok_dir))
    tokens = new_tokens(expansion, expanded, base_len, exp_source)
    pieces = base_pieces(tokens, base, expanded)

    chosen = resolve_preset(model, preset)
    report = expand_embeddings(net, base_len, new_len, pieces, init=init, noise_std=noise_std, seed=seed)
    log.info("rows %d -> %d (%d new tokens, %d spare rows reused), init %s",
             report.rows_before, report.rows_after, len(tokens), report.spare_rows_overwritten, init)

    exp_out: dict[str, Any] = dict(expansion) if expansion is not None else {
        "base_vocab_size": base_len, "donor_vocab_size": None, "candidates": None, "added": len(tokens),
        "method": "unknown (no expansion.json beside the tokenizer)", "first_new_id": base_len,
    }
    originals = expansion["tokens"] if expansion is not None else [{"id": t.id, "text": t.text, "kind": t.kind} for t in tokens]
    # Keep every field the tokenizer wrote (e.g. corpus_count); add the pieces each row came from.
    exp_out["tokens"] = [{**orig, "base_ids": p} for orig, p in zip(originals, pieces)]
    exp_out["base_model"] = str(model)
    exp_out["init"] = report.init_json()
    exp_out["rows"] = report.rows_json()
    recipe = {
        "step": "koemb model expand",
        "base_model": str(model),
        "tokenizer": str(tok_dir),
        "tokenizer_method": exp_out.get("method"),
        "new_tokens": len(tokens),
        "init": report.init_json(),
        "rows": {"before": report.rows_before, "after": report.rows_after},
    }
    fault("during_expand")  # reliability tests: a kill after the work, before the folder exists
    return save_sentence_transformer(
        net, out_tok, out, chosen, max_seq_length=max_seq_length, expansion=exp_out, recipe=recipe,
        title=f"{Path(str(model)).name} + {len(tokens)} new tokens ({init} init)", overwrite=overwrite,
    )


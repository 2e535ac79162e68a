"""The encoder: texts -> L2-normalised (or not, per preset) embeddings, exactly as a model's card says.

`Encoder.load(model)` reads a folder (transformers or sentence-transformers layout) or a hub id,
detects its `Preset` (or takes one by name), and from then on every text goes through the same
path: prompt (per side: query / document / symmetric) -> tokenise with truncation to
`preset.max_length` (the tokenizer adds its own special tokens: Qwen3-Embedding's appends
`<|endoftext|>`, which the last-token pooling reads) -> length-sorted batches padded on the
preset's side -> last hidden state -> `pool` -> optional L2 normalisation.

`embed_tokens` is the differentiable core (no `no_grad`), shared with the training loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from koemb.errors import UserError
from koemb.model.files import check_weights_safe, transformer_dir
from koemb.model.pooling import pool
from koemb.model.presets import Preset, resolve_preset

log = logging.getLogger(__name__)


# BERT-like encoders whose AutoModel adds a pooler head; koemb pools with the preset instead.
MODEL_TYPES_WITH_POOLER = frozenset({"bert", "xlm-roberta", "roberta", "camembert", "xlm-roberta-xl"})


def _model_type(folder: str | Path) -> str | None:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError:
        return None


def no_pooler_kwargs(folder: str | Path) -> dict[str, bool]:
    """`AutoModel.from_pretrained` arguments that leave out a BERT-family pooler head.

    Pooling is the preset's (mean, last token, CLS hidden state), so the head is never used, and an embedding
    checkpoint (e5) usually lacks it: loaded anyway it would be randomly initialised and then saved with a
    trained stage as if it were part of the model. {} for other models and for hub ids.
    """
    return {"add_pooling_layer": False} if _model_type(folder) in MODEL_TYPES_WITH_POOLER else {}


def model_fingerprint(model: str | Path) -> str | None:
    """A cheap identity for a model folder (path, sizes and mtimes of its weight and tokenizer files),
    used to key caches of its embeddings; None for a hub id (nothing local to fingerprint)."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    wdir = Path(transformer_dir(model))
    parts = [str(folder.resolve())]
    for f in sorted([*wdir.glob("*.safetensors"), *wdir.glob("tokenizer*.json"), wdir / "config.json"]):
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # fp32 on CPU (bf16 matmuls are slow there and would blur parity); bf16 on CUDA.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def embed_tokens(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, preset: Preset) -> Tensor:
    """Differentiable: (B, T) ids and mask -> (B, D) float32 embeddings, pooled and normalised per preset."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, D)
    pooled = pool(hidden, attention_mask, preset.pooling).float()  # (B, D)
    return F.normalize(pooled, p=2, dim=-1) if preset.normalize else pooled


@dataclass
class EncodeStats:
    """What the last `encode` call did: texts, tokens, seconds (for throughput reports)."""

    texts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    history: list[tuple[int, int, float]] = field(default_factory=list)

    def add(self, texts: int, tokens: int, seconds: float) -> None:
        self.texts += texts
        self.tokens += tokens
        self.seconds += seconds
        self.history.append((texts, tokens, seconds))


class Encoder:
    """A model, its tokenizer and its preset; encodes lists of texts in length-sorted batches.

    Build one with `Encoder.load(...)`; or wrap an in-memory model and tokenizer (the training
    loop's) with `Encoder(model, tokenizer, preset)`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        preset: Preset,
        *,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        show_progress: bool | None = None,
        name: str = "model",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preset = preset
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.show_progress = show_progress
        self.name = name
        self.stats = EncodeStats()
        self.fingerprint: str | None = None  # set by `load`; keys corpus-embedding caches
        self.source: str | None = None  # the folder or hub id it was loaded from
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id: int = int(pad)

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        preset: str | Preset | None = None,
        overrides: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        show_progress: bool | None = None,
    ) -> Encoder:
        """Load a model folder or hub id with its tokenizer and preset.

        Args:
            model: a folder (transformers or sentence-transformers layout) or a hub id.
            preset: a registered preset name, a `Preset`, or None to detect it from the files.
            overrides: preset fields to replace (e.g. `{"max_length": 512}`).
            device: default CUDA when available, else CPU. dtype: default bf16 on CUDA, fp32 on CPU.
        """
        from transformers import AutoModel, AutoTokenizer

        if isinstance(preset, Preset):
            p = preset.with_overrides(**overrides) if overrides else preset
        else:
            p = resolve_preset(model, preset, overrides)
        if isinstance(model, Path) or Path(model).exists():
            if not Path(model).is_dir():
                raise UserError(f"{model}: not a model folder")
        dev = torch.device(device) if device is not None else default_device()
        dt = dtype or default_dtype(dev)
        wdir = transformer_dir(model)
        if Path(wdir).is_dir():
            # Only safetensors are ever read (use_safetensors=True); this names the reason first.
            check_weights_safe(Path(wdir), allow_pickle=False)
        try:
            tok = AutoTokenizer.from_pretrained(str(wdir), trust_remote_code=False)
            net = AutoModel.from_pretrained(str(wdir), trust_remote_code=False, use_safetensors=True, dtype=dt, **no_pooler_kwargs(wdir))
        except OSError as exc:
            raise UserError(f"{model}: cannot load a model and tokenizer from here ({exc})") from None
        net.to(dev).eval()
        label = Path(model).name if Path(model).is_dir() else str(model)
        enc = cls(net, tok, p, batch_size=batch_size, device=dev, show_progress=show_progress, name=label)
        enc.fingerprint = model_fingerprint(model)
        enc.source = str(model)
        return enc

    # -- tokenisation -------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, special tokens included, truncated to `preset.max_length`."""
        enc = self.tokenizer(
            list(texts), add_special_tokens=True, truncation=True, max_length=self.preset.max_length, padding=False
        )
        return enc["input_ids"]

    def _pad(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if self.preset.padding_side == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
        return ids, mask

    # -- encoding -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, desc: str | None = None) -> Tensor:
        """(N, D) float32 CPU embeddings of already-prompted texts, in input order."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, 0)
        bs = batch_size or self.batch_size
        t0 = time.perf_counter()
        ids = self.tokenize(texts)
        # Longest first: similar lengths share a batch (little padding), and an out-of-memory
        # batch shows up at once rather than at the end.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out: Tensor | None = None
        n_batches = (len(order) + bs - 1) // bs
        progress = self.show_progress if self.show_progress is not None else n_batches > 20
        batches = range(0, len(order), bs)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=n_batches, desc=desc or f"encode {self.name}", unit="batch", leave=False)
        for start in batches:
            idx = order[start : start + bs]
            input_ids, mask = self._pad([ids[i] for i in idx])
            emb = embed_tokens(self.model, input_ids.to(self.device), mask.to(self.device), self.preset).cpu()  # (b, D)
            if out is None:
                out = torch.empty(len(texts), emb.shape[1], dtype=torch.float32)
            out[torch.tensor(idx)] = emb
        assert out is not None
        self.stats.add(len(texts), sum(len(r) for r in ids), time.perf_counter() - t0)
        return out

    def encode_queries(self, texts: Sequence[str], task: str | None = None, **kw: Any) -> Tensor:
        """Queries of an asymmetric task (retrieval): the preset's query prompt with `task`."""
        return self.encode([self.preset.format_query(t, task) for t in texts], **kw)

    def encode_documents(self, texts: Sequence[str], **kw: Any) -> Tensor:
        """Documents of an asymmetric task: the preset's document prompt (none for Qwen3-Embedding)."""
        return self.encode([self.preset.format_document(t) for t in texts], **kw)

    def encode_symmetric(self, texts: Sequence[str], task: str | None = None, **kw: Any) -> Tensor:
        """Texts of a symmetric task (STS, separation): both sides get the query-side prompt."""
        return self.encode([self.preset.format_symmetric(t, task) for t in texts], **kw)

"""Which parameters a stage trains: a registry of setups, chosen by a stage's `train:` field.

A stage's `train` is a kind as a string (`new_rows`, `all_rows`, `full`) or a mapping with `kind`
and its parameters (`{kind: lora, r: 64, alpha: 128, dropout: 0.05, target_modules: [...]}`); each
kind is a config class here whose `prepare(model, first_new_id)` returns the module to train and a
`finish()` that turns it back into a plain model for saving.

Why `new_rows` is its own parameter and not a gradient hook on the full matrix: AdamW's weight decay
(and momentum left by an earlier stage) moves rows whose gradient is zero, and the optimizer would
keep two (V, D) state tensors for a matrix of which only the new rows train. Here the old rows are
a frozen tensor outside the optimizer, so they stay bit-identical; optimizer state covers only the
new rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator, Field
from torch import nn

from koemb.config import StrictModel
from koemb.errors import UserError


@dataclass
class Prepared:
    """The module the loop trains (maybe a peft wrapper), and how to get the plain model back."""

    module: nn.Module
    finish: Callable[[], nn.Module]
    # Parameters trained at their own learning rate (name in `trainable()` -> peak lr); the rest use the stage's.
    own_lr: dict[str, float] = field(default_factory=dict)

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the stage's lr, plus one group per parameter with its own (the scheduler scales each)."""
        groups: list[dict[str, Any]] = [{"params": [], "lr": lr}]
        for name, p in self.trainable().items():
            if name in self.own_lr:
                groups.append({"params": [p], "lr": self.own_lr[name]})
            else:
                groups[0]["params"].append(p)
        return [g for g in groups if g["params"]]


class NewRowsEmbedding(nn.Module):
    """An input embedding whose rows >= first_new_id are a separate trainable parameter.

    base: the model's frozen (V, D) embedding (its rows >= first_new_id are stale while this trains);
    new: (V - first_new_id, D) trainable copy of those rows. Output (B, T, D) takes each position's
    row from whichever of the two owns its id.
    """

    def __init__(self, base: nn.Embedding, first_new_id: int):
        super().__init__()
        self.base = base
        self.first_new_id = first_new_id
        self.new = nn.Parameter(base.weight.detach()[first_new_id:].clone())

    @property
    def weight(self) -> torch.Tensor:  # some HF code reads get_input_embeddings().weight (dtype, device)
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_new = (ids >= self.first_new_id).unsqueeze(-1)  # (B, T, 1)
        old = self.base(ids)  # (B, T, D)
        new = F.embedding((ids - self.first_new_id).clamp(min=0), self.new)  # (B, T, D)
        return torch.where(is_new, new.to(old.dtype), old)

    def write_back(self) -> nn.Embedding:
        with torch.no_grad():
            self.base.weight[self.first_new_id :] = self.new.detach().to(self.base.weight.dtype)
        return self.base


def _wrap_new_rows(model: nn.Module, first_new_id: int | None, what: str) -> NewRowsEmbedding:
    """Put a NewRowsEmbedding in place of the model's input embedding (after freezing: its `new` trains)."""
    emb = model.get_input_embeddings()
    if first_new_id is None or first_new_id >= emb.num_embeddings:
        raise UserError(
            f"{what} needs an expanded model (expansion.json with first_new_id below the "
            f"{emb.num_embeddings} embedding rows); got first_new_id={first_new_id}"
        )
    wrapped = NewRowsEmbedding(emb, first_new_id)
    model.set_input_embeddings(wrapped)
    return wrapped


def _freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _unfreeze_all(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


class NewRows(StrictModel):
    """Train only the rows added by the tokenizer expansion (ids >= first_new_id)."""

    kind: Literal["new_rows"] = "new_rows"

    def prepare(self, model: nn.Module, first_new_id: int | None) -> Prepared:
        _freeze_all(model)
        wrapped = _wrap_new_rows(model, first_new_id, "train: new_rows")

        def finish() -> nn.Module:
            model.set_input_embeddings(wrapped.write_back())
            return _unfreeze_all(model)

        return Prepared(model, finish)


class AllRows(StrictModel):
    """Train the whole input embedding matrix, nothing else."""

    kind: Literal["all_rows"] = "all_rows"

    def prepare(self, model: nn.Module, first_new_id: int | None) -> Prepared:
        _freeze_all(model)
        model.get_input_embeddings().weight.requires_grad_(True)
        return Prepared(model, lambda: _unfreeze_all(model))


class Full(StrictModel):
    """Train every parameter; with `new_rows_lr`, every parameter but the old embedding rows."""

    kind: Literal["full"] = "full"
    new_rows_lr: float | None = Field(
        None,
        gt=0,
        description=(
            "Train the expansion's new rows (ids >= first_new_id) at this lr and the rest of the network at the "
            "stage's; the old rows stay frozen (bit-identical, no optimizer state for them). The network wants a "
            "transformer-sized lr (session 33 ran e5-small at 5e-5) and the rows an embedding-sized one (3e-3), "
            "which one lr cannot give both."
        ),
    )

    def prepare(self, model: nn.Module, first_new_id: int | None) -> Prepared:
        _unfreeze_all(model)
        if self.new_rows_lr is None:
            return Prepared(model, lambda: model)
        rows = _wrap_new_rows(model, first_new_id, "train.new_rows_lr")
        rows.base.weight.requires_grad_(False)  # old rows: frozen, outside the optimizer
        own_lr = {n: self.new_rows_lr for n, p in model.named_parameters() if p is rows.new}

        def finish() -> nn.Module:
            model.set_input_embeddings(rows.write_back())
            return _unfreeze_all(model)

        return Prepared(model, finish, own_lr)


class Lora(StrictModel):
    """peft LoRA on the named linear layers; merged into the weights when the stage ends."""

    kind: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Linear modules to adapt: a module's last name or a dotted suffix of its full name, as peft matches them "
        "(BERT: 'dense' = every dense layer, 'attention.output.dense' = the attention's output projection only).",
    )

    layers: list[int] | None = Field(
        None,
        min_length=1,
        description=(
            "Adapt only these transformer layers (0 = the first), e.g. [0, 1, 2] for the early layers, where a model "
            "composes word pieces into words. Default: every layer."
        ),
    )
    new_rows_lr: float | None = Field(
        None,
        gt=0,
        description=(
            "Also train the expansion's new rows (ids >= first_new_id), at this lr, jointly with the LoRA, so the "
            "network and the new rows adapt to each other; old rows stay frozen. Embedding rows need a larger lr "
            "than the LoRA (e5-small: 1e-2 vs 2e-4)."
        ),
    )

    def check_targets(self, model: nn.Module, where: str = "train.target_modules") -> None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        missing = [t for t in self.target_modules if not any(_names_module(t, n) for n in linears)]
        if missing:
            names = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise UserError(
                f"{where}: {missing} match no linear layer of the model; its linear layers are {names}"
                f" (a dotted entry is a suffix of a full name, e.g. {linears[0]!r})"
            )
        if self.layers is not None:
            found = {i for i, _ in _layer_linears(model, self.target_modules)}
            bad = [i for i in self.layers if i not in found]
            if bad:
                where_layers = where.rsplit(".", 1)[0] + ".layers"
                raise UserError(f"{where_layers}: {bad} out of range; the model has layers 0..{max(found, default=-1)}")

    def targets(self, model: nn.Module) -> list[str]:
        """peft's target_modules: the suffixes, or with `layers` the full names of those layers' modules.

        Full names rather than peft's layers_to_transform: its layer regex wants a prefix before the layer
        list, which a bare Qwen3Model ("layers.0.self_attn.q_proj") does not have.
        """
        if self.layers is None:
            return list(self.target_modules)
        keep = set(self.layers)
        return [name for i, name in _layer_linears(model, self.target_modules) if i in keep]

    def prepare(self, model: nn.Module, first_new_id: int | None) -> Prepared:
        from peft import LoraConfig, get_peft_model

        self.check_targets(model)
        _freeze_all(model)
        rows = _wrap_new_rows(model, first_new_id, "train.new_rows_lr") if self.new_rows_lr is not None else None
        cfg = LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets(model),
        )
        peft_model = get_peft_model(model, cfg)
        own_lr: dict[str, float] = {}
        if rows is not None:
            rows.new.requires_grad_(True)  # peft froze every non-LoRA parameter
            own_lr = {n: self.new_rows_lr for n, p in peft_model.named_parameters() if p is rows.new}

        def finish() -> nn.Module:
            merged = peft_model.merge_and_unload()
            if rows is not None:
                merged.set_input_embeddings(rows.write_back())
            return _unfreeze_all(merged)

        return Prepared(peft_model, finish, own_lr)


def _names_module(target: str, name: str) -> bool:
    """peft's rule for a target_modules string: the module's full name, or a dotted suffix of it. So 'dense'
    names every BERT dense layer and 'attention.output.dense' only the attention's output projection."""
    return name == target or name.endswith("." + target)


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")  # Qwen3 "layers.3.", BERT "encoder.layer.3."


def _layer_linears(model: nn.Module, suffixes: list[str]) -> list[tuple[int, str]]:
    """(layer index, full name) of each linear module named by one of `suffixes` inside a numbered layer."""
    out = []
    for name, m in model.named_modules():
        hit = _LAYER.search(name)
        if isinstance(m, nn.Linear) and hit and any(_names_module(t, name) for t in suffixes):
            out.append((int(hit.group(1)), name))
    return out


def _kind_from_string(v: Any) -> Any:
    # `train: new_rows` is shorthand for `train: {kind: new_rows}`.
    return {"kind": v} if isinstance(v, str) else v


TrainSpec = Annotated[
    Union[NewRows, AllRows, Full, Lora],
    Field(discriminator="kind"),
    BeforeValidator(_kind_from_string),
]

SETUPS: dict[str, type[StrictModel]] = {c.model_fields["kind"].default: c for c in (NewRows, AllRows, Full, Lora)}

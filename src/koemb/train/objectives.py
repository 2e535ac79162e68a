"""What a stage optimises: a registry of objectives, combinable by weights.

In a stage's YAML, `objective: infonce` (a name), `objective: [infonce, distill]`, or a mapping of
names to settings: `objective: {infonce: {temperature: 0.05}, distill: {weight: 0.5, kind: cosine}}`
(`{}` for the defaults; `null` means off).

A batch comes from one source. A source whose pairs carry a `score` (graded similarity, e.g. KorSTS
train with its 0-5 scores) is ranked by `cosent` and skipped by `infonce` (a pair scored 1 of 5 is no
positive); a source without scores is contrasted by `infonce` and skipped by `cosent`; `distill`
reads every batch. A stage is checked before its first step: each source needs an objective that reads it.

An objective never embeds: the loop embeds the batch's texts once per role (`query`, `positive`,
`negative`; directly or through GradCache), then each objective is a pure function of those
embeddings (and the teacher's embeddings of the same texts), so all objectives share one forward.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from koemb.config import StrictModel
from koemb.errors import UserError
from koemb.train.data import TextBatch
from koemb.train.losses import cosent, distill, gathered_infonce, is_distributed, text_keys, word_distill

Embeddings = dict[str, torch.Tensor]  # role -> (n, D); with word-level distillation also "words:<role>" -> (n, W, D) and "nwords:<role>" -> (n,)
ROLES = ("query", "positive", "negative")


class InfoNCE(StrictModel):
    """Queries against the (global) batch of positives and hard negatives; false negatives masked."""

    weight: float = Field(1.0, gt=0)
    temperature: float = Field(0.05, gt=0, description="Softmax temperature on cosine similarities.")
    hard_negatives: bool = Field(True, description="Use the data's `negative` texts when present.")

    def reads(self, scored: bool) -> bool:
        return not scored

    def loss(self, embs: Embeddings, batch: TextBatch, teacher: Embeddings | None) -> torch.Tensor:
        dev = embs["query"].device
        neg = embs.get("negative") if self.hard_negatives else None
        return gathered_infonce(
            embs["query"],
            embs["positive"],
            negatives=neg,
            temperature=self.temperature,
            d_keys=text_keys(batch.positive_keys, dev),
            neg_keys=text_keys(batch.negative_keys, dev) if neg is not None else None,
        )


class CoSENT(StrictModel):
    """Scored pairs (query, positive, score): their cosines ranked in the order of the scores (`losses.cosent`).

    Local to each process (no all-gather): the ranking is among the batch's own pairs.
    """

    weight: float = Field(1.0, gt=0)
    scale: float = Field(20.0, gt=0, description="Multiplies the cosines (an inverse temperature).")

    def reads(self, scored: bool) -> bool:
        return scored

    def loss(self, embs: Embeddings, batch: TextBatch, teacher: Embeddings | None) -> torch.Tensor:
        assert batch.scores is not None, "Objective.loss calls cosent only on scored batches"
        scores = torch.tensor(batch.scores, device=embs["query"].device)  # (B,)
        return cosent(embs["query"], embs["positive"], scores, scale=self.scale)


class Distill(StrictModel):
    """The base model on the BASE tokenisation as teacher for the student's pooled embeddings."""

    weight: float = Field(1.0, gt=0)
    kind: Literal["cosine", "mse"] = "cosine"
    relational: float = Field(0.0, ge=0, description="Weight of the similarity-matrix term (0 = off).")
    relational_kind: Literal["mse", "kl"] = Field(
        "mse", description="mse: squared difference of the similarity matrices; kl: KL of their row softmaxes."
    )
    temperature: float = Field(0.05, gt=0, description="Softmax temperature of relational_kind: kl.")
    center: bool = Field(
        False, description="Compare embeddings minus the teacher's batch mean (`losses.distill`): the narrow cone's shared "
        "direction no longer dominates the cosine.",
    )
    words: float = Field(
        0.0, ge=0,
        description="Weight of a word-level term (0 = off): each whitespace word's mean token state, student vs teacher "
        "(`losses.word_distill`). Not with grad_cache_chunk.",
    )
    word_layers: list[int] = Field(
        [-1], min_length=1,
        description="Hidden states the word term compares, averaged (0 = the embedding output, -1 = the last layer; "
        "e.g. [4, 8, -1]). The pooled terms always read the last layer.",
    )

    def reads(self, scored: bool) -> bool:
        return True

    def loss(self, embs: Embeddings, batch: TextBatch, teacher: Embeddings | None) -> torch.Tensor:
        assert teacher is not None, "the loop provides teacher embeddings when an objective needs them"
        roles = [r for r in ROLES if r in embs and r in teacher]
        s = torch.cat([embs[r] for r in roles])  # (n, D)
        t = torch.cat([teacher[r] for r in roles]).to(s.device)  # (n, D), no grad
        loss = distill(
            s, t, kind=self.kind, relational=self.relational, relational_kind=self.relational_kind, temperature=self.temperature,
            center=self.center,
        )
        if self.words:
            # Per role (each has its own word count W), then averaged.
            per_role = [word_distill(embs[f"words:{r}"], embs[f"nwords:{r}"], teacher[f"words:{r}"], teacher[f"nwords:{r}"]) for r in roles]
            loss = loss + self.words * torch.stack(per_role).mean()
        return loss


OBJECTIVES: dict[str, type[StrictModel]] = {"infonce": InfoNCE, "cosent": CoSENT, "distill": Distill}


class Objective(StrictModel):
    """The weighted sum of the objectives that are set."""

    infonce: InfoNCE | None = None
    cosent: CoSENT | None = None
    distill: Distill | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return {name: {} for name in v}
        # In a mapping, null means "off" (that is how a resolved config.yaml writes an unset objective).
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Objective:
        if not self.parts():
            raise ValueError(f"set at least one objective: {', '.join(OBJECTIVES)}")
        return self

    def parts(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OBJECTIVES if getattr(self, name) is not None}

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None

    @property
    def word_level(self) -> bool:
        """Whether the loop must also give word vectors (student and teacher) to the objectives."""
        return self.distill is not None and self.distill.words > 0

    @property
    def word_layers(self) -> tuple[int, ...]:
        """The hidden states those word vectors are read from (`Distill.word_layers`)."""
        return tuple(self.distill.word_layers) if self.distill is not None else (-1,)

    def check_sources(self, sources: dict[str, bool]) -> None:
        """sources: name -> whether its pairs are scored. A source that no objective reads is an error."""
        for name, scored in sources.items():
            if not any(part.reads(scored) for part in self.parts().values()):
                need = "cosent (its pairs have a 'score')" if scored else "infonce or distill (its pairs have no 'score')"
                raise UserError(f"{name}: no objective of this stage reads it; add {need}")

    def loss(self, embs: Embeddings, batch: TextBatch, teacher: Embeddings | None) -> tuple[torch.Tensor, dict[str, float]]:
        scored = batch.scores is not None
        total = None
        logged: dict[str, float] = {}
        for name, part in self.parts().items():
            weight = part.weight
            if not part.reads(scored):
                if not (name == "infonce" and is_distributed()):
                    continue
                # The other processes all-gather this one's embeddings inside infonce: it must take
                # part in the collective, with a zero weight (its scored pairs are no positives).
                weight = 0.0
            value = part.loss(embs, batch, teacher)
            if weight:
                logged[f"loss_{name}"] = float(value.detach())
            total = weight * value if total is None else total + weight * value
        assert total is not None, "check_sources guarantees an objective for every source"
        return total, logged


class DualSegmentation(StrictModel):
    """Each text read twice by the same network: with the expanded tokenizer and with the base one.

    The expanded model keeps every old id, so the base tokenisation is a valid input too, and it is the one the
    network was pretrained on. The stage's objective is applied to both readings, and an agreement term pulls
    the expanded reading's embedding towards the base reading's (no gradient through the base side): the
    base reading trains as a model without new tokens would (the "twin", which gains more than the expanded
    model on the e5 study), and the expanded reading follows a teacher that improves with it, where a fixed
    teacher (the base model, or the trained twin) is what stages 1-3 fall short of. About twice the compute
    per step. Saved models read only the expanded tokenisation: the base reading exists only in training.
    """

    weight: float = Field(1.0, ge=0, description="Weight of the stage's objective on the base reading (0: agreement only).")
    agree: float = Field(1.0, gt=0, description="Weight of the agreement term (1 - cosine of the two readings' embeddings).")
    relational: float = Field(
        0.0, ge=0, description="Adds the similarity-matrix term of `distill` to the agreement (the batch's geometry)."
    )

    def loss(
        self, objective: Objective, embs: Embeddings, base_embs: Embeddings, batch: TextBatch, teacher: Embeddings | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The objective on both readings plus the agreement; embs, base_embs: role -> (n, D) of the same texts."""
        total, logged = objective.loss(embs, batch, teacher)
        if self.weight:
            on_base, base_logged = objective.loss(base_embs, batch, teacher)
            total = total + self.weight * on_base
            logged.update({f"base_{k}": v for k, v in base_logged.items()})
        roles = [r for r in ROLES if r in embs and r in base_embs]
        s = torch.cat([embs[r] for r in roles])  # (n, D)
        t = torch.cat([base_embs[r] for r in roles]).detach()  # (n, D): the base reading is the target, not pulled
        agree = distill(s, t, kind="cosine", relational=self.relational)
        logged["loss_agree"] = float(agree.detach())
        return total + self.agree * agree, logged

"""Hard negatives mined with an embedding model (`koemb data mine-negatives`).

In-batch negatives are whatever else a batch holds: for a question, mostly documents about something
else, which a pretrained embedding model already ranks low. A mined negative is a document of the same
collection that the model ranks HIGH for the query and is not its answer, so the contrastive loss has to
learn the difference between near answers and the answer.

The trap is false negatives: among a question's best-ranked non-positive documents, many answer it as
well (unlabeled positives). Two guards:
- documents that are a positive of the same query text, or of a pair in the same `group` (paraphrases,
  shared answers), or equal to the query, are never chosen;
- positive-aware margin: a candidate scoring above `margin` x the query's score for its own positive is
  passed over (NV-Retriever, Moreira et al. 2024, "TopK-PercPos" at 95%): a document the model likes
  nearly as much as the labelled answer is more likely an unlabeled answer than a negative.
Of what is left, the `skip`-th best (0 = the hardest) becomes the pair's `negative`.

The collection is the file's own positives (de-duplicated), plus any `extra` documents.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from koemb.data.pairs import Pair
from koemb.errors import UserError
from koemb.eval.retrieval import exact_search


@dataclass(frozen=True)
class MineSettings:
    margin: float = 0.95  # a candidate above margin x (query, positive) score is a likely false negative
    skip: int = 0  # pass over this many permitted candidates first (0: the hardest permitted one)
    depth: int = 50  # how many of a query's best-ranked documents (past the banned ones) are looked at
    overwrite: bool = False  # also mine for pairs that already have a negative (else they keep theirs)

    def __post_init__(self) -> None:
        if not 0.0 < self.margin <= 1.0:
            raise UserError(f"margin must be in (0, 1] (got {self.margin})")
        if self.skip < 0 or self.depth < 1 or self.skip >= self.depth:
            raise UserError(f"need 0 <= skip < depth (got skip={self.skip}, depth={self.depth})")


@dataclass
class MineStats:
    pairs: int = 0
    mined: int = 0
    kept_own: int = 0  # pairs that had a negative and kept it (overwrite off)
    none_found: int = 0  # every candidate within depth was banned or above the margin
    dropped: int = 0  # of those, left out of the output (keep_unmatched off)
    above_margin: int = 0  # candidates passed over as likely false negatives, over all queries
    ranks: list[int] = field(default_factory=list)  # the chosen document's rank among all documents (1 = best)

    def summary(self) -> dict[str, float | int]:
        r = sorted(self.ranks)
        return {
            "pairs": self.pairs,
            "mined": self.mined,
            "kept_own": self.kept_own,
            "none_found": self.none_found,
            "dropped": self.dropped,
            "above_margin": self.above_margin,
            "median_rank": r[len(r) // 2] if r else 0,
        }


def choose_negatives(
    ranked_idx: Tensor,
    ranked_scores: Tensor,
    positive_scores: Tensor,
    banned: Sequence[set[int]],
    settings: MineSettings,
) -> tuple[list[int | None], list[int], int]:
    """Pure selection. ranked_idx, ranked_scores: (Q, K) each query's best documents, best first;
    positive_scores: (Q,) each query's score for its own positive; banned[q]: document ids query q may not take.

    Returns (chosen document id or None per query, the chosen one's 1-based rank, how many candidates the
    margin passed over)."""
    chosen: list[int | None] = []
    ranks: list[int] = []
    over = 0
    for q in range(ranked_idx.shape[0]):
        limit = settings.margin * float(positive_scores[q])
        permitted = 0
        pick: int | None = None
        for r, (d, s) in enumerate(zip(ranked_idx[q].tolist(), ranked_scores[q].tolist())):
            if d in banned[q]:
                continue
            if s > limit:
                over += 1
                continue
            if permitted == settings.skip:
                pick = d
                ranks.append(r + 1)
                break
            permitted += 1
        chosen.append(pick)
    return chosen, ranks, over


def collection(pairs: Sequence[Pair], extra: Sequence[str] = ()) -> tuple[list[str], list[set[int]]]:
    """(documents, banned ids per pair): the pairs' positives (first-seen order, de-duplicated) + `extra`,
    and for each pair the ids it may not take as a negative (see the module docstring)."""
    docs: list[str] = []
    where: dict[str, int] = {}
    for text in [p.positive for p in pairs] + list(extra):
        if text not in where:
            where[text] = len(docs)
            docs.append(text)
    by_query: dict[str, set[int]] = defaultdict(set)
    by_group: dict[str, set[int]] = defaultdict(set)
    for p in pairs:
        by_query[p.query].add(where[p.positive])
        if p.group is not None:
            by_group[p.group].add(where[p.positive])
    banned = []
    for p in pairs:
        b = set(by_query[p.query])
        if p.group is not None:
            b |= by_group[p.group]
        if p.query in where:
            b.add(where[p.query])
        banned.append(b)
    return docs, banned


def mine_negatives(
    pairs: Sequence[Pair],
    encoder,
    settings: MineSettings = MineSettings(),
    *,
    prompts: bool = True,
    task: str | None = None,
    extra: Sequence[str] = (),
    keep_unmatched: bool = False,
) -> tuple[list[Pair], MineStats]:
    """Pairs with a mined `negative` each, in input order, and what was done.

    A pair for which no candidate passes (every one within depth is banned or above the margin: an ambiguous
    query) is left out, unless keep_unmatched: training gives every example of a batch as many hard negatives
    as the one with the fewest has, so one pair without a negative takes them from its whole batch.

    encoder: a `koemb.model.encoder.Encoder`. prompts: put the model's query/document prompts before the
    texts (off when the data already has them written in, as the e5 study's does); task: the query
    instruction of an instruction-prompted model (Qwen3-Embedding), default the preset's."""
    if not pairs:
        raise UserError("no pairs to mine negatives for")
    scored = sum(p.score is not None for p in pairs)
    if scored:
        raise UserError(f"{scored} pair(s) have a 'score': graded pairs (cosent) are not query -> answer pairs; mine only positive pairs")
    stats = MineStats(pairs=len(pairs))
    todo = [i for i, p in enumerate(pairs) if settings.overwrite or p.negative is None]
    stats.kept_own = len(pairs) - len(todo)
    if not todo:
        return list(pairs), stats
    docs, banned = collection(pairs, extra)
    queries = [pairs[i].query for i in todo]
    if prompts:
        q_emb = encoder.encode_queries(queries, task, desc="encode queries")  # (Q, D)
        d_emb = encoder.encode_documents(docs, desc="encode documents")  # (N, D)
    else:
        q_emb = encoder.encode(queries, desc="encode queries")
        d_emb = encoder.encode(docs, desc="encode documents")
    q_emb = torch.nn.functional.normalize(q_emb.float(), dim=-1)
    d_emb = torch.nn.functional.normalize(d_emb.float(), dim=-1)
    # `depth` documents past the largest banned set: a query never loses depth to its own positives.
    k = min(len(docs), settings.depth + max(len(banned[i]) for i in todo))
    scores, idx = exact_search(q_emb, d_emb, k)  # (Q, k) each
    pos_id = {t: i for i, t in enumerate(docs)}
    pos_scores = torch.stack([q_emb[j] @ d_emb[pos_id[pairs[i].positive]] for j, i in enumerate(todo)])  # (Q,)
    chosen, ranks, over = choose_negatives(idx, scores, pos_scores, [banned[i] for i in todo], settings)
    stats.above_margin = over
    stats.ranks = ranks
    out: list[Pair | None] = list(pairs)
    for i, d in zip(todo, chosen):
        if d is not None:
            out[i] = replace(pairs[i], negative=docs[d])
            stats.mined += 1
            continue
        stats.none_found += 1
        if pairs[i].negative is None and not keep_unmatched:  # (with overwrite, a pair keeps its own negative)
            out[i] = None
            stats.dropped += 1
    return [p for p in out if p is not None], stats

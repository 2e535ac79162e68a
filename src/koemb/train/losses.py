"""Losses as pure functions of embeddings, plus the collective that makes them exact on many processes.

A training objective embeds its texts and then calls one of these; nothing here touches a model or
a tokenizer, so every function is tested on hand-made tensors and reused unchanged by the cached
(GradCache) and distributed paths.

Shapes: B queries, N candidate documents, D embedding size, W processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

# Large negative instead of -inf: a row whose every candidate is masked would give NaN with -inf,
# and bf16 cannot hold -inf * 0 cleanly either.
_MASKED = -1e4


def infonce(
    q: torch.Tensor,
    c: torch.Tensor,
    positive: torch.Tensor,
    *,
    temperature: float = 0.05,
    c_keys: torch.Tensor | None = None,
    q_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive loss of queries against a shared pool of candidates (in-batch + hard negatives).

    q: (B, D) query embeddings; c: (N, D) candidates, N >= B (every query's positive, then any hard
    negatives); positive: (B,) index into c of each query's positive.
    Both are L2-normalised here, so the logits are cosines / temperature.

    False negatives: c_keys (N,) int64 identifies a candidate's text or group (equal keys = same
    text or same group id); a candidate with the same key as a query's positive, other than the
    positive itself, is masked out for that query (ChatbotData repeats answers: 11,823 rows,
    7,779 distinct). q_keys (B,), optional, masks candidates whose key equals the query's own key
    (e.g. a span-pair whose other half is in the batch as a document of another pair).
    Returns the mean over the B queries (a scalar).
    """
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"infonce expects q (B, D) and c (N, D), got {tuple(q.shape)} and {tuple(c.shape)}")
    q = F.normalize(q.float(), dim=-1)
    c = F.normalize(c.float(), dim=-1)
    logits = q @ c.T / temperature  # (B, N)
    mask = false_negative_mask(positive, c.shape[0], c_keys=c_keys, q_keys=q_keys)
    if mask is not None:
        logits = logits.masked_fill(mask, _MASKED)
    return F.cross_entropy(logits, positive)


def false_negative_mask(
    positive: torch.Tensor, n: int, *, c_keys: torch.Tensor | None, q_keys: torch.Tensor | None
) -> torch.Tensor | None:
    """(B, N) bool: True where candidate j must not count as a negative for query i."""
    if c_keys is None:
        return None
    pos_keys = c_keys[positive]  # (B,)
    mask = pos_keys[:, None] == c_keys[None, :]  # (B, N) same text/group as the positive
    if q_keys is not None:
        mask |= q_keys[:, None] == c_keys[None, :]
    # The positive itself always stays.
    mask[torch.arange(positive.shape[0], device=positive.device), positive] = False
    return mask


def distill(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    kind: Literal["cosine", "mse"] = "cosine",
    relational: float = 0.0,
    relational_kind: Literal["mse", "kl"] = "mse",
    temperature: float = 0.05,
    center: bool = False,
) -> torch.Tensor:
    """Match the student's pooled embeddings to the teacher's.

    student, teacher: (B, D) (the teacher is detached by the caller; a cached teacher simply is).
    cosine: mean of 1 - cos(s_i, t_i); mse: mean squared error per dimension of the normalised
    embeddings (normalised because both models' outputs are used normalised).
    relational (weight >= 0): adds a term on the two (B, B) cosine-similarity matrices, which keeps
    the geometry among texts even where single vectors cannot match exactly:
      mse: mean squared difference of the matrices. An embedding model's cosines sit in a narrow band
        (e5: mostly 0.7-0.9), so this term is small and weighs every pair alike;
      kl: per row, KL(teacher || student) of the softmax over the OTHER texts at `temperature`: which
        text is nearest, and by how much, is what retrieval reads, and the temperature stretches the
        narrow band (the diagonal is masked: it is 1 for both and would take all the mass).
    center: subtract the teacher's batch mean (of the normalised embeddings) from both sides first, then
      renormalise. Embedding models put all texts in a narrow cone, so a plain cosine is dominated by the
      direction every text shares: 1 - cos = 0.02 can hide errors as large as the differences between
      texts that retrieval ranks by. Centred, both terms compare what tells the batch's texts apart
      (needs B >= 2; koemb draws a batch from one source, so that is the source's own mean).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"distill expects equal shapes, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    if center:
        mu = t.mean(0, keepdim=True).detach()  # (1, D)
        s, t = F.normalize(s - mu, dim=-1), F.normalize(t - mu, dim=-1)
    loss = POINT_LOSSES[kind](s, t)
    if relational:
        loss = loss + relational * RELATIONAL_LOSSES[relational_kind](s @ s.T, t @ t.T, temperature)
    return loss


def word_distill(student: torch.Tensor, s_words: torch.Tensor, teacher: torch.Tensor, t_words: torch.Tensor) -> torch.Tensor:
    """Word-level distillation: mean over the words both sides have of 1 - cos(student word, teacher word).

    student: (B, Ws, D), teacher: (B, Wt, D) word vectors (`encode.word_states`; the teacher detached), or
    (B, K, Ws, D) and (B, K, Wt, D) with one slice per hidden layer (averaged over the K layers);
    s_words, t_words: (B,) complete words per row. A pooled embedding gives one target per text; the
    words give one per word, and they are where an expanded tokenizer differs (one token for a word
    the base read as several).
    """
    if (
        student.ndim != teacher.ndim or student.ndim not in (3, 4) or student.shape[0] != teacher.shape[0]
        or student.shape[-1] != teacher.shape[-1] or student.shape[1:-2] != teacher.shape[1:-2]
    ):
        raise ValueError(f"word_distill: expected (B, W, D) or (B, K, W, D) on both sides, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.ndim == 3:
        student, teacher = student.unsqueeze(1), teacher.unsqueeze(1)  # K = 1
    W = min(student.shape[-2], teacher.shape[-2])
    n = torch.minimum(s_words.to(student.device), t_words.to(student.device))  # (B,)
    mask = (torch.arange(W, device=student.device).unsqueeze(0) < n.unsqueeze(1)).float().unsqueeze(1)  # (B, 1, W)
    cos = F.cosine_similarity(student[..., :W, :].float(), teacher[..., :W, :].to(student.device).float(), dim=-1)  # (B, K, W)
    return ((1.0 - cos) * mask).sum() / (mask.sum() * cos.shape[1]).clamp(min=1.0)


def _relational_kl(ss: torch.Tensor, tt: torch.Tensor, temperature: float) -> torch.Tensor:
    """ss, tt: (B, B) cosine matrices -> mean over rows of KL(softmax(tt_i/T) || softmax(ss_i/T)), i != j."""
    eye = torch.eye(ss.shape[0], dtype=torch.bool, device=ss.device)
    # A large finite fill rather than -inf: 0 * (-inf) would make the masked entry NaN in the KL sum.
    log_s = F.log_softmax((ss / temperature).masked_fill(eye, -1e4), dim=-1)
    log_t = F.log_softmax((tt / temperature).masked_fill(eye, -1e4), dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


RELATIONAL_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "mse": lambda ss, tt, _t: F.mse_loss(ss, tt),
    "kl": _relational_kl,
}


POINT_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosine": lambda s, t: (1.0 - (s * t).sum(-1)).mean(),
    "mse": lambda s, t: F.mse_loss(s, t),
}


def cosent(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor, *, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su 2022): rank the pairs' cosines in the order of their graded similarity scores.

    a, b: (B, D) the two sides of B pairs; scores: (B,) the gold similarity (any scale, e.g. STS 0-5).
    loss = log(1 + sum over (i, j) with scores_i > scores_j of exp(scale * (cos_j - cos_i))):
    only the ORDER of the scores matters, which is what STS's Spearman correlation reads, and a
    pair of sentences that is merely related (score 2-3) is not pushed to cosine 1 the way InfoNCE
    pushes every positive. A batch whose scores are all equal gives 0 (no ordered pair).
    """
    if a.shape != b.shape or a.ndim != 2 or scores.shape != (a.shape[0],):
        raise ValueError(f"cosent expects a, b (B, D) and scores (B,), got {tuple(a.shape)}, {tuple(b.shape)}, {tuple(scores.shape)}")
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1) * scale  # (B,)
    diff = cos[None, :] - cos[:, None]  # (B, B): [i, j] = cos_j - cos_i
    ordered = scores[:, None] > scores[None, :]  # (B, B): i should be above j
    # logsumexp over {0} and every ordered pair's difference = log(1 + sum exp(...)), stably.
    terms = torch.cat([torch.zeros(1, device=cos.device), diff[ordered]])
    return torch.logsumexp(terms, dim=0)


class _AllGather(torch.autograd.Function):
    """all_gather whose backward hands each process the gradient of its own slice summed over processes.

    Each process p computes a loss L_p on the gathered tensor; DDP then AVERAGES parameter gradients.
    Summing the slice gradients over processes gives every local tensor d(sum_p L_p)/dx, so after DDP's
    1/W the parameters get d(mean_p L_p)/dθ: exactly the one-process gradient on the global batch
    (with equal local batch sizes, mean_p L_p is the global mean loss).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # x: (b, ...) -> (W*b, ...)
        ctx.rank = dist.get_rank()
        ctx.b = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.b : (ctx.rank + 1) * ctx.b]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all_gather along dim 0 (identity on one process). Local sizes must be equal."""
    if not is_distributed():
        return x
    return _AllGather.apply(x)


def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """all_gather along dim 0 for tensors that need no gradient (keys, ids)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


def gathered_infonce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.05,
    d_keys: torch.Tensor | None = None,
    neg_keys: torch.Tensor | None = None,
    q_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of this process's queries against the GLOBAL pool of documents and hard negatives.

    q: (b, D) local queries; d: (b, D) their positives; negatives: (b*H, D) or None; keys as in
    `infonce` (d_keys (b,), neg_keys (b*H,), q_keys (b,)). On one process this is `infonce` on the
    batch; on W processes the documents are gathered differentiably, the local loss is the mean
    over local queries, and DDP's averaging makes the step equal to the one-process step. Every
    process must pass negatives with the same H, or none (the loop agrees on H before embedding).
    """
    rank = dist.get_rank() if is_distributed() else 0
    b = q.shape[0]
    parts, keys = [all_gather(d)], [all_gather_nograd(d_keys) if d_keys is not None else None]
    if negatives is not None:
        parts.append(all_gather(negatives))
        keys.append(all_gather_nograd(neg_keys) if neg_keys is not None else None)
    c = torch.cat(parts, 0)  # (W*b + W*b*H, D): the global positives first, then the global negatives
    c_keys = None
    if d_keys is not None and (negatives is None or neg_keys is not None):
        c_keys = torch.cat([k for k in keys if k is not None], 0)
    positive = torch.arange(rank * b, rank * b + b, device=q.device)
    return infonce(q, c, positive, temperature=temperature, c_keys=c_keys, q_keys=q_keys)


def text_keys(texts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """(len,) int64 keys equal for equal texts, stable across processes (not Python's salted hash)."""
    import hashlib

    vals = [int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True) for t in texts]
    return torch.tensor(vals, dtype=torch.int64, device=device)

"""Losses on hand-made tensors: values computed by hand, masking, and the one-process gather."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from koemb.train.losses import cosent, distill, false_negative_mask, gathered_infonce, infonce, text_keys


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_infonce_matches_hand_computation():
    q = _unit([1, 0], [0, 1])
    c = _unit([1, 0], [1, 1])
    t = 0.5
    # query 0: cos to c0 = 1, to c1 = 1/sqrt2; query 1 (positive c1): cos 0 and 1/sqrt2.
    s = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t)))
    l1 = -math.log(math.exp(s / t) / (math.exp(0) + math.exp(s / t)))
    got = infonce(q, c, torch.tensor([0, 1]), temperature=t)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_infonce_normalises_inputs_and_ranks_correct_pairs_lower():
    q = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    good = infonce(q, q * 2, torch.tensor([0, 1]), temperature=0.05)
    bad = infonce(q, q.flip(0), torch.tensor([0, 1]), temperature=0.05)
    assert good.item() < 1e-6
    assert bad.item() > 10


def test_duplicate_positive_is_masked_as_negative():
    # Candidates: d0, d1, and d2 == d0 (same answer text twice in one batch).
    q = _unit([1, 0.1], [0.2, 1], [1, 0.1])
    c = _unit([1, 0], [0, 1], [1, 0])
    keys = torch.tensor([7, 8, 7])
    pos = torch.tensor([0, 1, 2])
    masked = infonce(q, c, pos, temperature=0.1, c_keys=keys)
    # Reference: each query sees its positive plus only the candidates with other keys.
    ref = []
    for i in range(3):
        keep = [j for j in range(3) if j == pos[i] or keys[j] != keys[pos[i]]]
        logits = (q[i : i + 1] @ c[keep].T) / 0.1
        ref.append(F.cross_entropy(logits, torch.tensor([keep.index(int(pos[i]))])))
    assert masked.item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-6)
    unmasked = infonce(q, c, pos, temperature=0.1)
    assert unmasked.item() > masked.item() + 0.4  # the duplicate really was hurting (about ln 2 per affected query)


def test_group_ids_and_query_keys_mask():
    pos = torch.tensor([0, 1])
    m = false_negative_mask(pos, 4, c_keys=torch.tensor([1, 2, 1, 3]), q_keys=torch.tensor([9, 3]))
    assert m.tolist() == [[False, False, True, False], [False, False, False, True]]


def test_hard_negatives_increase_the_loss():
    q = _unit([1, 0], [0, 1])
    d = _unit([1, 0], [0, 1])
    hard = _unit([1, 0.05], [0.05, 1])
    base = infonce(q, d, torch.tensor([0, 1]), temperature=0.05)
    with_hard = infonce(q, torch.cat([d, hard]), torch.tensor([0, 1]), temperature=0.05)
    assert with_hard.item() > base.item() + 0.5


def test_gathered_infonce_on_one_process_is_infonce():
    g = torch.Generator().manual_seed(0)
    q, d, n = (torch.randn(4, 8, generator=g) for _ in range(3))
    keys = text_keys(["a", "b", "a", "c"])
    nkeys = text_keys(["x", "y", "b", "z"])
    got = gathered_infonce(q, d, negatives=n, temperature=0.1, d_keys=keys, neg_keys=nkeys)
    ref = infonce(q, torch.cat([d, n]), torch.arange(4), temperature=0.1, c_keys=torch.cat([keys, nkeys]))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_distill_cosine_mse_and_relational():
    t = _unit([1, 0], [0, 1], [1, 1])
    assert distill(t * 3, t).item() == pytest.approx(0.0, abs=1e-7)
    s = _unit([0, 1], [0, 1], [1, 1])  # first row at 90 degrees: cosine loss 1/3
    assert distill(s, t, kind="cosine").item() == pytest.approx(1 / 3, rel=1e-6)
    assert distill(s, t, kind="mse").item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    # A rotation keeps the geometry among texts: the relational term adds nothing.
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    r = t @ rot
    assert distill(r, t, relational=1.0).item() == pytest.approx(distill(r, t).item(), abs=1e-6)
    assert distill(s, t, relational=1.0).item() > distill(s, t).item()


def test_distill_relational_kl_matches_a_hand_computed_value():
    t = _unit([1, 0], [0, 1], [1, 1])
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    # Same geometry (a rotation): no relational KL, whatever the temperature.
    assert distill(t @ rot, t, relational=1.0, relational_kind="kl").item() == pytest.approx(
        distill(t @ rot, t).item(), abs=1e-6
    )
    # By hand: row i's softmax over the two OTHER texts' cosines / T, then KL(teacher || student), mean over rows.
    s = _unit([1, 0], [1, 2], [0, 1])
    temp = 0.5

    def rows(x: torch.Tensor) -> list[torch.Tensor]:
        c = x @ x.T
        return [torch.softmax(torch.stack([c[i, j] for j in range(3) if j != i]) / temp, 0) for i in range(3)]

    want = sum((pt * (pt.log() - ps.log())).sum() for pt, ps in zip(rows(t), rows(s))) / 3
    got = distill(s, t, relational=1.0, relational_kind="kl", temperature=temp) - distill(s, t)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.isfinite(got)


def test_distill_gradient_reaches_only_the_student():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4)
    distill(s, t, relational=0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_distill_center_compares_what_differs_between_texts():
    """In a narrow cone the plain cosine barely sees a student that swaps the texts' specifics; centred it does."""
    g = torch.Generator().manual_seed(0)
    cone = torch.zeros(8, 64)
    cone[:, 0] = 1.0  # the direction every text shares
    spec_t, spec_s = torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g)
    spec_t[:, 0] = spec_s[:, 0] = 0.0
    t = cone + 0.05 * spec_t  # cosines between texts ~0.9, like e5's
    s = cone + 0.05 * spec_s  # same cone, unrelated specifics
    plain, centred = distill(s, t).item(), distill(s, t, center=True).item()
    assert plain < 0.2 and centred > 0.8
    # By hand: 1 - cos after subtracting the teacher's mean of the normalised rows from both sides.
    tn, sn = F.normalize(t, dim=-1), F.normalize(s, dim=-1)
    mu = tn.mean(0, keepdim=True)
    want = (1 - F.cosine_similarity(sn - mu, tn - mu, dim=-1)).mean().item()
    assert centred == pytest.approx(want, rel=1e-5)
    # A perfect student stays at 0, and a shared offset the teacher does not have is not free.
    assert distill(t, t, center=True, relational=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distill(t + 0.05 * spec_s.mean(0), t, center=True).item() > 1e-3
    s_req = s.clone().requires_grad_(True)
    distill(s_req, t, center=True, relational=1.0).backward()
    assert s_req.grad is not None and s_req.grad.abs().sum() > 0


def test_text_keys_equal_for_equal_texts():
    k = text_keys(["안녕", "hello", "안녕"])
    assert k[0] == k[2] and k[0] != k[1]


def test_cosent_matches_hand_computation_and_reads_only_the_order():
    a = _unit([1, 0], [1, 0], [1, 0])
    b = _unit([1, 0], [1, 1], [0, 1])  # cosines 1, 1/sqrt2, 0
    scale = 20.0
    c = [scale * 1.0, scale / math.sqrt(2), 0.0]
    # Scores rank pair 1 above pair 0 above pair 2: every (i above j) adds exp(c_j - c_i).
    scores = torch.tensor([3.0, 5.0, 0.0])
    want = math.log(1 + math.exp(c[0] - c[1]) + math.exp(c[2] - c[1]) + math.exp(c[2] - c[0]))
    assert cosent(a, b, scores, scale=scale).item() == pytest.approx(want, rel=1e-6)
    # Only the order counts: any increasing map of the scores gives the same loss.
    assert cosent(a, b, scores * 10 - 7, scale=scale).item() == pytest.approx(want, rel=1e-6)
    # Cosines already in the scores' order cost little, the reverse order a lot; no ordered pair costs 0.
    assert cosent(a, b, torch.tensor([5.0, 3.0, 0.0]), scale=scale).item() < 0.01
    assert cosent(a, b, torch.tensor([0.0, 3.0, 5.0]), scale=scale).item() > 19
    assert cosent(a, b, torch.full((3,), 2.0)).item() == 0.0
    with pytest.raises(ValueError, match="scores"):
        cosent(a, b, torch.zeros(2))


def test_dual_segmentation_adds_the_base_reading_and_an_agreement_that_pulls_only_the_expanded_side():
    from koemb.train.data import TextBatch
    from koemb.train.objectives import DualSegmentation, Objective

    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    batch = TextBatch(query=[f"q{i}" for i in range(4)], positive=[f"p{i}" for i in range(4)], negative=[], positive_keys=[f"p{i}" for i in range(4)], negative_keys=[])
    obj = Objective.model_validate({"infonce": {"temperature": 0.1}})
    single, _ = obj.loss({"query": q, "positive": p}, batch, None)
    # Both readings equal: no disagreement, the objective counted once per reading.
    total, logged = DualSegmentation(weight=0.5).loss(obj, {"query": q, "positive": p}, {"query": q, "positive": p}, batch, None)
    assert logged["loss_agree"] == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(1.5 * single.item(), rel=1e-6)
    assert set(logged) == {"loss_infonce", "base_loss_infonce", "loss_agree"}
    # The agreement by hand: mean of 1 - cos over every text of every role; gradient only into the expanded reading.
    qe, pe = q.clone().requires_grad_(True), (p + torch.randn(4, 8, generator=g)).requires_grad_(True)
    qb, pb = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
    dual = DualSegmentation(weight=0.0, agree=2.0)
    total, logged = dual.loss(obj, {"query": qe, "positive": pe}, {"query": qb, "positive": pb}, batch, None)
    want = (1 - F.cosine_similarity(torch.cat([qe, pe]), torch.cat([q, p]))).mean()
    assert logged["loss_agree"] == pytest.approx(want.item(), rel=1e-5)
    assert "base_loss_infonce" not in logged  # weight 0: the base reading is only the agreement's target
    total.backward()
    assert qb.grad is None and pb.grad is None
    assert pe.grad is not None and pe.grad.abs().sum() > 0

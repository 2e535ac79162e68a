"""Metric functions on hand-computed cases, and exact search against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from koemb.eval.metrics import correlation_metrics, mrr_at_k, retrieval_metrics, separation_metrics
from koemb.eval.retrieval import document_text, exact_search
from koemb.eval.rowstats import embedding_row_stats
from koemb.eval.report import change_points
from koemb.eval.tokstats import tokenizer_stats


def test_change_points_against_the_baseline():
    results = {
        "base": {"sts": {"spearman": 0.7684}, "ret": {"ndcg@10": 0.8865}},
        "final": {"sts": {"spearman": 0.7983}, "ret": {"ndcg@10": 0.8786}},
        "other": {"sts": {"spearman": 0.70}},  # never ran `ret`
    }
    pts = change_points(results, "base", ["final", "other"], ["sts", "ret"], {"sts": "spearman", "ret": "ndcg@10"})
    assert pts["final"] == pytest.approx([2.99, -0.79])
    assert pts["other"][0] == pytest.approx(-6.84) and math.isnan(pts["other"][1])


def test_retrieval_metrics_by_hand():
    qrels = {"q1": {"d2": 1}, "q2": {"d1": 1, "d3": 1}}
    run = {
        "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.1},  # relevant at rank 2
        "q2": {"d1": 0.9, "d2": 0.8, "d3": 0.7},  # relevant at ranks 1 and 3
    }
    m = retrieval_metrics(qrels, run)
    ndcg_q1 = 1 / math.log2(3)
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert m["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["recall@10"] == pytest.approx(1.0)
    assert m["precision@10"] == pytest.approx((1 / 10 + 2 / 10) / 2)
    assert m["map@10"] == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2)


def test_mrr_cuts_at_k_and_breaks_ties_by_doc_id_like_pytrec_eval():
    qrels = {"q": {"a": 1}}
    assert mrr_at_k(qrels, {"q": {"b": 0.5, "a": 0.5}}, 10) == [0.5]  # tie: "b" > "a" ranks first
    assert mrr_at_k(qrels, {"q": {f"x{i}": 1.0 - i / 100 for i in range(10)} | {"a": 0.0}}, 10) == [0.0]


def test_correlations_and_separation():
    c = correlation_metrics([0.1, 0.2, 0.3, 0.9], [0, 1, 2, 3])
    assert c["spearman"] == pytest.approx(1.0) and 0.8 < c["pearson"] < 1.0
    s = separation_metrics([0.9, 0.8, 0.2, 0.6, 0.5, 0.4], [True, True, False, True, False, False], ["a", "a", "a", "b", "b", "b"])
    assert s["similar_mean"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert s["different_mean"] == pytest.approx((0.2 + 0.5 + 0.4) / 3)
    assert s["separation[a]"] == pytest.approx(0.85 - 0.2) and s["separation[b]"] == pytest.approx(0.6 - 0.45)


@pytest.mark.parametrize("doc_chunk,query_chunk", [(7, 3), (1000, 1000), (1, 1)])
def test_exact_search_chunked_equals_brute_force(doc_chunk, query_chunk):
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(11, 8, generator=g), torch.randn(50, 8, generator=g) * 3
    scores, idx = exact_search(q, d, k=5, doc_chunk=doc_chunk, query_chunk=query_chunk)
    ref = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(d, dim=1).T
    top = ref.topk(5, dim=1)
    torch.testing.assert_close(scores, top.values)
    assert torch.equal(idx, top.indices)
    s2, i2 = exact_search(q, d[:3], k=10)  # k larger than the corpus
    assert s2.shape == (11, 3)


def test_document_text_joins_like_mteb():
    assert document_text("제목", "본문") == "제목 본문"
    assert document_text("", " 본문 ") == " 본문 "


def test_row_stats_detect_copies_and_scale():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(100, 16, generator=g)
    copies = old[:5] * 2.0  # same directions, twice the norm
    s = embedding_row_stats(torch.cat([old, copies]), 100)
    assert s["new_rows"] == 5 and s["new_nearest_old_cos_mean"] == pytest.approx(1.0, abs=1e-5)
    assert s["new_norm_mean"] == pytest.approx(2 * old[:5].norm(dim=1).mean().item(), rel=1e-5)
    rand = embedding_row_stats(torch.cat([old, torch.randn(5, 16, generator=g)]), 100)
    assert rand["new_nearest_old_cos_mean"] < 0.9
    spare = embedding_row_stats(torch.cat([old, copies, torch.zeros(3, 16)]), 100, end=105)  # 3 spare rows ignored
    assert spare["new_rows"] == 5 and spare["new_nearest_old_cos_mean"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        embedding_row_stats(old, 100)


def test_tokenizer_stats_on_the_real_qwen_tokenizer(qwen_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_dir)
    texts = ["안녕하세요", "한국어 문장입니다 " * 40]
    s = tokenizer_stats(tok, texts, texts, max_length=32, first_new_id=151000)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    assert s["tokens_per_hangul"] == pytest.approx(sum(map(len, ids)) / (5 + 8 * 40))
    assert s["truncated_share"] == 0.5  # the long one
    assert s["new_token_share"] == 0.0  # ids >= 151000 are added/special tokens, none in plain text

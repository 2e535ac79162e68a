"""Offline parity with MTEB's own retrieval evaluator on a local BEIR folder (within 1e-4)."""

from __future__ import annotations


import pytest

from koemb.eval.retrieval import evaluate_retrieval, read_beir
from koemb.model.encoder import Encoder
from test_encoder import build_tiny_qwen
from test_eval_suite import write_beir

pytest.importorskip("mteb", reason="mteb is pinned in requirements.txt; install it to run the parity test")

INSTRUCTION = "Given a question, retrieve the facts that answer it"


def test_koemb_retrieval_metrics_equal_mteb_evaluator(qwen_dir, ko_data, tmp_path):
    from koemb.eval.mteb_tasks import local_retrieval_task, run_tasks

    folder = write_beir(tmp_path / "beir", ko_data, 40)  # half the documents carry a title: tests MTEB's join
    enc = Encoder.load(build_tiny_qwen(qwen_dir), device="cpu")
    ours = evaluate_retrieval(enc, read_beir(folder), INSTRUCTION, use_cache=False)
    theirs = run_tasks(enc, [local_retrieval_task(folder, instruction=INSTRUCTION)], tmp_path / "mteb")["KoembLocalRetrieval"]
    assert 0.05 < ours["ndcg@10"] < 0.95  # neither trivial nor hopeless, so a mismatch would show
    for metric in ("ndcg@10", "map@10", "recall@10", "precision@10", "mrr@10"):
        assert ours[metric] == pytest.approx(theirs[metric], abs=1e-4), metric
    # The instruction matters to both: without it MTEB's numbers move (the comparison can fail).
    plain = run_tasks(enc, [local_retrieval_task(folder, name="KoembLocalPlain")], None)["KoembLocalPlain"]
    assert abs(plain["ndcg@10"] - ours["ndcg@10"]) > 1e-3


def test_mteb_names_and_subsets(qwen_dir):
    from koemb.errors import UserError
    from koemb.eval.mteb_tasks import run_mteb, scores_from_mteb

    enc = Encoder.load(build_tiny_qwen(qwen_dir), device="cpu")
    with pytest.raises(UserError, match="NoSuchTask"):
        run_mteb(enc, ["NoSuchTask"])
    got = scores_from_mteb("BelebeleRetrieval", {"test": [
        {"hf_subset": "kor_Hang-kor_Hang", "ndcg_at_10": 0.5, "main_score": 0.5},
        {"hf_subset": "kor_Hang-eng_Latn", "ndcg_at_10": 0.4, "main_score": 0.4},
    ]})
    assert got == {"BelebeleRetrieval[kor_Hang-kor_Hang]": {"ndcg@10": 0.5, "main_score": 0.5},
                   "BelebeleRetrieval[kor_Hang-eng_Latn]": {"ndcg@10": 0.4, "main_score": 0.4}}

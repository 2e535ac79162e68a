"""`koemb data mine-negatives`: the selection rule on hand-made rankings, then the real multilingual-e5-small on
real Korean StrategyQA pairs from ../shared."""

from __future__ import annotations

import json

import pytest
import torch

from koemb.cli import main
from koemb.data.build_train import BuildTrainConfig, build_train
from koemb.data.mine import MineSettings, choose_negatives, collection, mine_negatives
from koemb.data.pairs import Pair, read_pairs, write_pairs
from koemb.errors import UserError
from koemb.model.encoder import Encoder
from test_encoder import me5_small_dir


def test_choose_skips_banned_and_near_positive_candidates():
    # Query 0's positive scores 0.80, so the margin (0.95) lets only candidates <= 0.76 through.
    idx = torch.tensor([[0, 1, 2, 3, 4], [2, 0, 1, 3, 4], [1, 0, 2, 3, 4]])
    sc = torch.tensor([[0.90, 0.79, 0.75, 0.70, 0.60], [0.9, 0.5, 0.4, 0.3, 0.2], [0.99, 0.98, 0.97, 0.96, 0.95]])
    pos = torch.tensor([0.80, 0.90, 0.50])
    banned = [{0}, {2}, {1}]
    chosen, ranks, over = choose_negatives(idx, sc, pos, banned, MineSettings())
    assert chosen == [2, 0, None]  # 0 banned, 1 above 0.76; 2 banned -> 0; everything of query 2 is above 0.475
    assert ranks == [3, 2]
    assert over == 1 + 0 + 4
    chosen, _, _ = choose_negatives(idx, sc, pos, banned, MineSettings(skip=1))
    assert chosen == [3, 1, None]
    with pytest.raises(UserError, match="margin"):
        MineSettings(margin=0.0)
    with pytest.raises(UserError, match="skip"):
        MineSettings(skip=5, depth=5)


def test_collection_bans_the_querys_own_answers_its_group_and_itself():
    pairs = [
        Pair("q1", "a"),
        Pair("q1", "b"),  # the same query with a second answer: neither is its negative
        Pair("q2", "a", group="g"),
        Pair("q3", "c", group="g"),  # shares a group with q2: c and a are both off limits to both
        Pair("d", "e"),
    ]
    docs, banned = collection(pairs, extra=["d", "b", "f"])
    assert docs == ["a", "b", "c", "e", "d", "f"]
    assert banned == [{0, 1}, {0, 1}, {0, 2}, {0, 2}, {3, 4}]  # the last: its positive, and the document equal to it


@pytest.fixture(scope="module")
def strategyqa(tmp_path_factory, ko_data) -> list[Pair]:
    out = tmp_path_factory.mktemp("train")
    build_train(ko_data, out, BuildTrainConfig(pair_sources=["strategyqa"], text_sources=[]))
    return read_pairs(out / "pairs" / "strategyqa.jsonl")[:150]


def test_mined_negatives_are_hard_and_below_the_margin_on_real_e5(strategyqa):
    enc = Encoder.load(me5_small_dir(), overrides={"max_length": 128})
    settings = MineSettings(margin=0.95)
    mined, stats = mine_negatives(strategyqa, enc, settings)
    assert stats.mined + stats.none_found == len(strategyqa) and stats.dropped == stats.none_found
    assert len(mined) == stats.mined > 0.8 * len(strategyqa)
    docs = sorted({p.positive for p in strategyqa})
    d = torch.nn.functional.normalize(enc.encode_documents(docs), dim=-1)
    row = {t: i for i, t in enumerate(docs)}
    q = torch.nn.functional.normalize(enc.encode_queries([p.query for p in mined]), dim=-1)
    own = {p.query: set() for p in strategyqa}
    for p in strategyqa:
        own[p.query].add(p.positive)
    hard, typical = [], []
    for j, p in enumerate(mined):
        assert p.negative is not None and p.negative not in own[p.query]
        s = q[j] @ d.T  # (N,)
        s_pos, s_neg = float(s[row[p.positive]]), float(s[row[p.negative]])
        assert s_neg <= 0.95 * s_pos + 1e-5
        hard.append(s_neg)
        typical.append(float(s.median()))
    # A mined negative is among the documents the model ranks highest, not a typical one.
    assert sum(hard) / len(hard) > sum(typical) / len(typical) + 0.03
    assert sorted(stats.ranks)[len(stats.ranks) // 2] <= 10


def test_cli_writes_pairs_and_summary_and_keeps_what_exists(strategyqa, tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, strategyqa[:40])
    out = tmp_path / "mined.jsonl"
    args = ["data", "mine-negatives", "--model", str(me5_small_dir()), "--pairs", str(src), "--out", str(out), "--max-length", "128"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "mined.jsonl.mine.json").read_text(encoding="utf-8"))
    rows = read_pairs(out)
    assert summary["pairs"] == 40 and summary["mined"] == len(rows) == 40 - summary["dropped"]
    assert all(r.negative for r in rows)
    before = out.read_bytes()
    assert main(args) == 2  # exists: refused, nothing lost
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    scored = tmp_path / "scored.jsonl"
    write_pairs(scored, [Pair("a", "b", score=3.0)])
    assert main(["data", "mine-negatives", "--model", str(me5_small_dir()), "--pairs", str(scored), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "score" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()

"""benchmarks/me5_study_data.py's inverse-cloze passages and chunks, on real Korean text from ../shared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from me5_study_data import _SENTENCE, chunks, ict_pairs, ict_pairs_per_text


def test_ict_pairs_take_one_sentence_out_of_a_passage(tmp_path, ko_data):
    # The UNESCO report: one paragraph per line, read as one stream of sentences.
    lines = (ko_data / "boddari" / "unesco_report.txt").read_text(encoding="utf-8").splitlines()
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    with (unlabeled / "unesco.jsonl").open("w", encoding="utf-8") as fh:
        for line in lines[:400]:
            if line.strip():
                fh.write(json.dumps({"text": line.strip()}, ensure_ascii=False) + "\n")
    pairs = ict_pairs(unlabeled, 10_000)
    assert len(pairs) > 20
    # Taken out: the passage does not hold its query (a short heading may recur elsewhere in the passage).
    assert sum(q not in p for q, p in pairs) >= 0.9 * len(pairs)
    for q, p in pairs:
        assert 15 <= len(q) <= 200
        # The bounds count the sentences' characters, not the spaces that join them; less the sentence taken out.
        assert 250 - len(q) - 5 <= len(p) <= 800 + p.count(" ")
    assert ict_pairs(unlabeled, 10_000) == pairs  # seeded
    assert ict_pairs(unlabeled, 5) == pairs[:5]


def test_chunks_keep_every_character_within_the_bound(ko_data):
    texts = [l.strip() for l in (ko_data / "boddari" / "unesco_report.txt").read_text(encoding="utf-8").splitlines()[:200] if l.strip()]
    out = chunks(texts, 200)
    assert all(0 < len(c) <= 200 for c in out)
    assert len(out) > len(texts)  # long paragraphs are cut
    # Nothing lost or invented: the same non-space characters, only re-cut (and shuffled).
    assert sorted("".join(out).replace(" ", "")) == sorted("".join(texts).replace(" ", ""))
    assert chunks(texts, 200) == out  # seeded


def test_ict_pairs_per_text_stay_within_one_text_and_skip_the_validation_report(tmp_path, ko_data):
    from koemb.data.ko_sources import unlabeled_texts

    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    texts = {name: unlabeled_texts(ko_data, sources=[name])[:60] for name in ("petitions", "unesco")}
    for name, rows in texts.items():
        with (unlabeled / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for t in rows:
                fh.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    rows = ict_pairs_per_text(unlabeled, 10_000)
    assert len(rows) > 20
    assert {r["source"] for r in rows} == {"ict_petitions"}  # the UNESCO report is the validation's text
    for r in rows:
        q, p = r["query"].removeprefix("query: "), r["positive"].removeprefix("passage: ")
        assert r["query"].startswith("query: ") and r["positive"].startswith("passage: ")
        assert 15 <= len(q) <= 200 and q not in p
        # Query and passage come from the text named by `group`, never from two texts.
        # (compared without whitespace: the packer joins sentences with one space, the text may have had more.)
        source_text = "".join(texts["petitions"][int(r["group"].split(":")[1])].split())
        assert "".join(q.split()) in source_text
        assert all("".join(s.split()) in source_text for s in _SENTENCE.split(p))
        assert 150 - len(q) - 5 <= len(p) <= 350 + p.count(" ")
    assert ict_pairs_per_text(unlabeled, 10_000) == rows  # seeded

"""Korean evaluation readers on the real files in ../shared/data/ko, and the shipped resources."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from koemb.data.eval_sets import (
    make_strategyqa_holdout,
    make_strategyqa_validation,
    parse_strategyqa_input,
    read_korquad_retrieval,
    read_korsts,
    read_inverse_cloze,
    read_korsts_retrieval,
    read_strategyqa,
    read_strategyqa_retrieval,
    strategyqa_holdout_ids,
    strategyqa_validation_ids,
)
from koemb.errors import UserError
from koemb.eval.separation import BUILTIN_SEPARATION, read_separation

STRATEGYQA = "sionic_strategyqa_ko/task169_strategyqa_sentence_generation_ko.json"


def test_strategyqa_parses_tolerantly_and_the_holdout_is_reproducible(ko_data):
    items = read_strategyqa(ko_data / STRATEGYQA)
    assert len(items) == 4161  # the shared README's count of rows that parse
    assert all(it.question and it.facts and "사실" not in it.facts[:3] for it in items)
    shipped = strategyqa_holdout_ids()
    assert len(shipped) == 1000 and shipped <= {it.id for it in items}
    assert set(make_strategyqa_holdout(items)) == shipped  # the file is what the seeded draw gives
    data = read_strategyqa_retrieval(ko_data / STRATEGYQA)
    assert set(data.queries) == shipped and len(data.corpus) <= 1000
    assert all(len(rel) == 1 and next(iter(rel)) in data.corpus for rel in data.qrels.values())


def test_the_strategyqa_validation_split_is_reproducible_and_outside_the_holdout(ko_data):
    items = read_strategyqa(ko_data / STRATEGYQA)
    holdout, shipped = strategyqa_holdout_ids(), strategyqa_validation_ids()
    assert len(shipped) == 500 and shipped <= {it.id for it in items} and not shipped & holdout
    assert set(make_strategyqa_validation(items, holdout)) == shipped  # the file is what the seeded draw gives
    data = read_strategyqa_retrieval(ko_data / STRATEGYQA, split="validation")
    assert set(data.queries) == shipped and 0 < len(data.corpus) <= 500
    test_docs = {text for _, text in read_strategyqa_retrieval(ko_data / STRATEGYQA).corpus.values()}
    assert not {text for _, text in data.corpus.values()} & test_docs  # no passage of the test is a validation passage
    with pytest.raises(UserError, match=r"StrategyQA split 'dev' is not one of test, validation"):
        read_strategyqa_retrieval(ko_data / STRATEGYQA, split="dev")


def test_a_missing_strategyqa_ids_file_is_named(ko_data, tmp_path, monkeypatch):
    from koemb.data import eval_sets

    monkeypatch.setattr(eval_sets, "VALIDATION_FILE", tmp_path / "absent.txt")
    with pytest.raises(UserError, match=r"absent\.txt: the StrategyQA validation ids are missing"):
        read_strategyqa_retrieval(ko_data / STRATEGYQA, split="validation")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("용어: 나트륨, 설명: 원소, 질문:원자 번호 11은 나트륨인가요? , 답변:네", ("나트륨", "원자 번호 11은 나트륨인가요?", "네")),
        ("용어 : A, 설명: B, 질문 : 1, 2, 3은 숫자인가요?, 대답 : 예", ("", "1, 2, 3은 숫자인가요?", "예")),
        ("용어: A, 설명: B, 질문: 그런가?, 답:아니오", ("A", "그런가?", "아니오")),
        ("질문이 없는 행", None),
    ],
)
def test_parse_strategyqa_input_variants(text, expected):
    got = parse_strategyqa_input(text)
    if expected is None:
        assert got is None
    else:
        assert got[1:] == expected[1:]


def test_korquad_dev_to_retrieval(ko_data):
    data = read_korquad_retrieval(ko_data / "korquad_v1_dev" / "KorQuAD_v1.0_dev.json")
    assert len(data.queries) == 5774
    assert len(data.corpus) == 961  # 964 paragraphs, 3 duplicated texts merged
    assert len({text for _, text in data.corpus.values()}) == len(data.corpus)
    assert all(len(rel) == 1 for rel in data.qrels.values())


def test_korsts_test_reads_quotes_verbatim(ko_data):
    pairs = read_korsts(ko_data / "korsts" / "sts-test.tsv")
    assert len(pairs) == 1379 and all(0 <= p.score <= 5 for p in pairs)
    assert any('"' in p.sentence1 + p.sentence2 for p in pairs)  # quoting OFF keeps the quotes


def test_korsts_dev_as_retrieval_queries_the_close_pairs_among_every_sentence2(ko_data, tmp_path):
    path = ko_data / "korsts" / "sts-dev.tsv"
    pairs = read_korsts(path)
    data = read_korsts_retrieval(path)
    docs = {text: doc_id for doc_id, (_, text) in data.corpus.items()}
    assert len(docs) == len(data.corpus) == len({p.sentence2.strip() for p in pairs})
    close = [p for p in pairs if p.score >= 4.0]
    assert len(data.queries) == len({p.sentence1.strip() for p in close}) == 261
    by_query = {text: qid for qid, text in data.queries.items()}
    for p in close:  # each close pair: its sentence2 is relevant to its sentence1
        assert data.qrels[by_query[p.sentence1.strip()]][docs[p.sentence2.strip()]] == 1
    assert sum(map(len, data.qrels.values())) == len({(p.sentence1.strip(), p.sentence2.strip()) for p in close})
    # A sentence1 seen only in pairs scored below the threshold is no query.
    only_low = {p.sentence1.strip() for p in pairs if p.score < 4.0} - {p.sentence1.strip() for p in close}
    assert only_low and not (only_low & set(by_query))
    with pytest.raises(UserError, match="no KorSTS pair scored >= 6"):
        read_korsts_retrieval(path, min_score=6.0)


def test_inverse_cloze_takes_the_middle_sentence_out_of_every_fourth_paragraph(ko_data, tmp_path):
    path = ko_data / "boddari" / "unesco_report.txt"
    data = read_inverse_cloze(path)
    assert (len(data.queries), len(data.corpus)) == (448, 1792)
    paragraphs = {line.strip() for line in path.open(encoding="utf-8")}
    for qid, query in data.queries.items():
        (doc_id,) = data.qrels[qid]
        doc = data.corpus[doc_id][1]
        assert query not in doc and doc not in paragraphs  # the sentence is out of its paragraph ...
        # ... which is a real paragraph of the file: its sentences, the middle one taken out.
        assert any(
            (parts := re.split(r"(?<=[.!?])\s+", p))[len(parts) // 2] == query
            and " ".join(parts[: len(parts) // 2] + parts[len(parts) // 2 + 1 :]) == doc
            for p in paragraphs if query in p
        )
    kept = [text for doc_id, (_, text) in data.corpus.items() if not any(doc_id in rel for rel in data.qrels.values())]
    assert len(kept) == 1792 - 448 and all(text in paragraphs for text in kept)

    short = tmp_path / "short.txt"
    short.write_text("한 문장. 두 문장.\n짧다.\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"short\.txt: no paragraph of >= 200 characters and 3 sentences"):
        read_inverse_cloze(short)
    with pytest.raises(UserError, match="text file not found"):
        read_inverse_cloze(tmp_path / "missing.txt")


def test_builtin_separation_set_covers_the_ten_domains():
    pairs = read_separation()
    per_domain = Counter(p.domain for p in pairs)
    assert len(pairs) >= 69 and len(per_domain) == 10 and min(per_domain.values()) >= 6
    assert set(per_domain) == {"일상대화", "기술/IT", "경제/금융", "의료/건강", "비즈니스", "교육", "사회/문화", "법률/정치", "스포츠", "과학"}
    for dom in per_domain:
        labels = Counter(p.similar for p in pairs if p.domain == dom)
        assert labels[True] >= 2 and labels[False] >= 2
    # "different" pairs are hard: each shares a word (a Hangul syllable bigram; whitespace
    # words would miss 야구 / 야구장 because of Korean particles).
    def bigrams(s: str) -> set[str]:
        s = "".join(ch for ch in s if "\uac00" <= ch <= "\ud7a3")
        return {s[i : i + 2] for i in range(len(s) - 1)}

    assert all(bigrams(p.sentence1) & bigrams(p.sentence2) for p in pairs if not p.similar)


def test_separation_reader_names_the_bad_line(tmp_path):
    bad = tmp_path / "sep.jsonl"
    bad.write_text(BUILTIN_SEPARATION.read_text(encoding="utf-8").splitlines()[0] + "\n" + json.dumps({"domain": "x", "sentence1": "a", "sentence2": "b", "label": "same"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"sep.jsonl:2: .*label"):
        read_separation(bad)

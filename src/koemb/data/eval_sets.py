"""Korean evaluation sets, converted at run time into the standard formats the evaluation reads.

- KorSTS test (TSV, quoting OFF: the text has quotes) -> STS pairs.
- KorQuAD 1.0 dev (SQuAD v1 JSON) -> retrieval: question -> the paragraph it was asked about.
  Paragraphs are de-duplicated by text. Its licence (CC BY-ND 2.0 KR) forbids derivatives: it is
  converted in memory only, never written into the repository.
- Korean StrategyQA (Super-NaturalInstructions JSON) -> retrieval: question -> its facts, on a fixed
  hold-out of 1,000 questions whose ids ship in `koemb/resources/strategyqa_holdout_ids.txt`.
  Training must never see them: `strategyqa_holdout_ids()` is the set to exclude.

The readers return plain data classes (`RetrievalData`, `StsPair`), the same ones the BEIR and
STS file readers in `koemb.eval` return.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from koemb.errors import UserError
from koemb.resources import RESOURCES

HOLDOUT_FILE = RESOURCES / "strategyqa_holdout_ids.txt"
HOLDOUT_SEED = 20261128
HOLDOUT_SIZE = 1000
# A validation split of the training side: 500 ids outside the hold-out, for choosing between runs on question ->
# passage retrieval. Training keeps them unless build-train's `strategyqa_validation` leaves them out.
VALIDATION_FILE = RESOURCES / "strategyqa_validation_ids.txt"
VALIDATION_SEED = 20261206
VALIDATION_SIZE = 500


@dataclass
class RetrievalData:
    """A retrieval task in BEIR's shape: ordered corpus `{id: (title, text)}`, queries, qrels."""

    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str = ""

    def restrict(self, limit: int | None) -> RetrievalData:
        """The first `limit` queries that have a relevant document (whole corpus kept)."""
        qids = [q for q in self.queries if q in self.qrels]
        if limit is not None:
            qids = qids[:limit]
        return RetrievalData(self.corpus, {q: self.queries[q] for q in qids}, {q: self.qrels[q] for q in qids}, self.source)


@dataclass
class StsPair:
    sentence1: str
    sentence2: str
    score: float


@dataclass
class StrategyQAItem:
    id: str
    question: str
    answer: str
    facts: str
    term: str = ""


# -- KorSTS --------------------------------------------------------------------------------------


def read_korsts(path: str | Path) -> list[StsPair]:
    """KorSTS `sts-*.tsv`: header `genre filename year id score sentence1 sentence2`, quoting OFF."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: KorSTS file not found")
    out: list[StsPair] = []
    with path.open(encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"score", "sentence1", "sentence2"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: not a KorSTS file, header lacks {sorted(missing)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                out.append(StsPair(row["sentence1"], row["sentence2"], float(row["score"])))
            except (TypeError, ValueError):
                raise UserError(f"{path}:{line_no}: expected a numeric score and two sentences") from None
    return out


def read_korsts_retrieval(path: str | Path, min_score: float = 4.0) -> RetrievalData:
    """KorSTS pairs as retrieval: sentence1 of a pair scored >= `min_score` -> its sentence2, among every
    distinct sentence2 of the file (the low-scored ones are the distractors). Used as a validation task
    on KorSTS dev, which no training set touches, for choices such as the interpolation's alpha."""
    pairs = read_korsts(path)
    corpus: dict[str, tuple[str, str]] = {}
    by_text: dict[str, str] = {}
    for pair in pairs:
        text = pair.sentence2.strip()
        if text not in by_text:
            by_text[text] = f"s{len(by_text)}"
            corpus[by_text[text]] = ("", text)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    qid_by_text: dict[str, str] = {}
    for pair in pairs:
        if pair.score < min_score:
            continue
        query = pair.sentence1.strip()
        # The same sentence1 may be paired with several sentence2s: one query, every good match relevant.
        qid = qid_by_text.setdefault(query, f"q{len(qid_by_text)}")
        queries[qid] = query
        qrels.setdefault(qid, {})[by_text[pair.sentence2.strip()]] = 1
    if not queries:
        raise UserError(f"{path}: no KorSTS pair scored >= {min_score}, so no retrieval query")
    return RetrievalData(corpus, queries, qrels, source=str(path))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def read_inverse_cloze(path: str | Path, min_chars: int = 200, every: int = 4) -> RetrievalData:
    """Passage retrieval from plain text (inverse cloze): a .txt file, one paragraph per line. Paragraphs of
    >= `min_chars` characters and >= 3 sentences form the corpus; from every `every`-th one the middle sentence
    is taken out and becomes a query whose only relevant document is the rest of its paragraph. A validation
    task of passage shape made from text that no contrastive stage reads (e.g. a report the donor learnt from)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: text file not found (one paragraph per line)")
    corpus: dict[str, tuple[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        paragraphs = [line.strip() for line in fh]
    for text in dict.fromkeys(p for p in paragraphs if len(p) >= min_chars):
        sentences = _SENTENCE_END.split(text)
        if len(sentences) < 3:
            continue
        doc_id = f"p{len(corpus)}"
        if len(corpus) % every == 0:
            mid = len(sentences) // 2
            qid = f"q{len(queries)}"
            queries[qid] = sentences[mid]
            qrels[qid] = {doc_id: 1}
            text = " ".join(sentences[:mid] + sentences[mid + 1 :])
        corpus[doc_id] = ("", text)
    if not queries:
        raise UserError(f"{path}: no paragraph of >= {min_chars} characters and 3 sentences, so no inverse-cloze query")
    return RetrievalData(corpus, queries, qrels, source=str(path))


# -- KorQuAD -------------------------------------------------------------------------------------


def read_korquad_retrieval(path: str | Path) -> RetrievalData:
    """KorQuAD 1.0 dev -> retrieval (question -> its paragraph, paragraphs de-duplicated), in memory."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: KorQuAD JSON not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: expected SQuAD v1 JSON with a 'data' list ({exc})") from None
    corpus: dict[str, tuple[str, str]] = {}
    by_text: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for article in data:
        title = article.get("title", "")
        for para in article["paragraphs"]:
            context = para["context"].strip()
            doc_id = by_text.get(context)
            if doc_id is None:
                doc_id = by_text[context] = f"p{len(by_text)}"
                corpus[doc_id] = (title, context)
            for qa in para["qas"]:
                queries[qa["id"]] = qa["question"].strip()
                qrels.setdefault(qa["id"], {})[doc_id] = 1
    return RetrievalData(corpus, queries, qrels, source=str(path))


# -- StrategyQA ----------------------------------------------------------------------------------

# Labels vary across rows: "질문:", "질문 :", "답변:", "대답:", "답:" (with or without spaces).
_QUESTION = re.compile(r"질문\s*:\s*")
_ANSWER = re.compile(r"[,\s]*(?:답변|대답|답)\s*:\s*")
_TERM = re.compile(r"^\s*용어\s*:\s*(.*?)\s*,\s*설명\s*:", re.S)
_FACT_LABEL = re.compile(r"사실\s*\d+\s*:\s*")


def parse_strategyqa_input(text: str) -> tuple[str, str, str] | None:
    """(term, question, answer) from `용어: …, 설명: …, 질문: …, 답변: 예`; None if it does not parse."""
    q = list(_QUESTION.finditer(text))
    if not q:
        return None
    rest = text[q[-1].end() :]
    a = list(_ANSWER.finditer(rest))
    if not a:
        return None
    question = rest[: a[-1].start()].strip().rstrip(",").strip()
    answer = rest[a[-1].end() :].strip()
    if not question or not answer:
        return None
    term_match = _TERM.match(text)
    return (term_match.group(1) if term_match else ""), question, answer


def read_strategyqa(path: str | Path) -> list[StrategyQAItem]:
    """Every row of the Korean StrategyQA JSON that parses (about 4,161 of 4,244), in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: StrategyQA JSON not found")
    try:
        instances = json.loads(path.read_text(encoding="utf-8"))["Instances"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: expected Super-NaturalInstructions JSON with 'Instances' ({exc})") from None
    out: list[StrategyQAItem] = []
    for row in instances:
        parsed = parse_strategyqa_input(row.get("input", ""))
        outputs = row.get("output") or []
        if parsed is None or not outputs:
            continue
        facts = " ".join(p.strip() for p in _FACT_LABEL.split(" ".join(outputs)) if p.strip())
        if not facts:
            continue
        term, question, answer = parsed
        out.append(StrategyQAItem(id=row["id"], question=question, answer=answer, facts=facts, term=term))
    return out


def make_strategyqa_holdout(items: list[StrategyQAItem], size: int = HOLDOUT_SIZE, seed: int = HOLDOUT_SEED) -> list[str]:
    """The seeded hold-out: `size` ids drawn from the parsed items, sorted (how the shipped file was made)."""
    ids = sorted({it.id for it in items})
    return sorted(random.Random(seed).sample(ids, size))


def make_strategyqa_validation(items: list[StrategyQAItem], holdout: set[str], size: int = VALIDATION_SIZE,
                               seed: int = VALIDATION_SEED) -> list[str]:
    """The seeded validation split: `size` ids drawn from the parsed items outside `holdout`, sorted (how the
    shipped file was made)."""
    ids = sorted({it.id for it in items} - holdout)
    return sorted(random.Random(seed).sample(ids, size))


def _id_file(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def strategyqa_holdout_ids() -> set[str]:
    """Ids of the StrategyQA questions that evaluation uses and training must never see."""
    return _id_file(HOLDOUT_FILE)


def strategyqa_validation_ids() -> set[str]:
    """Ids of the StrategyQA validation split (`split: validation`); outside the hold-out."""
    return _id_file(VALIDATION_FILE)


STRATEGYQA_SPLITS = {"test": strategyqa_holdout_ids, "validation": strategyqa_validation_ids}


def read_strategyqa_retrieval(path: str | Path, holdout: set[str] | None = None, split: str = "test") -> RetrievalData:
    """StrategyQA hold-out -> retrieval: query = question, relevant doc = its facts (de-duplicated).

    The corpus is the hold-out questions' facts (about 1,000 documents), so every document is some
    hold-out question's answer and none comes from the training side. `split: validation` reads the
    validation ids instead (500 questions and their facts); `holdout` gives the ids directly.
    """
    if holdout is None and split not in STRATEGYQA_SPLITS:
        raise UserError(f"{path}: StrategyQA split {split!r} is not one of {', '.join(STRATEGYQA_SPLITS)}")
    try:
        ids = holdout if holdout is not None else STRATEGYQA_SPLITS[split]()
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: the StrategyQA {split} ids are missing (the file ships with koemb)") from None
    items = [it for it in read_strategyqa(path) if it.id in ids]
    if not items:
        raise UserError(f"{path}: none of the {len(ids)} {split} ids are in this file")
    corpus: dict[str, tuple[str, str]] = {}
    by_text: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for it in items:
        doc_id = by_text.get(it.facts)
        if doc_id is None:
            doc_id = by_text[it.facts] = f"facts-{it.id}"
            corpus[doc_id] = ("", it.facts)
        queries[it.id] = it.question
        qrels[it.id] = {doc_id: 1}
    return RetrievalData(corpus, queries, qrels, source=str(path))

"""`koemb data build-train`: the shared Korean data -> training files, with evaluation data kept out.

Output (`OUT/`):
    pairs/<source>.jsonl       query / positive [/ negative] [/ group] / source   (`koemb.data.pairs`)
    unlabeled/<source>.jsonl   {"text": ...}
    manifest.json              counts per source and per file, what was read, dropped and excluded
    LICENSES/<folder>/...      the licence and attribution files of every source folder used

Pair sources (registry `PAIR_SOURCES`; each handles its data set's traps, see ../shared/README.md):
- `korsts_train`: KorSTS train rows with score >= `korsts_min_score` (TSV read with quoting OFF).
- `korsts_scored`: EVERY KorSTS train row with its 0-5 score (`score`), for the `cosent` objective:
  the graded scale, low scores included, is what STS evaluation ranks by.
- `klue_nli`, `kornli_xnli`: premise -> entailment hypothesis, a contradiction of the same premise
  as hard negative; group = premise.
- `chatbot`: Q -> A; ChatbotData has 11,823 rows but 7,779 distinct answers: group = answer, so
  that same-answer in-batch negatives can be masked.
- `question_pair`: question1 -> question2 where `is_duplicate == "0"` (INVERTED: 0 = same); the
  train CSV has a BOM, the test CSV a trailing comma (an empty extra column); group = connected
  component of duplicates.
- `parakqc`: 10 paraphrases per set, set id = line_no // 10; each sentence -> the next in its set.
- `strategyqa`: question -> facts (the evaluation's own tolerant parser), WITHOUT the hold-out ids
  the evaluation ships (`koemb/resources/strategyqa_holdout_ids.txt`), and with `strategyqa_validation: true`
  without the validation split's 500 either (`strategyqa_validation_ids.txt`).
- `stsb_ko_en`: KorSTS train sentence -> its English STS-B original, aligned by (genre, file,
  year, id): cross-lingual pairs that keep the model bilingual.
- `petitions_title`: a petition's title -> its body (a real positive for unlabeled text; Qwen3
  has no dropout, so "the same sentence twice" is no positive).

Unlabeled text: the readers of `koemb.data.ko_sources`, one file per source, de-duplicated across sources.

Never used: KorSTS dev and test, KorQuAD dev, the StrategyQA hold-out, English STS-B dev. On top of
excluding those files, every pair or text whose (whitespace-normalised) text EQUALS a text of an
evaluation set (KorSTS dev/test sentences, KorQuAD dev questions and paragraphs, hold-out questions
and facts, the built-in separation set, English STS-B dev sentences when the English folder is
there) is dropped and counted: data sets copy sentences from each other (STS-B train repeats some of
its dev sentences, so a few `stsb_ko_en` pairs go).

Hub data sets (`hub:` in the config) are downloaded with `huggingface_hub` (no `datasets`
dependency) when the machine is online; offline they are a clear error.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from koemb.config import StrictModel
from koemb.data.pairs import Pair, write_pairs, write_texts
from koemb.data.jsonl import iter_jsonl
from koemb.errors import UserError
from koemb.files import sha256_file

log = logging.getLogger(__name__)
csv.field_size_limit(sys.maxsize)


# --------------------------------------------------------------------------- config


class HubSource(StrictModel):
    """A data set on the Hugging Face hub, for users who are online (e.g. the seed's HAERAE-HUB sets)."""

    name: str
    """Output file name: `pairs/<name>.jsonl` or `unlabeled/<name>.jsonl`."""
    repo: str
    """Data set repository id, e.g. `HAERAE-HUB/...`."""
    files: list[str] = Field(min_length=1)
    """Files inside the repository (.jsonl, .json, .csv, .tsv; .parquet needs pyarrow)."""
    kind: Literal["pairs", "text"]
    revision: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    """Our field -> their column, e.g. `{query: question, positive: answer}` or `{text: content}`."""
    min_values: dict[str, float] = Field(default_factory=dict)
    """Keep only rows whose numeric column is at least this, e.g. `{score: 5}` (K2-Feedback's best responses)."""
    limit: int | None = None
    """Keep at most this many rows (in file order, after `min_values`)."""


class BuildTrainConfig(StrictModel):
    """What `build_train` reads and writes. Every field has a default; a YAML file may set any."""

    data: str | None = None
    """Folder of the Korean data (`korsts/`, `chatbot_data/`, ...); default: the `--data` flag."""
    en_stsb: str | None = None
    """Folder of the English STS-B (`sts-train.csv`); default: `<data>/../en/stsb` when present."""
    pair_sources: list[str] | None = None
    """Pair sources to build (default: all in `PAIR_SOURCES`)."""
    text_sources: list[str] | None = None
    """Unlabeled-text sources (default: all in `koemb.data.ko_sources.UNLABELED_SOURCES`)."""
    korsts_min_score: float = Field(4.0, ge=0, le=5)
    """KorSTS train pairs with at least this score (0-5) are positives."""
    decontaminate: bool = True
    """Drop training texts equal to evaluation texts."""
    strategyqa_validation: bool = False
    """Leave the StrategyQA validation split (`koemb/resources/strategyqa_validation_ids.txt`, 500 questions) out of
    training too, so a suite task `{reader: strategyqa, split: validation}` can choose between runs on question ->
    passage retrieval without reading the hold-out."""
    hub: list[HubSource] = Field(default_factory=list)


# --------------------------------------------------------------------------- context + registry


@dataclass
class Context:
    root: Path
    cfg: BuildTrainConfig
    read: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        p = self.root / rel
        if not p.is_file():
            raise UserError(f"{p}: not found (expected the shared Korean data layout under {self.root})")
        self.read.append(rel)
        return p

    def drop(self, why: str, n: int = 1) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + n


PairReader = Callable[[Context], Iterator[Pair]]


@dataclass(frozen=True)
class PairSource:
    name: str
    folder: str
    """Data folder under the root (its licence files are copied)."""
    read: PairReader


PAIR_SOURCES: dict[str, PairSource] = {}


def pair_source(name: str, folder: str) -> Callable[[PairReader], PairReader]:
    def deco(fn: PairReader) -> PairReader:
        PAIR_SOURCES[name] = PairSource(name, folder, fn)
        return fn

    return deco


def _tsv(path: Path, header: bool = True) -> Iterator[dict[str, str]] | Iterator[list[str]]:
    # Quoting OFF: KorSTS / XNLI / STS-B text contains quotes that are part of the sentence.
    with path.open(encoding="utf-8", newline="") as fh:
        if header:
            yield from csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            yield from csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)


def _csv(path: Path) -> Iterator[dict[str, str]]:
    # utf-8-sig: question_pair's CSVs start with a BOM (which would otherwise rename the first column).
    with path.open(encoding="utf-8-sig", newline="") as fh:
        yield from csv.DictReader(fh)


def _need(row: dict[str, Any], keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise UserError(f"{where}: missing column(s) {missing} (found {sorted(k for k in row if k)})")


# --------------------------------------------------------------------------- pair sources


def _korsts_train_rows(ctx: Context) -> Iterator[tuple[str, str, float]]:
    """(sentence1, sentence2, score) of KorSTS train; a score that is no number in 0-5 names the line."""
    path = ctx.path("korsts/sts-train.tsv")
    for line_no, row in enumerate(_tsv(path), start=2):
        _need(row, ("score", "sentence1", "sentence2"), f"{path}:{line_no}")
        try:
            score = float(row["score"])
        except ValueError:
            raise UserError(f"{path}:{line_no}: score {row['score']!r} is not a number") from None
        if not 0.0 <= score <= 5.0:
            raise UserError(f"{path}:{line_no}: score {score} is outside KorSTS's 0-5 scale")
        yield row["sentence1"], row["sentence2"], score


@pair_source("korsts_train", "korsts")
def _korsts_train(ctx: Context) -> Iterator[Pair]:
    for s1, s2, score in _korsts_train_rows(ctx):
        if score < ctx.cfg.korsts_min_score:
            ctx.drop("below_min_score")
            continue
        yield Pair(s1, s2, source="korsts_train")


@pair_source("korsts_scored", "korsts")
def _korsts_scored(ctx: Context) -> Iterator[Pair]:
    for s1, s2, score in _korsts_train_rows(ctx):
        yield Pair(s1, s2, source="korsts_scored", score=score)


def _nli(ctx: Context, name: str, rows: Iterable[tuple[str, str, str]]) -> Iterator[Pair]:
    """Entailment -> positive, contradiction of the same premise -> hard negative; group = premise."""
    by_premise: dict[str, dict[str, list[str]]] = {}
    for premise, hyp, label in rows:
        by_premise.setdefault(premise, {}).setdefault(label, []).append(hyp)
    for k, (premise, labels) in enumerate(by_premise.items()):
        negatives = labels.get("contradiction", [])
        for j, hyp in enumerate(labels.get("entailment", [])):
            neg = negatives[j % len(negatives)] if negatives else None
            yield Pair(premise, hyp, neg, group=f"{name}:{k}", source=name)
        if not labels.get("entailment"):
            ctx.drop("premise_without_entailment")


@pair_source("klue_nli", "klue_nli")
def _klue_nli(ctx: Context) -> Iterator[Pair]:
    path = ctx.path("klue_nli/klue-nli-v1.1_dev.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    for i, r in enumerate(rows):
        _need(r, ("premise", "hypothesis", "gold_label"), f"{path}: item {i}")
    yield from _nli(ctx, "klue_nli", ((r["premise"], r["hypothesis"], r["gold_label"]) for r in rows))


@pair_source("kornli_xnli", "kornli_xnli")
def _xnli(ctx: Context) -> Iterator[Pair]:
    def rows() -> Iterator[tuple[str, str, str]]:
        for name in ("xnli.dev.ko.tsv", "xnli.test.ko.tsv"):
            path = ctx.path(f"kornli_xnli/{name}")
            for line_no, r in enumerate(_tsv(path), start=2):
                _need(r, ("sentence1", "sentence2", "gold_label"), f"{path}:{line_no}")
                yield r["sentence1"], r["sentence2"], r["gold_label"]

    yield from _nli(ctx, "kornli_xnli", rows())


@pair_source("chatbot", "chatbot_data")
def _chatbot(ctx: Context) -> Iterator[Pair]:
    path = ctx.path("chatbot_data/ChatbotData.csv")
    answers: dict[str, int] = {}
    for line_no, row in enumerate(_csv(path), start=2):
        _need(row, ("Q", "A"), f"{path}:{line_no}")
        # Same answer -> same group: 11,823 questions share 7,779 answers.
        g = answers.setdefault(row["A"].strip(), len(answers))
        yield Pair(row["Q"], row["A"], group=f"chatbot:{g}", source="chatbot")


class _Components:
    """Union-find over texts: duplicates of duplicates are the same question."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@pair_source("question_pair", "question_pair")
def _question_pair(ctx: Context) -> Iterator[Pair]:
    same: list[tuple[str, str]] = []
    for name in ("kor_pair_train.csv", "kor_Pair_test.csv"):
        path = ctx.path(f"question_pair/{name}")
        for line_no, row in enumerate(_csv(path), start=2):
            # The test CSV's trailing comma gives an extra column named "" (ignored).
            _need(row, ("question1", "question2", "is_duplicate"), f"{path}:{line_no}")
            flag = (row["is_duplicate"] or "").strip()
            if flag not in ("0", "1"):
                raise UserError(f"{path}:{line_no}: is_duplicate must be 0 or 1, got {row['is_duplicate']!r}")
            if flag == "0":  # INVERTED labels: 0 means the two questions are the same
                same.append((row["question1"], row["question2"]))
            else:
                ctx.drop("different_questions")
    comps = _Components()
    for a, b in same:
        comps.union(a.strip(), b.strip())
    ids: dict[str, int] = {}
    for a, b in same:
        g = ids.setdefault(comps.find(a.strip()), len(ids))
        yield Pair(a, b, group=f"question_pair:{g}", source="question_pair")


@pair_source("parakqc", "parakqc")
def _parakqc(ctx: Context) -> Iterator[Pair]:
    path = ctx.path("parakqc/paraKQC_v1.txt")
    sets: dict[int, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh):  # 0-based: set id = line_no // 10
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise UserError(f"{path}:{line_no + 1}: expected 3 tab-separated columns (topic, act, sentence)")
            sets.setdefault(line_no // 10, []).append(parts[2])
    for set_id, sentences in sets.items():
        for i, s in enumerate(sentences):
            # Each paraphrase -> the next one in its set (a ring): every sentence is a query once.
            yield Pair(s, sentences[(i + 1) % len(sentences)], group=f"parakqc:{set_id}", source="parakqc")


# Why training cannot go on without a split's shipped ids file, and what to do about it.
_MISSING_IDS = {
    "test": "the StrategyQA hold-out ids (shipped by the evaluation) are missing, so StrategyQA cannot be used for "
            "training without leaking evaluation questions; restore the file or leave `strategyqa` out of pair_sources",
    "validation": "the StrategyQA validation ids are missing; restore the file or set `strategyqa_validation: false`",
}


def _split_ids(split: str) -> set[str]:
    """The StrategyQA ids of `split` (`test`: the hold-out, `validation`) that training leaves out."""
    from koemb.data import eval_sets

    try:
        return eval_sets.STRATEGYQA_SPLITS[split]()
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: {_MISSING_IDS[split]}") from None


@pair_source("strategyqa", "sionic_strategyqa_ko")
def _strategyqa(ctx: Context) -> Iterator[Pair]:
    from koemb.data.eval_sets import read_strategyqa

    holdout = _split_ids("test")
    validation = _split_ids("validation") if ctx.cfg.strategyqa_validation else set()
    path = ctx.path("sionic_strategyqa_ko/task169_strategyqa_sentence_generation_ko.json")
    total = len(json.loads(path.read_text(encoding="utf-8")).get("Instances", []))
    items = read_strategyqa(path)  # the evaluation's tolerant parser: same query / facts format
    ctx.drop("unparsed", total - len(items))
    for it in items:
        if it.id in holdout:
            ctx.drop("evaluation_holdout")
            continue
        if it.id in validation:
            ctx.drop("validation_split")
            continue
        yield Pair(it.question, it.facts, group=f"strategyqa:{it.id}", source="strategyqa")


def _stsb_key(row: list[str] | dict[str, str]) -> tuple[str, str, str, str]:
    if isinstance(row, dict):
        return row["genre"], row["filename"], row["year"], row["id"]
    return row[0], row[1], row[2], row[3]


def _en_stsb_dir(root: Path, cfg: BuildConfig) -> Path:
    return Path(cfg.en_stsb) if cfg.en_stsb else root.parent / "en" / "stsb"


@pair_source("stsb_ko_en", "korsts")
def _stsb_ko_en(ctx: Context) -> Iterator[Pair]:
    en_dir = _en_stsb_dir(ctx.root, ctx.cfg)
    en_path = en_dir / "sts-train.csv"
    if not en_path.is_file():
        raise UserError(f"{en_path}: English STS-B train not found (set en_stsb, or leave `stsb_ko_en` out of pair_sources)")
    ctx.read.append(str(en_path))
    english: dict[tuple[str, str, str, str], tuple[str, str]] = {}
    for line_no, row in enumerate(_tsv(en_path, header=False), start=1):
        if len(row) < 7:
            raise UserError(f"{en_path}:{line_no}: expected at least 7 tab-separated columns, got {len(row)}")
        english[_stsb_key(row)] = (row[5], row[6])
    ko_path = ctx.path("korsts/sts-train.tsv")
    groups: dict[str, int] = {}
    for row in _tsv(ko_path):
        en = english.get(_stsb_key(row))
        if en is None:
            ctx.drop("not_aligned")
            continue
        for ko_s, en_s in ((row["sentence1"], en[0]), (row["sentence2"], en[1])):
            # One Korean sentence can stand for several English ones (STS-B repeats sentences):
            # pairs sharing it must not be each other's negatives.
            g = groups.setdefault(ko_s.strip(), len(groups))
            yield Pair(ko_s, en_s, group=f"stsb_ko_en:{g}", source="stsb_ko_en")


@pair_source("petitions_title", "petitions")
def _petitions_title(ctx: Context) -> Iterator[Pair]:
    for path in sorted((ctx.root / "petitions").glob("petitions_*")):
        ctx.read.append(str(path.relative_to(ctx.root)))
        for _, obj in iter_jsonl(path):
            title, body = (obj.get("title") or "").strip(), (obj.get("content") or "").strip()
            if len(title) < 4 or len(body) < 20:
                ctx.drop("too_short")
                continue
            yield Pair(title, body, source="petitions_title")


# --------------------------------------------------------------------------- evaluation texts


def _norm(text: str) -> str:
    return " ".join(text.split())


def evaluation_texts(root: Path, en_stsb: Path | None = None, strategyqa_validation: bool = False,
                     ) -> tuple[set[str], dict[str, int]]:
    """Every text the evaluation uses, whitespace-normalised; and how many came from which file.

    en_stsb: the English STS-B folder; its dev split is the "no worse at English" check, so its sentences must
    not reach training either (the Korean<->English pairs take their English side from STS-B train, which
    repeats some dev sentences verbatim).
    strategyqa_validation: the StrategyQA validation split's questions and facts count as evaluation texts."""
    from koemb.data import eval_sets
    from koemb.resources import RESOURCES

    texts: set[str] = set()
    counts: dict[str, int] = {}

    def add(name: str, items: Iterable[str]) -> None:
        before = len(texts)
        texts.update(_norm(t) for t in items if t and t.strip())
        counts[name] = len(texts) - before

    for split in ("dev", "test"):
        p = root / "korsts" / f"sts-{split}.tsv"
        if p.is_file():
            add(f"korsts/sts-{split}.tsv", (s for pair in eval_sets.read_korsts(p) for s in (pair.sentence1, pair.sentence2)))
    p = root / "korquad_v1_dev" / "KorQuAD_v1.0_dev.json"
    if p.is_file():
        data = eval_sets.read_korquad_retrieval(p)
        add("korquad_v1_dev", [*data.queries.values(), *(text for _, text in data.corpus.values())])
    p = root / "sionic_strategyqa_ko" / "task169_strategyqa_sentence_generation_ko.json"
    if p.is_file():
        holdout = _split_ids("test")
        items = eval_sets.read_strategyqa(p)
        add("strategyqa_holdout", (t for it in items if it.id in holdout for t in (it.question, it.facts)))
        if strategyqa_validation:
            validation = _split_ids("validation")
            add("strategyqa_validation", (t for it in items if it.id in validation for t in (it.question, it.facts)))
    p = en_stsb / "sts-dev.csv" if en_stsb is not None else None
    if p is not None and p.is_file():
        add("en/stsb/sts-dev.csv", (s for row in _tsv(p, header=False) for s in row[5:7]))
    sep = RESOURCES / "separation_ko.jsonl"
    if sep.is_file():
        rows = [json.loads(line) for line in sep.read_text(encoding="utf-8").splitlines() if line.strip()]
        add("separation_ko", (r.get(k, "") for r in rows for k in ("sentence1", "sentence2")))
    return texts, counts


# --------------------------------------------------------------------------- hub sources


def _read_table(path: Path, source: str) -> list[dict[str, Any]]:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data.get("data", [])
    if name.endswith((".csv", ".tsv")):
        with path.open(encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t" if name.endswith(".tsv") else ","))
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{source}: {path.name} is parquet, which needs pyarrow (pip install pyarrow)") from None
        return pq.read_table(path).to_pylist()
    raise UserError(f"{source}: {path.name}: unsupported file type (expected .jsonl, .json, .csv, .tsv, .parquet)")


def read_hub_source(src: HubSource) -> Iterator[Pair] | Iterator[str]:
    """Download a hub data set's files (no `datasets` needed) and yield pairs or texts."""
    where = f"hub source {src.name!r} ({src.repo})"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise UserError(f"{where}: this machine is offline (HF_HUB_OFFLINE is set); hub data sets need the network. "
                        "Remove the `hub:` entry or run online")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError(f"{where}: needs the package huggingface_hub") from None
    rows: list[dict[str, Any]] = []
    for fname in src.files:
        try:
            local = hf_hub_download(src.repo, fname, repo_type="dataset", revision=src.revision)
        except Exception as exc:  # network errors, 404s, gated repos: all a user's problem to fix
            raise UserError(f"{where}: cannot download {fname}: {str(exc).splitlines()[0]}") from None
        rows.extend(_read_table(Path(local), where))
    return hub_items(src, rows, where)


def _number(row: dict[str, Any], col: str, i: int, where: str) -> float:
    try:
        return float(row[col])
    except KeyError:
        raise UserError(f"{where}: min_values: row {i} has no column {col!r} (row has {sorted(row)})") from None
    except (TypeError, ValueError):
        raise UserError(f"{where}: min_values: row {i} column {col!r} is {row[col]!r}, expected a number") from None


def hub_items(src: HubSource, rows: list[dict[str, Any]], where: str = "") -> Iterator[Pair] | Iterator[str]:
    """Rows of a hub data set -> pairs or texts, through `src.columns` (our field -> their column).

    Pairs take `query`, `positive`, optional `negative` (a list: its first string) and optional `group`.
    """
    where = where or f"hub source {src.name!r} ({src.repo})"
    if src.min_values:
        rows = [r for i, r in enumerate(rows) if all(_number(r, col, i, where) >= lo for col, lo in src.min_values.items())]
    if src.limit is not None:
        rows = rows[: src.limit]
    wanted = ("query", "positive", "negative", "group") if src.kind == "pairs" else ("text",)
    unknown = sorted(set(src.columns) - set(wanted))
    if unknown:
        raise UserError(f"{where}: columns: unknown field(s) {unknown}; a {src.kind} source maps {', '.join(wanted)}")
    cols = {k: src.columns.get(k, k) for k in wanted}

    def get(row: dict[str, Any], key: str, i: int) -> str | None:
        value = row.get(cols[key])
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if (value is None or value == "") and key in ("query", "positive", "text"):
            raise UserError(f"{where}: row {i} has no column {cols[key]!r} for {key} (set `columns:`; row has {sorted(row)})")
        return None if value is None else str(value)

    if src.kind == "pairs":
        return (Pair(get(r, "query", i), get(r, "positive", i), get(r, "negative", i), get(r, "group", i), source=src.name)  # type: ignore[arg-type]
                for i, r in enumerate(rows))
    return (get(r, "text", i) for i, r in enumerate(rows))  # type: ignore[misc]


# --------------------------------------------------------------------------- the command


# Data folder of each `koemb.data.ko_sources` reader, for copying its licence files.
TEXT_SOURCE_FOLDERS = {
    "petitions": "petitions", "nsmc": "nsmc_raw_sample", "book_reviews": "boddari", "fairytales": "boddari",
    "unesco": "boddari", "chatbot": "chatbot_data", "question_pair": "question_pair", "parakqc": "parakqc",
    "korsts_train": "korsts", "kornli_xnli": "kornli_xnli", "klue_nli": "klue_nli",
}
LICENCE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "License.md", "LICENSE_NOTE.md", "README.md")


def _clean_pairs(pairs: Iterable[Pair], eval_texts: set[str], dropped: dict[str, int]) -> list[Pair]:
    out: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for p in pairs:
        q, pos = p.query.strip(), p.positive.strip()
        neg = p.negative.strip() if p.negative else None
        if not q or not pos or _norm(q) == _norm(pos):
            dropped["empty_or_identical"] = dropped.get("empty_or_identical", 0) + 1
            continue
        if eval_texts and any(_norm(t) in eval_texts for t in (q, pos, neg) if t):
            dropped["equals_evaluation_text"] = dropped.get("equals_evaluation_text", 0) + 1
            continue
        if (q, pos) in seen:
            dropped["duplicate"] = dropped.get("duplicate", 0) + 1
            continue
        seen.add((q, pos))
        out.append(Pair(q, pos, neg or None, p.group, p.source, p.score))
    return out


def build_train(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    config: BuildTrainConfig | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build training files from the Korean data folder `data` into `out`; return the manifest.

    data: the folder holding `korsts/`, `chatbot_data/`, ... (overrides `config.data`).
    config: sources, thresholds, hub data sets (default `BuildTrainConfig()`: every built-in source).
    Writes `out/pairs/*.jsonl`, `out/unlabeled/*.jsonl`, `out/LICENSES/` and `out/manifest.json`.
    """
    from koemb.data.ko_sources import UNLABELED_SOURCES

    cfg = config or BuildTrainConfig()
    root_s = data if data is not None else cfg.data
    if root_s is None:
        raise UserError("no data folder: pass --data (the folder with korsts/, chatbot_data/, ...) or set `data:`")
    root = Path(root_s)
    if not root.is_dir():
        raise UserError(f"{root}: Korean data folder not found")
    pair_names = cfg.pair_sources if cfg.pair_sources is not None else list(PAIR_SOURCES)
    text_names = cfg.text_sources if cfg.text_sources is not None else list(UNLABELED_SOURCES)
    for names, known, what in ((pair_names, PAIR_SOURCES, "pair_sources"), (text_names, UNLABELED_SOURCES, "text_sources")):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"{what}: unknown source(s) {unknown}; known: {', '.join(known)}")
    hub_names = [h.name for h in cfg.hub]
    clash = sorted({n for n in hub_names if hub_names.count(n) > 1} | (set(hub_names) & (set(pair_names) | set(text_names))))
    if clash:
        raise UserError(f"hub: source name(s) {clash} are used twice; give each hub source its own `name`")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out}: already exists and is not empty; choose another --out or pass --overwrite")

    eval_texts, eval_counts = (evaluation_texts(root, _en_stsb_dir(root, cfg), cfg.strategyqa_validation)
                               if cfg.decontaminate else (set(), {}))
    if out.exists():
        shutil.rmtree(out)
    manifest: dict[str, Any] = {
        "data_root": str(root.resolve()),
        "config": cfg.model_dump(mode="json"),
        "pairs": {},
        "unlabeled": {},
        "excluded": {
            "files": ["korsts/sts-dev.tsv", "korsts/sts-test.tsv", "korquad_v1_dev/KorQuAD_v1.0_dev.json",
                      "en/stsb/sts-dev.csv (English; when present)"],
            "strategyqa_holdout": "koemb/resources/strategyqa_holdout_ids.txt",
            **({"strategyqa_validation": "koemb/resources/strategyqa_validation_ids.txt"} if cfg.strategyqa_validation else {}),
            "evaluation_texts": eval_counts,
            "rule": "pairs or texts equal (whitespace-normalised) to an evaluation text are dropped",
        },
        "files": {},
    }
    folders: set[str] = set()

    for name in pair_names:
        src = PAIR_SOURCES[name]
        ctx = Context(root, cfg)
        pairs = _clean_pairs(src.read(ctx), eval_texts, ctx.dropped)
        if not pairs:
            raise UserError(f"pair source {name!r}: no pairs left after filtering (dropped: {ctx.dropped})")
        rel = f"pairs/{name}.jsonl"
        write_pairs(out / rel, pairs)
        folders.add(src.folder)
        manifest["pairs"][name] = {
            "file": rel, "rows": len(pairs), "with_negative": sum(p.negative is not None for p in pairs),
            "groups": len({p.group for p in pairs if p.group is not None}), "read": sorted(set(ctx.read)),
            "dropped": dict(sorted(ctx.dropped.items())),
        }

    seen: set[str] = set()
    for name in text_names:
        kept: list[str] = []
        dropped: dict[str, int] = {}
        for text in UNLABELED_SOURCES[name](root):
            text = text.strip()
            if not text:
                continue
            if text in seen:
                dropped["duplicate"] = dropped.get("duplicate", 0) + 1
                continue
            seen.add(text)
            if eval_texts and _norm(text) in eval_texts:
                dropped["equals_evaluation_text"] = dropped.get("equals_evaluation_text", 0) + 1
                continue
            kept.append(text)
        rel = f"unlabeled/{name}.jsonl"
        write_texts(out / rel, kept)
        manifest["unlabeled"][name] = {"file": rel, "rows": len(kept), "chars": sum(map(len, kept)), "dropped": dropped}
    folders.update(TEXT_SOURCE_FOLDERS.get(n, n) for n in text_names)

    for src in cfg.hub:
        items = list(read_hub_source(src))
        dropped = {}
        if src.kind == "pairs":
            pairs = _clean_pairs(items, eval_texts, dropped)  # type: ignore[arg-type]
            rel = f"pairs/{src.name}.jsonl"
            write_pairs(out / rel, pairs)
            manifest["pairs"][src.name] = {"file": rel, "rows": len(pairs), "hub": src.repo, "dropped": dropped}
        else:
            texts = [t.strip() for t in items if t and t.strip() and _norm(t) not in eval_texts]  # type: ignore[union-attr]
            rel = f"unlabeled/{src.name}.jsonl"
            write_texts(out / rel, texts)
            manifest["unlabeled"][src.name] = {"file": rel, "rows": len(texts), "hub": src.repo}

    for folder in sorted(folders):
        for lic in LICENCE_NAMES:
            p = root / folder / lic
            if p.is_file():
                (out / "LICENSES" / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, out / "LICENSES" / folder / lic)
    for section in ("pairs", "unlabeled"):
        for entry in manifest[section].values():
            path = out / entry["file"]
            manifest["files"][entry["file"]] = {"rows": entry["rows"], "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest["totals"] = {
        "pairs": sum(e["rows"] for e in manifest["pairs"].values()),
        "unlabeled_texts": sum(e["rows"] for e in manifest["unlabeled"].values()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return manifest

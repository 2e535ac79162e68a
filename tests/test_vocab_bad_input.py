"""User mistakes around corpora and tokenizers: a one-paragraph error, exit code 2, nothing damaged."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koemb.cli import main
from koemb.data.corpus import ReadStats, iter_documents, read_documents
from koemb.errors import UserError


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, " ".join(err.split())


@pytest.fixture
def qwen(qwen_dir) -> str:
    return str(qwen_dir)


def test_missing_corpus_file(capsys, qwen, tmp_path):
    code, err = run_cli(capsys, "vocab", "analyze", "--tokenizer", qwen, "--corpus", str(tmp_path / "nope.txt"))
    assert code == 2 and "nope.txt: corpus file not found" in err and "Traceback" not in err


def test_unsupported_corpus_suffix(capsys, qwen, tmp_path):
    (tmp_path / "c.csv").write_text("a,b\n")
    code, err = run_cli(capsys, "vocab", "analyze", "--tokenizer", qwen, "--corpus", str(tmp_path / "c.csv"))
    assert code == 2 and "unsupported corpus file type" in err and ".jsonl" in err


def test_empty_corpus(capsys, qwen, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    code, err = run_cli(capsys, "vocab", "analyze", "--tokenizer", qwen, "--corpus", str(tmp_path / "empty.txt"))
    assert code == 2 and "no non-empty documents" in err


def test_malformed_jsonl_names_file_and_line(capsys, qwen, tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "좋아요"}\n{"text": "oops"\n')
    code, err = run_cli(capsys, "vocab", "analyze", "--tokenizer", qwen, "--corpus", str(p))
    assert code == 2 and f"{p}:2: malformed JSON line" in err


def test_jsonl_without_text_field(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"body": "좋아요"}\n')
    with pytest.raises(UserError, match=r"c\.jsonl:1: expected a JSON object with a 'text' field"):
        read_documents([p])


def test_invalid_utf8_lines_are_skipped_and_counted(tmp_path, caplog):
    p = tmp_path / "c.txt.gz"
    with gzip.open(p, "wb") as fh:
        fh.write("첫 줄\n".encode() + b"\xff\xfe broken\n" + "셋째 줄\n".encode())
    docs, stats = read_documents([p])
    assert docs == ["첫 줄", "셋째 줄"] and stats.skipped_bad_utf8 == 1 and stats.first_bad == [f"{p}:2"]
    assert "skipped 1 line(s)" in caplog.text


def test_truncated_gzip(tmp_path):
    p = tmp_path / "c.txt.gz"
    from koemb.resources import KO_SAMPLE

    data = gzip.compress(KO_SAMPLE.read_bytes())
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="read failed"):
        read_documents([p])


def test_missing_tokenizer_folder(capsys, tmp_path):
    (tmp_path / "c.txt").write_text("안녕\n")
    code, err = run_cli(capsys, "vocab", "analyze", "--tokenizer", str(tmp_path / "tok"), "--corpus", str(tmp_path / "c.txt"))
    assert code == 2 and "tokenizer folder or file not found" in err


def test_folder_without_tokenizer(capsys, tmp_path):
    (tmp_path / "c.txt").write_text("안녕\n")
    (tmp_path / "tok").mkdir()
    code, err = run_cli(capsys, "vocab", "analyze", "--tokenizer", str(tmp_path / "tok"), "--corpus", str(tmp_path / "c.txt"))
    assert code == 2 and "neither tokenizer.json nor tokenizer_config.json" in err


def test_unknown_method(capsys, qwen, tmp_path):
    code, err = run_cli(capsys, "vocab", "expand", "--base", qwen, "--method", "magic", "--out", str(tmp_path / "o"))
    assert code == 2 and "method" in err and "bpe-continue" in err


def test_method_for_wrong_model_type(capsys, qwen, tmp_path):
    (tmp_path / "c.txt").write_text("안녕하세요\n")
    code, err = run_cli(capsys, "vocab", "expand", "--base", qwen, "--donor", qwen, "--method", "unigram",
                        "--corpus", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"))
    assert code == 2 and "--method unigram works on Unigram tokenizers" in err


def test_bpe_method_without_corpus(capsys, qwen, tmp_path):
    code, err = run_cli(capsys, "vocab", "expand", "--base", qwen, "--out", str(tmp_path / "o"))
    assert code == 2 and "--corpus" in err
    assert not (tmp_path / "o").exists()


def test_corpus_without_hangul(capsys, qwen, tmp_path):
    (tmp_path / "c.txt").write_text("only english here\n" * 10)
    code, err = run_cli(capsys, "vocab", "expand", "--base", qwen, "--corpus", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no Hangul words" in err


def test_unknown_builtin_corpus(tmp_path):
    with pytest.raises(UserError, match="unknown built-in corpus.*builtin:ko-sample"):
        read_documents(["builtin:nope"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=300), max_size=20),
       st.booleans())
def test_corpus_readers_round_trip_any_unicode(tmp_path_factory, lines, as_jsonl):
    """Random Unicode (control characters, combining marks, astral planes) reads back unchanged."""
    d = tmp_path_factory.mktemp("h")
    if as_jsonl:
        p = d / "c.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    else:
        p = d / "c.txt"
        p.write_bytes("".join(t + "\n" for t in lines).encode("utf-8"))
    stats = ReadStats()
    got = list(iter_documents([p], stats))
    # .txt splits on any line break Python's binary readline sees (only \n); blank docs are skipped.
    want = [t for t in lines if t.strip()]
    assert got == want and stats.skipped_bad_utf8 == 0


def test_huge_line(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("가" * 3_000_000 + "\n" + "끝\n", encoding="utf-8")
    docs, _ = read_documents([p])
    assert len(docs[0]) == 3_000_000 and docs[1] == "끝"

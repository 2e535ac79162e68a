"""Extend a byte-level BPE model by continuing BPE training on the base's own segmentation.

Why this way: appended merges rank after every base merge, so they only ever see what the base
merges left behind. Learning them from the base's segmentation of real text (count adjacent
pairs, merge the most frequent, repeat) guarantees each new merge fires on that text, so every
new row is reachable, unlike building donor tokens by independent merge chains, which conflict.

Merges are restricted by `merge_allowed`: the merged bytes must identify Hangul (contain a
Hangul syllable, or a UTF-8 lead sequence only Hangul syllables start with) and hold nothing but
Hangul bytes and an optional leading space. Text without Hangul therefore never contains a new
merge's bytes, so its ids cannot change. Optionally the merges are further limited to pieces of
the donor's new tokens (the "donor − base" idea of the seed, now with every row reachable).

Pair counts are updated incrementally: a merge only re-counts the words that contain it.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from koemb.vocab.canonical import HANGUL_SYLLABLES, bl_to_bytes
from koemb.vocab.diff import particle_split

_HANGUL_RE = re.compile(f"[{HANGUL_SYLLABLES}]")


def _is_cont(b: int) -> bool:
    return 0x80 <= b <= 0xBF


def _hangul_prefix(part: bytes) -> tuple[bool, bool]:
    """For an incomplete UTF-8 character: (could start a Hangul syllable, can ONLY start one)."""
    lead = part[0]
    if not 0xEA <= lead <= 0xED or not all(_is_cont(c) for c in part[1:]):
        return False, False
    if len(part) == 1:
        return True, lead in (0xEB, 0xEC)  # U+B000..U+CFFF are all Hangul syllables
    lo, hi = {0xEA: (0xB0, 0xBF), 0xED: (0x80, 0x9E)}.get(lead, (0x80, 0xBF))
    ok = lo <= part[1] <= hi
    return ok, ok


def hangul_fragment(data: bytes) -> bool:
    """Do these bytes identify Hangul and contain nothing else (plus one optional leading space)?

    Accepted: [space] [1-2 trailing bytes of a cut syllable] Hangul syllables* [a cut syllable's
    first 1-2 bytes], where something in it can only be Hangul. Any text that contains such bytes
    contains a Hangul syllable, so a merge producing them never fires on text without Hangul.
    """
    if data.startswith(b" "):
        data = data[1:]
    i, n = 0, len(data)
    while i < n and i < 2 and _is_cont(data[i]):
        i += 1
    identified = False
    while i < n:
        part = data[i : i + 3]
        if len(part) == 3 and all(_is_cont(c) for c in part[1:]):
            if not _HANGUL_RE.fullmatch(part.decode("utf-8", errors="replace")):
                return False
            identified = True
            i += 3
            continue
        if i + len(part) < n or len(part) == 3:
            return False
        possible, pins = _hangul_prefix(part)
        if not possible:
            return False
        identified = identified or pins
        i = n
    return identified


def donor_substrings(texts: Iterable[str]) -> set[str]:
    """All character substrings of the donor's new tokens (word-start space kept where present)."""
    subs: set[str] = set()
    for t in texts:
        for i in range(len(t)):
            for j in range(i + 1, len(t) + 1):
                subs.add(t[i:j])
    return subs


def complete_core(data: bytes) -> str:
    """The complete characters inside possibly cut bytes (partial first/last characters dropped)."""
    return data.decode("utf-8", errors="ignore")


def _text_of(token: str) -> str:
    """A byte-level vocab string's complete characters ('' for an added token outside the byte alphabet)."""
    try:
        return complete_core(bl_to_bytes(token))
    except KeyError:
        return ""


@dataclass
class BpeExtension:
    new_tokens: list[str]  # byte-level vocab strings, in id order
    merges: list[tuple[str, str]]  # appended merges, in rank order
    word_types: int  # distinct Hangul-bearing pre-tokens trained on
    word_tokens: int  # their total count
    stop_reason: str
    usage: dict[str, int] = field(default_factory=dict)  # new token -> times emitted on the training corpus
    rejected_particle: int = 0  # merges skipped by `split_particles`


def hangul_word_counts(tok: Tokenizer, docs: Iterable[str]) -> Counter[str]:
    """Count the base pre-tokens (byte-level strings) that contain Hangul."""
    counts: Counter[str] = Counter()
    norm, pre = tok.normalizer, tok.pre_tokenizer
    for doc in docs:
        if not _HANGUL_RE.search(doc):
            continue
        text = norm.normalize_str(doc) if norm is not None else doc
        counts.update(w for w, _ in pre.pre_tokenize_str(text))
    dec_ok = {}
    out: Counter[str] = Counter()
    for w, c in counts.items():
        ok = dec_ok.get(w)
        if ok is None:
            ok = bool(_HANGUL_RE.search(bl_to_bytes(w).decode("utf-8", errors="ignore")))
        if ok:
            out[w] = c
    return out


def extend_bpe(
    tok: Tokenizer,
    word_counts: Counter[str],
    max_new_rows: int,
    min_frequency: int = 2,
    allowed_text: Callable[[str], bool] | None = None,
    progress: Callable[[int], None] | None = None,
    split_particles: bool = False,
) -> BpeExtension:
    """Learn up to `max_new_rows` new tokens as appended merges over the base segmentation.

    `allowed_text(core)` optionally restricts merges by the complete characters of the result
    (e.g. to substrings of donor tokens). `split_particles` skips a merge whose text is a token's
    word (2+ syllables) plus a Korean particle (see `diff.particle_split`), checked when the merge
    would be made, against the base's tokens and the merges made so far. Ties in pair counts break
    on the pair's strings, so the result is deterministic.
    """
    vocab = tok.get_vocab(with_added_tokens=True)
    model = tok.model
    id2str: list[str] = []
    str2id: dict[str, int] = {}

    def intern(s: str) -> int:
        i = str2id.get(s)
        if i is None:
            i = len(id2str)
            str2id[s] = i
            id2str.append(s)
        return i

    # Sorted so that ids, and hence iteration order, do not depend on hash seeds.
    items = sorted(word_counts.items())
    words: list[list[int]] = []
    counts: list[int] = []
    for w, c in items:
        words.append([intern(t.value) for t in model.tokenize(w)])
        counts.append(c)

    allowed_cache: dict[tuple[int, int], bool] = {}
    byte_cache: dict[int, bytes] = {}

    def tbytes(i: int) -> bytes:
        b = byte_cache.get(i)
        if b is None:
            b = byte_cache[i] = bl_to_bytes(id2str[i])
        return b

    def allowed(p: tuple[int, int]) -> bool:
        ok = allowed_cache.get(p)
        if ok is None:
            merged_s = id2str[p[0]] + id2str[p[1]]
            data = tbytes(p[0]) + tbytes(p[1])
            ok = merged_s not in vocab and hangul_fragment(data)
            if ok and allowed_text is not None:
                core = complete_core(data)
                ok = not core.strip() or allowed_text(core)
            allowed_cache[p] = ok
        return ok

    pair_count: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for wi, (w, c) in enumerate(zip(words, counts)):
        for p in zip(w, w[1:]):
            if allowed(p):
                pair_count[p] += c
                where.setdefault(p, set()).add(wi)

    def key(p: tuple[int, int]) -> tuple[int, str, str, int, int]:
        return (-pair_count[p], id2str[p[0]], id2str[p[1]], p[0], p[1])

    heap = [key(p) for p in pair_count]
    heapq.heapify(heap)

    new_tokens: list[str] = []
    merges: list[tuple[str, str]] = []
    stop = "no more allowed pairs"
    # Complete texts of every token: the known words a particle merge is checked against.
    known = {_text_of(t) for t in vocab} if split_particles else set()
    rejected_particle = 0
    while heap:
        if len(new_tokens) >= max_new_rows:
            stop = f"reached max_new_rows={max_new_rows}"
            break
        negc, sa, sb, a, b = heapq.heappop(heap)
        p = (a, b)
        if pair_count.get(p, 0) != -negc or negc == 0:
            continue  # stale entry; the current count was pushed when it changed
        if -negc < min_frequency:
            stop = f"best remaining pair seen {-negc} < min_frequency={min_frequency} times"
            break
        if split_particles:
            core = complete_core(tbytes(a) + tbytes(b))
            if particle_split(core, known) is not None:
                allowed_cache[p] = False  # never counted again
                pair_count.pop(p, None)
                where.pop(p, None)
                rejected_particle += 1
                continue
            known.add(core)
        merged = intern(sa + sb)
        new_tokens.append(sa + sb)
        merges.append((sa, sb))
        touched: set[tuple[int, int]] = set()
        for wi in sorted(where.pop(p, ())):
            w, c = words[wi], counts[wi]
            for q in zip(w, w[1:]):
                if q in pair_count:
                    pair_count[q] -= c
                    touched.add(q)
            out: list[int] = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for q in zip(out, out[1:]):
                if allowed(q):
                    pair_count[q] += c
                    where.setdefault(q, set()).add(wi)
                    touched.add(q)
        pair_count.pop(p, None)
        for q in touched:
            if q == p:
                continue
            n = pair_count.get(q, 0)
            if n <= 0:
                pair_count.pop(q, None)
                where.pop(q, None)
            else:
                heapq.heappush(heap, key(q))
        if progress is not None:
            progress(len(new_tokens))

    usage: Counter[str] = Counter()
    new_set = set(new_tokens)
    for w, c in zip(words, counts):
        for t in w:
            s = id2str[t]
            if s in new_set:
                usage[s] += c
    return BpeExtension(new_tokens, merges, len(words), sum(counts), stop, dict(usage), rejected_particle)

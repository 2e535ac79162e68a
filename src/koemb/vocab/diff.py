"""Donor tokens the base lacks, compared in canonical text form, with configurable filters."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field

from koemb.config import StrictModel
from koemb.vocab.canonical import HANGUL_SYLLABLES, CanonicalVocab, canonical, family_of
from koemb.vocab.io import LoadedTokenizer


class DiffFilters(StrictModel):
    """Which donor tokens count as candidates. Defaults select Hangul-only tokens."""

    chars: str = Field(HANGUL_SYLLABLES, description="Regex character class (without brackets) a token's text must consist of.")
    leading_space: bool = Field(True, description="Allow one word-start space before the characters.")
    min_frequency: int = Field(0, ge=0, description="Keep tokens the donor emits at least this often on the corpus (needs a corpus).")
    max_count: int | None = Field(None, ge=1, description="Keep at most this many, most frequent first.")
    split_particles: bool = Field(
        False,
        description="Korean: drop a candidate that is a word of 2+ syllables plus a trailing particle (josa), e.g. ' 정부의' = "
        "' 정부' + '의', when that word is in the base or among the candidates. Such merges give '정부의' and '정부는' "
        "unrelated rows and hide the shared word from query-passage matching. The BPE methods skip such merges.",
    )


# Korean case, topic and auxiliary particles (josa); two-syllable ones first.
KOREAN_PARTICLES = (
    "에서", "에게", "으로", "까지", "부터", "처럼", "보다", "에는", "에도", "와", "과",
    "은", "는", "이", "가", "을", "를", "의", "에", "로", "도", "만",
)


def particle_split(text: str, words: set[str]) -> tuple[str, str] | None:
    """`(word, particle)` if `text` is a known word of 2+ syllables plus a particle, else None.

    The word must be known (in `words`, canonical texts) so that dropping the merge leaves a
    segmentation that still has the word as one piece; a 2-syllable minimum keeps nouns such as
    ' 사과' (' 사' + '과') or ' 주도' (' 주' + '도'), which only look like a word plus a particle.
    """
    for p in KOREAN_PARTICLES:
        if text.endswith(p):
            word = text[: -len(p)]
            if len(word.lstrip(" ")) >= 2 and word in words:
                return word, p
    return None


@dataclass
class Candidate:
    text: str  # canonical form: decoded text, word start as a leading space
    donor_id: int
    frequency: int  # times the donor emits it on the corpus (0 without a corpus)


@dataclass
class DiffResult:
    candidates: list[Candidate]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stats": self.stats, "candidates": [asdict(c) for c in self.candidates]}


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in text)


def donor_frequencies(donor: LoadedTokenizer, docs: list[str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for enc in donor.backend.encode_batch(docs, add_special_tokens=False):
        counts.update(enc.ids)
    return counts


def vocab_diff(base: LoadedTokenizer, donor: LoadedTokenizer, docs: list[str] | None = None, filters: DiffFilters | None = None) -> DiffResult:
    """Donor tokens missing from the base, filtered and ordered most frequent first."""
    filters = filters or DiffFilters()
    base_vocab = CanonicalVocab.of(base.backend)
    donor_json = json.loads(donor.backend.to_str())
    fam = family_of(donor_json)
    prefix = donor_json.get("model", {}).get("continuing_subword_prefix") or "##"
    special = {a["content"] for a in donor_json.get("added_tokens", [])}
    pattern = re.compile(f"^{' ?' if filters.leading_space else ''}[{filters.chars}]+$")
    freq = donor_frequencies(donor, docs) if docs else Counter()
    if filters.min_frequency and not docs:
        from koemb.errors import UserError

        raise UserError("min_frequency needs a corpus (--corpus) to count donor tokens on")
    stats: Counter[str] = Counter()
    cands: list[Candidate] = []
    seen: set[str] = set()
    for raw, idx in sorted(donor.backend.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1]):
        stats["donor_tokens"] += 1
        if raw in special:
            stats["rejected_special"] += 1
            continue
        text = canonical(raw, fam, prefix)
        if text is None:
            stats["rejected_incomplete_utf8"] += 1
            continue
        if text in base_vocab.by_text:
            stats["in_base"] += 1
            continue
        if text in seen:
            stats["duplicate_canonical"] += 1
            continue
        seen.add(text)
        stats["not_in_base"] += 1
        if _has_control(text):
            stats["rejected_control"] += 1
            continue
        if not pattern.match(text):
            stats["rejected_chars"] += 1
            continue
        f = freq.get(idx, 0)
        if f < filters.min_frequency:
            stats["rejected_min_frequency"] += 1
            continue
        cands.append(Candidate(text, idx, f))
    if filters.split_particles:
        words = set(base_vocab.by_text) | {c.text for c in cands}
        kept = [c for c in cands if particle_split(c.text, words) is None]
        stats["rejected_particle"] = len(cands) - len(kept)
        cands = kept
    # Most frequent first; without a corpus the donor's id order (BPE merge rank) is the proxy.
    cands.sort(key=lambda c: (-c.frequency, c.donor_id))
    if filters.max_count is not None and len(cands) > filters.max_count:
        stats["rejected_max_count"] = len(cands) - filters.max_count
        cands = cands[: filters.max_count]
    out = {
        "base": base.spec,
        "donor": donor.spec,
        "base_vocab_size": len(base),
        "donor_vocab_size": len(donor),
        "filters": filters.model_dump(),
        "corpus_documents": len(docs) if docs else 0,
        **{k: stats.get(k, 0) for k in (
            "donor_tokens", "in_base", "not_in_base", "duplicate_canonical", "rejected_special", "rejected_incomplete_utf8",
            "rejected_control", "rejected_chars", "rejected_min_frequency", "rejected_particle", "rejected_max_count",
        )},
        "candidates": len(cands),
    }
    return DiffResult(cands, out)

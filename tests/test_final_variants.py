"""benchmarks/final_variants.py's pure parts: the per-stage mix and the word+particle rule."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from final_variants import is_particle_token, mixed_state, path_mix

from koemb.model.interpolate import interpolate_state

EMB = "emb"


def _run(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # The base has 2 spare rows past its 5 ids; the stages have 5 shared + 3 new rows.
    base = {"w": torch.randn(3, 4, generator=g), EMB: torch.randn(7, 2, generator=g)}
    stages, prev = [], base
    for _ in range(3):
        st = {"w": prev["w"] + torch.randn(3, 4, generator=g), EMB: torch.cat([prev[EMB][:5], torch.zeros(3, 2)]) + torch.randn(8, 2, generator=g)}
        stages.append(st)
        prev = st
    return base, stages


def test_equal_coefficients_are_the_one_alpha_interpolation():
    base, stages = _run()
    for alpha in (0.0, 0.7, 1.0):
        mix = mixed_state(base, stages, [alpha] * 3, EMB, shared=5)
        ref, _ = interpolate_state(base, stages[-1], alpha, embedding_key=EMB, shared_rows=5)
        for k in mix:
            assert torch.allclose(mix[k], ref[k], atol=1e-6), (alpha, k)
        assert torch.equal(mix[EMB][5:], stages[-1][EMB][5:])  # new rows as trained, at any alpha


def test_each_stage_has_its_own_coefficient():
    base, stages = _run(1)
    mix = mixed_state(base, stages, [1.0, 0.0, 0.5], EMB, shared=5)
    # stage 1 whole, stage 2's change dropped, half of stage 3's change
    want = stages[0]["w"] + 0.5 * (stages[2]["w"] - stages[1]["w"])
    assert torch.allclose(mix["w"], want, atol=1e-6)
    assert mix[EMB].shape == (8, 2) and not torch.equal(mix["w"], stages[-1]["w"])


def test_new_rows_follow_their_own_coefficients_from_their_init():
    base, stages = _run(2)
    init = torch.randn(3, 2, generator=torch.Generator().manual_seed(9))
    new = lambda i: stages[i][EMB][5:]  # noqa: E731
    mix = mixed_state(base, stages, [0.7] * 3, EMB, shared=5, new_rows=(init, [1.0, 1.0, 0.5]))
    # the new rows: stage 2's, plus half of stage 3's change; the shared rows and the network as without it
    assert torch.allclose(mix[EMB][5:], new(1) + 0.5 * (new(2) - new(1)), atol=1e-6)
    plain = mixed_state(base, stages, [0.7] * 3, EMB, shared=5)
    assert torch.equal(mix[EMB][:5], plain[EMB][:5]) and torch.equal(mix["w"], plain["w"])
    # every coefficient 1 keeps them as trained; every coefficient 0 gives back their init
    ones = mixed_state(base, stages, [0.7] * 3, EMB, shared=5, new_rows=(init, [1.0] * 3))
    assert torch.allclose(ones[EMB][5:], new(2), atol=1e-6)
    zeros = mixed_state(base, stages, [0.7] * 3, EMB, shared=5, new_rows=(init, [0.0] * 3))
    assert torch.equal(zeros[EMB][5:], init)


def test_path_mix_leaves_a_float64_start_alone():
    start, path = torch.zeros(2, dtype=torch.float64), [torch.ones(2, dtype=torch.float64)]
    assert torch.equal(path_mix(start, path, [0.5]), torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.equal(start, torch.zeros(2, dtype=torch.float64))


def test_word_plus_particle_tokens():
    words = {"\u2581정부", "\u2581물", "\u2581사", "\u2581국민"}
    assert is_particle_token("\u2581정부의", words)
    assert is_particle_token("\u2581정부에서의", words)
    assert is_particle_token("\u2581물은", words)  # a one-syllable word
    assert is_particle_token("정부는", words)  # inside a word, the word still a base piece
    assert not is_particle_token("\u2581국민청원", words)  # no particle at the end
    assert not is_particle_token("\u2581의", words)  # a particle alone
    assert not is_particle_token("\u2581대한민국의", words)  # the word is not a base piece


def test_reading_gap_ranks_count_the_documents_scored_higher():
    from reading_gap import mrr, ranks

    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # query 0's positive is document 0 (first); query 1's is document 1, behind document 2 (cos 1.0 vs 0.8)
    r = ranks(q, d, np.array([0, 1]))
    assert r.tolist() == [0, 1] and mrr(r) == 0.75
    assert ranks(q, np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([1, 1]))[0] == 0  # equal scores: not ahead

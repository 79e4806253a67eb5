import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.greedy import best_path, greedy_decode
from fusion.posteriors import Posteriors
from fusion.simulate import SimulationConfig, simulate_posteriors

from conftest import peaky


def test_repeats_blanks_and_word_boundary(table):
    # "a a - a | b b" -> "aa b": the blank splits the repeat; the boundary splits words
    frames = ["-", "a", "a", "-", "a", "|", "|", "b", "b", "-"]
    p = Posteriors("u", peaky(table, frames), frame_shift=0.1)
    (result,) = greedy_decode([p], table)
    hyp = result.best
    assert hyp.text == "aa b"
    assert [(table.tokens[t.token_id], t.start_frame, t.end_frame) for t in hyp.tokens] == [
        ("a", 1, 3), ("a", 4, 5), ("|", 5, 7), ("b", 7, 9)]
    assert [(w.word, w.start, w.end) for w in hyp.words] == [
        ("aa", 0.1, 0.5), ("b", 0.7000000000000001, 0.9)]
    assert all(0.99 < w.confidence <= 1.0 for w in hyp.words)  # peaky frames, sure words
    assert hyp.score == hyp.scores["acoustic"]
    np.testing.assert_allclose(hyp.score, p.log_probs.max(axis=1).sum(), rtol=1e-6)


def test_all_blank_and_empty(table):
    results = greedy_decode([Posteriors("blank", peaky(table, ["-"] * 4), 0.04),
                             Posteriors("empty", np.zeros((0, 29)), 0.04)], table)
    assert [r.best.text for r in results] == ["", ""]
    assert results[1].best.score == 0.0


def test_batch_equals_singles(table, rng):
    texts = ["the cat sat", "a", "on the mat today", ""]
    ps = [simulate_posteriors(f"u{i}", t, table, rng, SimulationConfig(confusion=0.2))[0]
          for i, t in enumerate(texts)]
    batch = greedy_decode(ps, table)
    singles = [greedy_decode([p], table)[0] for p in ps]
    for b, s in zip(batch, singles):
        assert b.best.text == s.best.text and b.best.tokens == s.best.tokens
        assert b.best.score == s.best.score


def test_padding_is_ignored(table):
    lp = torch.from_numpy(peaky(table, ["a", "-", "b"])).float()
    padded = torch.cat([lp, lp[:1].repeat(4, 1)]).unsqueeze(0)  # padding peaks on "a"
    (spans, score), = best_path(padded, torch.tensor([3]), table.blank_id)
    assert [s.token_id for s in spans] == [table.id_of("a"), table.id_of("b")]


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz'", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(words, max_size=6), st.integers(0, 2**32 - 1))
def test_clean_posteriors_decode_to_their_text(table, word_list, seed):
    text = " ".join(word_list)
    p, alignment = simulate_posteriors("u", text, table, np.random.default_rng(seed))
    hyp = greedy_decode([p], table)[0].best
    assert hyp.text == text
    starts = [w.start for w in hyp.words]
    assert starts == sorted(starts) and all(w.start < w.end for w in hyp.words)
    assert all(alignment[t.start_frame] == t.token_id for t in hyp.tokens)

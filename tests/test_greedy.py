import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import peaky
from fusion.core.posteriors import Posteriors
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.decoder.greedy import best_path, greedy_decode


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


def test_a_tie_goes_to_the_lowest_id_and_scores_sum_in_double(table):
    lp = np.full((3, len(table)), -30.0, dtype=np.float32)
    a, b = sorted([table.id_of("a"), table.id_of("b")])
    lp[:, [a, b]] = np.log(0.5)  # every frame a tie between a and b
    spans, score = best_path(lp, table.blank_id)
    assert [(s.token_id, s.start_frame, s.end_frame) for s in spans] == [(a, 0, 3)]
    assert score == 3 * float(np.float32(np.log(0.5)))


def test_training_greedy_texts_ignore_padding(table):
    torch = pytest.importorskip("torch")
    from fusion.am.train import greedy_texts

    lp = torch.from_numpy(peaky(table, ["a", "-", "b"])).float()
    padded = torch.stack([torch.cat([lp, lp[:1].repeat(4, 1)]),  # padding peaks on "a"
                          torch.from_numpy(peaky(table, ["b"] * 7)).float()])
    assert greedy_texts(padded, torch.tensor([3, 7]), table) == ["ab", "b"]


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


def _span_confidences_quadratic(spans, log_probs):
    """span_confidences as first written: a frames x emitted-units matrix of running sums."""
    if not spans:
        return []
    span = np.array([(s.start_frame, s.end_frame, s.token_id) for s in spans])
    ids = span[:, 2]
    cum = np.zeros((log_probs.shape[0] + 1, len(ids)))
    np.cumsum(np.exp(log_probs[:, ids].astype(np.float64)), axis=0, out=cum[1:])
    cols = np.arange(len(ids))
    return ((cum[span[:, 1], cols] - cum[span[:, 0], cols]) / (span[:, 1] - span[:, 0])).tolist()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 80), st.integers(2, 12), st.integers(0, 2**32 - 1),
       st.sampled_from([np.float32, np.float64]), st.data())
def test_span_confidences_per_column_sums_equal_the_quadratic_formula(frames, vocab, seed, dtype, data):
    """One running sum per distinct unit gives, to the bit, what one per emitted unit gave
    (spans in order or not, overlapping, repeated units)."""
    from fusion.core.types import TokenSpan, span_confidences

    rng = np.random.default_rng(seed)
    lp = np.log(rng.dirichlet(np.full(vocab, 0.3), size=frames)).astype(dtype)
    n = data.draw(st.integers(0, 40))
    spans = []
    for _ in range(n):
        start = int(rng.integers(0, frames))
        spans.append(TokenSpan(int(rng.integers(0, vocab)), start, int(rng.integers(start + 1, frames + 1))))
    assert span_confidences(spans, lp) == _span_confidences_quadratic(spans, lp)


def test_confidences_of_a_long_utterance_take_frames_by_vocabulary_memory(table):
    """An hour of 40 ms frames with 30k units: the running sums are frames x vocabulary
    (about 26 MB), where one column per unit needed 22 GB."""
    import tracemalloc

    from fusion.core.types import TokenSpan, span_confidences

    frames = 90_000
    rng = np.random.default_rng(0)
    lp = np.full((frames, len(table)), -8.0, dtype=np.float32)
    ids = rng.integers(1, len(table), size=30_000)
    lp[np.arange(0, frames, 3), ids] = -0.01
    spans = [TokenSpan(int(u), 3 * i, 3 * i + 1) for i, u in enumerate(ids)]
    tracemalloc.start()
    conf = span_confidences(spans, lp)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(conf) == 30_000 and min(conf) > 0.98
    assert peak < 100e6

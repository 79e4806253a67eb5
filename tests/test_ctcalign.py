"""The compiled forced alignment (fusion.decoder._ctcsearch.align) gives torchaudio's spans and
span_confidences' confidences, to the bit, ties included."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.core.posteriors import Posteriors, PosteriorsReader
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.tokens import TokenTable, character_table
from fusion.core.types import TokenSpan, span_confidences, spans_to_words
from fusion.decoder.options import SearchOptions
from fusion.decoder.search import BeamSearchDecoder

_ctcsearch = pytest.importorskip("fusion.decoder._ctcsearch",
                                 reason="the compiled search is not built (make builds it)")

# the decoder benchmark's test posteriors (the embedded model's), where this machine has them
TEST_POSTERIORS = Path.home() / ".cache" / "asrfuse" / "bench-decoder-am6500" / "test.npz"


def torchaudio_spans(lp: np.ndarray, units: list[int], blank: int) -> tuple[TokenSpan, ...]:
    """What BeamSearchDecoder._align made of torchaudio's frame labels."""
    labels, _ = AF.forced_align(torch.from_numpy(np.array(lp)).unsqueeze(0),
                                torch.tensor([units], dtype=torch.int32), blank=blank)
    frames = labels[0].numpy()
    bounds = np.concatenate(([0], np.flatnonzero(frames[1:] != frames[:-1]) + 1, [len(frames)]))
    runs = frames[bounds[:-1]] != blank
    return tuple(TokenSpan(u, s, e) for u, s, e in
                 zip(units, bounds[:-1][runs].tolist(), bounds[1:][runs].tolist()))


def compiled(lp: np.ndarray, units: list[int], blank: int) -> tuple[tuple[TokenSpan, ...], list[float]]:
    starts, ends, conf = _ctcsearch.align(lp, units, blank, np.exp(lp.astype(np.float64)))
    return tuple(map(TokenSpan, units, starts, ends)), conf


@st.composite
def problems(draw) -> tuple[np.ndarray, list[int], int]:
    """Log-probs, units and blank: ties everywhere (a few distinct values, rows repeated),
    repeated units, and frames from the fewest possible to some more."""
    vocab = draw(st.integers(2, 6))
    blank = draw(st.integers(0, vocab - 1))
    others = [u for u in range(vocab) if u != blank]
    units = draw(st.lists(st.sampled_from(others), min_size=1, max_size=6))
    repeats = sum(a == b for a, b in zip(units, units[1:]))
    frames = len(units) + repeats + draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["ties", "same rows", "posteriors", "-inf"]))
    if style == "posteriors":
        lp = np.log(rng.dirichlet(np.ones(vocab), size=frames))
    else:  # half-integers: equal path scores are common, and exact in float32
        lp = np.round(rng.normal(0, 1.5, size=(frames, vocab)) * 2) / 2 - 3
        if style == "same rows":
            lp[:] = lp[0]
        elif style == "-inf":  # units ruled out in some frames, never every path
            lp[rng.random(lp.shape) < 0.3] = -np.inf
            path = [x for u, v in zip(units, units[1:] + [None]) for x in ([u, blank] if u == v else [u])]
            path += [blank] * (frames - len(path))  # one path kept finite
            lp[np.arange(frames), path] = np.maximum(lp[np.arange(frames), path], -4.0)
    return lp.astype(np.float32), units, blank


@settings(max_examples=400, deadline=None)
@given(problems())
def test_same_spans_and_confidences_as_torchaudio(problem):
    lp, units, blank = problem
    spans, conf = compiled(lp, units, blank)
    expected = torchaudio_spans(lp, units, blank)
    assert spans == expected
    if np.isfinite(lp).all():
        assert conf == span_confidences(expected, lp)


def test_ties_broken_as_torchaudio_breaks_them():
    """Where coming from the previous state and skipping a blank tie above staying,
    torchaudio stays (its path is then not the best): so does ours."""
    lp = np.array([[-0.5, 1.0, 1.0], [-0.5, -0.5, -2.0], [-0.5, -0.5, -0.5]], dtype=np.float32)
    spans, _ = compiled(lp, [1, 2], 0)
    assert spans == torchaudio_spans(lp, [1, 2], 0) == (TokenSpan(1, 0, 1), TokenSpan(2, 1, 3))
    # equal rows: the first path of the ties, the last unit ending on the blank
    lp = np.tile(np.array([1.5, 1.0, 0.0], dtype=np.float32), (5, 1))
    spans, _ = compiled(lp, [1, 2], 0)
    assert spans == torchaudio_spans(lp, [1, 2], 0) == (TokenSpan(1, 0, 1), TokenSpan(2, 1, 2))


def test_fewest_frames_and_impossible_alignments(table):
    lp = np.log(np.full((3, len(table)), 1 / len(table), dtype=np.float32))
    a, b = table.id_of("a"), table.id_of("b")
    # a repeat needs a blank between: 3 frames hold "a a" and "a b c", exactly
    assert compiled(lp, [a, a], 0)[0] == torchaudio_spans(lp, [a, a], 0) == (
        TokenSpan(a, 0, 1), TokenSpan(a, 2, 3))
    assert compiled(lp, [a, b, a], 0)[0] == torchaudio_spans(lp, [a, b, a], 0)
    for units in ([a, a, b], [a, b, a, b], [a, a, a]):
        with pytest.raises(RuntimeError, match="targets length is too long for CTC"):
            torchaudio_spans(lp, units, 0)
        with pytest.raises(RuntimeError, match="targets length is too long for CTC. Found "
                           "log_probs length: 3"):
            _ctcsearch.align(lp, units, 0)
    with pytest.raises(RuntimeError, match="too long"):
        _ctcsearch.align(lp[:0], [a], 0)
    with pytest.raises(ValueError, match="blank"):
        _ctcsearch.align(lp, [a, 0], 0)
    with pytest.raises(ValueError, match="targets values must be in"):
        _ctcsearch.align(lp, [len(table)], 0)
    with pytest.raises(ValueError, match="T x V"):
        _ctcsearch.align(lp[0], [a], 0)
    with pytest.raises(ValueError, match="shape"):
        _ctcsearch.align(lp, [a], 0, np.exp(lp[:2]))
    # no path of finite score at all: an error, not made-up times
    with pytest.raises(RuntimeError, match="no alignment of finite score"):
        _ctcsearch.align(np.full((4, 3), -np.inf, dtype=np.float32), [1, 2, 1], 0)


def test_decoder_words_are_torchaudios_spans_grouped_in_python(table):
    """Every hypothesis's spans are torchaudio's, and its words (times, confidences) what
    spans_to_words makes of them: the compiled aligner and word grouping change nothing."""
    rng = np.random.default_rng(5)
    decoder = BeamSearchDecoder(table, options=SearchOptions(beam_size=8, nbest=4))
    for i, text in enumerate(["the cat sat on the mat", "a bat and a cat", "hello  l"]):
        p = simulate_posteriors(f"u{i}", text, table, rng,
                                SimulationConfig(confusion=0.3, noise=1.5, peak=4))[0]
        lp = np.ascontiguousarray(p.log_probs, dtype=np.float32)
        for h in decoder.decode(p).nbest:
            units = [t.token_id for t in h.tokens]
            assert h.tokens == (torchaudio_spans(lp, units, table.blank_id) if units else ())
            assert h.words == spans_to_words(table, h.tokens, p.frame_shift, lp)


@pytest.mark.skipif(not TEST_POSTERIORS.exists(), reason=f"no {TEST_POSTERIORS}")
def test_same_spans_as_torchaudio_on_real_posteriors(table):
    """The embedded model's test posteriors: each N-best hypothesis aligns alike."""
    with PosteriorsReader(TEST_POSTERIORS) as reader:
        posts = [reader[u] for u in reader.ids[:60]]
        decoder = BeamSearchDecoder(reader.token_table, options=SearchOptions(beam_size=8, nbest=4))
    blank = decoder.table.blank_id
    checked = 0
    for p in posts:
        lp = np.ascontiguousarray(p.log_probs, dtype=np.float32)
        for h in decoder.decode(p).nbest:
            units = list(h.token_ids)
            if units:
                spans, conf = compiled(lp, units, blank)
                assert spans == torchaudio_spans(lp, units, blank) == h.tokens
                assert conf == span_confidences(spans, lp)
                checked += 1
    assert checked > 100


PREFIX_TABLE = TokenTable(("<b>", "▁the", "▁c", "▁b", "at", "▁sat", "s", "'", "▁"), blank_id=0,
                          word_boundary="▁", boundary_style="prefix")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["separate", "prefix"]), st.data())
def test_word_groups_as_the_token_table_makes_them(style, data):
    """group_words == TokenTable.words_from_ids, boundaries and lone prefix marks included."""
    table = character_table() if style == "separate" else PREFIX_TABLE
    decoder = BeamSearchDecoder(table)
    units = data.draw(st.lists(st.integers(1, len(table) - 1), max_size=30))
    first, last = _ctcsearch.group_words(units, decoder._word_kind)
    assert [units[f:e + 1] for f, e in zip(first, last)] == table.words_from_ids(units)


def test_prefix_table_decoder_words_are_torchaudios_spans_grouped_in_python():
    rng = np.random.default_rng(2)
    T, V = 60, len(PREFIX_TABLE)
    lp = torch.log_softmax(torch.from_numpy(rng.normal(0, 3, (T, V))).float(), -1).numpy()
    decoder = BeamSearchDecoder(PREFIX_TABLE, options=SearchOptions(beam_size=8, nbest=6))
    nbest = decoder.decode(Posteriors("u", lp, 0.04)).nbest
    assert len(nbest) == 6 and any(len(h.words) > 1 for h in nbest)
    assert decoder.best_text(Posteriors("u", lp, 0.04)) == nbest[0].text
    for h in nbest:
        units = [t.token_id for t in h.tokens]
        assert h.tokens == (torchaudio_spans(lp, units, PREFIX_TABLE.blank_id) if units else ())
        assert h.words == spans_to_words(PREFIX_TABLE, h.tokens, 0.04, lp)


@settings(max_examples=300, deadline=None)
@given(problems(), st.data())
def test_checkpointed_back_trace_gives_the_same_spans(problem, data):
    """Any checkpoint interval (one frame, a few, the whole) gives the spans, confidences
    and errors of the alignment that keeps every back-pointer, -inf and NaN included."""
    lp, units, blank = problem
    if data.draw(st.booleans(), label="NaNs"):
        lp = lp.copy()
        lp[np.random.default_rng(len(lp)).random(lp.shape) < 0.1] = np.nan

    def run(block: int):
        try:
            starts, ends, conf = _ctcsearch.align(lp, units, blank, np.exp(lp.astype(np.float64)), block)
        except RuntimeError as exc:
            return str(exc)
        return starts, ends, np.array(conf).tobytes()  # NaN confidences compare equal

    whole = run(len(lp) + 1)
    block = data.draw(st.integers(1, max(1, len(lp))), label="block")
    assert run(block) == whole == run(0)
    if np.isfinite(lp).all():
        assert whole[:2] == tuple(map(list, zip(*[(s.start_frame, s.end_frame) for s in
                                                  torchaudio_spans(lp, units, blank)])))


def test_long_alignment_is_checkpointed_with_the_same_spans():
    """Peaky posteriors long enough to be checkpointed by default (T x S over 16M cells):
    torchaudio's spans, and the same with any block."""
    rng = np.random.default_rng(3)
    frames, vocab = 6000, 12
    units = rng.integers(1, vocab, size=1500).tolist()
    lp = np.log(rng.dirichlet(np.full(vocab, 0.2), size=frames)).astype(np.float32)
    assert frames * (2 * len(units) + 1) > 1 << 24
    spans, conf = compiled(lp, units, 0)
    assert spans == torchaudio_spans(lp, units, 0)
    assert conf == span_confidences(spans, lp)
    starts, ends, _ = _ctcsearch.align(lp, units, 0, None, 77)
    assert (starts, ends) == ([s.start_frame for s in spans], [s.end_frame for s in spans])
    with pytest.raises(ValueError, match="block must be >= 0"):
        _ctcsearch.align(lp, units, 0, None, -1)

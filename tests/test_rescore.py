"""N-best rescoring: added scores, log-linear re-ranking, cached N-best tables."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ambiguous
from fusion.core.posteriors import Posteriors
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.types import DecodeResult, Hypothesis
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import LMScorer, WordBonus
from fusion.decoder.search import BeamSearchDecoder
from fusion.rescoring.rescore import (LengthScorer, LMRescorer, NbestTable, RescoringDecoder, add_scores,
                                      rerank)
from hmm.model import TiedDurationHMM
from hmm.scorer import AlignmentScorer


@pytest.fixture(scope="module")
def lm(biased_lm):
    return biased_lm


def _result(utt_id, rows):
    """A DecodeResult from ``(text, {score: value})`` rows, ranked as given."""
    return DecodeResult(utt_id, tuple(Hypothesis(t, 0.0, s) for t, s in rows), 0.04, 1.0)


def _post(utt_id="u"):
    return Posteriors(utt_id, np.log(np.full((5, 3), 1 / 3)), 0.04)


def test_rerank_hand_computed():
    r = _result("u", [("cat sat", {"acoustic": -1.0, "nlm": -9.0}),
                      ("bat sat", {"acoustic": -2.0, "nlm": -3.0})])
    assert rerank(r, {"acoustic": 1.0, "nlm": 0.0}).best.text == "cat sat"
    out = rerank(r, {"acoustic": 1.0, "nlm": 0.5})
    assert out.best.text == "bat sat"
    assert out.best.score == pytest.approx(-2.0 + 0.5 * -3.0)
    assert dict(out.best.scores) == {"acoustic": -2.0, "nlm": -3.0}  # scores kept, unweighted


def test_rerank_names_missing_and_unknown_weights():
    r = _result("u1", [("a", {"acoustic": -1.0, "nlm": -2.0})])
    with pytest.raises(ValueError, match="u1.*missing \\['nlm'\\]"):
        rerank(r, {"acoustic": 1.0})
    with pytest.raises(ValueError, match="unknown \\['hmm'\\]"):
        rerank(r, {"acoustic": 1.0, "nlm": 1.0, "hmm": 1.0})
    with pytest.raises(ValueError, match="finite"):
        rerank(r, {"acoustic": 1.0, "nlm": math.nan})


def test_zero_weight_ignores_minus_infinity():
    r = _result("u", [("a b", {"acoustic": -1.0, "hmm": -math.inf}), ("a", {"acoustic": -2.0, "hmm": -5.0})])
    assert rerank(r, {"acoustic": 1.0, "hmm": 0.0}).best.text == "a b"
    assert rerank(r, {"acoustic": 1.0, "hmm": 0.1}).best.text == "a"


def test_add_scores_lm_and_length(lm):
    r = _result("u", [("cat sat", {"acoustic": -1.0}), ("bat sat", {"acoustic": -2.0})])
    out = add_scores(r, _post(), [LMRescorer(lm), LengthScorer()])
    assert [h.text for h in out.nbest] == ["cat sat", "bat sat"]  # order unchanged
    assert out.nbest[0].scores["nlm"] == pytest.approx(lm.score_sentence(["cat", "sat"]))
    assert out.nbest[1].scores["length"] == 2.0
    with pytest.raises(ValueError, match="already have"):
        add_scores(out, _post(), [LengthScorer()])
    with pytest.raises(ValueError, match="posteriors of 'v'"):
        add_scores(r, _post("v"), [LengthScorer()])


def test_rescoring_flips_acoustically_preferred_hypothesis(table, lm):
    """Beam search without an LM prefers 'cat'; rescoring with the LM picks 'bat'."""
    post = ambiguous(table)
    first = BeamSearchDecoder(table, [WordBonus()], {"word_bonus": 0.0}, SearchOptions(nbest=4))
    assert first.decode(post).best.text == "cat sat"
    decoder = RescoringDecoder(first, [LMRescorer(lm)], {"acoustic": 1.0, "word_bonus": 0.0, "nlm": 1.0})
    best = decoder.decode(post).best
    assert best.text == "bat sat"
    assert set(best.scores) == {"acoustic", "word_bonus", "nlm"}
    with pytest.raises(ValueError, match="missing \\['nlm'\\]"):
        RescoringDecoder(first, [LMRescorer(lm)], {"acoustic": 1.0, "word_bonus": 0.0})


def test_zero_weight_rescoring_equals_first_pass(table, rng, lm):
    first = BeamSearchDecoder(table, [LMScorer(lm), WordBonus()], {"lm": 0.5, "word_bonus": 1.0},
                              SearchOptions(beam_size=8, nbest=4))
    rescoring = RescoringDecoder(first, [LMRescorer(lm), LengthScorer()],
                                 {"acoustic": 1.0, "lm": 0.5, "word_bonus": 1.0, "nlm": 0.0, "length": 0.0})
    for i, text in enumerate(["the cat sat", "bat sat on a mat", "a"]):
        p, _ = simulate_posteriors(f"u{i}", text, table, rng, SimulationConfig(confusion=0.2))
        a, b = first.decode(p), rescoring.decode(p)
        assert [h.text for h in a.nbest] == [h.text for h in b.nbest]
        assert [h.score for h in a.nbest] == pytest.approx([h.score for h in b.nbest])


def _table():
    results = [
        _result("u1", [("the cat", {"acoustic": -1.0, "lm": -5.0}),
                       ("the bat", {"acoustic": -1.5, "lm": -2.0})]),
        _result("u2", [("a dog ran", {"acoustic": -3.0, "lm": -4.0}),
                       ("a dog", {"acoustic": -2.0, "lm": -6.0}),
                       ("dog ran", {"acoustic": -4.0, "lm": -4.0})]),
    ]
    return NbestTable.build(results, {"u1": "the bat", "u2": "a dog ran"})


def test_nbest_table_rates_hand_computed(tmp_path):
    t = _table()
    assert t.names == ("acoustic", "lm")
    # acoustic only: "the cat" (1 error of 2) and "a dog" (1 of 3)
    assert t.error_rates({"acoustic": 1.0, "lm": 0.0})[0] == pytest.approx(100 * 2 / 5)
    # with the LM: "the bat" and "a dog ran": no errors
    assert t.error_rates({"acoustic": 1.0, "lm": 1.0})[0] == 0.0
    assert t.oracle_rates()[0] == 0.0
    assert t.chosen_texts({"acoustic": 1.0, "lm": 1.0}) == {"u1": "the bat", "u2": "a dog ran"}
    t.save(tmp_path / "n.npz")
    loaded = NbestTable.load(tmp_path / "n.npz")
    assert loaded.texts == t.texts and loaded.names == t.names
    assert loaded.error_rates({"acoustic": 1.0, "lm": 1.0}) == t.error_rates({"acoustic": 1.0, "lm": 1.0})


def test_nbest_table_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no reference text for utterance 'u1'"):
        NbestTable.build([_result("u1", [("a", {"acoustic": 0.0})])], {})
    with pytest.raises(ValueError, match="lacks score"):
        NbestTable.build([_result("u1", [("a", {"acoustic": 0.0, "lm": 1.0}), ("b", {"acoustic": 0.0})])],
                         {"u1": "a"})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not an N-best table"):
        NbestTable.load(bad)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-20, 0), st.floats(-20, 0)), min_size=1, max_size=6),
       st.floats(0, 3))
def test_table_agrees_with_rerank(rows, w):
    result = _result("u", [(f"w{i}", {"acoustic": a, "lm": b}) for i, (a, b) in enumerate(rows)])
    table = NbestTable.build([result], {"u": "w0"})
    weights = {"acoustic": 1.0, "lm": w}
    chosen = table.totals(weights)[table.choose(weights)[0]]
    assert chosen == pytest.approx(rerank(result, weights).best.score)
    oracle = table.oracle_rates()[0]
    assert oracle <= table.error_rates(weights)[0]


def test_duration_model_round_trip_and_alignment_score(table, rng, tmp_path):
    posts, texts = [], []
    for i, text in enumerate(["the cat sat", "on the mat", "a bat"]):
        p, _ = simulate_posteriors(f"u{i}", text, table, rng, SimulationConfig(confusion=0.0))
        posts.append(p)
        texts.append(text)
    model = TiedDurationHMM(table).fit(posts, texts)
    model.save(tmp_path / "hmm.json")
    loaded = TiedDurationHMM.load(tmp_path / "hmm.json")
    np.testing.assert_allclose(loaded.loop_, model.loop_)
    scorer = AlignmentScorer(loaded)
    right, wrong = scorer.score_nbest(posts[0], ["the cat sat", "the cat"])
    assert right > wrong
    assert right == pytest.approx(AlignmentScorer(model).score(posts[0], "the cat sat"))
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="bad.json: cannot read duration model"):
        TiedDurationHMM.load(tmp_path / "bad.json")

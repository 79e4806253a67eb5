"""The CTC prefix beam search with weighted scorers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BIASED_ARPA, ambiguous
from fusion.core.posteriors import Posteriors
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.tokens import TokenTable
from fusion.decoder.greedy import greedy_decode
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import HotwordScorer, LexiconScorer, LMScorer, WordBonus
from fusion.decoder.search import BeamSearchDecoder
from lm.arpa import ArpaLM
from search_oracle import SEARCHES, PythonSearchDecoder, floored


def test_acoustic_only_equals_greedy_on_peaky_posteriors(table, rng):
    for i, text in enumerate(["the cat sat on the mat", "a", "", "hello  world's end"]):
        p, _ = simulate_posteriors(f"u{i}", text, table, rng, SimulationConfig(peak=10, noise=0.3))
        beam = BeamSearchDecoder(table).decode(p).best
        greedy = greedy_decode([p], table)[0].best
        assert beam.text == greedy.text == " ".join(text.split())
        assert beam.scores["acoustic"] >= greedy.score - 1e-6  # prefix prob >= best path


def test_zero_weight_lm_equals_no_lm(table, rng, biased_lm):
    plain = BeamSearchDecoder(table, options=SearchOptions(beam_size=8, nbest=4))
    zero = BeamSearchDecoder(table, [LMScorer(biased_lm), WordBonus()],
                             {"lm": 0.0, "word_bonus": 0.0}, SearchOptions(beam_size=8, nbest=4))
    for i in range(5):
        p, _ = simulate_posteriors(f"u{i}", "bat sat cat", table, rng,
                                   SimulationConfig(confusion=0.3, noise=1.0, peak=5))
        a, b = plain.decode(p), zero.decode(p)
        assert [h.text for h in a.nbest] == [h.text for h in b.nbest]
        assert [h.score for h in a.nbest] == pytest.approx([h.score for h in b.nbest])
        assert all(set(h.scores) == {"acoustic", "lm", "word_bonus"} for h in b.nbest)


def test_lm_flips_an_ambiguous_word(table, biased_lm):
    p = ambiguous(table)
    assert BeamSearchDecoder(table).decode(p).best.text == "cat sat"
    fused = BeamSearchDecoder(table, [LMScorer(biased_lm)], {"lm": 0.5}).decode(p).best
    assert fused.text == "bat sat"
    # the kept scores are unweighted and add up to the total with the weights
    assert fused.scores["lm"] == pytest.approx(biased_lm.score_sentence(["bat", "sat"]))
    assert fused.score == pytest.approx(fused.scores["acoustic"] + 0.5 * fused.scores["lm"])


def test_lexicon_constraint_excludes_oov_words(table):
    p = ambiguous(table)
    lexicon = LexiconScorer(["bat", "sat"], constraint=True)
    best = BeamSearchDecoder(table, [lexicon], {"lexicon": 1.0}).decode(p).best
    assert best.text == "bat sat" and best.scores["lexicon"] == 0.0
    soft = LexiconScorer(["bat", "sat"])
    assert BeamSearchDecoder(table, [soft], {"lexicon": 0.01}).decode(p).best.text == "cat sat"
    assert BeamSearchDecoder(table, [soft], {"lexicon": 5.0}).decode(p).best.text == "bat sat"


def test_partial_words_pay_the_unknown_word_score(table, biased_lm):
    scorer = LMScorer(biased_lm, unigrams=["bat", "cat", "sat"])
    state = scorer.start()
    assert scorer.partial_score(state, "ba") == 0.0
    assert scorer.partial_score(state, "bx") == pytest.approx(-2.0 * math.log(10))


def _x_or_c_at(table) -> Posteriors:
    """'?at' where the first letter is 60% x, 40% c (blank and the rest 1e-6 each)."""
    frames = ["-", "c", "a", "t", "-"]
    lp = np.log(np.full((len(frames), len(table)), 1e-6))
    for t, f in enumerate(frames):
        lp[t, table.blank_id if f == "-" else table.id_of(f)] = 0.0
    row = np.full(len(table), 1e-6)
    row[table.id_of("x")], row[table.id_of("c")] = 0.6, 0.4
    lp[1] = np.log(row)
    lp -= np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return Posteriors("xc", lp, 0.04)


@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_the_partial_unknown_word_penalty_changes_the_best_path(table, engine):
    """With one beam, 'x' (60%) beats 'c' (40%) unless the partial word 'x', which no
    listed word starts with, is charged the penalty at once: log .6 - 2 < log .4."""
    p = _x_or_c_at(table)
    options = SearchOptions(beam_size=1)
    late = SEARCHES[engine](table, [LexiconScorer(["cat"], "oov")], {"oov": 2.0}, options)
    early = SEARCHES[engine](table, [LexiconScorer(["cat"], "oov", partial=True)], {"oov": 2.0},
                             options)
    lost = late.decode(p).best
    assert lost.text == "xat" and lost.scores["oov"] == -1.0  # charged once, at its end
    assert lost.score == pytest.approx(lost.scores["acoustic"] - 2.0)
    best = early.decode(p).best
    assert best.text == "cat" and best.scores["oov"] == 0.0
    assert best.scores["acoustic"] == pytest.approx(math.log(0.4), abs=1e-3)  # hand-computed
    assert best.score == best.scores["acoustic"]
    # what ranks a hypothesis while its word is unfinished: acoustic + weight x (-1)
    stream = late.stream(0.04)
    stream.accept(p.log_probs[:2])
    assert stream.partial().text == "x" and stream.partial().score == pytest.approx(
        math.log(0.6), abs=1e-3)
    stream = SEARCHES[engine](table, early.scorers, early.weights,
                              SearchOptions(beam_size=2)).stream(0.04)
    stream.accept(p.log_probs[:2])
    assert stream.partial().text == "c"  # 'x' ranks at log .6 - 2 now


@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_the_partial_penalty_charges_a_finished_word_once(table, rng, engine):
    """An unknown word that wins anyway scores -1 once, as without the option; with a beam
    wide enough for nothing to be pruned, the N-best lists are the same."""
    options = SearchOptions(beam_size=64, nbest=5, beam_threshold=math.inf)
    words = ["bat", "sat", "on", "the"]
    off = SEARCHES[engine](table, [LexiconScorer(words, "oov")], {"oov": 1.5}, options)
    on = SEARCHES[engine](table, [LexiconScorer(words, "oov", partial=True)], {"oov": 1.5},
                          options)
    for i, text in enumerate(["cat sat on the mat", "bat sat", "xyz"]):
        p, _ = simulate_posteriors(f"u{i}", text, table, rng, SimulationConfig(peak=8, noise=0.5))
        a, b = off.decode(p), on.decode(p)
        assert [(h.text, h.scores) for h in a.nbest] == [(h.text, h.scores) for h in b.nbest]
        unknown = sum(w not in words for w in b.best.text.split())
        assert b.best.scores["oov"] == -unknown
        assert b.best.score == pytest.approx(b.best.scores["acoustic"] - 1.5 * unknown)


def test_partial_unknown_word_scores(table):
    on = LexiconScorer(["cat", "car"], "oov", partial=True)
    assert [on.partial_score(None, w) for w in ("c", "ca", "cat", "cx", "x")] == [0, 0, 0, -1, -1]
    assert on.has_partial and on.score_word(None, "cx") == (None, -1.0)
    off = LexiconScorer(["cat", "car"], "oov")
    assert not off.has_partial and off.partial_score(None, "x") == 0.0
    with pytest.raises(ValueError, match="'oov'.*empty"):
        LexiconScorer([""], "oov", partial=True)


def test_word_times_follow_the_frames(table, rng):
    p, alignment = simulate_posteriors("u", "the cat sat", table, rng,
                                       SimulationConfig(peak=12, noise=0.2))
    hyp = BeamSearchDecoder(table).decode(p).best
    starts = [t for t in range(len(alignment))
              if alignment[t] not in (0, 1) and (t == 0 or alignment[t] != alignment[t - 1])]
    word_starts = [starts[0], starts[3], starts[6]]  # first letters of the, cat, sat
    assert [round(w.start / 0.04) for w in hyp.words] == word_starts
    assert all(w.end > w.start for w in hyp.words)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"nbest": 5, "beam_size": 4}, "cannot exceed"),
        ({"beam_threshold": 0}, "beam_threshold"),
        ({"token_min_logprob": 1.0}, "token_min_logprob"),
        ({"blank_skip": 1.5}, "blank_skip"),
        ({"floor_every_label": 1}, "floor_every_label"),
        ({"token_top_k": True}, "token_top_k"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchOptions(**kwargs)


def test_weights_must_name_the_scorers(table, biased_lm):
    with pytest.raises(ValueError, match="no weight for scorer"):
        BeamSearchDecoder(table, [LMScorer(biased_lm)], {})
    with pytest.raises(ValueError, match="unknown scorer"):
        BeamSearchDecoder(table, [LMScorer(biased_lm)], {"lm": 1.0, "lmm": 1.0})
    with pytest.raises(ValueError, match="unique"):
        BeamSearchDecoder(table, [LMScorer(biased_lm), LMScorer(biased_lm)], {"lm": 1.0})
    with pytest.raises(ValueError, match="finite"):
        BeamSearchDecoder(table, [LMScorer(biased_lm)], {"lm": math.nan})
    with pytest.raises(ValueError, match="29 columns|columns"):
        BeamSearchDecoder(table).decode(Posteriors("u", np.zeros((3, 5)), 0.04))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 30), st.integers(2, 29), st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_random_posteriors_never_break_the_search(table, biased_lm, frames, vocab_used, seed, nbest):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(frames, len(table)))
    logits[:, vocab_used:] -= 20  # sometimes only a few units are plausible
    p = Posteriors.from_array("u", logits, kind="logits", frame_shift=0.02)
    decoder = BeamSearchDecoder(table, [LMScorer(biased_lm), WordBonus()],
                                {"lm": 0.7, "word_bonus": 1.0},
                                SearchOptions(beam_size=8, nbest=nbest))
    result = decoder.decode(p)
    scores = [h.score for h in result.nbest]
    assert 1 <= len(scores) <= nbest and scores == sorted(scores, reverse=True)
    assert len({h.text for h in result.nbest}) == len(scores)
    for h in result.nbest:
        assert all(math.isfinite(v) for v in (h.score, *h.scores.values()))
        times = [t for w in h.words for t in (w.start, w.end)]
        assert times == sorted(times) and all(0 <= t <= p.duration for t in times)


def _walk(scorer, words):
    state, total = scorer.start(), 0.0
    for w in words:
        state, s = scorer.score_word(state, w)
        total += s
    return total + scorer.finish(state)


def test_hotword_automaton_keeps_only_finished_phrases():
    hot = HotwordScorer({"new york": 2.0, "a b c": 1.0, "b d": 1.0})
    assert _walk(hot, ["in", "new", "york", "today"]) == 4.0
    assert _walk(hot, ["new", "jersey"]) == 0.0
    assert _walk(hot, ["we", "like", "new"]) == 0.0  # unfinished at the end: taken back
    # "a b" breaks on "d" but "b d" completes through the failure link: 2 kept
    assert _walk(hot, ["a", "b", "d"]) == 2.0
    assert _walk(hot, ["a", "b", "c", "new", "york"]) == 3.0 + 4.0
    state = hot.score_word(hot.start(), "new")[0]
    assert hot.partial_score(state, "yo") == 2.0 and hot.partial_score(state, "x") == -2.0
    assert hot.partial_score(hot.start(), "ne") == 2.0
    with pytest.raises(ValueError, match="weight > 0"):
        HotwordScorer({"x": 0.0})


def test_hotword_forces_its_phrase(table):
    p = ambiguous(table)
    assert BeamSearchDecoder(table).decode(p).best.text == "cat sat"
    hot = HotwordScorer(["bat sat"])
    best = BeamSearchDecoder(table, [hot], {"hotwords": 1.0}).decode(p).best
    assert best.text == "bat sat" and best.scores["hotwords"] == 2.0


def test_thousands_of_hotwords_are_cheap(table, rng):
    words = ["".join(rng.choice(list("abcdefghij"), size=5)) for _ in range(6000)]
    phrases = {f"{a} {b}": 1.0 for a, b in zip(words[::2], words[1::2])}
    hot = HotwordScorer(phrases)
    p, _ = simulate_posteriors("u", "the cat sat on the mat", table, rng)
    best = BeamSearchDecoder(table, [hot], {"hotwords": 2.0}).decode(p).best
    assert best.text == "the cat sat on the mat" and best.scores["hotwords"] == 0.0


class _BatchingLM(ArpaLM):
    """An ArpaLM that says it batches: records each batch and each session."""

    def __init__(self, path):
        super().__init__(path)
        self.batches, self.ends, self.sessions = [], [], 0

    def score_many(self, states, units):
        self.batches.append(len(units))
        return [self.score(s, u) for s, u in zip(states, units)]

    def finish_many(self, states):
        self.ends.append(len(states))
        return [self.finish(s) for s in states]

    def session(self):
        from contextlib import contextmanager

        @contextmanager
        def opened():
            self.sessions += 1
            yield self

        return opened()


def test_batched_scorers_see_a_frames_words_at_once(table, rng, tmp_path):
    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    plain, batching = ArpaLM(tmp_path / "b.arpa"), _BatchingLM(tmp_path / "b.arpa")
    options = SearchOptions(beam_size=16, nbest=3)
    texts = ["bat sat cat", "cat sat", "sat bat bat"]
    for i, text in enumerate(texts):
        p, _ = simulate_posteriors(f"u{i}", text, table, rng,
                                   SimulationConfig(confusion=0.2, noise=1.0, peak=5))
        a = BeamSearchDecoder(table, [LMScorer(plain)], {"lm": 0.8}, options).decode(p)
        b = BeamSearchDecoder(table, [LMScorer(batching)], {"lm": 0.8}, options).decode(p)
        assert [(h.text, h.score) for h in a.nbest] == [(h.text, h.score) for h in b.nbest]
    assert batching.sessions == len(texts)
    assert batching.batches and max(batching.batches) > 1
    # an utterance's beams end in one call, each distinct end state once
    assert len(batching.ends) == len(texts) and sum(batching.ends) >= len(texts)


def test_an_lm_scorer_without_unigrams_has_no_partial_estimate(tmp_path):
    """Without unigrams an LM scorer's partial-word estimate is always 0: the compiled search
    neither calls it back nor loses its pruning bound over it; with unigrams, or a
    subclass's own estimate, it has one."""

    class OwnEstimate(LMScorer):
        def partial_score(self, state, partial):
            return -1.0

    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    lm = ArpaLM(tmp_path / "b.arpa")
    assert not LMScorer(lm).has_partial and LMScorer(lm).compiled(1.0)["partial"] is False
    assert LMScorer(lm, unigrams=["bat"]).has_partial and OwnEstimate(lm).has_partial


class _NoEnd(LMScorer):
    """A scorer whose own rules replace its LM's: no ``</s>``, every word 1 worse."""

    def score_word(self, state, word):
        state, score = super().score_word(state, word)
        return state, score - 1.0

    def finish(self, state):
        return 0.0


def test_a_scorer_subclass_own_rules_hold_in_batches(table, rng, tmp_path):
    """Batched word and end scores go through a subclass's own score_word and finish,
    not around them to its LM's batched methods."""
    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    lm = _BatchingLM(tmp_path / "b.arpa")
    p, _ = simulate_posteriors("u", "bat sat cat", table, rng)
    nbest = BeamSearchDecoder(table, [_NoEnd(lm)], {"lm": 0.8}, SearchOptions(nbest=3)).decode(p).nbest
    for h in nbest:
        words = h.text.split()
        state, total = lm.start(), 0.0
        for w in words:
            state, score = lm.score(state, w)
            total += score - 1.0
        assert h.scores["lm"] == pytest.approx(total, abs=1e-6)
    assert not lm.batches and not lm.ends  # the LM's own batched methods were never asked


@pytest.mark.parametrize("seed", [0, 1])
def test_search_shortcuts_change_nothing(table, seed, monkeypatch, tmp_path):
    """Prefixes skipped below the beams' own cut: the compiled search gives the N-best of
    the oracle search that makes every prefix."""
    rng = np.random.default_rng(seed)
    options = SearchOptions(beam_size=8, nbest=4, token_top_k=8, beam_threshold=30.0)
    texts = ["bat sat cat", "the cat sat on the mat", "sat bat"]
    posteriors = [simulate_posteriors(f"u{i}", t, table, rng,
                                      SimulationConfig(confusion=0.3, noise=1.5, peak=4))[0]
                  for i, t in enumerate(texts)]

    def decode_all(search, lm_scorer):
        decoder = search(table, [lm_scorer, WordBonus()], {"lm": 0.7, "word_bonus": 1.0}, options)
        return [[(h.text, h.score, dict(h.scores)) for h in decoder.decode(p).nbest]
                for p in posteriors]

    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    batching = _BatchingLM(tmp_path / "b.arpa")
    fast = decode_all(BeamSearchDecoder, LMScorer(batching, unigrams=["bat", "cat", "sat"]))
    assert batching.batches  # completions went through score_words
    monkeypatch.setattr(PythonSearchDecoder, "_cut", lambda self, *args: -math.inf)
    slow = decode_all(PythonSearchDecoder, LMScorer(_BatchingLM(tmp_path / "b.arpa"),
                                                    unigrams=["bat", "cat", "sat"]))
    assert fast == slow


@pytest.mark.torch  # the neural LM runs in torch
def test_neural_fusion_is_called_back_with_the_oracles_results(table, rng):
    """The neural LM in the compiled search (called back, a frame's words in one batch)
    gives the oracle search's N-best (scores within float32 batching noise)."""
    from lm.neural import DEFAULT_MODEL_DIR, NeuralLM

    if not (DEFAULT_MODEL_DIR / "model.pt").exists():
        pytest.skip("no committed default model")
    nlm = NeuralLM.default()
    options = SearchOptions(beam_size=6, nbest=2)
    decoders = [search(table, [LMScorer(nlm, "nlm"), WordBonus()], {"nlm": 0.5, "word_bonus": 1.5},
                       options) for search in (BeamSearchDecoder, PythonSearchDecoder)]
    assert decoders[0]._spec[0]["kind"] == "python"
    p, _ = simulate_posteriors("u", "the cat sat", table, rng,
                               SimulationConfig(confusion=0.2, noise=0.5, peak=6))
    a, b = (d.decode(p) for d in decoders)
    assert [h.text for h in a.nbest] == [h.text for h in b.nbest]
    for ha, hb in zip(a.nbest, b.nbest):
        assert ha.score == pytest.approx(hb.score, abs=1e-4)
        assert ha.scores == pytest.approx(dict(hb.scores), abs=1e-4)


@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_floor_every_label_holds_blank_and_repeats_to_the_floor(engine):
    """Hand-computed: two frames over blank, a, b (probabilities below). Without the rule
    "a" wins (aa .36 + a_ .09 + _a .024 = .474 against ab .45); with the floor at log 0.2,
    blank (.06 and .1) and b at frame 0 (.04) are held (none is its frame's best), so "a"
    keeps only aa (.36) and "ab" (.9 x .5 = .45) wins. Repeats are held too: at frame 1,
    a (.4) passes the floor and b is the best."""
    table = TokenTable(("<b>", " ", "a", "b"), 0, " ", "separate")
    probs = np.array([[0.06, 0.0, 0.9, 0.04], [0.1, 0.0, 0.4, 0.5]])
    post = Posteriors("u", np.log(np.maximum(probs, 1e-30)).astype(np.float32), 0.04)
    floor = math.log(0.2)
    found = {}
    for rule in (False, True):
        options = SearchOptions(beam_size=8, nbest=2, token_min_logprob=floor,
                                floor_every_label=rule, blank_skip=None)
        found[rule] = [(h.text, h.scores["acoustic"])
                       for h in SEARCHES[engine](table, options=options).decode(post).nbest]
    assert [t for t, _ in found[False]] == ["a", "ab"]
    assert found[False][0][1] == pytest.approx(math.log(0.474), rel=1e-5)
    assert found[False][1][1] == pytest.approx(math.log(0.45), rel=1e-5)
    assert [t for t, _ in found[True]] == ["ab", "a"]
    assert found[True][0][1] == pytest.approx(math.log(0.45), rel=1e-5)
    assert found[True][1][1] == pytest.approx(math.log(0.36), rel=1e-5)


def test_floored_keeps_each_frames_best_label():
    lp = np.log(np.array([[0.05, 0.9, 0.05], [0.4, 0.3, 0.3]], dtype=np.float32))
    out = floored(lp, math.log(0.5))
    assert out[0, 1] == lp[0, 1] and np.isneginf(out[0, [0, 2]]).all()
    assert out[1, 0] == lp[1, 0] and np.isneginf(out[1, 1:]).all()  # best below the floor
    assert np.array_equal(floored(lp, -10.0), lp)

"""The compiled beam search (fusion.decoder._ctcsearch) gives what the Python search gives."""

import math
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ambiguous
from fusion.core.posteriors import Posteriors
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.tokens import TokenTable
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import HotwordScorer, LexiconScorer, LMScorer, WordBonus, WordScorer
from fusion.decoder.search import BeamSearchDecoder
from lm.arpa import ArpaLM
from lm.ngram import KenLM, build_arpa
from search_oracle import SEARCHES, PythonSearchDecoder

pytest.importorskip("fusion.decoder._ctcsearch", reason="the compiled search is not built (make builds it)")

# overlapping phrases, one inside another, with their own weights
HOTWORDS = {"the cat": 2.0, "cat sat on": 1.5, "a bat": 3.0, "sat": 0.5, "the flat mat": 1.0}
TEXT = """the cat sat on the mat
the bat sat on the cat
a cat and a bat
the mat is flat
that cat's hat
on the flat mat the cat sat
"""


# conftest's BIASED_ARPA with a bigram (KenLM loads no unigram-only model): "bat" >> "cat"
BIASED_ARPA = """\\data\\
ngram 1=6
ngram 2=1

\\1-grams:
-2.0\t<unk>\t0
-99\t<s>\t0
-0.5\t</s>\t0
-0.5\tbat\t0
-3.0\tcat\t0
-1.0\tsat\t0

\\2-grams:
-0.2\tbat sat

\\end\\
"""


@pytest.fixture(scope="module")
def trigram(tmp_path_factory) -> KenLM:
    folder = tmp_path_factory.mktemp("ngram")
    (folder / "text.txt").write_text(TEXT * 3)
    return KenLM(build_arpa(folder / "text.txt", folder / "3.arpa", order=3))


@pytest.fixture(scope="module")
def unigrams() -> list[str]:
    return sorted(set(TEXT.split()))


def _outputs(decoder: BeamSearchDecoder, posteriors: Posteriors) -> list[tuple]:
    return [(h.text, h.score, dict(h.scores), h.tokens, h.words) for h in decoder.decode(posteriors).nbest]


def _both(table, scorers, weights, options) -> tuple[BeamSearchDecoder, BeamSearchDecoder]:
    return (PythonSearchDecoder(table, scorers, weights, options),
            BeamSearchDecoder(table, scorers, weights, options))


def _agree_on_random_posteriors(table, lm, weights, options, rng, *, frames, scale, times) -> None:
    """Both searches give the same N-best with ``lm`` (without and with its unigrams) and a
    word bonus, on ``times`` random utterances of ``frames`` frames."""
    for unigrams in (None, ["bat", "cat", "sat"]):
        python, compiled = _both(table, [LMScorer(lm, unigrams=unigrams), WordBonus()], weights, options)
        for _ in range(times):
            p = Posteriors.from_array("u", rng.normal(0, scale, size=(frames, len(table))),
                                      kind="logits", frame_shift=0.04)
            assert _outputs(compiled, p) == _outputs(python, p)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(2, 29), st.integers(0, 2**32 - 1), st.integers(1, 5),
       st.sampled_from(["lm", "lm+unigrams", "lexicon", "constraint", "hotwords"]), st.integers(1, 12))
def test_same_nbest_as_the_python_search_on_random_posteriors(
        table, trigram, unigrams, frames, vocab_used, seed, nbest, scorers, beam):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(frames, len(table)))
    logits[:, vocab_used:] -= 20  # sometimes only a few units are plausible
    p = Posteriors.from_array("u", logits, kind="logits", frame_shift=0.02)
    chosen = {
        "lm": [LMScorer(trigram), WordBonus()],
        "lm+unigrams": [LMScorer(trigram, unigrams=unigrams), WordBonus()],
        "lexicon": [LMScorer(trigram, unigrams=unigrams), LexiconScorer(unigrams)],
        "constraint": [LexiconScorer(unigrams, constraint=True), LMScorer(trigram), WordBonus()],
        "hotwords": [LMScorer(trigram, unigrams=unigrams), HotwordScorer(HOTWORDS), WordBonus()],
    }[scorers]
    weights = {s.name: w for s, w in zip(chosen, (0.8, 1.5, 0.6))}
    python, compiled = _both(table, chosen, weights, _random_options(rng, seed, beam, nbest))
    outputs = _outputs(compiled, p)
    assert outputs == _outputs(python, p)
    assert compiled.best_text(p) == outputs[0][0]  # the best text without the alignment


def _random_options(rng: np.random.Generator, seed: int, beam: int, nbest: int) -> SearchOptions:
    """Search options drawn for the property tests: every pruning rule on and off."""
    return SearchOptions(beam_size=max(beam, nbest), nbest=nbest, token_top_k=int(rng.integers(1, 29)),
                         beam_threshold=float(rng.choice([5.0, 15.0, math.inf])),
                         blank_skip=None if seed % 3 == 0 else 0.999,
                         floor_every_label=seed % 4 == 1, split_blank_ends=seed // 4 % 2 == 1,
                         recombine=(None, False, True)[seed // 8 % 3])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 40), st.integers(2, 29), st.integers(0, 2**32 - 1), st.integers(1, 5),
       st.sampled_from(["oov", "oov+lm", "oov+hotwords", "oov+constraint"]), st.integers(1, 12),
       st.floats(-2.0, 25.0))
def test_same_nbest_with_the_partial_unknown_word_penalty(
        table, trigram, unigrams, frames, vocab_used, seed, nbest, scorers, beam, penalty):
    """LexiconScorer(partial=True): the compiled search charges a partial word no listed
    word starts with as the Python search does (any weight, beside other partial scorers)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(frames, len(table)))
    logits[:, vocab_used:] -= 20
    p = Posteriors.from_array("u", logits, kind="logits", frame_shift=0.02)
    oov = LexiconScorer(unigrams, "oov", partial=True)
    chosen = {
        "oov": [oov, WordBonus()],
        "oov+lm": [LMScorer(trigram, unigrams=unigrams), oov, WordBonus()],
        "oov+hotwords": [oov, HotwordScorer(HOTWORDS), LMScorer(trigram)],
        "oov+constraint": [LexiconScorer(unigrams[::2], constraint=True), oov],
    }[scorers]
    weights = {s.name: w for s, w in zip(chosen, (0.8, 1.5, 0.6))}
    weights["oov"] = penalty
    python, compiled = _both(table, chosen, weights, _random_options(rng, seed, beam, nbest))
    assert _outputs(compiled, p) == _outputs(python, p)


@pytest.mark.parametrize("floor_every_label, split_blank_ends, recombine",
                         [(False, False, False), (True, False, False), (True, True, False),
                          (False, False, True), (True, True, True)])
def test_same_nbest_with_the_partial_penalty_on_simulated_speech(table, trigram, unigrams,
                                                                 floor_every_label, split_blank_ends,
                                                                 recombine):
    rng = np.random.default_rng(5)
    scorers = [LMScorer(trigram, unigrams=unigrams), WordBonus(),
               LexiconScorer(unigrams[1:], "oov", partial=True)]
    weights = {"lm": 0.9, "word_bonus": 1.2, "oov": 6.0}
    options = SearchOptions(beam_size=16, nbest=5, floor_every_label=floor_every_label,
                            split_blank_ends=split_blank_ends, recombine=recombine)
    python, compiled = _both(table, scorers, weights, options)
    for i, text in enumerate(["the cat sat on the mat", "a bat and a cat", "that cat's flat hat"]):
        p, _ = simulate_posteriors(f"u{i}", text, table, rng,
                                   SimulationConfig(confusion=0.3, noise=1.5, peak=4))
        assert _outputs(compiled, p) == _outputs(python, p)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hotwords", [False, True])
def test_same_nbest_on_simulated_speech(table, trigram, unigrams, seed, hotwords):
    rng = np.random.default_rng(seed)
    scorers = [LMScorer(trigram, unigrams=unigrams), WordBonus()]
    weights = {"lm": 0.9, "word_bonus": 1.2}
    if hotwords:
        scorers.append(HotwordScorer(HOTWORDS))
        weights["hotwords"] = 0.8
    python, compiled = _both(table, scorers, weights, SearchOptions(beam_size=16, nbest=5))
    for i, text in enumerate(["the cat sat on the mat", "a bat and a cat", "that cat's flat hat"]):
        p, _ = simulate_posteriors(f"u{i}", text, table, rng,
                                   SimulationConfig(confusion=0.3, noise=1.5, peak=4))
        assert _outputs(compiled, p) == _outputs(python, p)


def test_same_nbest_on_a_word_piece_table(tmp_path):
    """Units that start words (sentencepiece's ``▁``) instead of a boundary unit."""
    table = TokenTable(("<b>", "▁the", "▁c", "▁b", "at", "▁sat", "s", "'"), blank_id=0,
                       word_boundary="▁", boundary_style="prefix")
    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    lm = KenLM(tmp_path / "b.arpa")
    _agree_on_random_posteriors(table, lm, {"lm": 0.5, "word_bonus": 0.5},
                                SearchOptions(beam_size=6, nbest=3), np.random.default_rng(7),
                                frames=12, scale=2.0, times=10)


def test_compiled_search_fuses_the_lm(table, tmp_path):
    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    lm = KenLM(tmp_path / "b.arpa")
    p = ambiguous(table)
    assert BeamSearchDecoder(table, options=SearchOptions()).decode(p).best.text == "cat sat"
    fused = BeamSearchDecoder(table, [LMScorer(lm)], {"lm": 0.5}).decode(p).best
    assert fused.text == "bat sat"
    assert fused.scores["lm"] == pytest.approx(lm.score_sentence(["bat", "sat"]))
    constrained = BeamSearchDecoder(table, [LexiconScorer(["bat", "sat"], constraint=True)],
                                    {"lexicon": 1.0}).decode(p).best
    assert constrained.text == "bat sat"
    hot = BeamSearchDecoder(table, [HotwordScorer({"bat sat": 2.0})], {"hotwords": 1.0}).decode(p).best
    assert hot.text == "bat sat" and hot.scores["hotwords"] == pytest.approx(4.0)


def test_the_compiled_search_holds_the_only_copy_of_a_kenlm_model(table, tmp_path):
    """Its own copy serves the search: the Python one is released, not queried while
    decoding, and loads again (same scores) when the Python search needs it."""
    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    lm = KenLM(tmp_path / "b.arpa")
    before = lm.score_sentence(["bat", "sat"])
    scorers, weights = [LMScorer(lm, unigrams=["bat", "cat", "sat"])], {"lm": 0.5}
    compiled = BeamSearchDecoder(table, scorers, weights)
    assert not lm.loaded
    p = ambiguous(table)
    best = compiled.decode(p).best
    assert not lm.loaded and best.text == "bat sat"
    python = PythonSearchDecoder(table, scorers, weights)
    assert _outputs(python, p) == _outputs(compiled, p) and lm.loaded
    assert lm.score_sentence(["bat", "sat"]) == before == pytest.approx(best.scores["lm"])


def test_searchers_share_a_loaded_kenlm_file_until_it_changes(table, tmp_path):
    """A second searcher over the same file reuses the loaded model (fusion tune makes one
    per trial): an ARPA file changed in the meantime is not seen; one rewritten with another
    size is loaded anew."""
    path = tmp_path / "b.arpa"
    path.write_text(BIASED_ARPA)
    p = ambiguous(table)

    def best(lm_file):
        return BeamSearchDecoder(table, [LMScorer(KenLM(lm_file))], {"lm": 0.5}).decode(p).best

    first = BeamSearchDecoder(table, [LMScorer(KenLM(path))], {"lm": 0.5})
    assert first.decode(p).best.text == "bat sat"
    flipped = BIASED_ARPA.replace("-0.5\tbat", "-3.0\tbat").replace("-3.0\tcat", "-0.5\tcat")
    stat = path.stat()
    path.write_text(flipped)  # same size: only the time tells, and we keep it the same
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert best(path).text == "bat sat"  # the first searcher's model, shared
    path.write_text(flipped + "\n")  # another size: loaded anew
    assert best(path).text == "cat sat"
    del first


def test_how_scorers_describe_themselves_to_the_search(table, tmp_path):
    (tmp_path / "b.arpa").write_text(BIASED_ARPA)
    kenlm_scorer = LMScorer(KenLM(tmp_path / "b.arpa"))
    hot = HotwordScorer(["bat sat"])
    decoder = BeamSearchDecoder(table, [kenlm_scorer, hot], {"lm": 1.0, "hotwords": 1.0})
    assert [s["kind"] for s in decoder._spec] == ["kenlm", "hotwords"]
    # an LM the compiled search does not know (a neural LM, our ARPA reader) is called back
    arpa = LMScorer(ArpaLM(tmp_path / "b.arpa"), name="arpa", unigrams=["bat", "cat"])
    decoder = BeamSearchDecoder(table, [arpa, hot], {"arpa": 1.0, "hotwords": 1.0})
    assert [s["kind"] for s in decoder._spec] == ["python", "hotwords"]
    assert decoder._spec[0]["unigrams"] == ["bat", "cat"]  # its partial-word rule runs natively
    # a subclass that scores otherwise is called back, not run as its parent's kind
    assert _Listed(["cat"], constraint=True).compiled(1.0)["kind"] == "python"
    assert LexiconScorer(["cat"]).compiled(1.0)["kind"] == "lexicon"
    assert LMScorer(_Batched(tmp_path / "b.arpa")).compiled(1.0)["kind"] == "python"


class _Batched(ArpaLM):
    """An LM with a score_many of its own: the Python search defers its word scores to the
    frame's pruning, the compiled one scores a frame's words in one call."""

    def score_many(self, states, units):
        return [self.score(s, u) for s, u in zip(states, units)]


class _Parity(WordScorer):
    """A scorer only Python knows: its state, partial-word estimate and end score matter."""

    name = "parity"

    def start(self):
        return 0

    def score_word(self, state, word):
        nxt = (state + len(word)) % 3
        return nxt, -0.5 * (nxt % 2)

    def partial_score(self, state, partial):
        return -0.25 * ((state + len(partial)) % 4)

    def finish(self, state):
        return -0.3 * state


class _Listed(LexiconScorer):
    """A lexicon constraint that answers in Python (its accepts is its own)."""

    def accepts(self, word):
        return word in self.words


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(2, 29), st.integers(0, 2**32 - 1), st.integers(1, 5),
       st.sampled_from(["arpa", "batched", "parity", "constraint"]), st.integers(1, 12))
def test_scorers_called_back_give_the_python_search_s_nbest(
        table, trigram, unigrams, frames, vocab_used, seed, nbest, scorers, beam):
    """Scorers the compiled search runs through Python callbacks (an LM it does not know,
    batched or not; state-dependent partial-word estimates; a constraint) give the same
    N-best lists, scores and times as the Python search."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(frames, len(table)))
    logits[:, vocab_used:] -= 20
    p = Posteriors.from_array("u", logits, kind="logits", frame_shift=0.02)
    chosen = {
        "arpa": [LMScorer(ArpaLM(trigram.path), unigrams=unigrams), WordBonus()],
        "batched": [LMScorer(_Batched(trigram.path), unigrams=unigrams), WordBonus(), _Parity()],
        "parity": [_Parity(), LMScorer(trigram), WordBonus()],
        "constraint": [_Listed(unigrams, "listed", constraint=True), LMScorer(trigram), _Parity()],
    }[scorers]
    weights = {s.name: w for s, w in zip(chosen, (0.8, 1.5, 0.6))}
    python, compiled = _both(table, chosen, weights, _random_options(rng, seed, beam, nbest))
    assert _outputs(compiled, p) == _outputs(python, p)


def test_a_pickled_decoder_makes_its_own_searcher(table, trigram, unigrams, rng):
    decoder = BeamSearchDecoder(table, [LMScorer(trigram, unigrams=unigrams), WordBonus()],
                                {"lm": 0.9, "word_bonus": 1.0}, SearchOptions(beam_size=8, nbest=2))
    copy = pickle.loads(pickle.dumps(decoder))
    p, _ = simulate_posteriors("u", "the cat sat", table, rng, SimulationConfig(noise=1.0, peak=5))
    assert _outputs(copy, p) == _outputs(decoder, p)


def test_compiled_search_rejects_bad_posteriors(table):
    decoder = BeamSearchDecoder(table, options=SearchOptions())
    with pytest.raises(ValueError, match="'u'.*5 columns"):
        decoder.decode(Posteriors("u", np.zeros((3, 5)), 0.04))
    # empty utterances decode to nothing
    assert decoder.decode(Posteriors("e", np.zeros((0, len(table))), 0.04)).best.text == ""


NO_UNK_ARPA = BIASED_ARPA.replace("-2.0\t<unk>\t0\n", "").replace("ngram 1=6", "ngram 1=5")


def test_an_lm_without_unk_scores_unknown_words_at_pyctcdecodes_offset(table, tmp_path):
    """KenLM puts log10 -100 where <unk> is missing; we put -10 (both searches alike), so
    an unknown word is a cost, not a dead end the search avoids by saying nothing."""
    (tmp_path / "n.arpa").write_text(NO_UNK_ARPA)
    lm = KenLM(tmp_path / "n.arpa")
    assert lm.score(lm.start(), "zebra")[1] == pytest.approx(-10 * math.log(10))
    assert lm.score(lm.start(), "bat")[1] == pytest.approx(-0.5 * math.log(10))
    assert LMScorer(lm, unigrams=["bat", "cat", "sat"]).unk_score == pytest.approx(-10 * math.log(10))
    state, total = lm.start(), 0.0  # whole sentences (N-best rescoring) score them alike
    for word in ("bat", "zebra", "sat"):
        state, lp = lm.score(state, word)
        total += lp
    assert lm.score_sentence(["bat", "zebra", "sat"]) == pytest.approx(total + lm.finish(state))
    _agree_on_random_posteriors(table, lm, {"lm": 0.7, "word_bonus": 1.0},
                                SearchOptions(beam_size=8, nbest=4), np.random.default_rng(3),
                                frames=15, scale=3.0, times=8)


@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_a_constraint_is_waived_when_every_beam_ends_inside_a_word(table, engine):
    """Audio that ends in the middle of a listed word: the best beam, not nothing."""
    p, _ = simulate_posteriors("u", "the ca", table, np.random.default_rng(0),
                               SimulationConfig(confusion=0.0, noise=0.0, peak=8))
    decoder = SEARCHES[engine](table, [LexiconScorer(["the", "cat"], constraint=True)],
                               {"lexicon": 1.0}, SearchOptions(beam_size=4))
    assert decoder.decode(p).best.text == "the ca"
    whole, _ = simulate_posteriors("v", "the cat", table, np.random.default_rng(0),
                                   SimulationConfig(confusion=0.0, noise=0.0, peak=8))
    assert decoder.decode(whole).best.text == "the cat"


def test_recombine_keeps_one_hypothesis_per_lm_history(table, trigram, unigrams):
    """SearchOptions.recombine: of prefixes with the same n-gram state (their last two
    words here), word in progress and last unit, only the best stays, so no two of the
    N best end in the same two words; without it, N-best lists repeat histories."""
    scorers = [LMScorer(trigram, unigrams=unigrams), WordBonus()]
    weights = {"lm": 0.9, "word_bonus": 1.2}
    repeated = {}
    for recombine in (False, True):
        python, compiled = _both(table, scorers, weights,
                                 SearchOptions(beam_size=16, nbest=8, recombine=recombine))
        repeated[recombine] = 0
        for i, text in enumerate(["the cat sat on the mat", "a bat and a cat", "that cat's flat hat"]):
            p, _ = simulate_posteriors(f"u{i}", text, table, np.random.default_rng(i),
                                       SimulationConfig(confusion=0.4, noise=2.0, peak=3))
            outputs = _outputs(compiled, p)
            assert outputs == _outputs(python, p)
            ends = [tuple(text.split()[-2:]) for text, *_ in outputs]
            repeated[recombine] += len(ends) - len(set(ends))
    assert repeated[True] == 0 and repeated[False] > 0


def test_recombine_by_default_for_a_1_best_search_only():
    assert SearchOptions().recombines
    assert not SearchOptions(beam_size=8, nbest=4).recombines  # N-best lists keep every history
    assert SearchOptions(beam_size=8, nbest=4, recombine=True).recombines
    assert not SearchOptions(recombine=False).recombines
    with pytest.raises(ValueError, match="recombine must be True, False or None"):
        SearchOptions(recombine="yes")

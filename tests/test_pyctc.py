"""pyctcdecode interoperability: our LMs inside pyctcdecode, pyctcdecode as a backend."""

import numpy as np
import pytest
from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel

from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.decoder.options import SearchOptions
from fusion.decoder.pyctc import FusionLanguageModel, PyctcdecodeBackend, pyctcdecode_labels
from fusion.decoder.scorers import HotwordScorer, LMScorer, WordBonus
from fusion.decoder.search import BeamSearchDecoder
from lm.ngram import KenLM, build_arpa, read_unigrams

VOCAB = "the a cat dog sat ran on under mat big small and saw it".split()


@pytest.fixture(scope="module")
def kenlm_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("pyctc")
    rng = np.random.default_rng(3)
    lines = [" ".join(rng.choice(VOCAB, size=rng.integers(2, 8))) for _ in range(500)]
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    return build_arpa(d / "train.txt", d / "3.arpa", order=3)


def _utterances(table, n, seed):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(VOCAB, size=rng.integers(2, 7))) for _ in range(n)]
    cfg = SimulationConfig(confusion=0.04, noise=0.5, peak=8)
    return texts, [simulate_posteriors(f"u{i}", t, table, rng, cfg)[0] for i, t in enumerate(texts)]


def test_top_hypotheses_agree_with_pyctcdecode(table, kenlm_path):
    alpha, beta = 0.6, 1.5
    ours = BeamSearchDecoder(
        table, [LMScorer(KenLM(kenlm_path), unigrams=read_unigrams(kenlm_path)), WordBonus()],
        {"lm": alpha, "word_bonus": beta}, SearchOptions(beam_size=32))
    theirs = BeamSearchDecoderCTC(
        Alphabet(pyctcdecode_labels(table), is_bpe=False),
        LanguageModel(__import__("kenlm").Model(str(kenlm_path)), unigrams=VOCAB,
                      alpha=alpha, beta=beta))
    _, posteriors = _utterances(table, 40, seed=11)
    agree = sum(ours.decode(p).best.text == " ".join(
        theirs.decode(np.asarray(p.log_probs), beam_width=32).split()) for p in posteriors)
    assert agree / len(posteriors) >= 0.95


def test_our_scorers_inside_pyctcdecode(table, kenlm_path):
    scorers = [LMScorer(KenLM(kenlm_path), unigrams=read_unigrams(kenlm_path)), WordBonus()]
    weights = {"lm": 0.6, "word_bonus": 1.5}
    fusion_lm = FusionLanguageModel(scorers, weights)
    start = fusion_lm.get_start_state()
    total, state = fusion_lm.score(start, "cat", is_last_word=True)
    lm = scorers[0].lm
    assert total == pytest.approx(0.6 * lm.score_sentence(["cat"]) + 1.5)
    backend = PyctcdecodeBackend(table, fusion_lm, beam_size=16, nbest=2)
    ours = BeamSearchDecoder(table, scorers, weights, SearchOptions(beam_size=16))
    texts, posteriors = _utterances(table, 20, seed=5)
    results = backend.decode_batch(posteriors)
    assert sum(r.best.text == ours.decode(p).best.text
               for r, p in zip(results, posteriors)) >= 18
    assert all(len(r.nbest) <= 2 and r.best.words for r in results if r.best.text)
    with pytest.raises(ValueError, match="missing"):
        FusionLanguageModel(scorers, {"lm": 1.0})
    hot = FusionLanguageModel([HotwordScorer(["cat"])], {"hotwords": 1.0})
    assert hot.score_partial_token("ca") == 1.0

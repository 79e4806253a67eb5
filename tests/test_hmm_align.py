"""Forced alignment (fast CTC path and HMM Viterbi) and the alignment scorer."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.types import TokenSpan, WordSpan
from hmm.align import AlignerConfig, Alignment, align
from hmm.emissions import ScaledLikelihoods, estimate_priors
from hmm.model import DurationConfig, TiedDurationHMM
from hmm.scorer import AlignmentScorer
from hmm.topology import AlignmentError, TopologyConfig

TEXTS = ["hello world", "the cat sat on the mat", "all is well", "a"]


def true_spans(truth: np.ndarray, ids: list[int], blank: int) -> list[TokenSpan]:
    """Token spans of a simulated alignment (runs of non-blank frames, repeats split by blanks)."""
    spans, t = [], 0
    for token in ids:
        while truth[t] == blank:
            t += 1
        start = t
        while t < len(truth) and truth[t] == token:
            t += 1
        spans.append(TokenSpan(token, start, t))
    return spans


@pytest.mark.parametrize("method", ["ctc", "hmm"])
def test_known_boundaries_are_recovered(table, method):
    rng = np.random.default_rng(7)
    for i in range(8):
        text = TEXTS[i % len(TEXTS)]
        post, truth = simulate_posteriors(f"u{i}", text, table, rng)
        result = align(post, text, table, config=AlignerConfig(method=method))
        assert isinstance(result, Alignment) and result.method == method
        assert np.array_equal(result.frame_tokens, truth)
        ids = table.ids_from_text(text)
        assert list(result.tokens) == true_spans(truth, ids, table.blank_id)
        assert [w.word for w in result.words] == text.split()
        assert all(isinstance(w, WordSpan) and 0.5 < w.confidence <= 1 for w in result.words)
        first = result.tokens[0]
        assert result.words[0].start == pytest.approx(first.start_frame * post.frame_shift)
        assert result.words[-1].end == pytest.approx(result.tokens[-1].end_frame * post.frame_shift)
        assert np.isfinite(result.log_likelihood) and result.log_likelihood < 0


def test_hmmlearn_viterbi_equals_forced_align(table):
    """On CTC's topology the HMM (hmmlearn Viterbi, uniform-ish transitions) and torchaudio
    agree on noisy posteriors whenever emissions dominate: checked over many utterances."""
    rng = np.random.default_rng(11)
    sim = SimulationConfig(noise=1.5, peak=6.0, confusion=0.1)
    for i in range(12):
        text = TEXTS[i % len(TEXTS)]
        post, _ = simulate_posteriors(f"u{i}", text, table, rng, sim)
        fast = align(post, text, table, config=AlignerConfig(method="ctc"))
        slow = align(post, text, table, config=AlignerConfig(method="hmm"))
        assert np.array_equal(fast.frame_tokens, slow.frame_tokens)
        assert fast.tokens == slow.tokens


def test_confidence_drops_on_a_wrong_word(table):
    post, _ = simulate_posteriors("c", "hello world", table, np.random.default_rng(3))
    good = align(post, "hello world", table)
    bad = align(post, "hello wxrld", table)
    assert bad.words[0].confidence == pytest.approx(good.words[0].confidence)
    assert bad.words[1].confidence < 0.2 < good.words[1].confidence


def test_trained_model_and_kappa(table):
    rng = np.random.default_rng(5)
    posts, texts = [], []
    for i in range(6):
        post, _ = simulate_posteriors(f"t{i}", TEXTS[i % 3], table, rng)
        posts.append(post)
        texts.append(TEXTS[i % 3])
    priors = estimate_priors(posts, blank_id=table.blank_id, exclude_blank_frames=True)
    model = TiedDurationHMM(table, ScaledLikelihoods(priors, 0.3), DurationConfig(n_iter=3))
    model.fit(posts, texts)
    result = align(posts[0], texts[0], table, model=model)
    assert result.method == "hmm" and [w.word for w in result.words] == texts[0].split()
    plain = align(posts[0], texts[0], table, emissions=ScaledLikelihoods(priors, 0.0))
    assert plain.log_likelihood == pytest.approx(align(posts[0], texts[0], table).log_likelihood)
    hmm_model = TiedDurationHMM(table, config=DurationConfig(topology=TopologyConfig(states_per_token=2)))
    with pytest.raises(ValueError, match="CTC's topology"):
        align(posts[0], texts[0], table, model=hmm_model, config=AlignerConfig(method="ctc"))


@pytest.mark.parametrize("method", ["ctc", "hmm"])
def test_bad_inputs_name_the_utterance(table, method):
    post, _ = simulate_posteriors("utt-42", "hi there", table, np.random.default_rng(0))
    cfg = AlignerConfig(method=method)
    with pytest.raises(AlignmentError, match="'utt-42'.*empty"):
        align(post, "", table, config=cfg)
    with pytest.raises(AlignmentError, match="'utt-42'.*empty"):
        align(post, " \t ", table, config=cfg)
    with pytest.raises(AlignmentError, match="'utt-42'.*'#'"):
        align(post, "hi th#re", table, config=cfg)
    with pytest.raises(AlignmentError, match="'utt-42'.*'H'"):
        align(post, "Hi there", table, config=cfg)
    with pytest.raises(AlignmentError, match="'utt-42'.*too long"):
        align(post, "hi there " * 10, table, config=cfg)
    with pytest.raises(AlignmentError, match="'utt-42'.*too long"):
        align(post, "hi there " * 10, table, config=AlignerConfig(method=method, max_cells=1))
    with pytest.raises(ValueError, match="max_cells"):
        AlignerConfig(max_cells=0)
    with pytest.raises(ValueError, match="method"):
        AlignerConfig(method="fast")  # type: ignore[arg-type]


def test_checkpointed_viterbi_matches_hmmlearn_and_torchaudio(table):
    rng = np.random.default_rng(21)
    sim = SimulationConfig(noise=1.5, peak=6.0, confusion=0.1)
    model = TiedDurationHMM(table, config=DurationConfig(
        topology=TopologyConfig(states_per_token=2, blank="word"), n_iter=2))
    posts = [simulate_posteriors(f"u{i}", TEXTS[i % 3], table, rng)[0] for i in range(6)]
    model.fit(posts, [TEXTS[i % 3] for i in range(6)])
    for i in range(6):
        text = TEXTS[i % len(TEXTS)]
        post, _ = simulate_posteriors(f"c{i}", text, table, rng, sim)
        for method, kwargs in (("ctc", {}), ("hmm", {"model": model})):
            plain = align(post, text, table, config=AlignerConfig(method=method), **kwargs)
            for block in (1, 3, None):
                cfg = AlignerConfig(method=method, max_cells=1, block=block)
                chunked = align(post, text, table, config=cfg, **kwargs)
                assert chunked.checkpointed and not plain.checkpointed
                assert chunked.log_likelihood == pytest.approx(plain.log_likelihood, abs=1e-3)
                assert chunked.tokens == plain.tokens and chunked.words == plain.words


def test_long_input_in_bounded_memory(table):
    """~6000 frames x ~2900 states: a dense back-pointer table would be 17M cells."""
    rng = np.random.default_rng(4)
    words = " ".join(rng.choice(["speech", "recognition", "hidden", "markov", "model"], size=200))
    post, truth = simulate_posteriors("long", words, table, rng)
    result = align(post, words, table, config=AlignerConfig(max_cells=1_000_000))
    assert result.checkpointed
    assert np.array_equal(result.frame_tokens, truth)
    assert [w.word for w in result.words] == words.split()


def test_alignment_scorer(table):
    post, _ = simulate_posteriors("s", "the cat sat", table, np.random.default_rng(9))
    model = TiedDurationHMM(table)
    scorer = AlignmentScorer(model, name="hmm")
    viterbi = AlignmentScorer(model, name="hmm_vit", mode="viterbi")
    truth, wrong, short = scorer.score_nbest(post, ["the cat sat", "the cat set", "the cat"])
    assert truth > wrong and truth > short
    assert viterbi.score(post, "the cat sat") <= truth
    assert viterbi.score(post, "the cat sat") == pytest.approx(
        align(post, "the cat sat", table, model=model).log_likelihood)
    assert scorer.score(post, "the cat sat " * 20) == float("-inf")
    assert np.isfinite(scorer.score(post, "")) and scorer.score(post, "") < truth
    with pytest.raises(AlignmentError, match="'s'.*'%'"):
        scorer.score(post, "the c%t")
    with pytest.raises(ValueError, match="mode"):
        AlignmentScorer(model, mode="best")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["a", "the cat sat", "aa bb a'a", "hello  world"])
@pytest.mark.parametrize("topology", [{}, {"blank": "word"}, {"blank": "none"},
                                      {"states_per_token": 3, "min_duration": 2}])
def test_sparse_ctc_arcs_are_the_structure_masks(table, text, topology):
    """The checkpointed path's arcs, made without the S x S mask, are the mask's arcs."""
    from hmm.align import _ctc_arcs
    from hmm.topology import TopologyConfig, build_graph, transcript_ids

    graph = build_graph(table, transcript_ids(table, "u", text), TopologyConfig(**topology))
    start, trans = graph.structure()
    log_start, src, dst = _ctc_arcs(graph)
    assert np.array_equal(np.isfinite(log_start), start) and (log_start[start] == 0).all()
    mask = np.zeros_like(trans)
    mask[src, dst] = True
    assert np.array_equal(mask, trans) and len(set(zip(src.tolist(), dst.tolist()))) == len(src)

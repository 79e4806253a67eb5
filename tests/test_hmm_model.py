"""Emissions, topologies and the hmmlearn-based HMMs of the alignment layer."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.core.posteriors import Posteriors
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.tokens import TokenTable
from hmm.emissions import EmissionError, ScaledLikelihoods, TokenPriors, estimate_priors
from hmm.model import AlignmentHMM, DurationConfig, TiedDurationHMM, frames
from hmm.topology import AlignmentError, TopologyConfig, build_graph, transcript_ids

TEXTS = ["hello world", "the cat sat", "a good day", "all is well"]


def corpus(table, seed: int, n: int = 12, config: SimulationConfig = SimulationConfig()):
    rng = np.random.default_rng(seed)
    posts, texts, aligns = [], [], []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        post, ali = simulate_posteriors(f"utt{i}", text, table, rng, config)
        posts.append(post)
        texts.append(text)
        aligns.append(ali)
    return posts, texts, aligns


# -- emissions --------------------------------------------------------------------------
def test_kappa_zero_is_plain_posteriors(table):
    posts, _, _ = corpus(table, 1, n=2)
    priors = estimate_priors(posts)
    lp = posts[0].log_probs
    assert np.array_equal(ScaledLikelihoods(priors, 0.0).log_likelihoods(lp), lp.astype(np.float64))
    assert np.array_equal(ScaledLikelihoods().log_likelihoods(lp), lp.astype(np.float64))
    scaled = ScaledLikelihoods(priors, 0.7).log_likelihoods(lp)
    np.testing.assert_allclose(scaled, lp - 0.7 * priors.log_priors[None, :], rtol=1e-12)


def test_priors_estimate_and_files(table, tmp_path):
    posts, _, _ = corpus(table, 2)
    all_frames = estimate_priors(posts, smoothing=1e-4)
    speech = estimate_priors(posts, blank_id=table.blank_id, exclude_blank_frames=True)
    assert np.isclose(all_frames.priors.sum(), 1.0) and np.isclose(speech.priors.sum(), 1.0)
    assert all_frames.num_frames == sum(p.num_frames for p in posts)
    assert speech.num_frames < all_frames.num_frames
    assert speech.priors[table.blank_id] < all_frames.priors[table.blank_id]
    for name in ("p.json", "p.npz"):
        speech.save(tmp_path / name)
        back = TokenPriors.load(tmp_path / name)
        np.testing.assert_allclose(back.log_priors, speech.log_priors, rtol=1e-12)
        assert back.exclude_blank_frames and back.num_frames == speech.num_frames


def test_emission_errors(table):
    priors = TokenPriors(np.log(np.full(5, 0.2)))
    with pytest.raises(EmissionError, match="kappa"):
        ScaledLikelihoods(priors, -1.0)
    with pytest.raises(EmissionError, match="priors"):
        ScaledLikelihoods(None, 1.0)
    with pytest.raises(EmissionError, match="'u7'"):
        ScaledLikelihoods(priors, 1.0).log_likelihoods(np.zeros((3, 29)), utt_id="u7")
    with pytest.raises(EmissionError, match="sum to 1"):
        TokenPriors(np.zeros(4))
    with pytest.raises(EmissionError, match="blank_id"):
        estimate_priors([], exclude_blank_frames=True)
    with pytest.raises(EmissionError, match="no frames"):
        estimate_priors([])


# -- topologies -------------------------------------------------------------------------
def test_ctc_topology(table):
    ids = transcript_ids(table, "u", "hello")
    g = build_graph(table, ids, TopologyConfig(), utt_id="u")
    assert g.num_states == 2 * len(ids) + 1
    assert g.min_frames == len(ids) + 1  # one mandatory blank between the two l's
    start, trans = g.structure()
    assert list(np.flatnonzero(start)) == [0, 1]
    assert list(np.flatnonzero(g.final)) == [g.num_states - 2, g.num_states - 1]
    l1, l2 = 5, 7  # h e l l o: token states at 1, 3, 5, 7, 9
    assert not trans[l1, l2] and trans[l1, l1 + 1] and trans[l1 + 1, l2]
    assert trans[3, 5] and trans[3, 4]  # e -> l may skip the blank
    startprob, transmat = g.matrices(np.full(len(table), 0.6), 0.3)
    np.testing.assert_allclose(transmat.sum(axis=1), 1.0)
    assert np.isclose(startprob.sum(), 1.0)
    assert np.array_equal(transmat > 0, trans) and np.array_equal(startprob > 0, start)
    assert np.isclose(transmat[3, 4], 0.4 * 0.3) and np.isclose(transmat[3, 5], 0.4 * 0.7)


def test_token_hmm_topology(table):
    cfg = TopologyConfig(states_per_token=2, min_duration=3, blank="word")
    ids = transcript_ids(table, "u", "see me")
    g = build_graph(table, ids, cfg, utt_id="u")
    # blanks: start, between the e's (mandatory), around '|' (2), end = 5
    assert int((g.state_positions == -1).sum()) == 5
    assert g.num_states == 3 * len(ids) + 5
    assert g.min_frames == 3 * len(ids) + 1
    first_s = np.flatnonzero(g.state_positions == 0)
    assert list(g.loops[first_s]) == [False, True, True]
    _, trans = g.structure()
    assert not trans[first_s[0], first_s[0]] and trans[first_s[1], first_s[1]]
    e1_last = np.flatnonzero(g.state_positions == 1)[-1]
    e2_first = np.flatnonzero(g.state_positions == 2)[0]
    assert not trans[e1_last, e2_first]
    none = build_graph(table, ids, TopologyConfig(blank="none"), utt_id="u")
    assert none.num_states == len(ids) and none.final.sum() == 1


def test_word_blanks_on_a_prefix_table():
    table = TokenTable(("<b>", "\u2581a", "\u2581b", "c"), blank_id=0, word_boundary="\u2581",
                       boundary_style="prefix")
    g = build_graph(table, [1, 3, 2, 3], TopologyConfig(blank="word"), utt_id="p")
    # blanks at the start, before the word-initial piece and at the end only
    assert list(g.state_tokens) == [0, 1, 3, 0, 2, 3, 0]
    with pytest.raises(AlignmentError, match="'p'.*tokenizer"):
        transcript_ids(table, "p", "a c")


def test_empty_graph_is_one_blank(table):
    g = build_graph(table, [], TopologyConfig())
    assert g.num_states == 1 and g.final.all()
    with pytest.raises(AlignmentError, match="'u3'"):
        build_graph(table, [], TopologyConfig(blank="none"), utt_id="u3")


# -- hmmlearn model ---------------------------------------------------------------------
def test_hmmlearn_decode_and_posteriors(table, rng):
    post, truth = simulate_posteriors("u", "hello world", table, rng)
    model = TiedDurationHMM(table)
    hmm = model.hmm_for(post, "hello world")
    assert isinstance(hmm, AlignmentHMM)
    X = frames(post)
    log_prob, states = hmm.decode(X)
    assert np.array_equal(hmm.graph.state_tokens[states], truth)
    gamma = hmm.predict_proba(X)
    assert gamma.shape == (post.num_frames, hmm.graph.num_states)
    np.testing.assert_allclose(gamma.sum(axis=1), 1.0)
    assert np.all(gamma[-1, ~hmm.graph.final] == 0)
    assert hmm.score(X) >= log_prob
    ll = hmm.emission_log_likelihoods(X)
    assert ll.shape == gamma.shape and np.isneginf(ll[-1, ~hmm.graph.final]).all()


def test_hmmlearn_fit_keeps_structural_zeros(table, rng):
    posts = [simulate_posteriors(f"u{i}", "hello", table, rng)[0] for i in range(4)]
    model = TiedDurationHMM(table)
    hmm = model.hmm(model.graph("u0", "hello"))
    hmm.set_params(params="st", n_iter=5)
    X = np.concatenate([frames(p) for p in posts])
    hmm.fit(X, lengths=[p.num_frames for p in posts])
    start, trans = hmm.graph.structure()
    assert np.all(hmm.transmat_[~trans] == 0) and np.all(hmm.startprob_[~start] == 0)
    np.testing.assert_allclose(hmm.transmat_.sum(axis=1), 1.0)
    assert not np.allclose(hmm.transmat_, hmm.transmat)  # it did learn something


@pytest.mark.parametrize("topology", [TopologyConfig(),
                                      TopologyConfig(states_per_token=2, min_duration=2, blank="word")])
def test_tied_em_monotone_and_learns_durations(table, topology):
    sim = SimulationConfig(frames_per_unit=(4, 4), blank_frames=(0, 1), noise=0.5)
    posts, texts, _ = corpus(table, 3, n=8, config=sim)
    model = TiedDurationHMM(table, config=DurationConfig(topology=topology, n_iter=8, tol=0.0))
    model.fit(posts, texts)
    lls = np.array(model.log_likelihoods_)
    assert len(lls) == model.n_iter_ >= 3
    assert np.all(np.diff(lls) >= -1e-6 * np.abs(lls[:-1]))
    assert lls[-1] > lls[0]
    # units that end utterances run long (the end is no transition); with blank="word" the
    # blank frames inside words count towards the units
    letters = [table.id_of(c) for c in "heowr"]
    np.testing.assert_allclose(model.expected_durations()[letters], 4.0, atol=0.5)
    # tied parameters always give graphs whose structural zeros are zero
    g = model.graph("u", "hello")
    start, trans = g.structure()
    startprob, transmat = g.matrices(model.loop_, model.optional_blank_)
    assert np.array_equal(transmat > 0, trans) and np.array_equal(startprob > 0, start)


def test_fit_bad_inputs(table, rng):
    post, _ = simulate_posteriors("u9", "hi", table, rng)
    model = TiedDurationHMM(table)
    with pytest.raises(AlignmentError, match="'u9'.*empty"):
        model.fit([post], ["  "])
    with pytest.raises(AlignmentError, match="'u9'.*too long"):
        model.fit([post], ["hello there general kenobi"])
    with pytest.raises(AlignmentError, match="'u9'.*'9'"):
        model.fit([post], ["h9"])
    with pytest.raises(ValueError, match="transcripts"):
        model.fit([post], [])
    small = TiedDurationHMM(table, config=DurationConfig(max_states=5))
    with pytest.raises(AlignmentError, match="'u9'.*max_states"):
        small.graph("u9", "hello")
    with pytest.raises(AlignmentError, match="'u9'"):
        small.hmm(build_graph(table, [1], TopologyConfig(), utt_id="u9")).emission_log_likelihoods(
            np.zeros((0, 29)))


def test_posteriors_with_zero_probabilities(table):
    lp = np.full((4, len(table)), -np.inf, dtype=np.float32)
    lp[:, table.blank_id] = 0.0
    lp[1, table.blank_id], lp[1, table.id_of("a")] = -np.inf, 0.0
    post = Posteriors("z", lp, 0.02)
    model = TiedDurationHMM(table)
    log_prob, states = model.hmm_for(post, "a").decode(frames(post))
    assert np.isfinite(log_prob) and list(model.graph("z", "a").state_tokens[states]) == [0, 2, 0, 0]

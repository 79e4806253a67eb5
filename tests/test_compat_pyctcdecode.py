"""fusion.compat.pyctcdecode against the real pyctcdecode: API shapes, WER, conventions."""

import math
import multiprocessing
import pickle

import numpy as np
import pytest

from fusion.compat.pyctcdecode import (BeamSearchDecoderCTC, build_ctcdecoder, labels_table, normalize_labels,
                                       pyctcdecode_log_probs)
from fusion.core.metrics import score_corpus
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.tokens import TokenTable
from lm.ngram import build_arpa

VOCAB = "the a cat dog sat ran on under mat big small and saw it".split()


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    d = tmp_path_factory.mktemp("dropin")
    rng = np.random.default_rng(3)
    lines = [" ".join(rng.choice(VOCAB, size=rng.integers(2, 8))) for _ in range(500)]
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    return str(build_arpa(d / "train.txt", d / "3.arpa", order=3))


def _labels(table):
    return ["" if i == table.blank_id else " " if i == table.boundary_id else t
            for i, t in enumerate(table.tokens)]


def _utterances(table, n, seed, confusion=0.06):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(VOCAB, size=rng.integers(2, 7))) for _ in range(n)]
    cfg = SimulationConfig(confusion=confusion, noise=0.5, peak=8)
    return texts, [simulate_posteriors(f"u{i}", t, table, rng, cfg)[0].log_probs
                   for i, t in enumerate(texts)]


def test_same_api_shapes_and_wer_as_pyctcdecode(table, arpa):
    pyctcdecode = pytest.importorskip("pyctcdecode")
    labels = _labels(table)
    ours = build_ctcdecoder(labels, arpa, alpha=0.6, beta=1.5)
    theirs = pyctcdecode.build_ctcdecoder(labels, arpa, alpha=0.6, beta=1.5)
    texts, logits = _utterances(table, 40, seed=11)
    refs = {str(i): t for i, t in enumerate(texts)}
    wer = {name: score_corpus(refs, {str(i): d.decode(x, beam_width=32)
                                     for i, x in enumerate(logits)}).wer
           for name, d in (("ours", ours), ("theirs", theirs))}
    assert wer["ours"] <= wer["theirs"] + 1e-9, wer
    a, b = ours.decode_beams(logits[0], beam_width=8), theirs.decode_beams(logits[0], beam_width=8)
    assert 1 <= len(a) <= 8 and len(a[0]) == len(b[0]) == 5
    text, state, frames, logit_score, combined = a[0]
    assert state is None and isinstance(text, str) and isinstance(logit_score, float)
    assert [w for w, _ in frames] == text.split() == b[0][0].split()
    assert [f for _, f in frames] == [f for _, f in b[0][2]]  # same word frames on a clear case
    assert combined == pytest.approx(b[0][4], abs=0.5) and logit_score <= 0
    assert [x[0] for x in a] == sorted((x[0] for x in a), key=[x[0] for x in a].index)
    assert all(a[i][4] >= a[i + 1][4] for i in range(len(a) - 1))  # best first
    batch = ours.decode_beams_batch(None, logits[:3], beam_width=8)
    their_batch = theirs.decode_beams_batch(None, logits[:3], beam_width=8)
    assert [len(x[0]) for x in batch] == [4, 4, 4] == [len(x[0]) for x in their_batch]
    assert ours.decode_batch(None, logits[:3], beam_width=32) == [
        ours.decode(x, beam_width=32) for x in logits[:3]]


def test_probabilities_logits_and_log_probs_give_the_same_text(table, arpa):
    ours = build_ctcdecoder(_labels(table), arpa)
    _, logits = _utterances(table, 3, seed=2)
    for lp in logits:
        text = ours.decode(lp)
        assert ours.decode(np.exp(lp)) == text  # probabilities
        assert ours.decode(lp * 1.0 + 3.0) == text  # unnormalised logits
    x = np.log(np.full((4, 3), 1 / 3))
    assert np.allclose(pyctcdecode_log_probs(np.exp(x), 3), x, atol=1e-6)
    assert pyctcdecode_log_probs(np.array([[0.0, -np.inf]]), 2)[0, 1] == pytest.approx(
        math.log(1e-15), rel=1e-5)


def test_alpha_beta_and_unk_offset_are_pyctcdecodes(table, arpa):
    d = build_ctcdecoder(_labels(table), arpa, alpha=0.4, beta=2.0, unk_score_offset=-7.0)
    assert d._weights == {"lm": 0.4, "word_bonus": 2.0, "oov": pytest.approx(0.4 * math.log(10) * 7)}
    d.reset_params(alpha=1.0, unk_score_offset=0.0)
    assert d._weights["lm"] == 1.0 and d._weights["oov"] == 0.0 and d._weights["word_bonus"] == 2.0
    assert [s["kind"] for s in d._search(32, -10.0, -5.0, (), 10.0, 1)._spec][0] == "kenlm"
    search = d._search(32, -10.0, -5.0, (), 10.0, 1)
    d.reset_params(alpha=1.0)  # nothing changes: the search built is kept (HF calls this each time)
    assert d._search(32, -10.0, -5.0, (), 10.0, 1) is search
    d.reset_params(lm_score_boundary=False)  # its LM scorer starts with no context: called back
    assert [s["kind"] for s in d._search(32, -10.0, -5.0, (), 10.0, 1)._spec][0] == "python"
    _, logits = _utterances(table, 1, seed=4)
    assert isinstance(d.decode(logits[0], beam_width=8), str)


@pytest.mark.parametrize("labels, blank, boundary, style", [
    (["", " ", "a", "b"], 0, " ", "separate"),
    (["a", "b", " ", "<pad>"], 3, " ", "separate"),  # <pad> is the blank wherever it is
    (["<PAD>", "|", "A", "B", "<unk>"], 0, " ", "separate"),  # '|' becomes ' ', uppercase kept
    (["_", " ", "a"], 0, " ", "separate"),
    (["a", " "], 2, " ", "separate"),  # no blank: one is appended (logits need the column)
    (["", "▁the", "▁a", "s", "<unk>"], 0, "▁", "prefix"),
    (["[PAD]", "the", "##s", "a"], 0, "▁", "prefix"),  # '##' BPE is converted
])
def test_label_conventions(labels, blank, boundary, style):
    norm, is_bpe = normalize_labels(labels)
    table = labels_table(norm, is_bpe)
    assert (table.blank_id, table.word_boundary, table.boundary_style) == (blank, boundary, style)
    pyctcdecode = pytest.importorskip("pyctcdecode")
    alphabet = pyctcdecode.Alphabet.build_alphabet(labels)
    assert (norm, is_bpe) == (alphabet.labels, alphabet.is_bpe)


def _peaky(table: TokenTable, ids, width=None):
    lp = np.full((len(ids), width or len(table)), -12.0, dtype=np.float32)
    lp[np.arange(len(ids)), ids] = 0.0
    return lp


def test_bpe_and_uppercase_decode_as_pyctcdecode():
    labels = ["", "▁THE", "▁C", "AT", "▁S", "<unk>"]
    d = build_ctcdecoder(labels)
    ids = [1, 0, 2, 3, 0, 4, 3, 0]  # ▁THE ▁C AT ▁S AT
    beams = d.decode_beams(_peaky(d.table, ids), beam_width=4)
    assert beams[0][0] == "THE CAT SAT"
    assert beams[0][2] == [("THE", (0, 1)), ("CAT", (2, 4)), ("SAT", (5, 7))]
    pyctcdecode = pytest.importorskip("pyctcdecode")
    assert pyctcdecode.build_ctcdecoder(labels).decode(_peaky(d.table, ids)) == "THE CAT SAT"
    assert d.decode(_peaky(d.table, [5, 0, 2, 3])) == "⁇ CAT"  # <unk> reads ▁⁇▁


def test_hotwords_raise_the_hotword(table, arpa):
    # "bat" is spelled by the acoustics 45/55 against "cat"; the LM knows only "cat" (the
    # unknown-word offset, -1 here, costs "bat" 0.5 * ln(10) nats)
    d = build_ctcdecoder(_labels(table), arpa, alpha=0.5, beta=1.0, unk_score_offset=-1.0)
    frames = ["-", "c", "a", "t", "-", "|", "s", "a", "t", "-"]
    ids = [table.blank_id if f == "-" else table.id_of(f) for f in frames]
    lp = np.log(np.full((len(ids), len(table)), 1e-6))
    lp[np.arange(len(ids)), ids] = 0.0
    row = np.full(len(table), 1e-6)
    row[table.id_of("c")], row[table.id_of("b")] = 0.55, 0.45
    lp[1] = np.log(row / row.sum())
    assert d.decode(lp).split()[0] == "cat"
    assert d.decode(lp, hotwords=["bat"]).split()[0] == "bat"
    assert d.decode(lp, hotwords=["bat run"], hotword_weight=10.0).split()[0] == "bat"
    assert d.decode(lp, hotwords=["bat"], hotword_weight=0.0).split()[0] == "cat"
    pyctcdecode = pytest.importorskip("pyctcdecode")
    theirs = pyctcdecode.build_ctcdecoder(_labels(table), arpa, alpha=0.5, beta=1.0,
                                          unk_score_offset=-1.0)
    assert theirs.decode(lp, hotwords=["bat"]).split()[0] == "bat"


def test_pools_and_pickling(table, arpa):
    d = build_ctcdecoder(_labels(table), arpa)
    _, logits = _utterances(table, 4, seed=7)
    expected = d.decode_batch(None, logits, beam_width=16)
    clone = pickle.loads(pickle.dumps(d))
    assert [clone.decode(x, beam_width=16) for x in logits] == expected
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert d.decode_batch(pool, logits, beam_width=16) == expected
        beams = d.decode_beams_batch(pool, logits, beam_width=16)
    assert [b[0][0] for b in beams] == expected and all(len(b[0]) == 4 for b in beams)


def test_save_to_dir_round_trip(table, arpa, tmp_path):
    d = build_ctcdecoder(_labels(table), arpa, alpha=0.3, beta=0.2)
    d.save_to_dir(tmp_path)
    back = BeamSearchDecoderCTC.load_from_dir(tmp_path)
    assert (back.alpha, back.beta, back.labels) == (0.3, 0.2, d.labels)
    _, logits = _utterances(table, 2, seed=9)
    assert [back.decode(x) for x in logits] == [d.decode(x) for x in logits]


def test_bad_inputs(table, arpa, tmp_path):
    labels = _labels(table)
    with pytest.raises(ValueError, match="no word boundary"):
        build_ctcdecoder(["", "a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        build_ctcdecoder(["", " ", "a", "a"])
    with pytest.raises(ValueError, match="2 blank labels"):
        build_ctcdecoder(["", " ", "<pad>", "a"])
    with pytest.raises(ValueError, match="look like BPE"):
        build_ctcdecoder(["", " ", "▁a"])
    with pytest.raises(ValueError, match="no such KenLM model file"):
        build_ctcdecoder(labels, str(tmp_path / "missing.arpa"))
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        build_ctcdecoder(labels, arpa, alpha=float("inf"))
    d = build_ctcdecoder(labels, arpa)
    with pytest.raises(ValueError, match="beta must be a finite number"):
        d.reset_params(beta=float("nan"))
    good = np.zeros((5, len(labels)), dtype=np.float32)
    with pytest.raises(ValueError, match="need 2"):
        d.decode(good[None])
    with pytest.raises(ValueError, match="vocabulary is size"):
        d.decode(good[:, :-1])
    bad = good.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or \\+inf \\(first at frame 3\\)"):
        d.decode(bad)
    with pytest.raises(ValueError, match=r"logits_list\[1\]"):
        d.decode_batch(None, [good, good[:, :-1]])
    with pytest.raises(ValueError, match="beam_width"):
        d.decode(good, beam_width=0)
    with pytest.raises(ValueError, match="beam_prune_logp"):
        d.decode(good, beam_prune_logp=1.0)
    with pytest.raises(ValueError, match="hotword_weight must be a finite number"):
        d.decode(good, hotwords=["cat"], hotword_weight=float("nan"))
    with pytest.raises(ValueError, match="lm_start_state"):
        d.decode(good, lm_start_state=object())


def test_partial_unknown_words_are_charged_at_once_as_pyctcdecode_does(table, arpa):
    """'c?t' where '?' is 80% x, 20% a: one beam keeps 'cx' unless the partial word 'cx'
    (no unigram starts with it) is charged the unknown-word penalty at once."""
    frames = ["-", "c", "?", "t", "-"]
    lp = np.log(np.full((len(frames), len(table)), 1e-6))
    for t, f in enumerate(frames):
        if f != "?":
            lp[t, table.blank_id if f == "-" else table.id_of(f)] = 0.0
    lp[2, table.id_of("x")], lp[2, table.id_of("a")] = math.log(0.8), math.log(0.2)
    ours = build_ctcdecoder(_labels(table), arpa, alpha=0.1, beta=0.0, unk_score_offset=-10.0)
    oov = ours._scorers[-1]
    assert oov.name == "oov" and oov.has_partial
    assert ours.decode(lp, beam_width=1) == "cat"
    assert ours.decode(lp, beam_width=8) == "cat"
    pyctcdecode = pytest.importorskip("pyctcdecode")
    theirs = pyctcdecode.build_ctcdecoder(_labels(table), arpa, alpha=0.1, beta=0.0,
                                          unk_score_offset=-10.0)
    assert theirs.decode(lp, beam_width=1) == "cat"

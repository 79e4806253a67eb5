"""fusion.compat.torchaudio against torchaudio's flashlight-text ctc_decoder."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusion.compat.torchaudio import CTCHypothesis, ctc_decoder  # noqa: E402
from fusion.core.simulate import SimulationConfig, simulate_posteriors  # noqa: E402
from lm.ngram import build_arpa  # noqa: E402

VOCAB = "the a cat dog sat ran on under mat big small and saw it".split()


@pytest.fixture(scope="module")
def files(tmp_path_factory, table):
    d = tmp_path_factory.mktemp("ta")
    rng = np.random.default_rng(5)
    (d / "t.txt").write_text("\n".join(" ".join(rng.choice(VOCAB, 5)) for _ in range(400)) + "\n")
    arpa = build_arpa(d / "t.txt", d / "lm.arpa", order=3)
    (d / "lexicon.txt").write_text("".join(f"{w} {' '.join(w)} |\n" for w in VOCAB))
    (d / "tokens.txt").write_text("\n".join(table.tokens) + "\n")
    return {"lm": str(arpa), "lexicon": str(d / "lexicon.txt"), "tokens": str(d / "tokens.txt")}


def _emissions(table, n=6, seed=1):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(VOCAB, size=4)) for _ in range(n)]
    cfg = SimulationConfig(confusion=0.0, noise=0.3, peak=9)  # clear cases
    lps = [simulate_posteriors(f"u{i}", t, table, rng, cfg)[0].log_probs for i, t in enumerate(texts)]
    frames = max(len(x) for x in lps)
    batch = np.full((n, frames, len(table)), -30.0, dtype=np.float32)
    batch[:, :, table.blank_id] = 0.0
    for i, x in enumerate(lps):
        batch[i, : len(x)] = x
    return texts, torch.from_numpy(batch), torch.tensor([len(x) for x in lps])


def _kwargs(table, files, lexicon=True):
    return dict(lexicon=files["lexicon"] if lexicon else None, tokens=files["tokens"],
                lm=files["lm"], beam_size=32, lm_weight=0.5 * math.log(10), word_score=1.0,
                blank_token=table.blank, sil_token="|")


@pytest.mark.parametrize("lexicon", [True, False])
def test_same_best_words_as_flashlight(table, files, lexicon):
    texts, emissions, lengths = _emissions(table)
    ours = ctc_decoder(**_kwargs(table, files, lexicon))
    hyps = ours(emissions, lengths)
    assert len(hyps) == len(texts) and all(len(h) == 1 for h in hyps)
    for text, (h,) in zip(texts, hyps):
        assert isinstance(h, CTCHypothesis) and h.tokens.dtype == torch.long
        assert h.timesteps.dtype == torch.int32 and len(h.timesteps) == len(h.tokens)
        assert h.words == text.split()
        spelled = "".join(ours.idxs_to_tokens(h.tokens)).replace("|", " ").split()
        assert spelled == text.split()
        assert ours.idxs_to_tokens(h.tokens[:1]) == ["|"]  # flashlight's paths start in silence
        assert all(a <= b for a, b in zip(h.timesteps.tolist(), h.timesteps.tolist()[1:]))
    decoder_module = pytest.importorskip("torchaudio.models.decoder")
    try:
        theirs = decoder_module.ctc_decoder(**_kwargs(table, files, lexicon))
    except (ImportError, RuntimeError) as exc:  # flashlight-text absent
        pytest.skip(f"flashlight-text: {exc}")
    for (a,), (b,) in zip(hyps, theirs(emissions, lengths)):
        if lexicon:
            assert a.words == b.words
        else:  # flashlight's lexicon-free search gives no words: compare the spelled tokens
            assert "".join(ours.idxs_to_tokens(a.tokens)).split("|") == \
                "".join(theirs.idxs_to_tokens(b.tokens)).split("|")


def test_nbest_unknown_words_and_no_lm(table, files):
    texts, emissions, lengths = _emissions(table, n=2)
    d = ctc_decoder(**{**_kwargs(table, files), "nbest": 3, "unk_score": -5.0})
    hyps = d(emissions, lengths)
    assert all(1 <= len(h) <= 3 for h in hyps)
    assert all(h[i].score >= h[i + 1].score for h in hyps for i in range(len(h) - 1))
    # a word outside the lexicon is reported as unk_word
    lex = [w for w in VOCAB if w != texts[0].split()[0]]
    path = files["lexicon"] + ".small"
    with open(path, "w") as fh:
        fh.writelines(f"{w} {' '.join(w)} |\n" for w in lex)
    d = ctc_decoder(**{**_kwargs(table, files), "lexicon": path, "unk_score": 0.0, "lm": None})
    assert d(emissions, lengths)[0][0].words[0] == "<unk>"
    free = ctc_decoder(lexicon=None, tokens=list(table.tokens), blank_token=table.blank)
    assert free(emissions, lengths)[1][0].words == texts[1].split()


def test_bad_inputs(table, files, tmp_path):
    kw = _kwargs(table, files)
    with pytest.raises(ValueError, match="no such lexicon file"):
        ctc_decoder(**{**kw, "lexicon": str(tmp_path / "none.txt")})
    with pytest.raises(ValueError, match="no such KenLM file"):
        ctc_decoder(**{**kw, "lm": str(tmp_path / "none.bin")})
    with pytest.raises(ValueError, match="blank_token '-' is not one of the tokens"):
        ctc_decoder(**{**kw, "blank_token": "-"})
    with pytest.raises(ValueError, match="lm_weight must be a finite number"):
        ctc_decoder(**{**kw, "lm_weight": float("nan")})
    with pytest.raises(ValueError, match="sil_score"):
        ctc_decoder(**{**kw, "sil_score": 1.0})
    bad = tmp_path / "lex.txt"
    bad.write_text("cat k a t |\n")
    with pytest.raises(ValueError, match="spelled 'k a t |'"):
        ctc_decoder(**{**kw, "lexicon": str(bad)})
    char_lm = tmp_path / "char.arpa"
    (tmp_path / "c.txt").write_text("c a t | s a t\n" * 20)
    build_arpa(tmp_path / "c.txt", char_lm, order=2)
    with pytest.raises(ValueError, match="token-level LM"):
        ctc_decoder(**{**kw, "lexicon": None, "lm": str(char_lm)})
    d = ctc_decoder(**kw)
    _, emissions, lengths = _emissions(table, n=1)
    with pytest.raises(ValueError, match="float32"):
        d(emissions.double())
    with pytest.raises(RuntimeError, match="3D"):
        d(emissions[0])
    with pytest.raises(ValueError, match="token columns"):
        d(emissions[:, :, :-1].contiguous())
    with pytest.raises(ValueError, match="lengths"):
        d(emissions, torch.tensor([emissions.shape[1] + 1]))
    nan = emissions.clone()
    nan[0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="utterance 0: emissions have NaN"):
        d(nan)


def test_online_decoding_ends_as_one_call(table, files):
    d = ctc_decoder(**_kwargs(table, files))
    if not hasattr(d.search, "stream"):
        pytest.skip("fusion.decoder.search has no streaming search")
    _, emissions, lengths = _emissions(table, n=1)
    whole = d(emissions, lengths)[0]
    x = emissions[0, : int(lengths[0])]
    with pytest.raises(RuntimeError, match="before decode_begin"):
        d.decode_step(x)
    d.decode_begin()
    for start in range(0, len(x), 7):
        d.decode_step(x[start:start + 7].contiguous())
    d.decode_end()
    online = d.get_final_hypothesis()
    assert [h.words for h in online] == [h.words for h in whole]
    assert online[0].score == pytest.approx(whole[0].score)
    assert online[0].timesteps.tolist() == whole[0].timesteps.tolist()

"""fusion.compat.hf: our Wav2Vec2ProcessorWithLM on a tiny random Wav2Vec2ForCTC, saved and
loaded through transformers' folder layout (nothing downloaded)."""

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from fusion.compat.hf import Wav2Vec2ProcessorWithLM, processor_labels  # noqa: E402
from fusion.compat.pyctcdecode import build_ctcdecoder  # noqa: E402
from lm.ngram import build_arpa  # noqa: E402

VOCAB = "the cat sat on a mat dog ran".split()
CHARS = sorted(set("".join(VOCAB)))


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    d = tmp_path_factory.mktemp("w2v")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    (d / "vocab.json").write_text(json.dumps(vocab))
    tok = transformers.Wav2Vec2CTCTokenizer(str(d / "vocab.json"), unk_token="<unk>",
                                            pad_token="<pad>", word_delimiter_token="|")
    fe = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000,
                                               padding_value=0.0, do_normalize=True,
                                               return_attention_mask=False)
    return transformers.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok)


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    rng = np.random.default_rng(0)
    (d / "t.txt").write_text("\n".join(" ".join(rng.choice(VOCAB, 4)) for _ in range(300)) + "\n")
    return build_arpa(d / "t.txt", d / "lm.arpa", order=2)


def _spell(processor, text, frames_per=3):
    """Peaky log-probs spelling ``text`` with the tokenizer's ids (blank between letters)."""
    vocab = processor.tokenizer.get_vocab()
    ids = []
    for ch in text.replace(" ", "|"):
        ids += [vocab[ch]] * frames_per + [vocab["<pad>"]]
    lp = np.full((len(ids), len(vocab)), -8.0, dtype=np.float32)
    lp[np.arange(len(ids)), ids] = 0.0
    return lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))


def test_labels_follow_the_tokenizer(processor):
    labels = processor_labels(processor.tokenizer)
    assert labels[:3] == ["<pad>", "<unk>", " "] and len(labels) == len(processor.tokenizer)


def test_batch_decode_on_a_random_model(processor, arpa):
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(processor.tokenizer), hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, conv_dim=(8, 8), conv_stride=(5, 4),
        conv_kernel=(10, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        pad_token_id=0)
    model = transformers.Wav2Vec2ForCTC(config).eval()
    audio = [np.random.default_rng(i).normal(size=8000).astype(np.float32) for i in range(2)]
    ours = Wav2Vec2ProcessorWithLM.from_processor(processor, str(arpa), alpha=0.5, beta=1.0)
    inputs = ours(audio, sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(inputs.input_values).logits.numpy()  # (2, T, V)
    out = ours.batch_decode(logits, beam_width=8, output_word_offsets=True)
    assert len(out.text) == len(out.logit_score) == len(out.lm_score) == len(out.word_offsets) == 2
    assert all(isinstance(t, str) for t in out.text)
    for text, offsets in zip(out.text, out.word_offsets):
        assert [o["word"] for o in offsets] == text.split()
        assert all(0 <= o["start_offset"] < o["end_offset"] <= logits.shape[1] for o in offsets)
    one = ours.decode(logits[0], beam_width=8)
    assert one.text == out.text[0] and one["lm_score"] == pytest.approx(out.lm_score[0])


def test_save_and_load_round_trip(processor, arpa, tmp_path):
    ours = Wav2Vec2ProcessorWithLM.from_processor(processor, str(arpa), alpha=0.7, beta=0.5)
    ours.save_pretrained(tmp_path)
    assert {"alphabet.json", "language_model", "vocab.json"} <= {p.name for p in tmp_path.iterdir()}
    attrs = json.loads((tmp_path / "language_model" / "attrs.json").read_text())
    assert attrs == {"alpha": 0.7, "beta": 0.5, "unk_score_offset": -10.0, "score_boundary": True}
    loaded = Wav2Vec2ProcessorWithLM.from_pretrained(tmp_path)
    assert loaded.decoder.alpha == 0.7 and loaded.decoder.labels == ours.decoder.labels
    logits = [_spell(processor, "the cat sat"), _spell(processor, "a dog ran")]  # a list: any lengths
    out = loaded.batch_decode(logits, beam_width=16, n_best=2)
    assert [hyps[0] for hyps in out.text] == ["the cat sat", "a dog ran"]
    assert all(len(h) <= 2 for h in out.text)
    # a padded batch: rows of -100 are dropped, as transformers does
    short = _spell(processor, "a cat")
    padded = np.full((2, max(len(logits[0]), len(short)), logits[0].shape[1]), -100.0, np.float32)
    padded[0, : len(logits[0])], padded[1, : len(short)] = logits[0], short
    assert ours.batch_decode(padded, beam_width=16).text == ["the cat sat", "a cat"]
    # what transformers' class loads: its own loaders and pyctcdecode's (transformers 5.25's
    # Wav2Vec2ProcessorWithLM.from_pretrained itself fails before reading anything)
    pyctcdecode = pytest.importorskip("pyctcdecode")
    assert transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(tmp_path)).get_vocab() == \
        processor.tokenizer.get_vocab()
    theirs = pyctcdecode.BeamSearchDecoderCTC.load_from_dir(str(tmp_path))
    assert theirs.decode(logits[0], beam_width=16) == "the cat sat"
    loaded2 = Wav2Vec2ProcessorWithLM.from_pretrained(tmp_path, alpha=0.2)
    assert loaded2.decoder.alpha == 0.2


def test_bad_inputs(processor, arpa, tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        Wav2Vec2ProcessorWithLM.from_pretrained(tmp_path / "missing")
    ours = Wav2Vec2ProcessorWithLM.from_processor(processor, str(arpa))
    with pytest.raises(ValueError, match="n_best"):
        ours.decode(_spell(processor, "the"), n_best=0)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        ours.decode(_spell(processor, "the"), alpha=float("nan"))
    with pytest.raises(ValueError, match="vocabulary is size"):
        ours.decode(_spell(processor, "the")[:, :-1])
    with pytest.raises(ValueError, match="not in the decoder's alphabet"):
        Wav2Vec2ProcessorWithLM(processor.feature_extractor, processor.tokenizer,
                                build_ctcdecoder(["", " ", "a"]))

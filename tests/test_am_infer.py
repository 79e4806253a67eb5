"""Posteriors for a manifest: adapters, chunked long audio, bad audio per file."""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fusion.am.features import AudioError, UtteranceError, load_audio
from fusion.am.infer import (CallableAdapter, CTCModelAdapter, HFWav2Vec2Adapter, InferenceError,
                             chunk_starts, compute_posteriors, length_batches, token_table_from_hf_vocab,
                             write_posteriors)
from fusion.am.model import (CTCModel, ModelConfig, apply_rotary, model_checkpoint, rotary_tables,
                             save_checkpoint)
from fusion.cli.am import add_parsers
from fusion.core.manifest import Utterance
from fusion.core.posteriors import Posteriors, PosteriorsReader
from fusion.core.tokens import character_table

TABLE = character_table()
TINY = ModelConfig(subsampling_channels=8, d_model=32, n_heads=2, ff_mult=2, n_layers=2,
                   conv_kernel=5, dropout=0.0)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32)


def tiny_model() -> CTCModel:
    torch.manual_seed(0)
    return CTCModel(TINY, TABLE).eval()


class LocalModel(nn.Module):
    """A model with a bounded receptive field: frames of 400 samples every 320 (20 ms)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 16, 400, stride=320)
        self.out = nn.Conv1d(16, 29, 5, padding=2)  # +-2 frames of context

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(wav.unsqueeze(1)))  # (1, N) -> (1, 16, T)
        return self.out(h).transpose(1, 2)  # (1, 29, T) -> (1, T, 29) logits


def utt(i: str, path: Path) -> Utterance:
    return Utterance(id=i, audio=str(path))


def test_chunk_starts_cover_the_audio():
    for n in (100, 16000, 160_001, 1_000_000):
        starts = chunk_starts(n, 32000, 8000, 640)
        assert starts[0] == 0 and all(s % 640 == 0 for s in starts)
        assert starts[-1] + 32000 >= n
        assert all(b - a <= 32000 - 8000 for a, b in itertools.pairwise(starts))


def test_chunked_equals_unchunked_for_a_local_model(tmp_path):
    sf.write(tmp_path / "long.wav", tone(23.3), 16000)
    ad = CallableAdapter(LocalModel(), token_table=TABLE, frame_shift=0.02, output="logits",
                         min_samples=400)
    [whole] = compute_posteriors([utt("x", tmp_path / "long.wav")], ad, chunk_seconds=60)
    [chunked] = compute_posteriors([utt("x", tmp_path / "long.wav")], ad, chunk_seconds=4,
                                   overlap_seconds=1)
    assert whole.num_frames == chunked.num_frames == (23.3 * 16000 - 400) // 320 + 1
    np.testing.assert_allclose(chunked.log_probs, whole.log_probs, atol=1e-5)


@pytest.mark.parametrize("upsample", [1, 2])
def test_chunked_conformer_matches_unchunked(tmp_path, upsample):
    # Self-attention sees the whole input, so chunks cannot be bit-identical to the whole:
    # frame counts are exact; frames agree to the tolerance below (max |diff| of the
    # probabilities), measured on this random-weight model with 3 s chunks, 1.02 s overlap.
    # With an upsampling head chunks start on encoder frames (640 samples), not on its
    # 20-ms output frames: a start between encoder frames would shift every frame.
    sf.write(tmp_path / "long.wav", tone(11.0), 16000)
    model = tiny_model()
    if upsample > 1:
        torch.manual_seed(3)
        model = CTCModel(replace(TINY, upsample=upsample), TABLE).eval()
        nn.init.normal_(model.split.proj.weight, std=0.3)
    ad = CTCModelAdapter(model)
    assert ad.stride_samples == 640
    [whole] = compute_posteriors([utt("x", tmp_path / "long.wav")], ad, chunk_seconds=60)
    [chunked] = compute_posteriors([utt("x", tmp_path / "long.wav")], ad, chunk_seconds=3,
                                   overlap_seconds=1.02)  # steps of 49.5 encoder frames, cut to 49
    assert whole.num_frames == chunked.num_frames == int(ad.model.output_lengths(11 * 100 + 1))
    assert whole.frame_shift == pytest.approx(0.04 / upsample)
    diff = np.abs(np.exp(chunked.log_probs) - np.exp(whole.log_probs))
    assert diff.max() < 0.05
    assert (chunked.log_probs.argmax(1) == whole.log_probs.argmax(1)).mean() > 0.95
    # A clip shorter than a chunk is processed whole: identical to the unchunked run.
    sf.write(tmp_path / "short.wav", tone(2.0), 16000)
    [a] = compute_posteriors([utt("s", tmp_path / "short.wav")], ad, chunk_seconds=3)
    [b] = compute_posteriors([utt("s", tmp_path / "short.wav")], ad, chunk_seconds=60)
    np.testing.assert_array_equal(a.log_probs, b.log_probs)


def test_batching_does_not_change_outputs(tmp_path):
    utts = []
    for i, sec in enumerate((0.7, 1.9, 1.2)):
        sf.write(tmp_path / f"{i}.wav", tone(sec, freq=300 + 100 * i, seed=i), 16000)
        utts.append(utt(f"u{i}", tmp_path / f"{i}.wav"))
    ad = CTCModelAdapter(tiny_model())
    batched = list(compute_posteriors(utts, ad))
    single = [next(iter(compute_posteriors([u], ad))) for u in utts]
    assert [p.utt_id for p in batched] == ["u0", "u1", "u2"]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-4)


def test_length_batches_by_hand():
    # sorted 1, 2, 2, 5, 9: [1, 2, 2] pads to 6 <= 6; 5 alone (5 * 2 > 6); 9 over the cap alone
    assert length_batches([5, 2, 9, 1, 2], 6) == [[3, 1, 4], [0], [2]]
    assert length_batches([5, 2, 9, 1, 2], 100, max_batch_size=2) == [[3, 1], [4, 0], [2]]
    assert length_batches([], 10) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=40), st.integers(1, 120), st.integers(1, 8))
def test_length_batches_cover_each_item_once_within_the_caps(lengths, cap, size):
    batches = length_batches(lengths, cap, size)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= size
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= cap
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # length-sorted: neighbours in a batch differ least


def test_fast_rotary_equals_the_reference():
    # Without gradients the rotation is one complex product; with them, the pairwise
    # formula (training's path). Same numbers to float rounding.
    torch.manual_seed(0)
    qkv = torch.randn(3, 50, 3, 4, 16).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh), as attention has it
    cos, sin = rotary_tables(50, 16, torch.device("cpu"))
    reference = apply_rotary(qkv[0], cos, sin)
    with torch.no_grad():
        fast = apply_rotary(qkv[0], cos, sin)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-6)
    # a rotation keeps each pair's length
    pairs = reference.unflatten(-1, (-1, 2)).norm(dim=-1)
    torch.testing.assert_close(pairs, qkv[0].unflatten(-1, (-1, 2)).norm(dim=-1))


def test_inference_path_equals_the_training_path():
    # CTCModelAdapter runs without gradients (fast rotary); the eval model with gradients
    # enabled takes the reference formulas: log-probs agree within 1e-5.
    model = tiny_model()
    wave = torch.from_numpy(tone(1.3))
    ad = CTCModelAdapter(model)
    [fast] = ad([wave.numpy()])
    feats = ad._logmel(wave)[None]  # (1, T, F)
    reference, _ = model(feats, torch.tensor([feats.shape[1]]))
    np.testing.assert_allclose(fast, reference[0].detach().numpy(), rtol=0, atol=1e-5)


def test_bad_audio_is_reported_per_utterance(tmp_path):
    good = tone(1.0)
    sf.write(tmp_path / "good.wav", good, 16000)
    sf.write(tmp_path / "rate8k.wav", tone(1.0, rate=8000), 8000)
    sf.write(tmp_path / "stereo.wav", np.stack([good, good], axis=1), 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(tmp_path / "tiny.wav", good[:10], 16000)
    bad_nan = good.copy()
    bad_nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", bad_nan, 16000, subtype="FLOAT")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    names = ["good", "corrupt", "rate8k", "missing", "stereo", "empty", "tiny", "nan"]
    utts = [utt(n, tmp_path / f"{n}.wav") for n in names]
    ad = CTCModelAdapter(tiny_model())
    results = dict(zip(names, compute_posteriors(utts, ad)))
    assert [r.utt_id for r in results.values()] == names
    for name in ("good", "rate8k", "stereo", "tiny"):
        assert isinstance(results[name], Posteriors), name
    assert results["rate8k"].num_frames == results["good"].num_frames
    np.testing.assert_allclose(results["stereo"].log_probs, results["good"].log_probs, atol=1e-5)
    assert results["tiny"].num_frames >= 1
    for name, reason in [("corrupt", "cannot decode"), ("missing", "not found"),
                         ("empty", "empty"), ("nan", "NaN")]:
        err = results[name]
        assert isinstance(err, AudioError) and isinstance(err, UtteranceError), name
        assert err.utt_id == name and reason in err.reason and name in str(err)
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav", utt_id="m")

    # The CLI writes the good ones, lists the bad ones and exits 1.
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model_checkpoint(tiny_model()))
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("".join(json.dumps({"id": n, "audio": f"{n}.wav"}) + "\n" for n in names))
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "post.npz"
    args = parser.parse_args(["posteriors", str(manifest), "-o", str(out), "--model", str(ckpt),
                              "--threads", "1", "--no-progress"])
    assert args.func(args) == 1
    with PosteriorsReader(out) as reader:
        assert reader.ids == ["good", "rate8k", "stereo", "tiny"]
        assert reader["good"].frame_shift == pytest.approx(0.04)
    errors = [json.loads(x) for x in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["corrupt", "missing", "empty", "nan"]


def test_model_failure_is_reported_and_the_batch_goes_on(tmp_path):
    for n, sec in (("a", 1.0), ("b", 1.5), ("c", 0.8)):
        sf.write(tmp_path / f"{n}.wav", tone(sec), 16000)
    local = LocalModel()

    def flaky(wav: torch.Tensor) -> torch.Tensor:
        if wav.shape[1] == 24000:
            raise RuntimeError("out of cheese")
        return local(wav)

    ad = CallableAdapter(flaky, token_table=TABLE, frame_shift=0.02, output="logits")
    written, errors = write_posteriors([utt(n, tmp_path / f"{n}.wav") for n in "abc"], ad,
                                       tmp_path / "p.npz")
    assert written == 2 and len(errors) == 1
    assert isinstance(errors[0], InferenceError) and errors[0].utt_id == "b"
    assert "out of cheese" in errors[0].reason


def test_callable_adapter_output_kinds(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0), 16000)
    local = LocalModel()
    u = [utt("a", tmp_path / "a.wav")]
    with torch.no_grad():
        ref = torch.log_softmax(local(torch.from_numpy(tone(1.0)).unsqueeze(0))[0], -1).numpy()
    for kind, fn in [("logits", local),
                     ("log_probs", lambda w: torch.log_softmax(local(w), -1)),
                     ("probs", lambda w: torch.softmax(local(w), -1)[0])]:
        [p] = compute_posteriors(u, fn, token_table=TABLE, frame_shift=0.02, output=kind)
        np.testing.assert_allclose(p.log_probs, ref, atol=1e-4)

    def batched(wavs: torch.Tensor, lengths: torch.Tensor):
        out = torch.cat([local(w[None, : int(n)]) for w, n in zip(wavs, lengths)])
        return out, (lengths - 400) // 320 + 1

    [p] = compute_posteriors(u, batched, token_table=TABLE, frame_shift=0.02, output="logits",
                             batched=True)
    np.testing.assert_allclose(p.log_probs, ref, atol=1e-4)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_hugging_face_wav2vec2_adapter(tmp_path, norm):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Wav2Vec2Config(
        vocab_size=29, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, conv_dim=(8, 8, 8), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer", pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(cfg)
    ad = HFWav2Vec2Adapter(model, TABLE)
    assert ad.frame_shift == pytest.approx(80 / 16000) and ad.batched == (norm == "layer")
    utts = []
    for i, sec in enumerate((1.0, 0.6)):
        sf.write(tmp_path / f"{i}.wav", tone(sec, seed=i), 16000)
        utts.append(utt(f"u{i}", tmp_path / f"{i}.wav"))
    res = list(compute_posteriors(utts, model, token_table=TABLE))
    for r, sec in zip(res, (1.0, 0.6)):
        assert isinstance(r, Posteriors)
        n = int(sec * 16000)
        assert r.num_frames == int(model._get_feat_extract_output_lengths(torch.tensor(n)))
        np.testing.assert_allclose(np.exp(r.log_probs).sum(1), 1.0, atol=1e-4)
    single = next(iter(compute_posteriors(utts[1:], ad)))
    np.testing.assert_allclose(single.log_probs, res[1].log_probs, atol=1e-4)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6}
    table = token_table_from_hf_vocab(vocab)
    assert table.blank_id == 0 and table.boundary_id == 4 and len(table) == 7

"""The Conformer CTC model: shapes, frame counts, padding, checkpoints, configs, features."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusion.am.config import ConfigError, PretrainConfig, TrainConfig, load_config, parse_overrides, to_dict
from fusion.am.features import (CMVN, CMVNAccumulator, LogMel, SpecAugment, SpecAugmentConfig,
                                num_feature_frames, random_envelope, spectral_shape, vtlp_source_bins,
                                warp_frequency)
from fusion.am.model import (CheckpointError, CTCModel, Dropout, ModelConfig, SelfAttention, load_checkpoint,
                             load_model, model_checkpoint, rotary_tables, save_checkpoint, subsampled_length)
from fusion.cli.am import add_parsers
from fusion.core.tokens import character_table

TINY = ModelConfig(subsampling_channels=8, d_model=32, n_heads=2, ff_mult=2, n_layers=2,
                   conv_kernel=5, dropout=0.0)


def tiny(**kw) -> CTCModel:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.to_dict(), **kw})
    cmvn = CMVN(torch.linspace(-1, 1, 80), torch.linspace(0.5, 2, 80))
    return CTCModel(cfg, character_table(), cmvn).eval()


def test_default_size_is_a_few_million_parameters():
    n = CTCModel(ModelConfig()).num_parameters()
    assert 3e6 <= n <= 5e6
    assert ModelConfig().frame_shift == pytest.approx(0.04)


@pytest.mark.parametrize("sub", [2, 4, 6, 8])
def test_shapes_and_frame_counts(sub):
    model = tiny(subsampling=sub)
    lengths = torch.tensor([200, 131, 57])
    feats = torch.randn(3, 200, 80)  # (B, T, F)
    with torch.no_grad():
        lp, out = model(feats, lengths)
    assert lp.shape == (3, int(subsampled_length(200, sub)), 29)
    assert out.tolist() == [subsampled_length(int(n), sub) for n in lengths]
    assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2]), atol=1e-5)
    assert model.frame_shift == pytest.approx(sub * 0.01)
    # Dropping sub*k input frames drops exactly k output frames (chunking relies on it).
    for t in (57, 131, 200):
        assert subsampled_length(t - 3 * sub, sub) == subsampled_length(t, sub) - 3


def test_upsampling_head_splits_each_encoder_frame():
    model = tiny(upsample=2)
    assert model.frame_shift == pytest.approx(0.02)
    base = tiny()  # the same encoder and head, without the split
    base.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("split.")})
    lengths = torch.tensor([200, 131, 57])
    feats = torch.randn(3, 200, 80)  # (B, T, F)
    with torch.no_grad():
        lp, out = model(feats, lengths)
        lp1, out1 = base(feats, lengths)
    assert lp.shape == (3, 2 * int(subsampled_length(200, 4)), 29)
    assert out.tolist() == [2 * subsampled_length(int(n), 4) for n in lengths]
    assert out.tolist() == [int(model.output_lengths(int(n))) for n in lengths]
    # The split starts at zero, which is frame repetition: the unsplit model's frames twice.
    torch.testing.assert_close(lp, lp1.repeat_interleave(2, dim=1))
    assert out.tolist() == (2 * out1).tolist()
    # Once trained, the halves of a frame differ.
    with torch.no_grad():
        model.split.proj.weight.normal_(0, 0.1)
        lp2, _ = model(feats, lengths)
    assert not torch.allclose(lp2[:, 0::2], lp2[:, 1::2])
    # The split is head-only: the encoder signature ignores it.
    assert model.config.encoder_signature() == base.config.encoder_signature()


@pytest.mark.parametrize("bad", [0, -2, 3, 7])
def test_upsample_must_divide_the_encoder_frame(bad):
    with pytest.raises(ValueError, match="upsample must be a positive divisor"):
        ModelConfig(upsample=bad)


def test_logmel_frame_count():
    logmel = LogMel()
    for n in (1, 100, 400, 16000, 16001, 24321):
        f = logmel(torch.randn(n))
        assert f.shape == (num_feature_frames(n), 80) == (n // 160 + 1, 80)
        assert torch.isfinite(f).all()


def test_padding_does_not_change_outputs():
    model = tiny()
    torch.manual_seed(1)
    a, b = torch.randn(1, 150, 80), torch.randn(1, 90, 80)
    batch = torch.zeros(2, 150, 80)
    batch[0], batch[1, :90] = a[0], b[0]
    with torch.no_grad():
        lp, out = model(batch, torch.tensor([150, 90]))
        la, _ = model(a, torch.tensor([150]))
        lb, nb = model(b, torch.tensor([90]))
    assert out[1] == nb[0]
    torch.testing.assert_close(lp[0], la[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lp[1, : int(nb[0])], lb[0], atol=1e-5, rtol=1e-4)


def test_spectral_shape_by_hand():
    # 4 frames of 2 bins; frame energies log(e^a + e^b): 1.31, 3.13, 5.31, -0.69 (padding
    # beyond lengths is ignored): the median of the 3 valid frames is 3.13, so frames 1 and
    # 2 are the loud ones; their mean is (3.5, 3.0), minus its bin mean 3.25.
    feats = torch.tensor([[[1.0, 0.0], [3.0, 1.0], [4.0, 5.0], [-9.0, 9.0]]])
    torch.testing.assert_close(spectral_shape(feats, torch.tensor([3])),
                               torch.tensor([[0.25, -0.25]]))
    # one frame: it is its own median
    torch.testing.assert_close(spectral_shape(feats[:, :1]), torch.tensor([[0.5, -0.5]]))


def level_steps(frames: int = 60, bins: int = 80) -> torch.Tensor:
    """``(1, T, D)`` features whose frames differ mostly in level (1 nat apart), so that
    a smooth gain per bin leaves the order of their energies, and the loud half, alone."""
    g = torch.Generator().manual_seed(3)
    pattern = torch.randn(bins, generator=g)
    levels = torch.randperm(frames, generator=g).float()
    return (pattern + levels[:, None] + 0.01 * torch.randn(frames, bins, generator=g))[None]


def test_shape_norm_removes_a_fixed_spectral_colour():
    """With ``shape_norm`` the model reads an utterance the same through any equaliser
    (a gain per mel bin, the same in every frame, of mean 0: the loudness stays the
    model's to read); without, it does not."""
    feats = level_steps()
    coloured = feats + torch.linspace(1.25, -1.25, 80)  # a tilt: treble cut by 2.5 nats
    lengths = torch.tensor([60])
    normed = tiny(shape_norm=True)
    assert normed.state_dict()["shape_ref"].shape == (80,)
    with torch.no_grad():
        torch.testing.assert_close(normed(coloured, lengths)[0], normed(feats, lengths)[0],
                                   atol=1e-4, rtol=1e-4)
        plain = tiny()
        assert not torch.allclose(plain(coloured, lengths)[0], plain(feats, lengths)[0], atol=1e-2)
    # the normalised features carry the reference's shape
    ref = torch.linspace(0.3, -0.3, 80)
    model = CTCModel(replace(TINY, shape_norm=True), shape_ref=ref)
    torch.testing.assert_close(spectral_shape(model.normalize_shape(coloured, lengths)), ref[None],
                               atol=1e-4, rtol=1e-4)


def test_shape_norm_leaves_padding_and_batch_mates_alone():
    model = tiny(shape_norm=True)
    a, b = level_steps(60), 2.0 + level_steps(40)
    batch = torch.zeros(2, 60, 80)
    batch[0], batch[1, :40] = a[0], b[0]
    normed = model.normalize_shape(batch, torch.tensor([60, 40]))
    assert torch.equal(normed[1, 40:], batch[1, 40:])  # padding untouched
    torch.testing.assert_close(normed[1, :40], model.normalize_shape(b, torch.tensor([40]))[0])
    with torch.no_grad():
        lp, _ = model(batch, torch.tensor([60, 40]))
        lb, nb = model(b, torch.tensor([40]))
    torch.testing.assert_close(lp[1, : int(nb[0])], lb[0], atol=1e-5, rtol=1e-4)


def test_shape_norm_off_changes_nothing_and_adds_no_state():
    model = tiny()
    x = torch.randn(1, 50, 80)
    assert model.normalize_shape(x, torch.tensor([50])) is x
    assert "shape_ref" not in model.state_dict()
    with pytest.raises(ValueError, match="without shape_norm"):
        CTCModel(TINY, shape_ref=torch.zeros(80))
    with pytest.raises(ValueError, match=r"shape \(80,\)"):
        CTCModel(replace(TINY, shape_norm=True), shape_ref=torch.zeros(40))
    # the encoder of one loads into the other: shape_norm is not an architecture change
    assert replace(TINY, shape_norm=True).encoder_signature() == TINY.encoder_signature()


def test_shape_reference_travels_in_the_checkpoint(tmp_path):
    ref = torch.linspace(-0.5, 0.5, 80)
    model = CTCModel(replace(TINY, shape_norm=True), character_table(), shape_ref=ref).eval()
    save_checkpoint(tmp_path / "m.pt", model_checkpoint(model))
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config.shape_norm and torch.equal(loaded.shape_ref, ref)
    x = level_steps()
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([60]))[0], model(x, torch.tensor([60]))[0])


def test_dropout_rate_scale_and_modes():
    x = torch.ones(1000, 1000)
    drop = Dropout(0.1)
    torch.manual_seed(0)
    y = drop(x)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(26 / 256, abs=2e-3)  # 0.1 rounds to 26/256
    assert y.unique().tolist() == [0.0, pytest.approx(256 / 230)]  # kept ones scaled by 1/P(keep)
    assert float(y.mean()) == pytest.approx(1.0, abs=5e-3)  # inverted: the mean is kept
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.001).train()(x) is x  # rounds to 0/256: nothing dropped
    w = torch.randn(7, 5, requires_grad=True)
    out = Dropout(0.5)(w)
    out.sum().backward()
    assert torch.equal(w.grad, torch.where(out == 0, 0.0, 2.0))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_attention_explicit_path_equals_fused_kernel():
    """The training path (explicit softmax, for weight dropout) computes what the
    fused kernel does, padding mask included."""
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, dropout=0.1)
    x = torch.randn(2, 9, 32)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    rope = rotary_tables(9, 8, torch.device("cpu"))
    attn.eval()
    fused = attn(x, mask, rope)
    attn.train()
    attn.drop.p = 0.0  # the output dropout off; weight dropout kept but passing all
    attn.weight_drop.forward = lambda w: w
    torch.testing.assert_close(attn(x, mask, rope), fused, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_keeps_float32_log_probs():
    model = tiny()
    x = torch.randn(2, 120, 80)
    with torch.no_grad():
        ref, _ = model(x, torch.tensor([120, 100]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp, _ = model(x, torch.tensor([120, 100]))
    assert lp.dtype == torch.float32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, lp.shape[1]), atol=1e-5)
    assert float((lp.argmax(-1) == ref.argmax(-1)).float().mean()) > 0.9


def test_checkpoint_round_trip_weights_only(tmp_path):
    model = tiny(subsampling=6)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model_checkpoint(model))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "asrfuse-am" and raw["kind"] == "ctc"
    assert raw["config"] == model.config.to_dict()
    assert raw["token_table"] == character_table().to_dict()
    assert set(raw["cmvn"]) == {"mean", "std"}
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.token_table == model.token_table
    torch.testing.assert_close(loaded.cmvn_mean, model.cmvn_mean)
    x = torch.randn(2, 120, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([120, 100]))[0],
                           model(x, torch.tensor([120, 100]))[0])


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_load_model_refuses_pickled_code_and_foreign_files(tmp_path):
    model = tiny()
    evil = model_checkpoint(model, note=_Payload())
    path = tmp_path / "evil.pt"
    torch.save(evil, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(path)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an asrfuse-am"):
        load_model(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip or a pickle")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "missing.pt")


def test_cmvn_accumulator_matches_torch():
    torch.manual_seed(0)
    a, b = torch.randn(100, 80) * 3 + 1, torch.randn(37, 80) * 2 - 4
    acc = CMVNAccumulator()
    acc.add(a)
    acc.add(b)
    cmvn = acc.finish()
    both = torch.cat([a, b])
    torch.testing.assert_close(cmvn.mean, both.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cmvn.std, both.std(0, unbiased=False), atol=1e-4, rtol=1e-4)


def test_specaugment_only_in_training():
    aug = SpecAugment(SpecAugmentConfig(time_max_ratio=0.2))
    x = torch.randn(3, 200, 80) + 5
    aug.eval()
    assert torch.equal(aug(x), x)
    aug.train()
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and (y == 0).any() and not torch.equal(x, y)


def test_vtlp_warp_by_hand():
    # alpha 1.25 over 11 bins (0..10): boundary 0.8 * 10 / 1.25 = 6.4 source -> 8.0 output;
    # below, source = j / 1.25; above, 6.4 + (j - 8) * (10 - 6.4) / (10 - 8)
    src = vtlp_source_bins(torch.tensor([1.25, 1.0, 0.8]), 11)
    torch.testing.assert_close(src[0], torch.tensor(
        [0, 0.8, 1.6, 2.4, 3.2, 4.0, 4.8, 5.6, 6.4, 8.2, 10.0]))
    torch.testing.assert_close(src[1], torch.arange(11.0))  # no warp
    # alpha 0.8: boundary 8 source -> 6.4 output, then (6.4, 8) .. (10, 10)
    torch.testing.assert_close(src[2, :7], torch.tensor([0, 1.25, 2.5, 3.75, 5, 6.25, 7.5]))
    assert src[2, -1] == 10 and bool((src[2].diff() > 0).all())
    ramp = torch.arange(11.0).expand(2, 3, 11)  # feature value = its bin
    warped = warp_frequency(ramp, torch.tensor([1.25, 1.0]))
    torch.testing.assert_close(warped[0, 1], src[0])  # linear interpolation is exact on a ramp
    torch.testing.assert_close(warped[1], ramp[1])


def test_specaugment_freq_warp_only_in_training():
    aug = SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=0, freq_warp=0.1))
    x = torch.randn(4, 50, 80)
    assert torch.equal(aug.eval()(x), x)
    torch.manual_seed(0)
    y = aug.train()(x)
    assert y.shape == x.shape and not torch.equal(x, y)
    torch.testing.assert_close(y[..., 0], x[..., 0])  # the axis' ends stay put
    torch.testing.assert_close(y[..., -1], x[..., -1])


def test_random_envelope_by_hand():
    torch.manual_seed(3)
    knots = (2 * torch.rand(2, 4) - 1) * 6.0  # the gains random_envelope draws, in dB
    torch.manual_seed(3)
    env = random_envelope(2, 10, 6.0, 4)  # knots on bins 0, 3, 6 and 9
    assert env.shape == (2, 10) and float(env.abs().max()) <= 6.0
    torch.testing.assert_close(env[:, ::3], knots)
    torch.testing.assert_close(env[:, 1], knots[:, 0] + (knots[:, 1] - knots[:, 0]) / 3)
    torch.testing.assert_close(env[:, 8], knots[:, 2] + (knots[:, 3] - knots[:, 2]) * 2 / 3)


def test_specaugment_envelope_is_one_gain_per_bin():
    cfg = SpecAugmentConfig(freq_masks=0, time_masks=0, envelope_db=10.0, envelope_knots=5)
    aug = SpecAugment(cfg)
    x = torch.randn(3, 40, 80)
    std = torch.full((80,), 2.0)
    assert torch.equal(aug.eval()(x, feature_std=std), x)
    torch.manual_seed(1)
    y = aug.train()(x, feature_std=std)
    torch.manual_seed(1)
    expected = random_envelope(3, 80, 10.0, 5) * math.log(10) / 10 / 2.0  # dB -> nats -> /std
    diff = y - x
    torch.testing.assert_close(diff, expected[:, None, :].expand_as(diff), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(diff[0, 0], diff[1, 0])  # each utterance its own curve


def test_model_envelope_is_in_decibels_of_the_raw_features():
    # the model hands its CMVN std to the augmenter: a gain of g dB on the normalised
    # features equals g dB (g * ln 10 / 10 nats) on the log-mel energies it was given
    model = tiny()  # CMVN std 0.5 .. 2
    aug = SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=0, envelope_db=8.0)).train()
    feats, lengths = torch.randn(2, 60, 80), torch.tensor([60, 45])
    torch.manual_seed(2)
    out, _ = model(feats, lengths, augment=aug)
    torch.manual_seed(2)
    coloured = feats + (random_envelope(2, 80, 8.0, 6) * math.log(10) / 10)[:, None, :]
    torch.testing.assert_close(out, model(coloured, lengths)[0], atol=1e-4, rtol=1e-4)


def test_specaugment_options_off_draw_no_randomness():
    # runs trained before the envelope existed resume exactly: an option at 0 draws nothing
    x = torch.randn(2, 30, 80)
    for cfg in [SpecAugmentConfig(freq_masks=0, time_masks=0),
                SpecAugmentConfig(freq_masks=0, time_masks=0, envelope_knots=9)]:
        torch.manual_seed(5)
        assert torch.equal(SpecAugment(cfg).train()(x), x)
        after = torch.rand(1)
        torch.manual_seed(5)
        assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("recipe", sorted(
    (Path(__file__).parents[1] / "benchmarks/lab/am-default/recipe").glob("*.toml")),
    ids=lambda p: p.name)
def test_committed_recipes_are_valid_configs(recipe):
    # each stage's recipe must still load, so that the model card's commands rerun
    cfg = load_config(TrainConfig, recipe)
    assert cfg.optim.lr > 0 and cfg.model.d_model > 0


def test_toml_config(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[model]\nn_layers = 3\nsubsampling = 8\n[optim]\nlr = 1e-3\n'
                    'betas = [0.9, 0.99]\n[run]\nnum_threads = 1\n')
    cfg = load_config(TrainConfig, good)
    assert cfg.model.n_layers == 3 and cfg.model.subsampling == 8 and cfg.optim.betas == (0.9, 0.99)
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.99]
    for text, match in [("[model]\nlayers = 3\n", "unknown key"),
                        ("[modle]\nn_layers = 3\n", "unknown key"),
                        ("[model]\nn_layers = 'three'\n", "integer"),
                        ("[model]\nsubsampling = 5\n", "subsampling"),
                        ("[optim]\nschedule = 'linear'\n", "schedule"),
                        ("[run]\nprecision = 'fp16'\n", "run.precision"),
                        ("[specaug]\nfreq_warp = 0.7\n", "freq_warp"),
                        ("[specaug]\nenvelope_db = -3.0\n", "envelope_db"),
                        ("[specaug]\nenvelope_knots = 1\n", "envelope_knots"),
                        ("[model]\nshape_norm = 'yes'\n", "shape_norm"),
                        ("model = [", "invalid TOML")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_config(TrainConfig, bad)
    assert load_config(PretrainConfig, None, {"bestrq": {"mask_span": 4}}).bestrq.mask_span == 4
    assert parse_overrides(["optim.lr=2e-3", "run.seed=3"]) == {"optim": {"lr": 2e-3}, "run": {"seed": 3}}


def test_cli_rejects_bad_config(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nsteps = 3\n")
    man = tmp_path / "m.jsonl"
    man.write_text("")
    args = parser.parse_args(["train", "--train", str(man), "--out", str(tmp_path / "o"),
                              "--config", str(cfg)])
    assert args.func(args) == 2
    assert "unknown key" in capsys.readouterr().err


def test_checkpoint_save_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"format": "asrfuse-am", "version": 1, "kind": "ctc"})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"x": Boom()})
    assert load_checkpoint(path)["kind"] == "ctc"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_prefer_jemalloc_restarts_training_and_transcribing_only(monkeypatch):
    from fusion.run import allocator as am_cli

    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))

    monkeypatch.setattr(am_cli.ctypes.util, "find_library",
                        lambda name: "libjemalloc.so.2" if name == "jemalloc" else None)
    argv = ["/venv/bin/python", "/venv/bin/fusion", "train", "--out", "am"]
    env = {"PATH": "/bin", "LD_PRELOAD": "libfoo.so"}
    assert am_cli.prefer_jemalloc("train", environ=env, argv=argv, execve=execve)
    path, args, new_env = calls.pop()
    assert args[1:] == argv[1:] and path == args[0]
    assert new_env == {"PATH": "/bin", "LD_PRELOAD": "libjemalloc.so.2:libfoo.so",
                       "MALLOC_CONF": "background_thread:true"}
    assert env["LD_PRELOAD"] == "libfoo.so"  # the caller's mapping is left alone
    # transcribe too; a MALLOC_CONF given is kept
    assert am_cli.prefer_jemalloc("transcribe", environ={**env, "MALLOC_CONF": "narenas:1"},
                                  argv=argv, execve=execve)
    assert calls.pop()[2]["MALLOC_CONF"] == "narenas:1"
    # not again once preloaded, not for other commands, not when opted out
    for command, environ in [("train", new_env), ("decode", env), ("posteriors", env),
                             ("pretrain", {**env, "FUSION_MALLOC": "system"})]:
        assert not am_cli.prefer_jemalloc(command, environ=environ, argv=argv, execve=execve)
    monkeypatch.setattr(am_cli.ctypes.util, "find_library", lambda name: None)
    assert not am_cli.prefer_jemalloc("pretrain", environ=env, argv=argv, execve=execve)
    assert not calls

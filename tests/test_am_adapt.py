"""Single-utterance test-time adaptation (fusion.am.adapt)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.am.adapt import AdaptConfig, TestTimeAdapter, adaptable_parameters, suta_loss
from fusion.am.features import LogMel
from fusion.am.infer import CTCModelAdapter, compute_posteriors
from fusion.am.model import CTCModel, ModelConfig, model_checkpoint, save_checkpoint
from fusion.cli.am import adapt_config_from_args, add_adapt_arguments, add_parsers
from fusion.core.manifest import Utterance
from fusion.core.posteriors import PosteriorsReader
from fusion.core.tokens import character_table

TABLE = character_table()
TINY = ModelConfig(subsampling_channels=8, d_model=32, n_heads=2, ff_mult=2, n_layers=2,
                   conv_kernel=5, dropout=0.0)


def tiny_model(seed: int = 0) -> CTCModel:
    torch.manual_seed(seed)
    return CTCModel(TINY, TABLE).eval()


def feats(seconds: float, seed: int = 0) -> torch.Tensor:
    """Log-mel ``(T, 80)`` of a noisy tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wav = 0.3 * np.sin(2 * np.pi * (200 + 300 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    return LogMel(80)(torch.from_numpy(wav.astype(np.float32)))


def plain(model: CTCModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        log_probs, _ = model(x[None], torch.tensor([x.shape[0]]))
    return log_probs[0]


# -- the loss -----------------------------------------------------------------------------

def test_suta_loss_by_hand():
    # Two frames over three tokens (blank 0); temperature 1.
    p = torch.tensor([[0.1, 0.6, 0.3], [0.8, 0.1, 0.1]])
    lp = p.log()
    # Entropy of the one non-blank frame (frame 0).
    h0 = -(0.1 * math.log(0.1) + 0.6 * math.log(0.6) + 0.3 * math.log(0.3))
    # C = P^T P, rows normalised; MCC = off-diagonal mass / V.
    c = (p.T @ p).numpy()
    c = c / c.sum(1, keepdims=True)
    mcc = (c.sum() - np.trace(c)) / 3
    got = suta_loss(lp, 0, temperature=1.0, entropy_weight=0.25)
    assert float(got) == pytest.approx(0.25 * h0 + 0.75 * mcc, rel=1e-5)
    assert float(suta_loss(lp, 0, temperature=1.0, entropy_weight=1.0)) == pytest.approx(h0, rel=1e-5)


def test_suta_loss_all_blank_frames_has_no_entropy_term():
    lp = torch.tensor([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1]]).log()
    assert float(suta_loss(lp, 0, temperature=1.0, entropy_weight=1.0)) == 0.0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 4.0))
def test_suta_loss_is_finite_and_non_negative(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(12, 5, generator=g).mul(3).log_softmax(-1)
    loss = suta_loss(lp, 0, temperature=temperature, entropy_weight=0.3)
    assert math.isfinite(float(loss)) and float(loss) >= 0


def test_suta_loss_refuses_a_batch():
    with pytest.raises(ValueError, match="must be \\(T, V\\)"):
        suta_loss(torch.zeros(1, 4, 5), 0, temperature=1.0, entropy_weight=1.0)


# -- parameter groups -----------------------------------------------------------------------

def test_parameter_groups():
    model = tiny_model()
    norm = adaptable_parameters(model, ["norm"])
    front = adaptable_parameters(model, ["frontend"])
    assert norm and front and not set(norm) & set(front)
    modules = dict(model.named_modules())
    for name in norm:
        assert isinstance(modules[name.rsplit(".", 1)[0]], torch.nn.LayerNorm)
    assert all(n.startswith("encoder.subsample.") for n in front)
    both = adaptable_parameters(model, ["norm", "frontend"])
    assert set(both) == set(norm) | set(front)
    assert list(adaptable_parameters(model, ["all"])) == [n for n, _ in model.named_parameters()]


# -- the adapter --------------------------------------------------------------------------

def test_zero_steps_is_the_plain_model():
    model = tiny_model()
    x = feats(2.0)
    result = TestTimeAdapter(model, AdaptConfig(steps=0))(x)
    assert not result.adapted
    torch.testing.assert_close(result.log_probs, plain(model, x), rtol=0, atol=0)


def test_short_utterances_are_not_adapted():
    model = tiny_model()
    x = feats(1.0)
    result = TestTimeAdapter(model, AdaptConfig(steps=3, min_seconds=1.5))(x)
    assert not result.adapted
    torch.testing.assert_close(result.log_probs, plain(model, x), rtol=0, atol=0)


def test_adaptation_lowers_its_loss_changes_the_output_and_forgets():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = TestTimeAdapter(model, AdaptConfig(steps=6, lr=3e-3, min_seconds=0))
    x = feats(2.0)
    first = adapter(x)
    assert first.adapted and len(first.losses) == 6
    assert first.losses[-1] < first.losses[0]
    assert not torch.allclose(first.log_probs, plain(model, x))
    # The caller's model is untouched, and the adapter starts every utterance afresh.
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    adapter(feats(3.0, seed=1))
    again = adapter(x)
    torch.testing.assert_close(again.log_probs, first.log_probs, rtol=0, atol=0)
    assert again.losses == first.losses


def test_only_the_chosen_groups_move(monkeypatch):
    model = tiny_model()
    adapter = TestTimeAdapter(model, AdaptConfig(steps=2, lr=1e-2, params=("norm",),
                                                 min_seconds=0))
    seen = {}
    restore = adapter._restore

    def snapshot() -> None:  # the weights as adapted, before they are put back
        seen.update({k: v.clone() for k, v in adapter.model.state_dict().items()})
        restore()

    monkeypatch.setattr(adapter, "_restore", snapshot)
    adapter(feats(2.0))
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, seen[k])}
    assert moved and moved <= set(adapter.parameter_names)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[k.rsplit(".", 1)[0]], torch.nn.LayerNorm) for k in moved)


def test_history_holds_each_step():
    model = tiny_model()
    cfg = AdaptConfig(steps=3, lr=3e-3, min_seconds=0)
    x = feats(2.0)
    result = TestTimeAdapter(model, cfg, keep_history=True)(x)
    assert len(result.history) == 4
    torch.testing.assert_close(result.history[0], plain(model, x))
    torch.testing.assert_close(result.history[-1], result.log_probs, rtol=0, atol=0)
    for k in (1, 2):  # k steps with history == a k-step adapter's output
        alone = TestTimeAdapter(model, AdaptConfig(steps=k, lr=3e-3, min_seconds=0))(x)
        torch.testing.assert_close(result.history[k], alone.log_probs)
    assert TestTimeAdapter(model, cfg)(x).history == ()


def test_mix_blends_the_plain_and_adapted_posteriors():
    model = tiny_model()
    x = feats(2.0)
    kw = dict(steps=2, lr=1e-2, min_seconds=0)
    adapted = TestTimeAdapter(model, AdaptConfig(**kw))(x).log_probs
    mixed = TestTimeAdapter(model, AdaptConfig(mix=0.25, **kw), keep_history=True)(x)
    expected = torch.log(0.75 * plain(model, x).exp() + 0.25 * adapted.exp())
    torch.testing.assert_close(mixed.log_probs, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.history[-1], mixed.log_probs, rtol=0, atol=0)
    torch.testing.assert_close(mixed.history[0], plain(model, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.log_probs.exp().sum(-1), torch.ones(mixed.log_probs.shape[0]))


def test_adapter_refuses_bad_features():
    with pytest.raises(ValueError, match="must be \\(T, n_mels\\)"):
        TestTimeAdapter(tiny_model(), AdaptConfig(steps=1))(torch.zeros(1, 50, 80))


def test_batch_equals_each_utterance_alone(tmp_path):
    model = tiny_model()
    cfg = AdaptConfig(steps=3, lr=3e-3, min_seconds=0)
    ad = CTCModelAdapter(model, cfg)
    utts = []
    for i, sec in enumerate((1.7, 2.6, 2.1)):
        t = np.arange(int(sec * 16000)) / 16000
        wav = (0.3 * np.sin(2 * np.pi * (250 + 90 * i) * t)).astype(np.float32)
        sf.write(tmp_path / f"{i}.wav", wav, 16000)
        utts.append(Utterance(id=str(i), audio=str(tmp_path / f"{i}.wav")))
    batched = list(compute_posteriors(utts, ad))
    for u, b in zip(utts, batched):
        [one] = compute_posteriors([u], model, adapt=cfg)
        np.testing.assert_array_equal(one.log_probs, b.log_probs)
    plain_out = list(compute_posteriors(utts, model))
    assert not np.allclose(plain_out[0].log_probs, batched[0].log_probs)
    off = list(compute_posteriors(utts, model, adapt=AdaptConfig(steps=0)))
    for a, b in zip(off, plain_out):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)


# -- configuration and bad input --------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"steps": -1}, "steps must be a whole number"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lr": float("nan")}, "lr must be > 0"),
    ({"params": ("norm", "heads")}, "unknown group.*'heads'"),
    ({"params": ()}, "name at least one"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"entropy_weight": 1.5}, "entropy_weight must be in"),
    ({"min_seconds": -1.0}, "min_seconds must be >= 0"),
    ({"mix": 0.0}, "mix must be in \\(0, 1\\]"),
    ({"mix": 1.5}, "mix must be in \\(0, 1\\]"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptConfig(**kwargs)


def test_config_from_data_and_strings():
    cfg = AdaptConfig.from_dict({"steps": 4, "params": ["frontend"], "lr": 1e-3})
    assert cfg == AdaptConfig(steps=4, params=("frontend",), lr=1e-3)
    assert AdaptConfig.from_dict(cfg.to_dict()) == cfg
    assert AdaptConfig(params="norm+frontend").params == ("norm", "frontend")
    with pytest.raises(ValueError, match="unknown key\\(s\\) step;"):
        AdaptConfig.from_dict({"step": 4})


def test_cli_flags():
    p = argparse.ArgumentParser()
    add_adapt_arguments(p)
    assert adapt_config_from_args(p.parse_args([])) is None
    cfg = adapt_config_from_args(p.parse_args(["--adapt-steps", "3", "--adapt-params", "norm"]))
    assert cfg == AdaptConfig(steps=3, params=("norm",))
    with pytest.raises(ValueError, match="unknown group"):
        adapt_config_from_args(p.parse_args(["--adapt-steps", "3", "--adapt-params", "convs"]))


def one_utterance(tmp_path) -> tuple[str, argparse.ArgumentParser]:
    """A manifest of one 2.5-s tone (``a``), and the ``fusion posteriors`` parser."""
    wav = (0.2 * np.sin(np.arange(40000) / 7)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wav, 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio": "a.wav"}\n')
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    return str(manifest), parser


def test_posteriors_cli_refuses_adaptation_of_a_foreign_model(tmp_path, capsys):
    manifest, parser = one_utterance(tmp_path)
    args = parser.parse_args(["posteriors", manifest, "-o", str(tmp_path / "p.npz"),
                              "--hf-model", str(tmp_path), "--adapt-steps", "2",
                              "--no-progress"])
    assert args.func(args) != 0
    assert "--adapt-steps works with our own models" in capsys.readouterr().err


def test_posteriors_cli_adapts(tmp_path):
    model = tiny_model()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model_checkpoint(model))
    manifest, parser = one_utterance(tmp_path)
    outs = {}
    for steps in ("0", "2"):
        out = tmp_path / f"p{steps}.npz"
        args = parser.parse_args(["posteriors", manifest, "-o", str(out), "--model",
                                  str(ckpt), "--adapt-steps", steps, "--adapt-min-seconds", "0",
                                  "--adapt-lr", "0.01", "--no-progress"])
        assert args.func(args) == 0
        with PosteriorsReader(out) as reader:
            outs[steps] = reader["a"].log_probs
    assert outs["0"].shape == outs["2"].shape
    assert not np.allclose(outs["0"], outs["2"])


def test_demo_adapts_and_refuses_bad_settings(tmp_path, capsys):
    from fusion.cli.main import main

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model_checkpoint(tiny_model()))
    with (tmp_path / "m.jsonl").open("w") as fh:
        for i in range(2):
            wav = 0.2 * np.sin(2 * np.pi * (300 + 200 * i) * np.arange(32000) / 16000)
            sf.write(tmp_path / f"{i}.wav", wav.astype(np.float32), 16000)
            fh.write(f'{{"id": "u{i}", "audio": "{i}.wav", "text": "a cat"}}\n')
    base = ["demo", "--manifest", str(tmp_path / "m.jsonl"), "--model", str(ckpt), "--lm", "none",
            "--show", "0"]
    assert main(base + ["--adapt-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 steps of test-time adaptation" in out and "utterances 2" in out
    assert main(base + ["--adapt-steps", "2", "--adapt-lr", "-1"]) != 0
    assert "adapt lr must be > 0" in capsys.readouterr().err
    no_model = ["demo", "--manifest", str(tmp_path / "m.jsonl"), "--model", str(tmp_path / "none.pt"),
                "--lm", "none", "--adapt-steps", "2"]
    assert main(no_model) != 0  # an explicit model that is not there is an error, adapted or not
    assert "none.pt: no such acoustic model" in capsys.readouterr().err
    simulated = ["demo", "--manifest", str(tmp_path / "m.jsonl"), "--simulate", "--lm", "none",
                 "--adapt-steps", "2"]
    assert main(simulated) != 0
    assert "--adapt/--adapt-steps adapts an acoustic model: not with --simulate" in capsys.readouterr().err


def test_long_audio_is_adapted_chunk_by_chunk(tmp_path):
    t = np.arange(7 * 16000) / 16000
    sf.write(tmp_path / "long.wav", (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000)
    u = [Utterance(id="long", audio=str(tmp_path / "long.wav"))]
    model = tiny_model()
    [plain_out] = compute_posteriors(u, model, chunk_seconds=3, overlap_seconds=1)
    [adapted] = compute_posteriors(u, model, chunk_seconds=3, overlap_seconds=1,
                                   adapt=AdaptConfig(steps=2, lr=1e-2, min_seconds=0))
    assert adapted.log_probs.shape == plain_out.log_probs.shape
    assert np.isfinite(adapted.log_probs).all()
    assert not np.allclose(adapted.log_probs, plain_out.log_probs)

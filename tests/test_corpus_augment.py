"""Augmentation: SNR, speed factor, telephone band, reverberation, determinism."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torchaudio.functional as AF
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.corpus.augment import (
    AugmentConfig,
    RoomConfig,
    add_noise,
    apply_augmentation,
    babble_noise,
    colored_noise,
    draw_room,
    measured_rt60,
    plan_augmentation,
    reverberate,
    room_impulse_response,
    room_rir,
    speed_perturb,
    telephone,
)
from fusion.corpus.synth import trim_silence

RATE = 16_000


def _speechlike(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A harmonic-rich tone with a syllable-rate envelope (energy up to 8 kHz)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * RATE)) / RATE
    tone = sum(torch.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 50))
    envelope = 0.6 + 0.4 * torch.sin(2 * math.pi * 4 * t)
    return 0.3 * tone * envelope + 0.01 * torch.randn(t.numel(), generator=g)


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    noise = noisy - clean
    return 10 * math.log10(clean.pow(2).sum().item() / noise.pow(2).sum().item())


@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_added_noise_reaches_requested_snr(kind: str, snr: float) -> None:
    clean = _speechlike()
    noise = colored_noise(kind, clean.numel(), torch.Generator().manual_seed(1))
    assert _snr_db(clean, add_noise(clean, noise, snr)) == pytest.approx(snr, abs=0.05)


def test_babble_noise_snr_and_length() -> None:
    g = torch.Generator().manual_seed(0)
    talkers = [_speechlike(0.3, seed=i) for i in range(4)]  # shorter than the utterance
    clean = _speechlike(1.0, seed=9)
    babble = babble_noise(talkers, clean.numel(), g)
    assert babble.shape == clean.shape
    assert _snr_db(clean, add_noise(clean, babble, 5.0)) == pytest.approx(5.0, abs=0.05)
    with pytest.raises(ValueError, match="at least one talker"):
        babble_noise([], 10, g)


def test_noise_colours_have_their_spectral_slopes() -> None:
    g = torch.Generator().manual_seed(0)
    n = 2**16

    def low_to_high(kind: str) -> float:
        power = torch.fft.rfft(colored_noise(kind, n, g)).abs().pow(2)
        edges = [round(f * power.numel()) for f in (0.01, 0.02, 0.5, 1.0)]
        return (power[edges[0] : edges[1]].mean() / power[edges[2] : edges[3]].mean()).item()

    white, pink, brown = low_to_high("white"), low_to_high("pink"), low_to_high("brown")
    assert 0.7 < white < 1.4
    assert 10 < pink < 100  # 1/f: about 50x between these bands
    assert brown > 20 * pink
    with pytest.raises(ValueError, match="unknown noise kind"):
        colored_noise("purple", 10, g)


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_changes_length_by_the_factor(factor: float) -> None:
    clean = _speechlike(2.0)
    out = speed_perturb(clean, RATE, factor)
    assert out.numel() == pytest.approx(clean.numel() / factor, abs=2)


def _energy_above(samples: torch.Tensor, hz: float) -> float:
    power = torch.fft.rfft(samples).abs().pow(2)
    freqs = torch.fft.rfftfreq(samples.numel(), 1 / RATE)
    return (power[freqs > hz].sum() / power.sum()).item()


def _energy_below(samples: torch.Tensor, hz: float) -> float:
    power = torch.fft.rfft(samples).abs().pow(2)
    return (power[torch.fft.rfftfreq(samples.numel(), 1 / RATE) < hz].sum() / power.sum()).item()


def test_telephone_band_limits() -> None:
    clean = _speechlike(1.0) + 0.05 * colored_noise("white", RATE, torch.Generator().manual_seed(2))
    narrow = telephone(clean, RATE)
    assert narrow.shape == clean.shape
    assert _energy_above(clean, 4000) > 0.02
    assert _energy_above(narrow, 4000) < 1e-3 * _energy_above(clean, 4000)
    # Below 300 Hz the band-pass cuts the 150 Hz fundamental.
    assert _energy_below(narrow, 200) < 0.2 * _energy_below(clean, 200)


def test_reverb_keeps_length_and_level_and_smears_energy() -> None:
    g = torch.Generator().manual_seed(0)
    rir = room_impulse_response(RATE, rt60=0.5, drr_db=0.0, generator=g)
    assert rir[0] == 1.0 and rir.numel() == RATE // 2
    assert rir[1:].pow(2).sum().item() == pytest.approx(1.0, rel=1e-4)  # DRR of 0 dB
    click = torch.zeros(RATE)
    click[100] = 1.0
    wet = reverberate(click, rir)
    assert wet.shape == click.shape
    assert wet.pow(2).mean().item() == pytest.approx(click.pow(2).mean().item(), rel=1e-4)
    assert wet[1000:].abs().max() > 0  # a tail after the click


def test_plan_augmentation_fraction_and_json() -> None:
    rng = random.Random(0)
    config = AugmentConfig(fraction=0.3)
    plans = [plan_augmentation(rng, config) for _ in range(2000)]
    share = sum(bool(p) for p in plans) / len(plans)
    assert share == pytest.approx(0.3, abs=0.04)
    kinds = {op["type"] for plan in plans for op in plan}
    assert kinds == {"speed", "reverb", "noise", "telephone"}
    json.dumps(plans)  # recorded in manifests as they are
    assert all(plan_augmentation(rng, AugmentConfig(fraction=0.0)) == [] for _ in range(50))
    with pytest.raises(ValueError, match="fraction"):
        AugmentConfig(fraction=1.5)


def test_apply_augmentation_is_seeded() -> None:
    clean = _speechlike()
    talkers = [_speechlike(0.5, seed=i) for i in range(3)]
    ops = [
        {"type": "speed", "factor": 1.1},
        {"type": "reverb", "rt60": 0.4, "drr_db": 3.0},
        {"type": "noise", "kind": "babble", "snr_db": 10.0, "talkers": 3},
        {"type": "noise", "kind": "pink", "snr_db": 20.0},
        {"type": "telephone"},
    ]
    a = apply_augmentation(clean, RATE, ops, seed=7, babble=talkers)
    b = apply_augmentation(clean, RATE, ops, seed=7, babble=talkers)
    c = apply_augmentation(clean, RATE, ops, seed=8, babble=talkers)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.numel() == pytest.approx(clean.numel() / 1.1, abs=2)
    assert a.abs().max() <= 0.99
    assert torch.equal(apply_augmentation(clean, RATE, [], seed=1), clean)
    with pytest.raises(ValueError, match="unknown augmentation"):
        apply_augmentation(clean, RATE, [{"type": "echo"}], seed=1)


def test_trim_silence_keeps_a_margin() -> None:
    speech = _speechlike(1.0)
    padded = torch.cat([torch.zeros(RATE), speech, torch.zeros(2 * RATE)])
    trimmed = trim_silence(padded, RATE, keep_s=0.15)
    assert trimmed.numel() == pytest.approx(speech.numel() + 2 * 0.15 * RATE, abs=RATE // 100)
    assert torch.equal(trim_silence(torch.zeros(RATE), RATE), torch.zeros(RATE))


def test_reverberate_is_the_linear_convolution() -> None:
    g = torch.Generator().manual_seed(3)
    dry = torch.randn(10_007, generator=g)  # a prime length: the FFT is padded
    rir = torch.randn(2_003, generator=g)
    wet = reverberate(dry, rir)
    reference = AF.fftconvolve(dry, rir)[: dry.numel()]
    reference *= dry.pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
    assert torch.allclose(wet, reference, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_draw_room_places_talker_and_mic_inside(seed: int) -> None:
    config = RoomConfig()
    op = draw_room(random.Random(seed), config)
    assert op["type"] == "room" and config.rt60[0] <= op["rt60"] <= config.rt60[1]
    for size, lo, hi in zip(op["size"], config.size_min, config.size_max):
        assert lo <= size <= hi
    for point in (op["source"], op["mic"]):
        for x, size in zip(point[:2], op["size"]):
            assert config.wall_margin <= x <= size - config.wall_margin
    assert config.source_height[0] <= op["source"][2] <= config.source_height[1]
    assert math.dist(op["source"], op["mic"]) >= config.min_distance
    assert 0 < op["absorption"] <= 1 and 0 <= op["max_order"] <= config.max_order
    json.dumps(op)


def test_room_rir_starts_at_the_direct_path_and_decays() -> None:
    op = draw_room(random.Random(0), RoomConfig(rt60=(0.3, 0.3), max_order=12))
    rir = room_rir(op, RATE)
    assert torch.isfinite(rir).all() and 0.05 * RATE < rir.numel() < 1.0 * RATE
    assert int(rir.abs().argmax()) == 40  # half the fractional-delay filter: 2.5 ms
    energy = rir.pow(2)
    assert energy[: RATE // 50].sum() > energy[RATE // 10 :].sum()  # early beats late
    assert torch.equal(room_rir(op, RATE), rir)  # the image-source method is deterministic


def test_room_operation_uses_the_given_impulse_responses() -> None:
    clean = _speechlike(0.5)
    op = draw_room(random.Random(1), RoomConfig(max_order=6))
    seen = []

    def bank(room: object, rate: int) -> torch.Tensor:
        seen.append((room, rate))
        return torch.tensor([1.0, 0.0, 0.5])

    out = apply_augmentation(clean, RATE, [op], seed=0, rirs=bank)
    assert seen == [(op, RATE)]
    assert out.shape == clean.shape and torch.isfinite(out).all()
    expected = reverberate(clean, torch.tensor([1.0, 0.0, 0.5]))
    assert torch.allclose(out, expected * min(1.0, 0.99 / float(expected.abs().max())))
    with pytest.raises(ValueError, match="rt60"):
        RoomConfig(rt60=(0.8, 0.2))
    with pytest.raises(ValueError, match="ceiling"):
        RoomConfig(size_min=(3.0, 3.0, 1.5))


@pytest.mark.parametrize("rt60", [0.6, 1.2])
def test_measured_rt60_of_a_known_decay(rt60: float) -> None:
    g = torch.Generator().manual_seed(0)
    rir = room_impulse_response(RATE, rt60=rt60, drr_db=-20.0, generator=g)  # falls 60 dB
    assert measured_rt60(rir, RATE) == pytest.approx(rt60, rel=0.05)
    assert math.isnan(measured_rt60(torch.zeros(RATE), RATE))

"""Data augmentation for synthetic speech (torchaudio), seeded per utterance.

An augmentation is a list of JSON-ready operations, drawn by :func:`plan_augmentation`
and recorded in the manifest as they are; :func:`apply_augmentation` applies them in the
order listed, with every random draw (noise samples, room response, crops) taken from a
``torch.Generator`` seeded by the caller. The operations:

``{"type": "speed", "factor": 1.1}``
    Kaldi-style speed perturbation (resampling: tempo and pitch change together).
``{"type": "reverb", "rt60": 0.5, "drr_db": 3.0}``
    Convolution with a synthetic room impulse response: a direct path, then
    exponentially decaying Gaussian noise that falls 60 dB in ``rt60`` seconds, scaled to
    a direct-to-reverberant ratio of ``drr_db``.
``{"type": "noise", "kind": "pink", "snr_db": 12.0}``
    Additive noise at a signal-to-noise ratio; ``kind`` is ``white``, ``pink``,
    ``brown`` or ``babble`` (a mix of other utterances, which the caller supplies).
``{"type": "telephone"}``
    Narrow-band channel: 8 kHz round trip, 300-3400 Hz band-pass, 8-bit mu-law.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchaudio.functional as AF

__all__ = [
    "NOISE_KINDS",
    "AugmentConfig",
    "add_noise",
    "apply_augmentation",
    "babble_noise",
    "colored_noise",
    "plan_augmentation",
    "reverberate",
    "room_impulse_response",
    "speed_perturb",
    "telephone",
]

NOISE_KINDS: tuple[str, ...] = ("white", "pink", "brown", "babble")
_ORDER = ("speed", "reverb", "noise", "telephone")


@dataclass(frozen=True)
class AugmentConfig:
    """How often and how strongly training utterances are augmented.

    ``fraction`` of training utterances get at least one operation; each operation is
    then drawn with its own probability (at least one is forced).
    """

    fraction: float = 0.5
    p_speed: float = 0.4
    p_reverb: float = 0.35
    p_noise: float = 0.6
    p_telephone: float = 0.15
    speeds: tuple[float, ...] = (0.9, 1.1)
    snr_db: tuple[float, float] = (5.0, 25.0)
    rt60: tuple[float, float] = (0.15, 0.8)
    drr_db: tuple[float, float] = (-3.0, 12.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    babble_talkers: tuple[int, int] = (3, 6)

    def __post_init__(self) -> None:
        for name in ("fraction", "p_speed", "p_reverb", "p_noise", "p_telephone"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {value}")
        if unknown := set(self.noise_kinds) - set(NOISE_KINDS):
            raise ValueError(f"AugmentConfig.noise_kinds: unknown {sorted(unknown)}")
        if any(s <= 0 for s in self.speeds):
            raise ValueError(f"AugmentConfig.speeds must be > 0, got {self.speeds}")
        for name in ("snr_db", "rt60", "drr_db", "babble_talkers"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"AugmentConfig.{name}: low {low} > high {high}")


def plan_augmentation(
    rng: random.Random, config: AugmentConfig = AugmentConfig()
) -> list[dict[str, Any]]:
    """Draw the operations for one utterance: ``[]`` (clean) with ``1 - fraction``."""
    if rng.random() >= config.fraction:
        return []
    chosen = [
        name
        for name, p in zip(
            _ORDER, (config.p_speed, config.p_reverb, config.p_noise, config.p_telephone)
        )
        if rng.random() < p
    ]
    if not chosen:
        chosen = [rng.choice(_ORDER)]
    ops: list[dict[str, Any]] = []
    for name in chosen:
        if name == "speed":
            ops.append({"type": "speed", "factor": rng.choice(config.speeds)})
        elif name == "reverb":
            ops.append(
                {"type": "reverb", "rt60": round(rng.uniform(*config.rt60), 3),
                 "drr_db": round(rng.uniform(*config.drr_db), 1)}
            )  # fmt: skip
        elif name == "noise":
            op: dict[str, Any] = {
                "type": "noise",
                "kind": rng.choice(config.noise_kinds),
                "snr_db": round(rng.uniform(*config.snr_db), 1),
            }
            if op["kind"] == "babble":
                op["talkers"] = rng.randint(*config.babble_talkers)
            ops.append(op)
        else:
            ops.append({"type": "telephone"})
    return ops


def speed_perturb(samples: torch.Tensor, rate: int, factor: float) -> torch.Tensor:
    """Play ``factor`` times faster: the length becomes ``len / factor``."""
    return AF.speed(samples, rate, factor)[0]


def colored_noise(kind: str, length: int, generator: torch.Generator) -> torch.Tensor:
    """Unit-variance noise with power spectrum 1 (white), 1/f (pink) or 1/f^2 (brown)."""
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}.get(kind)
    if exponent is None:
        raise ValueError(f"unknown noise kind {kind!r}; choose white, pink or brown")
    white = torch.randn(length, generator=generator)
    if exponent:
        spectrum = torch.fft.rfft(white)
        freqs = torch.arange(spectrum.numel(), dtype=torch.float32).clamp_min(1.0)
        white = torch.fft.irfft(spectrum / freqs.pow(exponent), n=length)
    return (white - white.mean()) / white.std().clamp_min(1e-12)


def babble_noise(
    talkers: Sequence[torch.Tensor], length: int, generator: torch.Generator
) -> torch.Tensor:
    """Sum of several utterances, each level-normalised, looped or cropped to ``length``
    at a random offset."""
    if not talkers:
        raise ValueError("babble noise needs at least one talker's audio")
    mix = torch.zeros(length)
    for talker in talkers:
        reps = math.ceil((length + talker.numel()) / talker.numel())
        looped = talker.repeat(reps)
        start = int(torch.randint(0, talker.numel(), (1,), generator=generator))
        mix += looped[start : start + length] / talker.pow(2).mean().sqrt().clamp_min(1e-8)
    return mix


def add_noise(samples: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Add ``noise`` (same length) scaled to a signal-to-noise ratio of ``snr_db``."""
    return AF.add_noise(samples[None], noise[None], torch.tensor([snr_db]))[0]


def room_impulse_response(
    rate: int, rt60: float, drr_db: float, generator: torch.Generator
) -> torch.Tensor:
    """A synthetic RIR: a unit direct path, then a Gaussian tail decaying 60 dB in ``rt60``
    seconds, scaled so direct / tail energy is ``drr_db``."""
    n = max(2, round(rt60 * rate))
    t = torch.arange(1, n, dtype=torch.float32) / rate
    tail = torch.randn(n - 1, generator=generator) * torch.exp(-3 * math.log(10) * t / rt60)
    tail *= 10 ** (-drr_db / 20) / tail.pow(2).sum().sqrt()
    return torch.cat([torch.ones(1), tail])


def reverberate(samples: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve with ``rir``, cut to the input length, keep the input's RMS level."""
    wet = AF.fftconvolve(samples, rir)[: samples.numel()]
    return wet * (samples.pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp_min(1e-12))


# torchaudio's "kaiser_best" resampling: little leakage past the 4 kHz band edge.
_SHARP: dict[str, Any] = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}


def telephone(samples: torch.Tensor, rate: int) -> torch.Tensor:
    """A narrow-band telephone channel: resample to 8 kHz, band-pass 300-3400 Hz, 8-bit
    mu-law coding, resample back."""
    narrow = AF.resample(samples, rate, 8000, **_SHARP)
    narrow = AF.lowpass_biquad(AF.highpass_biquad(narrow, 8000, 300.0), 8000, 3400.0)
    narrow = AF.mu_law_decoding(AF.mu_law_encoding(narrow.clamp(-1, 1), 256), 256)
    return AF.resample(narrow, 8000, rate, **_SHARP)


def apply_augmentation(
    samples: torch.Tensor,
    rate: int,
    ops: Sequence[dict[str, Any]],
    *,
    seed: int,
    babble: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Apply ``ops`` in order; the output's peak is at most 0.99.

    ``babble`` holds the other utterances a ``babble`` noise operation mixes.
    """
    generator = torch.Generator().manual_seed(seed)
    out = samples
    for op in ops:
        kind = op.get("type")
        if kind == "speed":
            out = speed_perturb(out, rate, float(op["factor"]))
        elif kind == "reverb":
            rir = room_impulse_response(rate, float(op["rt60"]), float(op["drr_db"]), generator)
            out = reverberate(out, rir)
        elif kind == "noise":
            if op["kind"] == "babble":
                noise = babble_noise(babble, out.numel(), generator)
            else:
                noise = colored_noise(op["kind"], out.numel(), generator)
            out = add_noise(out, noise, float(op["snr_db"]))
        elif kind == "telephone":
            out = telephone(out, rate)
        else:
            raise ValueError(f"unknown augmentation {op!r}")
    peak = float(out.abs().max()) if out.numel() else 0.0
    return out * (0.99 / peak) if peak > 0.99 else out

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
``{"type": "room", "rt60": 0.5, "size": [6.1, 4.3, 2.9], "source": [...], "mic": [...],
"absorption": 0.21, "max_order": 30}``
    Convolution with the impulse response of a simulated shoebox room (pyroomacoustics,
    image-source method): a talker at ``source`` and a microphone at ``mic`` (metres), the
    walls' energy absorption and the image order from Sabine's formula for ``rt60``
    seconds (:func:`draw_room`, :func:`room_rir`); a room bank adds the RT60 measured on
    the simulated response as ``rt60_measured``.
``{"type": "noise", "kind": "pink", "snr_db": 12.0}``
    Additive noise at a signal-to-noise ratio; ``kind`` is ``white``, ``pink``,
    ``brown`` or ``babble`` (a mix of other utterances, which the caller supplies).
``{"type": "telephone"}``
    Narrow-band channel: 8 kHz round trip, 300-3400 Hz band-pass, 8-bit mu-law.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchaudio.functional as AF
from scipy.fft import next_fast_len

__all__ = [
    "NOISE_KINDS",
    "AugmentConfig",
    "RoomConfig",
    "add_noise",
    "apply_augmentation",
    "babble_noise",
    "colored_noise",
    "draw_room",
    "measured_rt60",
    "plan_augmentation",
    "reverberate",
    "room_impulse_response",
    "room_rir",
    "speed_perturb",
    "telephone",
]

NOISE_KINDS: tuple[str, ...] = ("white", "pink", "brown", "babble")
_ORDER = ("speed", "reverb", "noise", "telephone")
RoomRIR = Callable[[Mapping[str, Any], int], torch.Tensor]


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
    if exponent:  # shaped on a length the FFT is fast at (8x faster than at a prime)
        n = next_fast_len(length, real=True)
        spectrum = torch.fft.rfft(torch.randn(n, generator=generator))
        freqs = torch.arange(spectrum.numel(), dtype=torch.float32).clamp_min(1.0)
        noise = torch.fft.irfft(spectrum / freqs.pow(exponent), n=n)[:length]
    else:
        noise = torch.randn(length, generator=generator)
    return (noise - noise.mean()) / noise.std().clamp_min(1e-12)


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
    n = next_fast_len(samples.numel() + rir.numel() - 1, real=True)
    spectrum = torch.fft.rfft(samples, n=n) * torch.fft.rfft(rir.to(samples.dtype), n=n)
    wet = torch.fft.irfft(spectrum, n=n)[: samples.numel()]
    return wet * (samples.pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp_min(1e-12))


@dataclass(frozen=True)
class RoomConfig:
    """The simulated shoebox rooms :func:`draw_room` draws (metres, seconds).

    ``size_min``/``size_max`` bound length, width and height; talker and microphone stand
    at least ``wall_margin`` from every wall and at least ``min_distance`` apart, the
    talker's mouth at ``source_height`` and the microphone at ``mic_height`` (a desk, a
    hand, a laptop). ``rt60`` is drawn uniformly; Sabine's formula turns it into the
    walls' absorption and the image-source order, at most ``max_order`` (higher orders only
    add the quiet end of the tail, at a cost cubic in the order).
    """

    rt60: tuple[float, float] = (0.2, 0.8)
    size_min: tuple[float, float, float] = (3.0, 3.0, 2.4)
    size_max: tuple[float, float, float] = (10.0, 8.0, 4.0)
    wall_margin: float = 0.5
    min_distance: float = 0.5
    source_height: tuple[float, float] = (1.2, 1.9)
    mic_height: tuple[float, float] = (0.7, 1.5)
    max_order: int = 40
    air_absorption: bool = True

    def __post_init__(self) -> None:
        for name in ("rt60", "source_height", "mic_height"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"RoomConfig.{name}: need 0 < low <= high, got {low}, {high}")
        if any(not 2 * self.wall_margin < lo <= hi for lo, hi in zip(self.size_min, self.size_max)):
            raise ValueError(
                f"RoomConfig: need 2 * wall_margin < size_min <= size_max, got "
                f"{self.size_min}, {self.size_max}, margin {self.wall_margin}"
            )
        top = self.size_min[2] - self.wall_margin
        if max(self.source_height[1], self.mic_height[1]) > top:
            raise ValueError(f"RoomConfig: heights must stay {self.wall_margin} m below the "
                             f"lowest ceiling ({self.size_min[2]} m)")  # fmt: skip
        if self.min_distance < 0 or self.max_order < 0:
            raise ValueError("RoomConfig: min_distance and max_order must be >= 0")


def draw_room(rng: random.Random, config: RoomConfig = RoomConfig()) -> dict[str, Any]:
    """Draw one room operation (see the module's docstring): a room size, an RT60,
    talker and microphone positions, and the absorption and image order that give the
    RT60 (``pyroomacoustics.inverse_sabine``). Rooms too large for the RT60 are redrawn.
    """
    import pyroomacoustics as pra

    for _ in range(1000):
        size = [round(rng.uniform(lo, hi), 2) for lo, hi in zip(config.size_min, config.size_max)]
        rt60 = round(rng.uniform(*config.rt60), 3)
        try:
            absorption, order = pra.inverse_sabine(rt60, size)
        except ValueError:  # the walls would have to absorb more than everything
            continue
        m = config.wall_margin
        source = [round(rng.uniform(m, size[0] - m), 2), round(rng.uniform(m, size[1] - m), 2),
                  round(rng.uniform(*config.source_height), 2)]  # fmt: skip
        mic = [round(rng.uniform(m, size[0] - m), 2), round(rng.uniform(m, size[1] - m), 2),
               round(rng.uniform(*config.mic_height), 2)]  # fmt: skip
        if math.dist(source, mic) < config.min_distance:
            continue
        return {"type": "room", "rt60": rt60, "size": size, "source": source, "mic": mic,
                "absorption": round(float(absorption), 4),
                "max_order": min(int(order), config.max_order),
                "air_absorption": config.air_absorption}  # fmt: skip
    raise ValueError(f"RoomConfig {config} gives no valid room in 1000 draws")


def measured_rt60(rir: torch.Tensor, rate: int) -> float:
    """The RT60 of an impulse response, from the slope of its Schroeder decay between -5 and
    -35 dB (T30, ``pyroomacoustics.experimental.measure_rt60``); ``nan`` if it has none."""
    import warnings

    import pyroomacoustics as pra

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(pra.experimental.measure_rt60(rir.double().numpy(), fs=rate, decay_db=30))
        except (ValueError, IndexError, ZeroDivisionError):
            return math.nan
    return value if math.isfinite(value) and value > 0 else math.nan


def room_rir(op: Mapping[str, Any], rate: int) -> torch.Tensor:
    """The impulse response of a ``room`` operation at ``rate`` Hz, by the image-source
    method (``pyroomacoustics.ShoeBox``), starting just before the direct path (so speech
    keeps its timing) and cut where less than 60 dB of its energy is left."""
    import numpy as np
    import pyroomacoustics as pra

    room = pra.ShoeBox(
        op["size"],
        fs=rate,
        materials=pra.Material(float(op["absorption"])),
        max_order=int(op["max_order"]),
        air_absorption=bool(op.get("air_absorption", False)),
    )
    room.add_source(op["source"])
    room.add_microphone(op["mic"])
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    start = max(0, int(np.argmax(np.abs(rir))) - pra.constants.get("frac_delay_length") // 2)
    rir = rir[start:]
    energy_left = np.cumsum((rir**2)[::-1])[::-1]  # Schroeder's backward integral
    end = int(np.searchsorted(-energy_left, -1e-6 * energy_left[0])) + 1
    return torch.from_numpy(rir[: max(end, 1)].astype(np.float32))


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
    rirs: RoomRIR = room_rir,
) -> torch.Tensor:
    """Apply ``ops`` in order; the output's peak is at most 0.99.

    ``babble`` holds the other utterances a ``babble`` noise operation mixes; ``rirs``
    gives a ``room`` operation's impulse response (default :func:`room_rir`; a bank of
    precomputed ones is faster).
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
        elif kind == "room":
            out = reverberate(out, rirs(op, rate))
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

"""Audio loading and acoustic features: 80-dim log-mel filterbanks at 16 kHz, 10 ms hop.

* :func:`load_audio` reads any file ``soundfile`` can decode, downmixes to mono,
  resamples to 16 kHz and raises :class:`AudioError` (naming the utterance and the
  reason) for anything it cannot turn into samples. A WAV file cut short (its header
  promises more samples than the file holds, which soundfile reads without a word) is
  read as far as it goes and warned about (:func:`wav_truncation`).
* :class:`LogMel` turns one waveform into ``(T, 80)`` log-mel frames,
  ``T = num_samples // 160 + 1`` (centred 25 ms windows every 10 ms).
* :class:`CMVN` holds global mean/variance statistics, accumulated over a training set
  with :class:`CMVNAccumulator`; the model keeps them as buffers, so they travel in its
  checkpoint.
* :func:`spectral_shape` measures each utterance's long-term spectral shape (the colour a
  voice, microphone or room gives every frame), which a model with ``shape_norm``
  replaces by its training set's mean shape.
* :class:`SpecAugment` masks frequency bands and time spans (training only), and can warp
  the mel axis (VTLP) and colour the spectrum with a random equaliser
  (:func:`random_envelope`).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT
from torch import nn

__all__ = [
    "CMVN",
    "HOP_LENGTH",
    "N_MELS",
    "SAMPLE_RATE",
    "WIN_LENGTH",
    "AudioError",
    "CMVNAccumulator",
    "LogMel",
    "SpecAugment",
    "SpecAugmentConfig",
    "UtteranceError",
    "lengths_to_mask",
    "load_audio",
    "num_feature_frames",
    "prepare_waveform",
    "random_envelope",
    "spectral_shape",
    "vtlp_source_bins",
    "wav_truncation",
    "warp_frequency",
]

SAMPLE_RATE = 16_000
N_MELS = 80
HOP_LENGTH = 160  # 10 ms
WIN_LENGTH = 400  # 25 ms
N_FFT = 512
LOG_FLOOR = 1e-6

log = logging.getLogger(__name__)


class UtteranceError(Exception):
    """One utterance failed; ``utt_id`` and ``reason`` say which and why."""

    def __init__(self, utt_id: str, reason: str, path: str | None = None) -> None:
        self.utt_id = utt_id
        self.reason = reason
        self.path = path
        where = f" ({path})" if path else ""
        super().__init__(f"utterance {utt_id!r}{where}: {reason}")


class AudioError(UtteranceError):
    """One utterance's audio cannot be used (missing, corrupt, empty, NaN samples)."""


def prepare_waveform(
    samples: np.ndarray, sample_rate: int, *, utt_id: str = "<audio>",
    target_rate: int = SAMPLE_RATE, path: str | None = None,
) -> np.ndarray:
    """Mono float32 samples at ``target_rate`` from ``(N,)`` or ``(N, channels)`` samples.

    Channels are averaged; other sample rates are resampled (torchaudio's windowed sinc).
    Raises :class:`AudioError` for empty audio or non-finite samples.
    """
    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.mean(axis=1)  # (N, C) -> (N,)
    elif x.ndim != 1:
        raise AudioError(utt_id, f"expected 1-D or 2-D samples, got shape {x.shape}", path)
    x = x.astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError(utt_id, "empty audio (0 samples)", path)
    if not np.isfinite(x).all():
        raise AudioError(utt_id, "audio contains NaN or infinite samples", path)
    if sample_rate <= 0:
        raise AudioError(utt_id, f"invalid sample rate {sample_rate}", path)
    if sample_rate != target_rate:
        x = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), sample_rate, target_rate).numpy()
        if x.size == 0:
            raise AudioError(utt_id, "audio is empty after resampling", path)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_audio(
    path: str | Path, *, utt_id: str | None = None, target_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Read an audio file as mono float32 samples at ``target_rate`` (16 kHz).

    Raises:
        AudioError: missing, unreadable or corrupt file, empty audio, NaN samples.
    """
    path = str(path)
    utt_id = utt_id if utt_id is not None else path
    if not Path(path).is_file():
        raise AudioError(utt_id, "audio file not found", path)
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(utt_id, f"cannot decode audio: {exc}", path) from None
    short = wav_truncation(path)
    if short is not None:
        declared, held = short
        log.warning(f"warning: utterance {utt_id!r} ({path}): the WAV file is cut short: its "
                    f"header promises {declared} bytes of samples, the file holds {held} "
                    f"({len(samples) / rate:.2f} s read)")
    return prepare_waveform(samples, rate, utt_id=utt_id, target_rate=target_rate, path=path)


def wav_truncation(path: str | Path) -> tuple[int, int] | None:
    """``(declared, held)`` bytes of samples when ``path`` is a RIFF/WAVE file whose ``data``
    chunk promises more than the file holds (a copy or a recording cut short), else
    ``None`` (not a WAV, or whole). A streaming writer's placeholder sizes (0 or
    0xFFFFFFFF, the file's length unknown when the header was written) are not counted
    as a promise."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            at = 12
            while at + 8 <= size:
                fh.seek(at)
                chunk, length = struct.unpack("<4sI", fh.read(8))
                if chunk == b"data":
                    held = size - at - 8
                    if length in (0, 0xFFFFFFFF) or length <= held:
                        return None
                    return length, held
                at += 8 + length + (length & 1)  # chunks are padded to even sizes
    except OSError:
        return None
    return None


def num_feature_frames(num_samples: int) -> int:
    """Log-mel frames of a waveform of ``num_samples`` samples (centred windows)."""
    return num_samples // HOP_LENGTH + 1


class LogMel(nn.Module):
    """``(N,)`` waveform at 16 kHz -> ``(T, 80)`` natural-log mel energies, T = N // 160 + 1."""

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.mel = AT.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH,
            hop_length=HOP_LENGTH, n_mels=n_mels, power=2.0, center=True, pad_mode="reflect",
        )

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 1:
            raise ValueError(f"LogMel expects a 1-D waveform, got shape {tuple(waveform.shape)}")
        n = waveform.shape[0]
        if n < N_FFT // 2 + 1:  # reflect padding needs more samples than half a window
            waveform = nn.functional.pad(waveform, (0, N_FFT // 2 + 1 - n))
        spec = self.mel(waveform.float())  # (n_mels, T')
        spec = spec[:, : num_feature_frames(n)]  # (n_mels, T): frame count of the real length
        return torch.log(spec + LOG_FLOOR).transpose(0, 1).contiguous()  # (T, n_mels)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def spectral_shape(feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, D)`` long-term spectral shape of each utterance of ``(B, T, D)`` log-mel features.

    The mean log-mel vector of the utterance's louder frames (frame energy, the
    log-sum-exp over bins, at or above the utterance's median: speech, not the pauses
    between words), minus its own mean over bins, so that loudness stays out of it: what
    is left is the spectral tilt and the broad peaks a voice, microphone or room adds to
    every frame. Subtracting it from each frame is cepstral mean normalisation's log-mel
    form, over speech only. Frames past ``lengths (B,)`` are ignored.
    """
    b, t, _ = feats.shape
    x = feats.float()
    valid = (torch.ones(b, t, dtype=torch.bool, device=x.device) if lengths is None
             else lengths_to_mask(lengths.to(x.device), t))  # (B, T)
    energy = torch.logsumexp(x, dim=-1).masked_fill(~valid, float("nan"))  # (B, T)
    median = torch.nanmedian(energy, dim=1, keepdim=True).values  # (B, 1)
    loud = (valid & (energy >= median)).to(x.dtype)  # (B, T); >= keeps at least one frame
    mean = (x * loud[..., None]).sum(1) / loud.sum(1, keepdim=True).clamp(min=1)  # (B, D)
    return mean - mean.mean(dim=-1, keepdim=True)


class CMVNAccumulator:
    """Running float64 sums of features for global mean/variance normalisation."""

    def __init__(self, dim: int = N_MELS) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sum_sq = torch.zeros(dim, dtype=torch.float64)
        self.count = 0

    def add(self, feats: torch.Tensor) -> None:
        """Add ``(T, D)`` frames."""
        f = feats.double()
        self.sum += f.sum(0)
        self.sum_sq += (f * f).sum(0)
        self.count += f.shape[0]

    def finish(self, floor: float = 1e-5) -> CMVN:
        if self.count == 0:
            raise ValueError("CMVN: no frames accumulated")
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp_min(floor)
        return CMVN(mean.float(), var.sqrt().float())


@dataclass(frozen=True, eq=False)
class CMVN:
    """Global per-dimension mean and standard deviation, ``(D,)`` float32 tensors."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def identity(cls, dim: int = N_MELS) -> CMVN:
        return cls(torch.zeros(dim), torch.ones(dim))

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_dict(cls, data: dict) -> CMVN:
        return cls(torch.as_tensor(data["mean"]).float(), torch.as_tensor(data["std"]).float())


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment (LD-style policy by default); ``enabled = false`` turns it off."""

    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 5
    time_width: int = 40
    time_max_ratio: float = 0.05  # a time mask covers at most this fraction of the batch
    freq_warp: float = 0.0  # VTLP: warp each utterance's mel axis by a factor in 1 +- this
    envelope_db: float = 0.0  # random equaliser: gains within +- this many dB (0: off)
    envelope_knots: int = 6  # ... drawn at this many points along the mel axis

    def __post_init__(self) -> None:
        if not 0.0 <= self.freq_warp < 0.5:
            raise ValueError(f"specaug.freq_warp must be in [0, 0.5), got {self.freq_warp}")
        if not 0.0 <= self.envelope_db <= 30.0:
            raise ValueError(f"specaug.envelope_db must be in [0, 30] dB, got {self.envelope_db}")
        if self.envelope_knots < 2:
            raise ValueError(f"specaug.envelope_knots must be at least 2, got {self.envelope_knots}")


def vtlp_source_bins(alpha: torch.Tensor, n_bins: int, boundary: float = 0.8) -> torch.Tensor:
    """Fractional source bin of each output bin under vocal tract length perturbation.

    The warp (Jaitly & Hinton, 2013) maps source bin ``f`` to ``alpha * f`` up to a
    boundary (``boundary`` of the axis, times ``min(1, 1/alpha)`` so that it stays on
    the axis) and linearly from there to the last bin, which stays put. Returns its
    inverse, ``(B, n_bins)`` source positions for ``alpha (B,)``.
    """
    top = float(n_bins - 1)
    b = boundary * top * torch.clamp(1.0 / alpha, max=1.0)  # (B,) source boundary
    j = torch.arange(n_bins, dtype=alpha.dtype, device=alpha.device)  # (D,)
    lower = j / alpha[:, None]  # (B, D)
    upper = b[:, None] + (j - (alpha * b)[:, None]) * ((top - b) / (top - alpha * b))[:, None]
    return torch.where(j <= (alpha * b)[:, None], lower, upper).clamp(0.0, top)


def warp_frequency(feats: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` features with each utterance's frequency axis warped by ``alpha (B,)``
    (linear interpolation between neighbouring bins, see :func:`vtlp_source_bins`)."""
    b, t, d = feats.shape
    src = vtlp_source_bins(alpha.to(torch.float32), d)  # (B, D)
    lo = src.floor().long().clamp(max=d - 1)
    hi = (lo + 1).clamp(max=d - 1)
    frac = (src - lo).to(feats.dtype)[:, None, :]  # (B, 1, D)
    at_lo = feats.gather(2, lo[:, None, :].expand(b, t, d))
    at_hi = feats.gather(2, hi[:, None, :].expand(b, t, d))
    return at_lo + (at_hi - at_lo) * frac


def random_envelope(batch: int, n_bins: int, db: float, knots: int) -> torch.Tensor:
    """``(batch, n_bins)`` random equaliser curves in dB: a gain drawn uniformly from
    ``+- db`` at each of ``knots`` points spread evenly over the mel axis (the first on
    bin 0, the last on the top bin), linearly interpolated between them.

    Added to log-mel features it colours each utterance's spectrum as a new voice, room
    or microphone would (a smooth spectral tilt with broad peaks and dips).
    """
    gains = (2 * torch.rand(batch, knots) - 1) * db  # (B, K)
    return nn.functional.interpolate(gains[:, None, :], size=n_bins, mode="linear",
                                     align_corners=True)[:, 0]  # (B, n_bins)


class SpecAugment(nn.Module):
    """Frequency and time masks on normalised ``(B, T, D)`` features, in training mode only.

    Masked values become 0 (the global mean after CMVN). Every utterance of a batch gets
    its own masks. With ``freq_warp > 0`` each utterance's mel axis is first warped by a
    factor drawn uniformly from ``1 +- freq_warp`` (VTLP: a longer or shorter vocal tract,
    a new speaker to the model). With ``envelope_db > 0`` each utterance's log-mel energies
    first get a :func:`random_envelope` (a decibel gain per mel bin, the same in every
    frame); ``feature_std`` (the CMVN standard deviations the features were divided by)
    turns it into normalised units. Randomness comes from torch's global generator (saved
    on checkpoints); an option left off draws nothing from it.
    """

    def __init__(self, config: SpecAugmentConfig) -> None:
        super().__init__()
        self.config = config
        self.freq = AT.FrequencyMasking(config.freq_width, iid_masks=True)
        self.time = AT.TimeMasking(config.time_width, iid_masks=True, p=1.0)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None,
                feature_std: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if not (self.training and cfg.enabled):
            return feats
        if cfg.envelope_db > 0:
            b, _, d = feats.shape
            db = random_envelope(b, d, cfg.envelope_db, cfg.envelope_knots).to(feats.device)
            nats = db * (math.log(10) / 10)  # log-mel energies are natural logs of power
            if feature_std is not None:  # a model buffer, on the features' device
                nats = nats / feature_std
            feats = feats + nats[:, None, :].to(feats.dtype)
        if cfg.freq_warp > 0:
            alpha = 1.0 + cfg.freq_warp * (2 * torch.rand(feats.shape[0]) - 1)  # (B,)
            feats = warp_frequency(feats, alpha.to(feats.device))
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, T, D) -> (B, 1, D, T)
        for _ in range(cfg.freq_masks):
            x = self.freq(x)
        if cfg.time_masks > 0 and x.shape[-1] > 1:
            width = min(cfg.time_width, max(1, int(cfg.time_max_ratio * x.shape[-1])))
            self.time.mask_param = width
            for _ in range(cfg.time_masks):
                x = self.time(x)
        return x.squeeze(1).transpose(1, 2)  # (B, 1, D, T) -> (B, T, D)

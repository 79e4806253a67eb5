"""A Conformer CTC acoustic model over the character table.

``feats (B, T, 80)`` -> optionally each utterance's spectral shape replaced by the
training set's (``shape_norm``) -> global CMVN -> convolutional subsampling (``subsampling``x:
2, 4, 6 or 8) -> ``n_layers`` Conformer blocks (macaron feed-forwards, multi-head
self-attention with rotary position embeddings, depthwise convolution) -> optionally
:class:`SubframeSplit` (``upsample`` CTC frames per encoder frame) -> linear CTC head ->
log-softmax ``(B, T' * upsample, V)``.

Why upsample: at 4x subsampling a character CTC model gets 25 frames a second, and
English speech at a brisk rate carries 15-20 characters a second counting word
boundaries, plus a blank between doubled letters. With 4-7% of the frames left for
blanks, the model drops doubled letters and word boundaries. Splitting each encoder
frame into two 20-ms CTC frames (as upsampling CTC models in non-autoregressive
translation do) gives the labels room without running the encoder at twice the rate.

Padding never changes a valid frame's output: the subsampling convolutions have no
padding (an output frame only sees the input frames it covers), attention masks padded
keys, the convolution module zeroes padded frames before its depthwise convolution and
uses LayerNorm rather than BatchNorm. A batch therefore gives the same log-probs as each
utterance on its own (to float rounding).

Why ``shape_norm``: a voice, microphone or room colours every frame of an utterance
alike (a spectral tilt, broad peaks), and a model trained on a few dozen voices learns
their colours with their phones. Subtracting each utterance's mean log-mel shape over its
speech frames (cepstral mean normalisation in log-mel form) and adding the training set's
takes that colour away; the shape is measured over the utterance's louder half of frames
so that the pauses do not set it. It moved the held-out festival voice, which new voices
and accents had hardly moved, at some cost on the seen voices (model card, stage 26).

Dropout (:class:`Dropout`) draws its masks from 8 random bits per element, taken 64 at a
time from torch's generator: on the CPU that is about ten times cheaper than
``nn.Dropout``'s Bernoulli draws, which took a quarter of a training step. The rate is
rounded to a multiple of 1/256 (0.1 -> 26/256). Attention-weight dropout goes through
the same masks on an explicit softmax; without it (evaluation) attention is
``scaled_dot_product_attention``'s fused kernel.

Checkpoints are plain data (see :func:`model_checkpoint`) that load with
``torch.load(path, weights_only=True)``; :func:`load_model` refuses anything else.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusion.am.features import (CMVN, HOP_LENGTH, N_MELS, SAMPLE_RATE, SpecAugment, lengths_to_mask,
                                spectral_shape)
from fusion.am.subword import SentencePieceUnits
from fusion.core.manifest import atomic_write
from fusion.core.tokens import TokenTable, character_table

__all__ = [
    "CHECKPOINT_FORMAT",
    "CTCModel",
    "CheckpointError",
    "ConformerEncoder",
    "Dropout",
    "ModelConfig",
    "SubframeSplit",
    "average_checkpoints",
    "export_model",
    "load_checkpoint",
    "load_model",
    "model_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
    "subsampled_length",
]

CHECKPOINT_FORMAT = "asrfuse-am"
CHECKPOINT_VERSION = 1
_STRIDES = {1: (), 2: (2,), 4: (2, 2), 6: (2, 3), 8: (2, 2, 2)}


class CheckpointError(ValueError):
    """A checkpoint that is not a plain-data asrfuse acoustic-model checkpoint."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the Conformer CTC model (frozen; saved as a dict in checkpoints)."""

    n_mels: int = N_MELS
    subsampling: int = 4  # output frame shift = subsampling * 10 ms
    subsampling_channels: int = 128
    d_model: int = 144
    n_heads: int = 4
    ff_mult: int = 4
    n_layers: int = 6
    conv_kernel: int = 15
    dropout: float = 0.1
    vocab_size: int = 29
    upsample: int = 1  # CTC frames per encoder frame (SubframeSplit); 1: none
    # replace each utterance's spectral shape by the training set's (features.spectral_shape)
    shape_norm: bool = False

    def __post_init__(self) -> None:
        if self.subsampling not in _STRIDES:
            raise ValueError(f"subsampling must be one of {sorted(_STRIDES)}, got {self.subsampling}")
        if self.upsample < 1 or (self.subsampling * HOP_LENGTH) % self.upsample:
            raise ValueError(
                f"upsample must be a positive divisor of the encoder frame's "
                f"{self.subsampling * HOP_LENGTH} samples, got {self.upsample}"
            )
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model / n_heads must be an even integer (rotary embeddings)")
        if self.conv_kernel % 2 == 0:
            raise ValueError("conv_kernel must be odd")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        for name in ("n_mels", "subsampling_channels", "d_model", "n_heads", "ff_mult",
                     "n_layers", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def frame_shift(self) -> float:
        """Seconds per output (CTC) frame."""
        return self.subsampling * HOP_LENGTH / self.upsample / SAMPLE_RATE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CheckpointError(f"model config: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**data)

    def encoder_signature(self) -> dict[str, Any]:
        """The fields that decide the encoder's parameter shapes (for loading pretrained)."""
        d = self.to_dict()
        for head_only in ("dropout", "vocab_size", "upsample", "shape_norm"):
            d.pop(head_only)
        return d


def subsampled_length(lengths: torch.Tensor | int, subsampling: int) -> torch.Tensor | int:
    """Frames after the subsampling convolutions (kernel 3, no padding, strides per factor).

    ``T' = floor((T - 3) / s) + 1`` per convolution, so ``T' = ((T - 1) // 2 - 1) // 2``
    for 4x. Shifting the input by ``subsampling * k`` frames shifts the output by ``k``.
    """
    out = lengths
    for s in _STRIDES[subsampling]:
        out = (out - 3) // s + 1
    if isinstance(out, torch.Tensor):
        return out.clamp_min(0)
    return max(int(out), 0)


def min_input_frames(subsampling: int) -> int:
    """Fewest feature frames that give one output frame."""
    t = 1
    while subsampled_length(t, subsampling) < 1:
        t += 1
    return t


class ConvSubsampling(nn.Module):
    """Stride-2/3 2-D convolutions over (time, mel), then a linear projection to d_model."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.subsampling = config.subsampling
        layers: list[nn.Module] = []
        channels_in, freq = 1, config.n_mels
        for s in _STRIDES[config.subsampling]:
            layers += [nn.Conv2d(channels_in, config.subsampling_channels, 3, stride=(s, 2)),
                       nn.SiLU()]
            channels_in = config.subsampling_channels
            freq = (freq - 3) // 2 + 1
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(channels_in * freq, config.d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.unsqueeze(1)  # (B, T, F) -> (B, 1, T, F)
        x = self.conv(x)  # (B, C, T', F')
        b, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(b, t, c * f)  # (B, C, T', F') -> (B, T', C*F')
        return self.out(x), subsampled_length(lengths, self.subsampling)  # (B, T', D)


def rotary_tables(length: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(T, dim/2)`` for rotary position embeddings."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))  # (dim/2,)
    pos = torch.arange(length, device=device).float()  # (T,)
    angles = torch.outer(pos, inv_freq)  # (T, dim/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of ``x (B, H, T, Dh)`` by position-dependent angles.

    Without gradients, in float32, each pair is one complex number multiplied by
    ``cos + i sin`` (one pass over ``x`` instead of six; equal to float rounding)."""
    if not torch.is_grad_enabled() and x.dtype == torch.float32 and x.stride(-1) == 1:
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (B, H, T, Dh/2) complex
        return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2)  # (B, H, T, Dh)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, Dh/2) each
    r1 = x1 * cos - x2 * sin
    r2 = x1 * sin + x2 * cos
    return torch.stack((r1, r2), dim=-1).flatten(-2)  # (B, H, T, Dh/2, 2) -> (B, H, T, Dh)


def dropout_keep_mask(shape: Sequence[int], p: float, device: torch.device | None = None
                      ) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of ``shape`` (each element dropped with probability ``p``
    rounded to a multiple of 1/256) and the scale ``1 / P(keep)`` for the kept ones."""
    n = 1
    for d in shape:
        n *= int(d)
    cut = round(p * 256)
    words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=device)
    keep = words.view(torch.uint8)[:n].view(*shape) >= cut
    return keep, 256.0 / (256 - cut)


class Dropout(nn.Module):
    """Inverted dropout like ``nn.Dropout`` (same place in a model, no parameters), with
    masks from :func:`dropout_keep_mask`: ``p`` counts in steps of 1/256."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    @property
    def active(self) -> bool:
        """Whether a call drops anything (training, and ``p`` not rounded to 0)."""
        return self.training and round(self.p * 256) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        keep, scale = dropout_keep_mask(x.shape, self.p, x.device)
        return torch.where(keep, x * scale, 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.weight_drop = Dropout(dropout)  # on the attention weights
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads
        qkv = self.qkv(self.norm(x))  # (B, T, 3D)
        qkv = qkv.view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, Dh) each
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        attn_mask = mask[:, None, None, :]  # (B, T) -> (B, 1, 1, T): which keys to attend
        if self.weight_drop.active:
            scores = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5  # (B, H, T, T)
            scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = self.weight_drop(torch.softmax(scores, dim=-1))
            out = weights @ v  # (B, H, T, Dh)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, H, T, Dh) -> (B, T, D)
        return self.drop(self.proj(out))


class ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.depth_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1)  # (B, T, 2D) -> (B, T, D)
        y = y.masked_fill(~mask.unsqueeze(-1), 0.0)  # zero padded frames before the conv
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)  # (B, D, T) conv -> (B, T, D)
        y = F.silu(self.depth_norm(y))
        return self.drop(self.pointwise_out(y))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, mult * d_model), nn.SiLU(),
            Dropout(dropout), nn.Linear(mult * d_model, d_model), Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConformerBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.ff1 = FeedForward(d, config.ff_mult, config.dropout)
        self.attn = SelfAttention(d, config.n_heads, config.dropout)
        self.conv = ConvModule(d, config.conv_kernel, config.dropout)
        self.ff2 = FeedForward(d, config.ff_mult, config.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        x = torch.add(x, self.ff1(x), alpha=0.5)  # x + 0.5 * ff1(x), in one pass
        x = x + self.attn(x, mask, rope)
        x = x + self.conv(x, mask)
        x = torch.add(x, self.ff2(x), alpha=0.5)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    """Normalised ``(B, T, n_mels)`` features -> ``(B, T', d_model)`` hidden states."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.subsample = ConvSubsampling(config)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(config) for _ in range(config.n_layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsample(x, lengths)  # (B, T', D), (B,)
        mask = lengths_to_mask(lengths, x.shape[1])  # (B, T')
        rope = rotary_tables(x.shape[1], self.config.d_model // self.config.n_heads, x.device)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask, rope)
        return x, lengths


class SubframeSplit(nn.Module):
    """``(B, T, D)`` -> ``(B, T * k, D)``: each encoder frame split into ``k`` subframes.

    Subframe ``j`` of frame ``h`` is ``h + GELU(W_j h + b_j)``. ``W`` and ``b`` start at
    zero, so a model given this layer starts as the model without it with each frame
    repeated ``k`` times, which CTC's collapse reads as the same transcript; training
    then learns what differs between the halves of a frame.
    """

    def __init__(self, d_model: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.proj = nn.Linear(d_model, k * d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        sub = h.unsqueeze(2) + F.gelu(self.proj(h)).view(b, t, self.k, d)  # (B, T, k, D)
        return sub.reshape(b, t * self.k, d)


class CMVNModule(nn.Module):
    """A module that normalises its input features with stored global CMVN statistics.

    The statistics are non-persistent buffers (checkpoints carry them as plain data).
    """

    cmvn_mean: torch.Tensor
    cmvn_std: torch.Tensor

    def _init_cmvn(self, cmvn: CMVN | None, n_mels: int) -> None:
        cmvn = cmvn or CMVN.identity(n_mels)
        self.register_buffer("cmvn_mean", cmvn.mean.clone().float(), persistent=False)
        self.register_buffer("cmvn_std", cmvn.std.clone().float(), persistent=False)

    @property
    def cmvn(self) -> CMVN:
        return CMVN(self.cmvn_mean.clone(), self.cmvn_std.clone())

    def set_cmvn(self, cmvn: CMVN) -> None:
        self.cmvn_mean.copy_(cmvn.mean)
        self.cmvn_std.copy_(cmvn.std)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.cmvn_mean) / self.cmvn_std  # (B, T, F), stats broadcast over F


class CTCModel(CMVNModule):
    """CMVN + Conformer encoder + linear CTC head over ``token_table``.

    ``forward(feats (B, T, n_mels), lengths (B,))`` -> ``(log_probs (B, T', V), lengths')``.

    With ``config.shape_norm`` each utterance's :func:`~fusion.am.features.spectral_shape`
    is first replaced by ``shape_ref``, the mean shape of the training set (a persistent
    buffer, so it travels in the state dict): the model then never sees the colour a voice
    or channel gives the whole utterance, only how the spectrum moves within it.
    """

    def __init__(self, config: ModelConfig, token_table: TokenTable | None = None,
                 cmvn: CMVN | None = None, units: SentencePieceUnits | None = None,
                 shape_ref: torch.Tensor | None = None) -> None:
        super().__init__()
        if shape_ref is not None:
            if not config.shape_norm:
                raise ValueError("shape_ref given to a model without shape_norm")
            if tuple(shape_ref.shape) != (config.n_mels,):
                raise ValueError(f"shape_ref must have shape ({config.n_mels},), "
                                 f"got {tuple(shape_ref.shape)}")
        if config.shape_norm:
            ref = shape_ref if shape_ref is not None else torch.zeros(config.n_mels)
            self.register_buffer("shape_ref", ref.detach().clone().float())
        if units is not None:
            if token_table is not None and token_table != units.table:
                raise ValueError("token_table differs from the sentencepiece units' table")
            token_table = units.table
        self.units = units  # subword units: spell transcripts; None for characters
        token_table = token_table or character_table()
        if len(token_table) != config.vocab_size:
            raise ValueError(
                f"vocab_size {config.vocab_size} differs from the token table's {len(token_table)}"
            )
        self.config = config
        self.token_table = token_table
        self._init_cmvn(cmvn, config.n_mels)
        self.encoder = ConformerEncoder(config)
        self.split = SubframeSplit(config.d_model, config.upsample) if config.upsample > 1 else None
        self.head = nn.Linear(config.d_model, config.vocab_size)

    @property
    def frame_shift(self) -> float:
        return self.config.frame_shift

    def output_lengths(self, lengths: torch.Tensor | int) -> torch.Tensor | int:
        return subsampled_length(lengths, self.config.subsampling) * self.config.upsample

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, *,
                augment: SpecAugment | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(self.normalize_shape(feats, lengths))
        if augment is not None:
            x = augment(x, lengths, feature_std=self.cmvn_std)
        h, out_lengths = self.encoder(x, lengths)  # (B, T', D)
        with torch.autocast(h.device.type, enabled=False):  # the head in float32 under autocast
            h = h.float()
            if self.split is not None:
                h = self.split(h)  # (B, T' * k, D)
                out_lengths = out_lengths * self.split.k
            logits = self.head(h)
        return F.log_softmax(logits, dim=-1), out_lengths  # (B, T' * k, V)

    def normalize_shape(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``feats (B, T, F)`` with each utterance's spectral shape moved to ``shape_ref``
        (frames past ``lengths`` untouched); ``feats`` itself without ``shape_norm``."""
        if not self.config.shape_norm:
            return feats
        shift = spectral_shape(feats, lengths) - self.shape_ref  # (B, F)
        valid = lengths_to_mask(lengths.to(feats.device), feats.shape[1])  # (B, T)
        return feats - shift[:, None, :].to(feats.dtype) * valid[..., None].to(feats.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# -- checkpoints ------------------------------------------------------------------------

def model_checkpoint(model: CTCModel, **extra: Any) -> dict[str, Any]:
    """The plain-data checkpoint of ``model``: tensors, numbers, strings, lists and dicts.

    Keys: ``format`` ("asrfuse-am"), ``version``, ``kind`` ("ctc"), ``config`` (the
    :class:`ModelConfig` as a dict), ``token_table`` (:meth:`TokenTable.to_dict`),
    ``cmvn`` (``{"mean": (80,), "std": (80,)}`` tensors), ``model`` (the state dict);
    ``sentencepiece`` (the subword model's bytes, ``uint8``) for subword units; ``extra``
    keys (e.g. ``train_state``) are added as given.
    """
    if model.units is not None:
        extra = {"sentencepiece": model.units.to_tensor(), **extra}
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": "ctc",
        "config": model.config.to_dict(),
        "token_table": model.token_table.to_dict(),
        "cmvn": {k: v.cpu() for k, v in model.cmvn.to_dict().items()},
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        **extra,
    }


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically (a crash never leaves a partial file)."""
    with atomic_write(path, "wb") as fh:
        torch.save(checkpoint, fh)


def load_checkpoint(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its format.

    Raises:
        CheckpointError: unreadable file, a pickle that needs code (refused by the
            weights-only unpickler), or a dict that is not an asrfuse-am checkpoint.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a plain-data checkpoint (refused by torch.load(weights_only=True): "
            f"{msg})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an {CHECKPOINT_FORMAT} checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {data.get('version')!r}")
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"{path}: a {data.get('kind')!r} checkpoint, expected {kind!r}")
    return data


def model_from_checkpoint(data: dict[str, Any], *, source: str = "checkpoint") -> CTCModel:
    try:
        config = ModelConfig.from_dict(dict(data["config"]))
        table = TokenTable.from_dict(dict(data["token_table"]), source=f"{source} token table")
        cmvn = CMVN.from_dict(data["cmvn"])
        units = SentencePieceUnits.from_tensor(data["sentencepiece"]) if "sentencepiece" in data else None
        model = CTCModel(config, table, cmvn, units)
        model.load_state_dict(data["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: malformed model checkpoint: {exc}") from None
    return model


def export_model(src: str | Path, dst: str | Path, *, half: bool = True) -> dict[str, Any]:
    """Write a deployable copy of a CTC checkpoint: no training state, weights in fp16
    when ``half`` (they load back into the fp32 model). Returns the written dict."""
    data = {k: v for k, v in load_checkpoint(src, kind="ctc").items() if k != "train_state"}
    if half:
        data["model"] = {k: v.half() if v.is_floating_point() else v
                         for k, v in data["model"].items()}
    save_checkpoint(dst, data)
    return data


#: what the parts of a checkpoint other than its weights are, for messages
_PARTS = {"cmvn": "feature normalisation", "sentencepiece": "subword model"}


def _same(a: Any, b: Any) -> bool:
    """Equality of checkpoint parts: plain data, tensors, and dicts of either."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _full_config(data: Any) -> dict[str, Any]:
    """A stored model config with every field, defaults for the ones it lacks."""
    return ModelConfig.from_dict(dict(data)).to_dict()


def average_checkpoints(paths: Sequence[str | Path], *, half: bool = True,
                        weights: Sequence[float] | None = None) -> dict[str, Any]:
    """The deployable checkpoint whose weights are the mean of ``paths``' (checkpoint
    averaging, as icefall's and ESPnet's ``--avg``: snapshots of one run's last steps
    average into a model that is usually better than any of them).

    ``weights`` (one per path, >= 0, not all 0; normalised to sum to 1) makes it a
    weighted mean: with two checkpoints, a point on the line between a model and one
    fine-tuned from it (weight-space interpolation, as WiSE-FT), which can keep what the
    fine-tuning gained and what it lost. The embedded model is such a mean (stages 10 and 11).

    Means are taken in float64 and stored as fp16 when ``half``. Everything but the
    weights (config, token table, feature normalisation, subword model) comes from the
    first checkpoint and must be the same in every other; training state is dropped.

    Raises:
        CheckpointError: no paths, an unreadable or non-CTC checkpoint, or one that
            differs from the first in architecture, units, normalisation or weight names
            and shapes (the message names the file and what differs).
        ValueError: ``weights`` of another length than ``paths``, negative, or all 0.
    """
    if not paths:
        raise CheckpointError("checkpoint averaging needs at least one checkpoint")
    if weights is None:
        weights = [1.0] * len(paths)
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} checkpoints")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:  # `not >=` catches NaN too
        raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}")
    shares = [w / sum(weights) for w in weights]
    first = load_checkpoint(paths[0], kind="ctc")
    sums = {k: v.double() * shares[0] for k, v in first["model"].items() if v.is_floating_point()}
    for path, share in zip(paths[1:], shares[1:]):
        data = load_checkpoint(path, kind="ctc")
        for key in sorted((first.keys() | data.keys()) - {"model", "train_state"}):
            mine, theirs = data.get(key), first.get(key)
            if key == "config":  # a key added since a checkpoint was written reads as its default
                mine, theirs = _full_config(mine), _full_config(theirs)
            if not _same(mine, theirs):
                raise CheckpointError(f"{path}: its {_PARTS.get(key, key)} differs from that "
                                      f"of {paths[0]}")
        tensors = data["model"]
        if tensors.keys() != first["model"].keys():
            raise CheckpointError(f"{path}: its weights are named differently from {paths[0]}'s")
        for k, v in tensors.items():
            if v.shape != first["model"][k].shape:
                raise CheckpointError(f"{path}: weight {k} has shape {tuple(v.shape)}, "
                                      f"{tuple(first['model'][k].shape)} in {paths[0]}")
            if k in sums:
                sums[k] += v.double() * share
            elif not torch.equal(v, first["model"][k]):
                raise CheckpointError(f"{path}: integer tensor {k} differs from {paths[0]}'s")
    dtype = torch.float16 if half else torch.float32
    out = {k: v for k, v in first.items() if k != "train_state"}
    out["model"] = {k: sums[k].to(dtype) if k in sums else v
                    for k, v in first["model"].items()}
    return out


def load_model(path: str | Path) -> CTCModel:
    """Load a CTC model (in eval mode) from a model or training checkpoint."""
    data = load_checkpoint(path, kind="ctc")
    model = model_from_checkpoint(data, source=str(path))
    model.eval()
    return model


def parameter_count(config: ModelConfig) -> int:
    return CTCModel(config).num_parameters()

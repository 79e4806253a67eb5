"""Posteriors for any manifest, from our Conformer or any other CTC model.

An :class:`Adapter` maps a list of mono 16 kHz waveforms to one ``(T_i, V)``
log-probability array each, and states its token table, its frame shift and the
fewest samples it accepts. Three kinds ship:

* :class:`CTCModelAdapter` for :class:`fusion.am.model.CTCModel` (log-mel per utterance,
  padded batch; padding does not change the outputs);
* :class:`CallableAdapter` for any ``torch.nn.Module`` or callable that maps a
  waveform (or a padded batch with lengths) to log-probs, probs or logits;
* :class:`HFWav2Vec2Adapter` for Hugging Face ``Wav2Vec2ForCTC``.

:func:`adapter_for` picks one for an object. :func:`compute_posteriors` runs an
adapter over utterances in duration-sorted batches; audio longer than
``chunk_seconds`` is cut into overlapping chunks whose starts fall on the model's
stride (a frame, or an encoder frame for an upsampling head), and the chunks' outputs
are stitched at the middle of each overlap, so an hour-long file needs memory for one
chunk batch only and gets the frame count it would get whole. Each utterance yields a
:class:`fusion.core.posteriors.Posteriors` or an :class:`UtteranceError` (unreadable, corrupt
or empty audio, a model failure): one bad file never stops the rest. Other sample rates
are resampled, multi-channel audio is averaged, clips shorter than the adapter's minimum
are zero-padded to it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fusion.am.adapt import AdaptConfig, TestTimeAdapter
from fusion.am.features import HOP_LENGTH, SAMPLE_RATE, AudioError, LogMel, UtteranceError, load_audio
from fusion.am.model import CTCModel, min_input_frames
from fusion.core.manifest import Utterance
from fusion.core.posteriors import Posteriors, PosteriorsError, PosteriorsWriter
from fusion.core.tokens import TokenTable

__all__ = [
    "Adapter",
    "AudioError",
    "CTCModelAdapter",
    "CallableAdapter",
    "HFWav2Vec2Adapter",
    "InferenceError",
    "UtteranceError",
    "adapter_for",
    "compute_posteriors",
    "length_batches",
    "min_samples",
    "token_table_from_hf_vocab",
    "write_posteriors",
]

OutputKind = Literal["log_probs", "probs", "logits"]


class InferenceError(UtteranceError):
    """The model failed on one utterance (or gave invalid output); names it and why."""


class Adapter(ABC):
    """A CTC model seen as: waveforms in, ``(T, V)`` log-probs out.

    Subclasses set ``token_table``, ``frame_shift`` (seconds; a whole number of samples)
    and ``min_samples``, and implement :meth:`__call__`. An adapter's frames must be
    aligned to its input: dropping the first ``k * frame_shift`` seconds of audio drops
    the first ``k`` frames (true of strided convolution front ends). Chunked inference
    relies on that.
    """

    token_table: TokenTable
    frame_shift: float
    min_samples: int = 1
    sample_rate: int = SAMPLE_RATE
    #: output frames per step of the model's input alignment: dropping ``k * frames_per_stride
    #: * frame_shift`` seconds drops ``k * frames_per_stride`` frames (an upsampling head)
    frames_per_stride: int = 1

    @property
    def hop_samples(self) -> int:
        hop = self.frame_shift * self.sample_rate
        if abs(hop - round(hop)) > 1e-6:
            raise ValueError(f"frame shift {self.frame_shift} s is not a whole number of samples")
        return round(hop)

    @property
    def stride_samples(self) -> int:
        """Samples between the starts at which chunks may be cut."""
        return self.hop_samples * self.frames_per_stride

    @abstractmethod
    def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``(T_i, V)`` float32 log-probabilities of each mono waveform."""


def min_samples(model: CTCModel) -> int:
    """The fewest samples ``model`` takes: shorter audio is padded with silence to this."""
    return (min_input_frames(model.config.subsampling) - 1) * HOP_LENGTH


class CTCModelAdapter(Adapter):
    """Our :class:`CTCModel`: log-mel per waveform, one padded batch through the model.

    With ``adapt`` (an :class:`~fusion.am.adapt.AdaptConfig` with ``steps > 0``), each
    waveform is instead run alone through single-utterance test-time adaptation
    (:mod:`fusion.am.adapt`); a chunk of long audio is adapted as an utterance of its own.
    """

    def __init__(self, model: CTCModel, adapt: AdaptConfig | None = None) -> None:
        self.model = model.eval()
        self.token_table = model.token_table
        self.frame_shift = model.frame_shift
        self.frames_per_stride = model.config.upsample
        self.min_samples = min_samples(model)
        self._logmel = LogMel(model.config.n_mels)
        self.tta = TestTimeAdapter(model, adapt) if adapt is not None and adapt.steps else None

    @torch.no_grad()
    def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        feats = [self._logmel(torch.from_numpy(np.asarray(w, dtype=np.float32))) for w in waveforms]
        if self.tta is not None:
            return [self.tta(f).log_probs.numpy() for f in feats]
        lengths = torch.tensor([f.shape[0] for f in feats])  # (B,)
        batch = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])  # (B, T, F)
        for b, f in enumerate(feats):
            batch[b, : f.shape[0]] = f
        log_probs, out_lengths = self.model(batch, lengths)  # (B, T', V), (B,)
        return [log_probs[b, : int(out_lengths[b])].numpy() for b in range(len(feats))]


def _to_log_probs(x: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    x = x.float()
    if kind == "logits":
        return F.log_softmax(x, dim=-1)
    if kind == "probs":
        return torch.log(x.clamp_min(0.0))
    return x


class CallableAdapter(Adapter):
    """Any ``nn.Module`` or callable as an adapter.

    Unbatched (default): ``fn(waveform)`` gets a ``(1, N)`` float tensor and returns
    ``(T, V)`` or ``(1, T, V)``. Batched (``batched=True``): ``fn(waveforms, lengths)``
    gets ``(B, N)`` zero-padded and ``(B,)`` sample counts and returns
    ``(outputs (B, T, V), frame_lengths (B,))``. ``output`` says what ``fn`` returns
    (``log_probs``, ``probs`` or ``logits``). Modules run in eval mode without gradients.
    """

    def __init__(self, fn: Callable[..., Any], *, token_table: TokenTable, frame_shift: float,
                 output: OutputKind = "log_probs", batched: bool = False, min_samples: int = 1,
                 sample_rate: int = SAMPLE_RATE) -> None:
        if output not in ("log_probs", "probs", "logits"):
            raise ValueError(f"output must be log_probs, probs or logits, got {output!r}")
        self.fn = fn
        if isinstance(fn, nn.Module):
            fn.eval()
        self.token_table = token_table
        self.frame_shift = float(frame_shift)
        self.output = output
        self.batched = batched
        self.min_samples = min_samples
        self.sample_rate = sample_rate
        _ = self.hop_samples  # validate

    @torch.no_grad()
    def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not self.batched:
            out = []
            for w in waveforms:
                y = self.fn(torch.from_numpy(np.asarray(w, dtype=np.float32)).unsqueeze(0))  # (1, N)
                y = torch.as_tensor(y)
                if y.dim() == 3:
                    if y.shape[0] != 1:
                        raise ValueError(f"expected output (1, T, V), got {tuple(y.shape)}")
                    y = y[0]  # (1, T, V) -> (T, V)
                out.append(_to_log_probs(y, self.output).numpy())
            return out
        lengths = torch.tensor([len(w) for w in waveforms])  # (B,)
        batch = torch.zeros(len(waveforms), int(lengths.max()))  # (B, N)
        for b, w in enumerate(waveforms):
            batch[b, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        y, frames = self.fn(batch, lengths)  # (B, T, V), (B,)
        y = _to_log_probs(torch.as_tensor(y), self.output)
        return [y[b, : int(frames[b])].numpy() for b in range(len(waveforms))]


def token_table_from_hf_vocab(vocab: dict[str, int], *, blank: str = "<pad>",
                              word_delimiter: str = "|") -> TokenTable:
    """A :class:`TokenTable` from a wav2vec2 tokenizer's ``get_vocab()`` (blank = pad)."""
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        if not 0 <= i < len(vocab) or tokens[i] is not None:
            raise ValueError("vocabulary ids must be 0..V-1, each once")
        tokens[i] = tok
    return TokenTable(tuple(tokens), blank_id=vocab[blank], word_boundary=word_delimiter,
                      boundary_style="separate")  # type: ignore[arg-type]


class HFWav2Vec2Adapter(Adapter):
    """Hugging Face ``Wav2Vec2ForCTC`` (or any model of that interface).

    Waveforms are normalised to zero mean and unit variance per utterance (what
    ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does). Models whose feature encoder
    uses layer norm (``feat_extract_norm == "layer"``) run as a padded batch with an
    attention mask; group-norm models (base wav2vec2) run one utterance at a time, since
    padding would change their outputs. Logits are log-softmaxed; the frame shift is
    the product of the convolution strides (20 ms for the usual 320).
    """

    def __init__(self, model: Any, token_table: TokenTable, *, normalize: bool = True) -> None:
        self.model = model.eval()
        cfg = model.config
        if cfg.vocab_size != len(token_table):
            raise ValueError(
                f"the model has {cfg.vocab_size} outputs, the token table {len(token_table)}"
            )
        self.token_table = token_table
        stride = math.prod(cfg.conv_stride)
        self.sample_rate = SAMPLE_RATE
        self.frame_shift = stride / SAMPLE_RATE
        receptive = 1
        for k, s in zip(reversed(cfg.conv_kernel), reversed(cfg.conv_stride)):
            receptive = (receptive - 1) * s + k
        self.min_samples = receptive
        self.normalize = normalize
        self.batched = getattr(cfg, "feat_extract_norm", "group") == "layer"

    def _prep(self, w: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(w, dtype=np.float32))
        if self.normalize:
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        return x

    @torch.no_grad()
    def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        xs = [self._prep(w) for w in waveforms]
        if not self.batched:
            out = []
            for x in xs:
                logits = self.model(x.unsqueeze(0)).logits[0]  # (1, N) -> (T, V)
                out.append(F.log_softmax(logits.float(), dim=-1).numpy())
            return out
        lengths = torch.tensor([len(x) for x in xs])  # (B,)
        batch = torch.zeros(len(xs), int(lengths.max()))  # (B, N)
        mask = torch.zeros(len(xs), int(lengths.max()), dtype=torch.long)  # (B, N)
        for b, x in enumerate(xs):
            batch[b, : len(x)] = x
            mask[b, : len(x)] = 1
        logits = self.model(batch, attention_mask=mask).logits  # (B, T, V)
        frames = self.model._get_feat_extract_output_lengths(lengths)  # (B,)
        lp = F.log_softmax(logits.float(), dim=-1)
        return [lp[b, : int(frames[b])].numpy() for b in range(len(xs))]


def adapter_for(obj: Any, **kwargs: Any) -> Adapter:
    """An adapter for ``obj``: an :class:`Adapter` as is, a :class:`CTCModel` (optionally
    ``adapt=``: test-time adaptation), a ``Wav2Vec2ForCTC`` (``token_table=`` required), or
    any callable (``token_table=``, ``frame_shift=`` and optionally ``output=``,
    ``batched=``, ``min_samples=``)."""
    if isinstance(obj, Adapter):
        return obj
    if isinstance(obj, CTCModel):
        return CTCModelAdapter(obj, **kwargs)
    if type(obj).__name__ == "Wav2Vec2ForCTC" or (
        hasattr(obj, "config") and hasattr(obj, "_get_feat_extract_output_lengths")
    ):
        return HFWav2Vec2Adapter(obj, **kwargs)
    if callable(obj):
        return CallableAdapter(obj, **kwargs)
    raise TypeError(f"cannot make an adapter from {type(obj).__name__}")


# -- running over utterances ----------------------------------------------------------

@dataclass
class _Piece:
    owner: int  # index of the utterance in the current group
    start: int  # first sample of the chunk
    samples: np.ndarray
    output: np.ndarray | None = None


def chunk_starts(num_samples: int, chunk: int, overlap: int, hop: int) -> list[int]:
    """Chunk start samples: multiples of ``hop``; each chunk is ``chunk`` samples and
    overlaps the next by at least ``overlap`` (the last chunk is longer than ``overlap``)."""
    step = max(hop, (chunk - overlap) // hop * hop)
    starts = [0]
    while starts[-1] + chunk < num_samples:
        starts.append(starts[-1] + step)
    return starts


def length_batches(lengths: Sequence[int], max_padded: int, max_batch_size: int | None = None
                   ) -> list[list[int]]:
    """Indices of ``lengths`` in duration-sorted batches: each batch, padded to its
    longest item, holds at most ``max_padded`` samples (an item longer than that is a
    batch of its own) and at most ``max_batch_size`` items. Sorting keeps the padding
    small: the smaller ``max_padded``, the less of a batch is padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (lengths[i] * (len(current) + 1) > max_padded or full):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def stitch(pieces: Sequence[_Piece], hop: int) -> np.ndarray:
    """Join chunk outputs: each overlap is split at its middle frame."""
    if len(pieces) == 1:
        return pieces[0].output  # type: ignore[return-value]
    parts = []
    lo = 0  # global frame where the current piece's kept part begins
    for c, piece in enumerate(pieces):
        first = piece.start // hop  # global index of the piece's frame 0
        out = piece.output
        assert out is not None
        if c + 1 < len(pieces):
            nxt_first = pieces[c + 1].start // hop
            end = first + out.shape[0]
            hi = max(lo, min(end, (nxt_first + end) // 2))
        else:
            hi = first + out.shape[0]
        parts.append(out[lo - first: hi - first])
        lo = hi
    return np.concatenate(parts, axis=0)


def compute_posteriors(
    utterances: Iterable[Utterance],
    adapter: Any,
    *,
    max_batch_seconds: float = 160.0,
    max_batch_size: int = 64,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 4.0,
    group_size: int = 256,
    progress: bool = False,
    **adapter_kwargs: Any,
) -> Iterator[Posteriors | UtteranceError]:
    """Posteriors of each utterance, in input order (errors in place of failed ones).

    Utterances are read ``group_size`` at a time, sorted by duration within the group
    and run in batches of at most ``max_batch_seconds`` padded audio. Audio longer than
    ``chunk_seconds`` is split into chunks overlapping by ``overlap_seconds`` (which
    should cover the model's useful context; 4 s by default) and stitched.
    """
    ad = adapter_for(adapter, **adapter_kwargs)
    stride = ad.stride_samples  # validates the frame shift too
    chunk = max(stride, int(chunk_seconds * ad.sample_rate) // stride * stride)
    overlap = min(int(overlap_seconds * ad.sample_rate), chunk // 2)
    utts = list(utterances)
    bar = tqdm(total=len(utts), desc="posteriors", disable=not progress, mininterval=2)
    try:
        for g in range(0, len(utts), group_size):
            group = utts[g: g + group_size]
            yield from _run_group(group, ad, chunk, overlap, max_batch_seconds, max_batch_size)
            bar.update(len(group))
    finally:
        bar.close()


def _run_group(group: Sequence[Utterance], ad: Adapter, chunk: int, overlap: int,
               max_batch_seconds: float, max_batch_size: int
               ) -> Iterator[Posteriors | UtteranceError]:
    results: list[Posteriors | UtteranceError | None] = [None] * len(group)
    pieces: list[_Piece] = []
    by_owner: dict[int, list[_Piece]] = {}
    for u, utt in enumerate(group):
        try:
            if utt.audio is None:
                raise AudioError(utt.id, "manifest line has no audio path")
            wav = load_audio(utt.audio, utt_id=utt.id, target_rate=ad.sample_rate)
        except AudioError as exc:
            results[u] = exc
            continue
        if len(wav) < ad.min_samples:  # too short for the model: pad with silence
            wav = np.pad(wav, (0, ad.min_samples - len(wav)))
        starts = chunk_starts(len(wav), chunk, overlap, ad.stride_samples)
        own = [_Piece(u, s, wav[s: s + chunk]) for s in starts]
        by_owner[u] = own
        pieces.extend(own)
    batches = length_batches([len(p.samples) for p in pieces],
                             round(max_batch_seconds * ad.sample_rate), max_batch_size)
    failed: dict[int, str] = {}
    for batch in batches:
        try:
            outs = ad([pieces[i].samples for i in batch])
        except Exception:  # noqa: BLE001 -- any model error: find the culprit(s) one by one
            outs = []
            for i in batch:
                try:
                    outs.append(ad([pieces[i].samples])[0])
                except Exception as exc:  # noqa: BLE001 -- reported per utterance
                    failed.setdefault(pieces[i].owner, f"{type(exc).__name__}: {exc}")
                    outs.append(None)
        for i, out in zip(batch, outs):
            pieces[i].output = out
    for u, own in by_owner.items():
        utt = group[u]
        if u in failed:
            results[u] = InferenceError(utt.id, f"model failed: {failed[u]}", utt.audio)
            continue
        try:
            array = stitch(own, ad.hop_samples)
            results[u] = Posteriors.from_array(utt.id, array, kind="log_probs",
                                               frame_shift=ad.frame_shift,
                                               token_table=ad.token_table)
        except (PosteriorsError, ValueError) as exc:
            results[u] = InferenceError(utt.id, f"invalid model output: {exc}", utt.audio)
    for r in results:
        assert r is not None
        yield r


def write_posteriors(
    utterances: Iterable[Utterance], adapter: Any, out_path: str | Path, *,
    on_error: Callable[[UtteranceError], None] | None = None, **kwargs: Any,
) -> tuple[int, list[UtteranceError]]:
    """Compute posteriors and write them to an ``.npz`` (:class:`PosteriorsWriter`).

    Returns ``(utterances written, errors)``; ``on_error`` is called for each error as
    it happens.
    """
    ad = adapter_for(adapter, **{k: kwargs.pop(k) for k in list(kwargs)
                                 if k in ("token_table", "frame_shift", "output", "batched",
                                          "min_samples")})
    errors: list[UtteranceError] = []
    written = 0
    with PosteriorsWriter(out_path, token_table=ad.token_table) as writer:
        for r in compute_posteriors(utterances, ad, **kwargs):
            if isinstance(r, UtteranceError):
                errors.append(r)
                if on_error is not None:
                    on_error(r)
            else:
                writer.write(r)
                written += 1
    return written, errors

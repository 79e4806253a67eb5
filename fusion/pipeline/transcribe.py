"""Audio files of any length in, transcripts with word times out (``fusion transcribe``,
:mod:`fusion.cli.transcribe`).

The pipeline, per recording, in one pass and bounded memory:

1. :func:`audio_blocks` reads the file in blocks (``soundfile``), averages the channels and
   resamples each block to the model's rate with torchaudio's windowed sinc, the resampler
   :func:`fusion.am.features.prepare_waveform` uses: each block is resampled with enough
   input on both sides that the result equals resampling the whole file at once.
2. Silero VAD (:mod:`fusion.am.vad`) scores the blocks and cuts the stream into speech
   segments at pauses, none longer than ``max_segment`` seconds; only the open segment's
   samples are kept.
3. Segments are gathered into pools of about ``POOL_SECONDS`` of audio; the acoustic
   model (the embedded one by default) runs over each pool's segments in length-sorted
   batches of at most ``BATCH_SECONDS`` padded audio (:func:`fusion.am.infer.length_batches`;
   little of a batch is padding, which costs as much as speech), giving each segment the
   posteriors it gets alone; beam search with the default LM and weights (those of ``fusion demo``,
   from :mod:`fusion.cli.main`) decodes each segment; word times are moved into recording time.

With ``stream=True`` each segment is instead fed to the acoustic model chunk by chunk
with limited left context and look-ahead (:class:`StreamOptions`), and the chunks'
posteriors to the decoder's stream, which gives a partial hypothesis after each chunk.

Each recording's result is one JSON object (:func:`result_dict`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusion.am.vad import VAD_RATE, Segment, Segmenter, SegmenterConfig, SileroVAD
from fusion.core.manifest import read_manifest
from fusion.core.types import WordSpan

__all__ = [
    "AUDIO_EXTENSIONS",
    "Recording",
    "SegmentResult",
    "StreamOptions",
    "Transcriber",
    "TranscriptionError",
    "audio_blocks",
    "collect_inputs",
    "partial_lag",
    "readable_cues",
]

#: extensions of the formats libsndfile reads (and the usual aliases)
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au",
     ".snd", ".caf", ".w64", ".rf64", ".sd2", ".voc", ".wve", ".mat", ".pvf", ".xi", ".htk",
     ".sds", ".avr", ".paf", ".nist", ".sph", ".ircam", ".sf", ".mpc2k"})
BLOCK_SECONDS = 30.0  # audio read (and resampled) at a time
POOL_SECONDS = 300.0  # segments' audio gathered before the acoustic model runs over them
STREAM_POOL_SECONDS = 60.0  # the same when streaming (partial results come per pool)
BATCH_SECONDS = 30.0  # padded audio per acoustic-model batch (length-sorted within a pool)
CUE_CHARS, CUE_LINES, CUE_SECONDS = 42, 2, 7.0  # readable subtitles


class TranscriptionError(Exception):
    """One recording cannot be transcribed; the message names the file and why."""


@dataclass(frozen=True)
class Recording:
    """One input: its id (unique in the batch) and audio file."""

    id: str
    path: Path


@dataclass(frozen=True)
class StreamOptions:
    """Chunked acoustic-model inference (seconds): each ``chunk`` is computed with
    ``left`` seconds of audio before it and ``lookahead`` after it, and only the chunk's
    own frames are kept. The look-ahead is the algorithmic latency."""

    chunk: float = 1.0
    left: float = 4.0
    lookahead: float = 0.5

    def __post_init__(self) -> None:
        for name in ("chunk", "left", "lookahead"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"stream {name} must be a finite number of seconds >= 0, got {value!r}")
        if self.chunk <= 0:
            raise ValueError(f"stream chunk must be > 0 seconds, got {self.chunk}")


@dataclass
class SegmentResult:
    """One segment's transcript; times in seconds of the recording."""

    start: float
    end: float
    text: str
    words: tuple[WordSpan, ...]
    #: streaming only: (audio seconds available when it was given, partial text) per chunk
    partials: list[tuple[float, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 4), "end": round(self.end, 4), "text": self.text,
                "words": [w.to_dict() for w in self.words]}


# -- inputs -----------------------------------------------------------------------------
def collect_inputs(paths: Iterable[str | Path]) -> list[Recording]:
    """Recordings from audio files, folders (searched recursively for audio files) and
    manifests (``.jsonl`` with ``id`` and ``audio``). Ids: a file's stem, a path relative
    to its folder without the extension, a manifest's ids; they must be unique."""
    out: list[Recording] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not files:
                raise FileNotFoundError(f"{path}: no audio files in this folder")
            out += [Recording(p.relative_to(path).with_suffix("").as_posix(), p.resolve()) for p in files]
        elif path.suffix.lower() == ".jsonl":
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such manifest")
            out += [Recording(u.id, Path(u.audio)) for u in read_manifest(path, require=("audio",))]
        elif path.suffix.lower() in AUDIO_EXTENSIONS or path.is_file():
            out.append(Recording(path.stem, path.resolve()))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for r in out:
        if r.id in seen:
            raise ValueError(f"two inputs have the id {r.id!r}: {seen[r.id]} and {r.path} "
                             "(give them in a manifest with distinct ids)")
        seen[r.id] = r.path
    if not out:
        raise ValueError("no inputs given")
    return out


# -- audio ------------------------------------------------------------------------------
def _resample_margin(rate: int, target: int) -> tuple[int, int, int]:
    """``(orig, new, margin)``: the rates over their gcd, and the input samples of context
    (a multiple of ``orig``) beyond which torchaudio's default sinc kernel does not reach."""
    g = math.gcd(rate, target)
    orig, new = rate // g, target // g
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))  # torchaudio: lowpass_filter_width 6, rolloff 0.99
    return orig, new, orig * (math.ceil(width / orig) + 1)


def audio_blocks(path: str | Path, target_rate: int = VAD_RATE,
                 block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """The file's audio as mono float32 blocks at ``target_rate``.

    Channels are averaged and other rates resampled block by block; the blocks joined
    equal :func:`fusion.am.features.load_audio` of the whole file (to float rounding).

    Raises:
        TranscriptionError: unreadable file, no samples, non-finite samples.
    """
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    try:
        fh = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise TranscriptionError(f"{path}: cannot read audio: {exc}") from None
    with fh:
        rate = fh.samplerate
        if fh.frames == 0:
            raise TranscriptionError(f"{path}: empty audio (0 samples)")
        same = rate == target_rate
        orig, new, margin = _resample_margin(rate, target_rate) if not same else (1, 1, 0)
        block = max(orig, round(block_seconds * rate / orig) * orig)
        buf = np.zeros(0, dtype=np.float32)  # input samples from buf_start
        buf_start = pos = 0
        eof = False
        while True:
            while not eof and buf_start + len(buf) < pos + block + margin:
                try:
                    data = fh.read(block, dtype="float32", always_2d=True)  # (N, C)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    raise TranscriptionError(f"{path}: cannot decode audio: {exc}") from None
                if len(data) == 0:
                    eof = True
                    break
                mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
                if not np.isfinite(mono).all():
                    raise TranscriptionError(f"{path}: audio contains NaN or infinite samples")
                buf = np.concatenate((buf, mono))
            avail = buf_start + len(buf)
            if pos >= avail:
                return
            end = min(pos + block, avail)
            if same:
                yield buf[pos - buf_start: end - buf_start].copy()
            else:
                left = min(margin, pos)
                x = buf[pos - left - buf_start: min(end + margin, avail) - buf_start]
                y = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), rate, target_rate).numpy()
                first = left * new // orig
                count = ((end - pos) * new // orig if not (eof and end == avail)
                         else math.ceil(end * new / orig) - pos * new // orig)
                yield np.ascontiguousarray(y[first: first + count], dtype=np.float32)
            pos = end
            drop = max(0, pos - margin - buf_start)
            buf, buf_start = buf[drop:], buf_start + drop


class _SampleBuffer:
    """The stream's recent samples: append blocks, slice ``[a, b)``, forget before ``a``."""

    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.float32)
        self._start = 0

    @property
    def end(self) -> int:
        return self._start + len(self._data)

    def append(self, block: np.ndarray) -> None:
        self._data = np.concatenate((self._data, block))

    def slice(self, a: int, b: int) -> np.ndarray:
        return self._data[a - self._start: b - self._start].copy()

    def forget_before(self, a: int) -> None:
        drop = min(len(self._data), max(0, a - self._start))
        self._data, self._start = self._data[drop:], self._start + drop


# -- the pipeline -----------------------------------------------------------------------
def _shift(words: Iterable[WordSpan], offset: float) -> tuple[WordSpan, ...]:
    return tuple(WordSpan(w.word, w.start + offset, w.end + offset, w.confidence) for w in words)


class Transcriber:
    """Acoustic model, VAD and decoder: recordings in, :class:`SegmentResult` lists out.

    Args:
        model: acoustic model checkpoint (default: the embedded one).
        lm: word n-gram for beam search (default: ``fusion demo``'s); ``None``: no LM.
        beam_size: beams kept per frame (default: :class:`~fusion.decoder.options.SearchOptions`').
        vad: segmentation settings.
        stream: chunked inference and streaming decoding instead of whole segments.
    """

    def __init__(self, model: Path | None = None, lm: Path | None | str = "default",
                 beam_size: int | None = None, vad: SegmenterConfig = SegmenterConfig(),
                 stream: StreamOptions | None = None) -> None:
        from fusion.am.infer import CTCModelAdapter
        from fusion.am.model import load_model
        from fusion.core.defaults import DEFAULT_AM, DEFAULT_LM, DEFAULT_WEIGHTS
        from fusion.decoder.options import SearchOptions
        from fusion.decoder.search import BeamSearchDecoder
        from fusion.pipeline.build import lm_scorers

        self.model_path = Path(model) if model is not None else DEFAULT_AM
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: no such acoustic model")
        self.adapter = CTCModelAdapter(load_model(self.model_path))
        self.table = self.adapter.token_table
        self.lm_path = DEFAULT_LM if lm == "default" else (Path(lm) if lm is not None else None)
        scorers = lm_scorers(self.lm_path) if self.lm_path is not None else []
        weights = {s.name: DEFAULT_WEIGHTS[s.name] for s in scorers}
        options = SearchOptions() if beam_size is None else SearchOptions(beam_size=beam_size)
        self.decoder = BeamSearchDecoder(self.table, scorers, weights, options)
        self.vad_config = vad
        self.stream = stream
        self._vad = SileroVAD()
        if self.adapter.sample_rate != VAD_RATE:
            raise ValueError(f"{self.model_path}: the model takes {self.adapter.sample_rate} Hz "
                             f"audio; the VAD needs {VAD_RATE} Hz")

    def settings(self) -> dict[str, Any]:
        """What decides the output besides the audio (for resuming)."""
        from fusion.core.npzindex import content_fingerprint

        return {"model": content_fingerprint(self.model_path),
                "lm": content_fingerprint(self.lm_path) if self.lm_path else None,
                "weights": self.decoder.weights, "search": asdict(self.decoder.options),
                "vad": asdict(self.vad_config),
                "stream": asdict(self.stream) if self.stream else None}

    def transcribe(self, path: str | Path, *, progress: Callable[[float], None] | None = None,
                   on_partial: Callable[[float, str], None] | None = None
                   ) -> tuple[list[SegmentResult], float]:
        """Segments of one recording and its duration in seconds. ``progress(seconds)``
        is called as audio is read; ``on_partial(time, text)`` with each partial
        hypothesis when streaming.

        Raises:
            TranscriptionError: unreadable or bad audio.
        """
        self._vad.reset()
        segmenter = Segmenter(self.vad_config)
        buffer = _SampleBuffer()
        results: list[SegmentResult] = []
        pending: list[tuple[Segment, np.ndarray]] = []
        pool = (STREAM_POOL_SECONDS if self.stream is not None else POOL_SECONDS) * VAD_RATE

        def take(segments: Iterable[Segment], final: bool = False) -> None:
            for s in segments:
                pending.append((s, buffer.slice(s.start, s.end)))
            if pending and (final or sum(len(w) for _, w in pending) >= pool):
                results.extend(self._decode_segments(pending, on_partial))
                pending.clear()

        for block in audio_blocks(path, VAD_RATE):
            buffer.append(block)
            take(segmenter.accept(self._vad.accept(block)))
            buffer.forget_before(segmenter.keep_from)
            if progress is not None:
                progress(len(block) / VAD_RATE)
        take(segmenter.accept(self._vad.flush()))
        take(segmenter.finish(buffer.end), final=True)
        return results, buffer.end / VAD_RATE

    def _decode_segments(self, pending: Sequence[tuple[Segment, np.ndarray]],
                         on_partial: Callable[[float, str], None] | None) -> list[SegmentResult]:
        if self.stream is not None:
            return [self._stream_segment(s, w, on_partial) for s, w in pending]
        from fusion.am.infer import length_batches

        out: list[SegmentResult] = []
        waves = [self._padded(w) for _, w in pending]
        log_probs: dict[int, np.ndarray] = {}
        for batch in length_batches([len(w) for w in waves], round(BATCH_SECONDS * VAD_RATE)):
            for i, lp in zip(batch, self.adapter([waves[i] for i in batch])):
                log_probs[i] = lp
        for i, (seg, _) in enumerate(pending):
            out.append(self._result(seg, self._decode(log_probs.pop(i))))
        return out

    def _padded(self, wave: np.ndarray) -> np.ndarray:
        short = self.adapter.min_samples - len(wave)
        return np.pad(wave, (0, short)) if short > 0 else wave

    def _decode(self, log_probs: np.ndarray) -> Any:
        from fusion.core.posteriors import Posteriors

        post = Posteriors.from_array("segment", log_probs, kind="log_probs",
                                     frame_shift=self.adapter.frame_shift, token_table=self.table)
        return self.decoder.decode(post)

    def _result(self, seg: Segment, decoded: Any,
                partials: list[tuple[float, str]] | None = None) -> SegmentResult:
        start, end = seg.seconds
        best = decoded.best
        return SegmentResult(start, end, best.text, _shift(best.words, start), partials or [])

    def chunk_log_probs(self, wave: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Streaming inference over one segment: ``(end sample of the audio used, the
        chunk's own frames)`` per chunk, in order; the frames together are as many as the
        whole segment's."""
        opts, ad = self.stream, self.adapter
        assert opts is not None
        stride, hop = ad.stride_samples, ad.hop_samples
        chunk = max(stride, round(opts.chunk * VAD_RATE / stride) * stride)
        left = round(opts.left * VAD_RATE / stride) * stride
        right = round(opts.lookahead * VAD_RATE)
        n = len(wave)
        for c in range(0, n, chunk):
            a, b = max(0, c - left), min(n, c + chunk + right)
            lp = ad([self._padded(wave[a:b])])[0]  # (T_w, V)
            first = (c - a) // hop
            last = c + chunk >= n
            frames = lp[first:] if last else lp[first: first + chunk // hop]
            yield b, frames

    def _stream_segment(self, seg: Segment, wave: np.ndarray,
                        on_partial: Callable[[float, str], None] | None) -> SegmentResult:
        stream = self.decoder.stream(self.adapter.frame_shift)
        partials: list[tuple[float, str]] = []
        offset = seg.start / VAD_RATE
        for used_end, frames in self.chunk_log_probs(wave):
            text = stream.accept(frames).text
            when = offset + used_end / VAD_RATE
            partials.append((when, text))
            if on_partial is not None:
                on_partial(when, text)
        return self._result(seg, stream.finish(), partials)


def partial_lag(partials: Sequence[tuple[float, str]], words: Sequence[WordSpan]) -> list[float]:
    """Per final word, the seconds from its end until the partial hypotheses first held
    it for good (the final words up to it, as a prefix of every later partial)."""
    final = [w.word for w in words]
    lags: list[float] = []
    stable_from = [len(partials)] * (len(final) + 1)
    for k in range(1, len(final) + 1):
        p = len(partials)
        while p > 0 and partials[p - 1][1].split()[:k] == final[:k]:
            p -= 1
        stable_from[k] = p
    for k, w in enumerate(words, start=1):
        p = stable_from[k]
        when = partials[p][0] if p < len(partials) else (partials[-1][0] if partials else w.end)
        lags.append(max(0.0, when - w.end))
    return lags


# -- outputs ----------------------------------------------------------------------------
def result_dict(rec: Recording, duration: float, segments: Sequence[SegmentResult]) -> dict[str, Any]:
    """One recording's JSONL line."""
    return {"id": rec.id, "path": str(rec.path), "duration": round(duration, 4),
            "text": " ".join(s.text for s in segments if s.text),
            "segments": [s.to_dict() for s in segments]}


def readable_cues(segments: Sequence[dict[str, Any]], *, chars: int = CUE_CHARS,
                  lines: int = CUE_LINES, seconds: float = CUE_SECONDS
                  ) -> list[tuple[float, float, str]]:
    """Subtitle cues ``(start, end, text)``: each segment's words in cues of at most
    ``lines`` lines of ``chars`` characters and ``seconds`` long, lines broken with \\n."""
    cues: list[tuple[float, float, str]] = []
    for seg in segments:
        current: list[dict[str, Any]] = []
        for w in seg["words"]:
            text = " ".join(x["word"] for x in [*current, w])
            if current and (len(textwrap.wrap(text, chars)) > lines
                            or w["end"] - current[0]["start"] > seconds):
                cues.append(_cue(current, chars))
                current = []
            current.append(w)
        if current:
            cues.append(_cue(current, chars))
    return cues


def _cue(words: list[dict[str, Any]], chars: int) -> tuple[float, float, str]:
    text = "\n".join(textwrap.wrap(" ".join(w["word"] for w in words), chars))
    return words[0]["start"], words[-1]["end"], text

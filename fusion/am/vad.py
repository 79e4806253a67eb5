"""Voice activity detection: Silero VAD's speech probabilities, and segmentation at pauses.

* :class:`SileroVAD` runs Silero VAD (the ``silero-vad`` wheel ships its models, MIT
  licence; nothing is downloaded) on 16 kHz audio given block by block, one speech
  probability per 32 ms window (512 samples). It runs the wheel's *sequence* ONNX model
  (one ONNX Runtime call per block of windows, its LSTM state carried between calls as
  values), whose probabilities are those of Silero's frame-by-frame model.
* :class:`Segmenter` turns the probabilities, as they come, into speech segments:
  hysteresis (speech starts at ``threshold``, ends below ``threshold - 0.15`` after
  ``min_silence`` seconds), segments shorter than ``min_speech`` dropped, ``pad`` seconds
  added on each side without overlapping a neighbour, and no segment longer than
  ``max_segment``: longer speech is cut at its least speech-like window (the lowest
  probability, smoothed over three windows) in the segment's second half. It keeps only
  the open segment's probabilities, so memory does not grow with the recording.

Both work on a stream, so an hour of audio costs the memory of one block.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["VAD_RATE", "WINDOW", "Segment", "Segmenter", "SegmenterConfig", "SileroVAD",
           "silero_model_path"]

VAD_RATE = 16_000
WINDOW = 512  # samples per probability: 32 ms at 16 kHz
_CONTEXT = 64  # samples of the previous window each window sees (Silero's own framing)
_SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"


def silero_model_path(name: str = _SEQUENCE_MODEL) -> Path:
    """The path of a model file inside the installed ``silero-vad`` wheel.

    Found without importing the package (its import sets torch's thread count to 1)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("voice activity detection needs silero-vad: pip install silero-vad")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise ImportError(f"silero-vad is installed but has no {name} ({path}): "
                          "install silero-vad >= 6.2")
    return path


class SileroVAD:
    """Speech probabilities of a 16 kHz stream, one per 512-sample window.

    Call :meth:`accept` with blocks of any length; it returns the probabilities of the
    windows completed so far. :meth:`flush` zero-pads and scores the last partial window.
    :meth:`reset` starts a new stream. ``threads``: ONNX Runtime's intra-op threads.
    """

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(silero_model_path()), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self._hidden = np.zeros((1, 1, 128), dtype=np.float32)
        self._cell = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the whole windows now available (``samples``: mono, 16 kHz)."""
        x = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)))
        n = len(x) // WINDOW
        self._pending = x[n * WINDOW:]
        return self._run(x[: n * WINDOW].reshape(n, WINDOW)) if n else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """The last partial window's probability (zero-padded), if any samples are left."""
        if not len(self._pending):
            return np.zeros(0, dtype=np.float32)
        frame = np.zeros((1, WINDOW), dtype=np.float32)
        frame[0, : len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return self._run(frame)

    def _run(self, frames: np.ndarray) -> np.ndarray:
        contexts = np.empty((len(frames), _CONTEXT), dtype=np.float32)  # (N, 64)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -_CONTEXT:]
        self._context = frames[-1, -_CONTEXT:].copy()
        block = np.concatenate((contexts, frames), axis=1)  # (N, 576)
        probs, self._hidden, self._cell = self._session.run(
            ["speech_probs", "hn", "cn"], {"input": block, "h": self._hidden, "c": self._cell})
        return np.asarray(probs, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class SegmenterConfig:
    """How speech probabilities become segments (seconds; probabilities in [0, 1]).

    Attributes:
        threshold: a window at or above it is speech (Silero's default 0.5).
        neg_threshold: inside speech, only windows below it count as silence (default
            ``threshold - 0.15``, Silero's).
        min_silence: silence that ends a segment.
        min_speech: shorter segments are dropped.
        pad: added on each side of a segment (never over a neighbour); at most
            ``min_silence``.
        max_segment: the longest segment, padding included.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_silence: float = 0.3
    min_speech: float = 0.25
    pad: float = 0.2
    max_segment: float = 25.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"VAD neg_threshold must be in [0, threshold], got {self.neg_threshold}")
        for name in ("min_silence", "min_speech", "pad", "max_segment"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"VAD {name} must be a finite number of seconds >= 0, got {value!r}")
        if self.pad > self.min_silence:
            raise ValueError(f"VAD pad ({self.pad} s) cannot exceed min_silence ({self.min_silence} s)")
        if self.max_segment - 2 * self.pad < 4 * WINDOW / VAD_RATE:
            raise ValueError(f"VAD max_segment ({self.max_segment} s) leaves too little room "
                             f"beside the padding ({self.pad} s each side)")

    @property
    def exit_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(0.0, self.threshold - 0.15)


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, end)`` of the 16 kHz stream, padding included."""

    start: int
    end: int

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / VAD_RATE, self.end / VAD_RATE


class Segmenter:
    """Speech segments from a stream of window probabilities (see :class:`SegmenterConfig`).

    :meth:`accept` takes the next windows' probabilities and returns the segments closed
    by them; :meth:`finish` takes the stream's length in samples and closes the rest.
    Segments come in order and never overlap.
    """

    def __init__(self, config: SegmenterConfig = SegmenterConfig()) -> None:
        self.config = config
        w = WINDOW / VAD_RATE
        self._min_silence = max(1, math.ceil(config.min_silence / w - 1e-9))  # waits >= pad
        self._min_speech = round(config.min_speech / w)
        self._pad = round(config.pad * VAD_RATE)
        # windows of speech a segment may hold so that, padded, it stays within max_segment
        self._max_windows = int((config.max_segment * VAD_RATE - 2 * self._pad) // WINDOW)
        self._seen = 0  # windows seen
        self._start: int | None = None  # open segment's first window
        self._silence_from: int | None = None  # first window of the current silence in it
        self._probs: list[float] = []  # the open segment's probabilities, from _start
        self._last_end = 0  # end sample of the last segment given out

    def accept(self, probs: np.ndarray) -> list[Segment]:
        out: list[Segment] = []
        cfg = self.config
        for p in np.asarray(probs, dtype=np.float64).reshape(-1).tolist():
            i = self._seen
            self._seen += 1
            if self._start is None:
                if p >= cfg.threshold:
                    self._start, self._silence_from, self._probs = i, None, [p]
                continue
            self._probs.append(p)
            if p >= cfg.threshold:
                self._silence_from = None
            elif p < cfg.exit_threshold and self._silence_from is None:
                self._silence_from = i
            if self._silence_from is not None and i + 1 - self._silence_from >= self._min_silence:
                out += self._close(self._silence_from, limit=self._seen * WINDOW)
                continue
            if i + 1 - self._start > self._max_windows:
                out += self._cut()
        return out

    @property
    def keep_from(self) -> int:
        """The first sample a segment still to come may hold: earlier ones can be dropped."""
        first = self._start if self._start is not None else self._seen
        return max(self._last_end, first * WINDOW - self._pad)

    def finish(self, num_samples: int) -> list[Segment]:
        """Close the open segment at the end of a stream of ``num_samples`` samples."""
        if self._start is None:
            return []
        end = self._silence_from if self._silence_from is not None else self._seen
        return self._close(end, limit=num_samples)

    def _cut(self) -> list[Segment]:
        """Split the over-long open segment at its least speech-like window."""
        probs = np.asarray(self._probs)
        smooth = np.convolve(np.pad(probs, 1, mode="edge"), np.ones(3) / 3, mode="valid")  # (N,)
        lo = max(1, len(probs) // 2)
        score = smooth + 1e-3 * probs  # equal smoothed values: the window itself decides
        tail = score[lo:][::-1]  # the latest of equal minima: segments as long as they may be
        start = self._start
        cut = start + lo + len(tail) - 1 - int(np.argmin(tail))
        segments = self._emit(start, cut, pad_end=False, limit=cut * WINDOW)
        self._probs = self._probs[cut - start:]
        self._start = cut
        if self._silence_from is not None and self._silence_from < cut:
            self._silence_from = None
        return segments

    def _close(self, end: int, *, limit: int) -> list[Segment]:
        start = self._start
        self._start, self._silence_from, self._probs = None, None, []
        if end - start < self._min_speech:
            return []
        return self._emit(start, end, pad_end=True, limit=limit)

    def _emit(self, start: int, end: int, *, pad_end: bool, limit: int) -> list[Segment]:
        s = max(self._last_end, start * WINDOW - self._pad)
        e = min(limit, end * WINDOW + (self._pad if pad_end else 0))
        if e <= s:
            return []
        self._last_end = e
        return [Segment(s, e)]

    def segments(self, probs: np.ndarray, num_samples: int) -> Iterator[Segment]:
        """All segments of a whole stream at once (a convenience for tests and tools)."""
        yield from self.accept(probs)
        yield from self.finish(num_samples)

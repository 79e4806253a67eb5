"""CTC prefix beam search with shallow fusion of named, weighted scorers.

The search keeps, for every distinct prefix (collapsed unit sequence), the log-probability
of the frames so far ending in blank (``p_b``) and in its last unit (``p_nb``): the
acoustic score is their log-sum. When a prefix completes a word, each word scorer
(:mod:`fusion.decoder.scorers`) scores it; a hypothesis ranks by

    weights["acoustic"] * acoustic + sum(weights[s.name] * score[s.name] for s in scorers)

and keeps each scorer's unweighted score. Pruning per frame: candidate units are the
``token_top_k`` most probable above ``token_min_logprob``; frames whose blank probability
reaches ``blank_skip`` only extend prefixes with blank; beams more than
``beam_threshold`` below the best are dropped, then all but the best ``beam_size``.

Token and word times of the returned hypotheses come from a CTC forced alignment of each
hypothesis, not from search bookkeeping: ``fusion.decoder._ctcsearch.align`` (the same spans as
``torchaudio.functional.forced_align``, ties included).

The search runs in C++ (``fusion/decoder/csrc/ctc_search.cpp``, KenLM linked in). Scorers describe
themselves to it (:meth:`~fusion.decoder.scorers.WordScorer.compiled`): a word-level KenLM, the word
bonus, lexicons and hotwords run natively; any other scorer (a neural LM) is called back,
the words a frame's beams could complete scored in one batched call. Its Python
counterpart, step for step, is the tests' oracle (``tests/search_oracle.py``).

:meth:`BeamSearchDecoder.stream` decodes chunk by chunk (:class:`DecoderStream`): the
search's beams are carried over between chunks, a partial result is the best prefix so
far, and the final result is :meth:`BeamSearchDecoder.decode`'s for the whole utterance.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

import numpy as np

from fusion.core.defaults import ACOUSTIC
from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from fusion.core.types import DecodeResult, Hypothesis, PartialResult, TokenSpan, WordSpan
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import WordScorer

try:
    from fusion.decoder import _ctcsearch
    _CTC_ERROR = ""
except ImportError as _exc:  # not built: installing the package builds it (see setup.py)
    _ctcsearch = None
    _CTC_ERROR = str(_exc)

_new_tuple = tuple.__new__

__all__ = ["BeamSearchDecoder", "DecoderStream", "StreamSnapshot", "compiled_scorers"]


def compiled_scorers(scorers: Sequence[WordScorer], weights: Mapping[str, float]) -> list[dict]:
    """What the compiled search needs of ``scorers``: each describes itself
    (:meth:`~fusion.decoder.scorers.WordScorer.compiled`); one it cannot run natively is called back."""
    return [s.compiled(float(weights[s.name])) for s in scorers]


class _Final(NamedTuple):
    """A finished hypothesis of the search (internal)."""

    prefix: tuple[int, ...]
    acoustic: float
    scores: tuple[float, ...]  # unweighted, end-of-utterance scores included
    fused: float  # weighted sum of ``scores``


class BeamSearchDecoder:
    """CTC prefix beam search over T x V log-probabilities with weighted word scorers.

    Args:
        table: the token table of the posteriors.
        scorers: word scorers (names must be unique and not ``"acoustic"``).
        weights: one weight per scorer name; ``"acoustic"`` may be omitted (1.0). A
            missing or unknown name is an error, never a silent 0.
        options: search settings.

    The decoder holds no per-utterance state: one instance decodes any number of
    utterances, from any number of threads of control the caller chooses.
    """

    def __init__(
        self,
        table: TokenTable,
        scorers: Sequence[WordScorer] = (),
        weights: Mapping[str, float] | None = None,
        options: SearchOptions = SearchOptions(),
    ) -> None:
        names = [s.name for s in scorers]
        if ACOUSTIC in names or len(set(names)) != len(names):
            raise ValueError(f"scorer names must be unique and not {ACOUSTIC!r}: {names}")
        weights = dict(weights or {})
        unknown = set(weights) - set(names) - {ACOUSTIC}
        if unknown:
            raise ValueError(f"weights for unknown scorer(s) {sorted(unknown)}; "
                             f"scorers are {[ACOUSTIC, *names]}")
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(f"no weight for scorer(s) {missing}: give every scorer a weight "
                             "(0 switches one off)")
        weights.setdefault(ACOUSTIC, 1.0)
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"weight of {name!r} must be a finite number, got {w!r}")
        self.table = table
        self.scorers = tuple(scorers)
        self.weights = {k: float(v) for k, v in weights.items()}
        self.options = options
        ends_word = [u == table.boundary_id or table.starts_word(u) for u in range(len(table))]
        # each unit's part in word grouping, for the compiled results path (ctc_align.h)
        self._word_kind = np.array([1 if u == table.boundary_id else 2 if e else 0
                                    for u, e in enumerate(ends_word)], dtype=np.int8)
        # the partial word a unit leaves: after a word-ending unit, its own spelling
        wb = len(table.word_boundary)
        self._starts = tuple("" if u == table.boundary_id else table.tokens[u][wb:] if e else None
                             for u, e in enumerate(ends_word))
        if _ctcsearch is None:
            raise ValueError(f"the compiled search (fusion.decoder._ctcsearch) is not built: {_CTC_ERROR} "
                             "(installing asrfuse builds it; see setup.py)")
        self._spec = compiled_scorers(self.scorers, self.weights)
        self._searcher: object | None = None  # a C++ object: made here, and after unpickling
        self._make_searcher()

    def _make_searcher(self) -> object:
        opts = self.options
        for s, spec in zip(self.scorers, self._spec):  # a KenLM file: the search loads its own
            if spec["kind"] == "kenlm":  # copy, so that it is in memory once, not twice
                s.lm.release()
        try:
            self._searcher = _ctcsearch.Searcher(
                list(self.table.tokens), list(self._starts), self.table.blank_id,
                -1 if self.table.boundary_id is None else self.table.boundary_id,
                self.weights[ACOUSTIC], opts.beam_size, opts.beam_threshold, opts.token_top_k,
                opts.token_min_logprob, opts.blank_skip, opts.nbest, self._spec,
                opts.floor_every_label, opts.split_blank_ends, opts.recombines)
        except RuntimeError as exc:  # KenLM failed to load a model the Python side loaded
            raise ValueError(f"compiled search: {exc}") from None
        return self._searcher

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_searcher"] = None  # a C++ object: each process makes its own
        return state

    # -- the search (tests/search_oracle.py overrides these two with its Python search) -----
    def _search(self, lp: np.ndarray) -> list[_Final]:
        """The N best of one utterance's ``lp`` ``(T, V)``."""
        searcher = self._searcher if self._searcher is not None else self._make_searcher()
        return [_Final(*f) for f in searcher.search(lp)]  # type: ignore[attr-defined]

    def _new_stream(self) -> object:
        """A search to step chunk by chunk: ``accept(lp)``, ``best()``, ``finish()``, ``copy()``."""
        searcher = self._searcher if self._searcher is not None else self._make_searcher()
        return searcher.stream()  # type: ignore[attr-defined]

    # -- results ------------------------------------------------------------------------
    def _hypothesis(self, beam: _Final, lp: np.ndarray, probs: np.ndarray | None,
                    frame_shift: float) -> Hypothesis:
        acoustic = beam.acoustic
        spans, conf = self._align(beam.prefix, lp, probs)
        words = self._words(beam.prefix, spans, conf, frame_shift) if spans else ()
        scores = {ACOUSTIC: acoustic, **{s.name: v for s, v in zip(self.scorers, beam.scores)}}
        return Hypothesis(
            text=" ".join(w.word for w in words),
            score=self.weights[ACOUSTIC] * acoustic + beam.fused,
            scores=scores,
            tokens=spans,
            words=words,
        )

    def _align(self, units: tuple[int, ...], lp: np.ndarray, probs: np.ndarray | None
               ) -> tuple[tuple[TokenSpan, ...], list[float]]:
        """Token spans of ``units`` in ``lp`` ``(T, V)`` by CTC forced alignment, and their
        confidences: ``fusion.decoder._ctcsearch.align`` gives the spans that
        ``torchaudio.functional.forced_align`` gives, and given ``probs`` (``lp``'s
        posteriors in float64) the confidences that :func:`~fusion.core.types.span_confidences`
        gives."""
        if not units:
            return (), []
        starts, ends, conf = _ctcsearch.align(lp, units, self.table.blank_id, probs)
        # tuple.__new__ makes the named tuples without a Python-level call each
        return tuple(map(_new_tuple, repeat(TokenSpan), zip(units, starts, ends))), conf

    def _words(self, units: tuple[int, ...], spans: tuple[TokenSpan, ...], conf: list[float],
               frame_shift: float) -> tuple[WordSpan, ...]:
        """What :func:`~fusion.core.types.spans_to_words` makes of ``spans`` and their units'
        confidences ``conf``, with the words grouped in C++ (the same groups)."""
        first, last = _ctcsearch.group_words(units, self._word_kind)
        text = self.table.word_text
        return tuple(_new_tuple(WordSpan, (text(units[f:e + 1]), spans[f][1] * frame_shift,
                                           spans[e][2] * frame_shift, min(conf[f:e + 1])))
                     for f, e in zip(first, last))

    def decode(self, posteriors: Posteriors) -> DecodeResult:
        """Decode one utterance: its N-best list, best first."""
        lp = self._frames(posteriors)
        with self._sessions():
            beams = self._search(lp)
        return self._result(posteriors.utt_id, lp, beams, posteriors.frame_shift,
                            posteriors.duration)

    def best_text(self, posteriors: Posteriors) -> str:
        """``decode(posteriors).best.text`` without the forced alignment that gives
        :meth:`decode` its times and confidences (what pyctcdecode's ``decode`` returns)."""
        lp = self._frames(posteriors)
        with self._sessions():
            units = self._search(lp)[0].prefix
        return " ".join(map(self.table.word_text, self.table.words_from_ids(units)))

    def _frames(self, posteriors: Posteriors) -> np.ndarray:
        """The log-probabilities the search takes: ``(T, V)`` float32, C order."""
        if posteriors.num_tokens != len(self.table):
            raise ValueError(
                f"utterance {posteriors.utt_id!r}: posteriors have {posteriors.num_tokens} "
                f"columns but the token table has {len(self.table)} tokens"
            )
        return np.ascontiguousarray(posteriors.log_probs, dtype=np.float32)

    def _sessions(self) -> ExitStack:
        """Every scorer's session entered (e.g. a neural LM's KV caches), for one utterance."""
        sessions = ExitStack()
        for scorer in self.scorers:
            sessions.enter_context(scorer.session())
        return sessions

    def _result(self, utt_id: str, lp: np.ndarray, beams: Sequence[_Final], frame_shift: float,
                duration: float) -> DecodeResult:
        """The decode result of the search's N best over ``lp`` ``(T, V)``: each
        hypothesis aligned to the frames for its times and confidences."""
        # the units' confidences sum these (NumPy's exp, not C's)
        probs = np.exp(lp.astype(np.float64)) if beams else None  # (T, V)
        nbest = tuple(self._hypothesis(b, lp, probs, frame_shift) for b in beams)
        return DecodeResult(utt_id, nbest, frame_shift, duration)

    def stream(self, frame_shift: float, utt_id: str = "stream") -> DecoderStream:
        """Decode one utterance chunk by chunk: see :class:`DecoderStream`.

        Args:
            frame_shift: seconds between frames, as :class:`~fusion.core.posteriors.Posteriors`.
            utt_id: the utterance id of the results.
        """
        Posteriors(utt_id, np.zeros((0, len(self.table)), dtype=np.float32), frame_shift)  # checks
        return DecoderStream(self, utt_id, float(frame_shift))

    def decode_batch(self, batch: Sequence[Posteriors]) -> list[DecodeResult]:
        return [self.decode(p) for p in batch]


class DecoderStream:
    """One utterance decoded chunk by chunk, the search's beams carried over between
    chunks (made by :meth:`BeamSearchDecoder.stream`).

    :meth:`finish` gives exactly what :meth:`BeamSearchDecoder.decode` gives for the
    concatenation of the chunks (same N-best, scores, word times and confidences): the
    search is stepped frame by frame either way; the end-of-utterance scores (the last
    word, the LM's ``</s>``) and the forced alignment of each hypothesis over the whole
    utterance wait for :meth:`finish`. The search keeps its tables in a C++ object between
    chunks, and the scorers' sessions (a neural LM's KV caches) stay open from the first
    chunk to :meth:`finish`, in a context of the stream's own, as in one decode() call.
    The stream keeps the chunks for the final alignment: ``T x V`` float32.

    Not safe to share between threads; streams of one decoder are independent.
    """

    def __init__(self, decoder: BeamSearchDecoder, utt_id: str, frame_shift: float) -> None:
        self.decoder = decoder
        self.utt_id = utt_id
        self.frame_shift = frame_shift
        self._chunks: list[np.ndarray] = []
        self._frames = 0
        self._finished = False
        self._context: contextvars.Context | None = None
        self._sessions: ExitStack | None = None
        self._open()
        self._search: object = self._in_sessions(decoder._new_stream)

    def _open(self) -> None:
        """The scorers' sessions, entered in a context of the stream's own (the caller's
        context is left alone between calls)."""
        self._context = contextvars.copy_context()
        self._sessions = self._context.run(self.decoder._sessions)

    def _in_sessions(self, fn, *args):  # type: ignore[no-untyped-def]
        return self._context.run(fn, *args)  # type: ignore[union-attr]

    def _close(self) -> None:
        if self._sessions is not None:
            self._in_sessions(self._sessions.close)
            self._context = self._sessions = None

    @property
    def num_frames(self) -> int:
        """Frames taken so far."""
        return self._frames

    @property
    def finished(self) -> bool:
        return self._finished

    def accept(self, log_probs: np.ndarray) -> PartialResult:
        """Take the next frames, ``(T, V)`` log-probabilities (``T`` may be 0), and give
        the best hypothesis so far (:meth:`partial`)."""
        if self._finished:
            raise ValueError(f"stream {self.utt_id!r}: finished; make a new stream")
        lp = self._check(log_probs)
        self._in_sessions(self._search.accept, lp)  # type: ignore[attr-defined]
        lp.flags.writeable = False
        self._chunks.append(lp)
        self._frames += lp.shape[0]
        return self.partial()

    def partial(self) -> PartialResult:
        """The best prefix so far, by the total the search ranks by (its last word may be
        unfinished; no end-of-utterance scores): cheap, the beams' bookkeeping only."""
        units, total = self._search.best()  # type: ignore[attr-defined]
        table = self.decoder.table
        text = " ".join(table.word_text(w) for w in table.words_from_ids(units))
        return PartialResult(self.utt_id, text, tuple(units), float(total), self._frames,
                             self.frame_shift)

    def finish(self) -> DecodeResult:
        """End the utterance: what :meth:`BeamSearchDecoder.decode` gives for all the
        frames taken. The stream takes no frames after this."""
        if self._finished:
            raise ValueError(f"stream {self.utt_id!r}: already finished")
        decoder = self.decoder
        try:
            beams = [_Final(*f) for f in self._in_sessions(self._search.finish)]  # type: ignore[attr-defined]
        finally:
            self._close()
        self._finished = True
        vocab = len(decoder.table)
        lp = np.concatenate(self._chunks) if self._chunks else np.zeros((0, vocab), np.float32)
        self._chunks = []
        return decoder._result(self.utt_id, lp, beams, self.frame_shift,
                               self._frames * self.frame_shift)

    def snapshot(self) -> StreamSnapshot:
        """The stream's state now, to :meth:`restore` later (any number of times)."""
        if self._finished:
            raise ValueError(f"stream {self.utt_id!r}: finished; nothing to snapshot")
        return StreamSnapshot(self.decoder, self._search.copy(),  # type: ignore[attr-defined]
                              tuple(self._chunks), self._frames)

    def restore(self, snapshot: StreamSnapshot) -> None:
        """Put the stream back to ``snapshot`` (taken from this stream or another of the
        same decoder); a finished stream can be restored too."""
        if not isinstance(snapshot, StreamSnapshot) or snapshot.decoder is not self.decoder:
            raise ValueError(f"stream {self.utt_id!r}: not a snapshot of a stream of this decoder")
        self._search = snapshot.search.copy()  # type: ignore[attr-defined]
        if self._sessions is None:
            self._open()  # finished: its sessions were closed
        self._chunks = list(snapshot.chunks)
        self._frames = snapshot.frames
        self._finished = False

    def _check(self, log_probs: np.ndarray) -> np.ndarray:
        arr = np.asarray(log_probs)
        vocab = len(self.decoder.table)
        if arr.ndim != 2 or arr.shape[1] != vocab:
            raise ValueError(f"stream {self.utt_id!r}: a chunk must be frames x {vocab} "
                             f"log-probabilities (the token table's size), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"stream {self.utt_id!r}: a chunk must be floating point, got {arr.dtype}")
        lp = np.array(arr, dtype=np.float32, order="C")  # the stream's own copy
        bad = np.isnan(lp) | np.isposinf(lp)
        if bad.any():
            t = int(np.argwhere(bad)[0, 0])
            raise ValueError(f"stream {self.utt_id!r}: NaN or +inf in log-probabilities at "
                             f"frame {self._frames + t}")
        return lp


@dataclass(frozen=True, eq=False)
class StreamSnapshot:
    """A :class:`DecoderStream`'s state at one moment (its own copy): for
    :meth:`DecoderStream.restore`. Not picklable (the compiled search's tables are a C++
    object); copying a stream is cheap next to decoding it."""

    decoder: BeamSearchDecoder
    search: object
    chunks: tuple[np.ndarray, ...]
    frames: int

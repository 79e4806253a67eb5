"""Result types shared by every decoder: hypotheses with their scores and timings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from fusion.core.tokens import TokenTable

__all__ = ["DecodeResult", "Hypothesis", "PartialResult", "TokenSpan", "WordSpan", "span_confidences",
           "spans_to_words"]


class TokenSpan(NamedTuple):
    """One emitted unit and the frames it covers: ``[start_frame, end_frame)``.

    A named tuple, not a dataclass: a decoder makes one per emitted unit of every
    hypothesis, and a tuple is made several times faster."""

    token_id: int
    start_frame: int
    end_frame: int


class WordSpan(NamedTuple):
    """One word and its time span in seconds; ``confidence`` in [0, 1] when known.

    A named tuple, like :class:`TokenSpan`."""

    word: str
    start: float
    end: float
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"word": self.word, "start": round(self.start, 4),
                               "end": round(self.end, 4)}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 4)
        return out


@dataclass(frozen=True)
class Hypothesis:
    """One decoding hypothesis.

    Attributes:
        text: the words joined by single spaces.
        score: the total (weighted) score the search ranked by, natural log.
        scores: each scorer's own score, unweighted (e.g. ``{"acoustic": -3.2}``).
        tokens: the emitted units with their frame spans, blanks removed.
        words: word spans in seconds.
    """

    text: str
    score: float
    scores: Mapping[str, float]
    tokens: tuple[TokenSpan, ...] = ()
    words: tuple[WordSpan, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", MappingProxyType(dict(self.scores)))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "words", tuple(self.words))

    def __getstate__(self) -> dict[str, Any]:  # a mappingproxy does not pickle
        return {**self.__dict__, "scores": dict(self.scores)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "scores", MappingProxyType(state["scores"]))

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(t.token_id for t in self.tokens)

    def to_dict(self, table: TokenTable, frame_shift: float) -> dict[str, Any]:
        return {
            "text": self.text,
            "score": self.score,
            "scores": dict(self.scores),
            "words": [w.to_dict() for w in self.words],
            "tokens": [
                {"token": table.tokens[t.token_id],
                 "start": round(t.start_frame * frame_shift, 4),
                 "end": round(t.end_frame * frame_shift, 4)}
                for t in self.tokens
            ],
        }


@dataclass(frozen=True)
class DecodeResult:
    """The N-best list of one utterance, best first."""

    utt_id: str
    nbest: tuple[Hypothesis, ...]
    frame_shift: float
    duration: float = field(default=0.0)

    @property
    def best(self) -> Hypothesis:
        return self.nbest[0]

    def to_dict(self, table: TokenTable) -> dict[str, Any]:
        best = self.best.to_dict(table, self.frame_shift)
        out: dict[str, Any] = {"id": self.utt_id, **best}
        if len(self.nbest) > 1:
            out["nbest"] = [h.to_dict(table, self.frame_shift) for h in self.nbest]
        return out


@dataclass(frozen=True)
class PartialResult:
    """The best hypothesis of a stream so far (:class:`fusion.decoder.search.DecoderStream`).

    Attributes:
        utt_id: the stream's utterance id.
        text: the words of the best prefix, the last one possibly unfinished.
        token_ids: its units (blanks removed); no frame spans until the stream finishes.
        score: the total the search ranks it by (natural log): weighted acoustic score
            plus word scores, the unfinished word by its estimate, no end-of-utterance
            scores; not comparable with a final hypothesis's score.
        num_frames: frames the stream has taken.
        frame_shift: seconds between frames.
    """

    utt_id: str
    text: str
    token_ids: tuple[int, ...]
    score: float
    num_frames: int
    frame_shift: float

    @property
    def duration(self) -> float:
        """Seconds of audio taken so far."""
        return self.num_frames * self.frame_shift


def span_confidences(spans: Sequence[TokenSpan], log_probs: np.ndarray) -> list[float]:
    """Each unit's confidence: the mean of its posterior over the frames it covers.

    One cumulative sum per distinct unit's column (a zero row first), so memory is
    frames x distinct units (at most the vocabulary), not frames x emitted units; a
    span's sum is the difference of two running sums, added in frame order."""
    if not spans:
        return []
    span = np.array([(s.start_frame, s.end_frame, s.token_id) for s in spans])  # (N, 3)
    # only the frames up to the last span's end are ever summed
    upto = int(span[:, 1].max())
    columns, col_of = np.unique(span[:, 2], return_inverse=True)  # (C,), (N,)
    cum = np.zeros((upto + 1, len(columns)))  # (upto + 1, C)
    np.cumsum(np.exp(log_probs[:upto, columns].astype(np.float64)), axis=0, out=cum[1:])
    sums = cum[span[:, 1], col_of] - cum[span[:, 0], col_of]
    return (sums / (span[:, 1] - span[:, 0])).tolist()


def spans_to_words(
    table: TokenTable, spans: Sequence[TokenSpan], frame_shift: float,
    log_probs: np.ndarray | None = None,
) -> tuple[WordSpan, ...]:
    """Group emitted unit spans into words with start/end times in seconds.

    A word starts at its first unit's first frame and ends at its last unit's last frame.
    Given the posteriors, each word gets a confidence: the lowest of its units' (one badly
    matched letter makes the word doubtful), a unit's being the mean of its posterior
    over its frames.
    """
    conf = span_confidences(spans, log_probs) if log_probs is not None else None
    groups = table.words_from_ids([s.token_id for s in spans])
    words: list[WordSpan] = []
    i = 0
    boundary_id = table.boundary_id
    for group in groups:
        while spans[i].token_id == boundary_id:
            i += 1
        first, last = spans[i], spans[i + len(group) - 1]
        words.append(WordSpan(
            word=table.word_text(group),
            start=first.start_frame * frame_shift,
            end=last.end_frame * frame_shift,
            confidence=min(conf[i:i + len(group)]) if conf is not None else None,
        ))
        i += len(group)
    return tuple(words)

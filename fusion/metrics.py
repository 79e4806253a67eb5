"""Word and character error rates (jiwer), per utterance and over a corpus.

References and hypotheses pass through the same :func:`fusion.text.normalize_text`
before scoring. Corpus rates are total errors over total reference length (not a mean
of per-utterance rates). CER counts the spaces between words as characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jiwer

from fusion.text import normalize_text

__all__ = ["CorpusScore", "ErrorCounts", "UtteranceScore", "score_corpus", "score_utterance"]


@dataclass(frozen=True)
class ErrorCounts:
    """Edit-distance counts against a reference of ``ref_len`` units."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_len: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference unit; ``inf`` if the reference is empty and there are errors."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_len

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.ref_len + other.ref_len,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions, "ref_len": self.ref_len,
                "errors": self.errors, "rate": self.rate}


def _counts(out: Any, ref_len: int) -> ErrorCounts:
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, ref_len)


def _word_counts(ref: str, hyp: str) -> ErrorCounts:
    ref_words, hyp_words = ref.split(), hyp.split()
    if not ref_words or not hyp_words:
        return ErrorCounts(0, len(ref_words), len(hyp_words), len(ref_words))
    return _counts(jiwer.process_words(ref, hyp), len(ref_words))


def _char_counts(ref: str, hyp: str) -> ErrorCounts:
    if not ref or not hyp:
        return ErrorCounts(0, len(ref), len(hyp), len(ref))
    return _counts(jiwer.process_characters(ref, hyp), len(ref))


@dataclass(frozen=True)
class UtteranceScore:
    utt_id: str
    ref: str
    hyp: str
    words: ErrorCounts
    chars: ErrorCounts

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.utt_id, "ref": self.ref, "hyp": self.hyp,
                "wer": self.words.rate, "cer": self.chars.rate,
                "words": self.words.to_dict(), "chars": self.chars.to_dict()}


def score_utterance(utt_id: str, ref: str, hyp: str, *, normalize: bool = True) -> UtteranceScore:
    """Word and character error counts of one utterance after normalisation."""
    if normalize:
        ref, hyp = normalize_text(ref), normalize_text(hyp)
    else:
        ref, hyp = " ".join(ref.split()), " ".join(hyp.split())
    return UtteranceScore(utt_id, ref, hyp, _word_counts(ref, hyp), _char_counts(ref, hyp))


@dataclass(frozen=True)
class CorpusScore:
    """Totals over a corpus; ``missing`` lists references with no hypothesis (scored empty)."""

    utterances: tuple[UtteranceScore, ...]
    words: ErrorCounts
    chars: ErrorCounts
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate

    def to_dict(self, *, per_utterance: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "utterances": len(self.utterances),
            "wer": self.wer, "cer": self.cer,
            "words": self.words.to_dict(), "chars": self.chars.to_dict(),
            "missing": list(self.missing), "extra": list(self.extra),
        }
        if per_utterance:
            out["per_utterance"] = [u.to_dict() for u in self.utterances]
        return out


def score_corpus(
    refs: Mapping[str, str], hyps: Mapping[str, str], *, normalize: bool = True
) -> CorpusScore:
    """Score hypotheses against references, both keyed by utterance id.

    A reference without a hypothesis counts as an empty hypothesis (all deletions) and is
    listed in ``missing``; hypotheses without a reference are listed in ``extra`` and
    not scored.
    """
    scores = [score_utterance(u, ref, hyps.get(u, ""), normalize=normalize)
              for u, ref in refs.items()]
    return CorpusScore(
        utterances=tuple(scores),
        words=_sum(s.words for s in scores),
        chars=_sum(s.chars for s in scores),
        missing=tuple(u for u in refs if u not in hyps),
        extra=tuple(u for u in hyps if u not in refs),
    )


def _sum(counts: Iterable[ErrorCounts]) -> ErrorCounts:
    total = ErrorCounts()
    for c in counts:
        total = total + c
    return total

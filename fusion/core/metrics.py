"""Word and character error rates (jiwer), per utterance and over a corpus.

References and hypotheses pass through the same :func:`fusion.core.text.normalize_text`
before scoring. Corpus rates are total errors over total reference length (not a mean
of per-utterance rates). CER counts the spaces between words as characters.
:func:`word_errors` says which reference words were misrecognised most, and what they were
heard as. :func:`compare` says whether one system's error rate is lower than another's on
the same utterances beyond chance (paired bootstrap over utterances, Bisani & Ney 2004).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jiwer
import numpy as np

from fusion.core.text import normalize_text

__all__ = [
    "Comparison",
    "CorpusScore",
    "ErrorCounts",
    "UtteranceScore",
    "WordErrors",
    "compare",
    "score_corpus",
    "score_utterance",
    "word_errors",
]


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

    def subset(self, ids: Iterable[str]) -> CorpusScore:
        """The same scores over the utterances in ``ids`` only (in this score's order)."""
        keep = set(ids)
        utterances = tuple(u for u in self.utterances if u.utt_id in keep)
        return CorpusScore(utterances, _sum(u.words for u in utterances), _sum(u.chars for u in utterances),
                           tuple(u for u in self.missing if u in keep), ())

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


@dataclass(frozen=True)
class WordErrors:
    """How one reference word fared over a corpus: ``errors`` of its ``count`` occurrences
    were substituted or deleted; ``heard_as`` says what they became, most often first
    (``""``: deleted)."""

    word: str
    count: int
    errors: int
    heard_as: tuple[tuple[str, int], ...]

    @property
    def rate(self) -> float:
        return self.errors / self.count

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "count": self.count, "errors": self.errors,
                "heard_as": [list(h) for h in self.heard_as]}


def word_errors(
    scores: CorpusScore | Iterable[UtteranceScore], *, top: int | None = None, min_count: int = 1
) -> list[WordErrors]:
    """The reference words of ``scores`` that were misrecognised, most errors first (ties:
    alphabetical), each with what it was heard as, from the word alignment that scored
    them. Inserted words belong to no reference word and are not counted. Words seen
    fewer than ``min_count`` times are left out; ``top`` keeps the first ``top``."""
    if isinstance(scores, CorpusScore):
        scores = scores.utterances
    seen: Counter[str] = Counter()
    heard: defaultdict[str, Counter[str]] = defaultdict(Counter)  # word -> what it was heard as
    for u in scores:
        ref, hyp = u.ref.split(), u.hyp.split()
        seen.update(ref)
        if not ref:
            continue
        if not hyp:
            for w in ref:
                heard[w][""] += 1
            continue
        for chunk in jiwer.process_words(u.ref, u.hyp).alignments[0]:
            if chunk.type == "substitute":
                for r, h in zip(ref[chunk.ref_start_idx:chunk.ref_end_idx],
                                hyp[chunk.hyp_start_idx:chunk.hyp_end_idx], strict=True):
                    heard[r][h] += 1
            elif chunk.type == "delete":
                for r in ref[chunk.ref_start_idx:chunk.ref_end_idx]:
                    heard[r][""] += 1
    out = [WordErrors(w, seen[w], sum(c.values()), tuple(sorted(c.items(), key=_most_first)))
           for w, c in heard.items() if seen[w] >= min_count]
    out.sort(key=lambda e: (-e.errors, e.word))
    return out if top is None else out[:top]


def _most_first(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


@dataclass(frozen=True)
class Comparison:
    """System B against system A over the same utterances, in ``unit`` (words or chars).

    ``rate_a`` and ``rate_b`` are corpus error rates (percent); ``interval`` is the
    ``level`` bootstrap interval of ``rate_b - rate_a`` (percentage points; below zero: B
    makes fewer errors); ``p_better`` is the share of the ``resamples`` in which B's rate
    is lower than A's (Bisani & Ney's probability of improvement), ``p_worse`` the share in
    which it is higher (the rest are ties)."""

    unit: str
    utterances: int
    rate_a: float
    rate_b: float
    interval: tuple[float, float]
    p_better: float
    p_worse: float
    level: float
    resamples: int

    @property
    def delta(self) -> float:
        return self.rate_b - self.rate_a

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "utterances": self.utterances, "rate_a": self.rate_a,
                "rate_b": self.rate_b, "delta": self.delta, "interval": list(self.interval),
                "p_better": self.p_better, "p_worse": self.p_worse, "level": self.level,
                "resamples": self.resamples}


def compare(a: CorpusScore, b: CorpusScore, *, unit: str = "words", resamples: int = 10_000,
            level: float = 0.95, seed: int = 0) -> Comparison:
    """Whether B's error rate is lower than A's beyond chance: both systems' errors on one
    draw of utterances (with replacement, ``resamples`` times, ``scipy.stats.bootstrap``
    paired), so what the two share cancels and only their differences vary.

    ``a`` and ``b`` must score the same utterances against the same references (as
    :func:`score_corpus` with the same ``refs`` gives), at least two of them, with at
    least one reference ``unit``."""
    if unit not in ("words", "chars"):
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    by_id = {u.utt_id: u for u in b.utterances}
    only_a = [u.utt_id for u in a.utterances if u.utt_id not in by_id]
    only_b = sorted(by_id.keys() - {u.utt_id for u in a.utterances})
    if only_a or only_b:
        raise ValueError(f"the two systems score different utterances: {len(only_a)} only in A "
                         f"(e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]})")
    differ = [u.utt_id for u in a.utterances if by_id[u.utt_id].ref != u.ref]
    if differ:
        raise ValueError(f"the two systems were scored against different references for "
                         f"{len(differ)} utterances, e.g. {differ[0]!r}")
    if len(a.utterances) < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 utterances, got {len(a.utterances)}")
    pairs = [(getattr(u, unit), getattr(by_id[u.utt_id], unit)) for u in a.utterances]
    errors_a = np.array([x.errors for x, _ in pairs])
    errors_b = np.array([y.errors for _, y in pairs])
    lengths = np.array([x.ref_len for x, _ in pairs])
    if not lengths.sum():
        raise ValueError(f"the references hold no {unit}: no error rate to compare")
    from scipy import stats  # a quarter of a second to import: only here

    def delta(ea: np.ndarray, eb: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        return 100 * (eb.sum(axis=axis) - ea.sum(axis=axis)) / np.maximum(1, n.sum(axis=axis))

    result = stats.bootstrap((errors_a, errors_b, lengths), delta, paired=True, vectorized=True,
                             n_resamples=resamples, confidence_level=level, method="percentile",
                             random_state=np.random.default_rng(seed))
    ci, deltas = result.confidence_interval, result.bootstrap_distribution
    total = lengths.sum()
    return Comparison(unit, len(pairs), 100 * errors_a.sum() / total, 100 * errors_b.sum() / total,
                      (float(ci.low), float(ci.high)), float(np.mean(deltas < 0)),
                      float(np.mean(deltas > 0)), level, resamples)

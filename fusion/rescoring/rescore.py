"""N-best rescoring: more named scores for first-pass hypotheses, re-ranked log-linearly.

The first pass (:class:`fusion.decoder.search.BeamSearchDecoder` with ``nbest > 1``) keeps each
hypothesis's unweighted scores (``acoustic``, ``lm``, ``word_bonus``, ...). A
:class:`SentenceScorer` adds one more score per hypothesis, computed on the whole text:
a neural LM's sentence log-probability (:class:`LMRescorer`), the HMM alignment
log-likelihood (:class:`hmm.scorer.AlignmentScorer`), the word count
(:class:`LengthScorer`). :func:`rerank` then ranks by ``sum(weights[name] * score)``
over every score, as the first pass does, and keeps each score.

Weight sweeps need no re-decoding: :class:`NbestTable` holds the scores of a whole
dev set's N-best lists as one matrix, with each hypothesis's word and character errors,
so the WER of any weights is a matrix product and an arg-max per utterance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fusion.core.manifest import atomic_write
from fusion.core.metrics import score_utterance
from fusion.core.posteriors import Posteriors
from fusion.core.types import DecodeResult, Hypothesis
from fusion.decoder.scorers import check_weights
from lm.base import LanguageModel

__all__ = ["LMRescorer", "LengthScorer", "NbestTable", "RescoringDecoder", "SentenceScorer",
           "add_scores", "check_weights", "rerank"]


class SentenceScorer(Protocol):
    """Scores whole hypotheses of one utterance (unweighted, natural log)."""

    name: str

    def score_nbest(self, posteriors: Posteriors, texts: Sequence[str]) -> list[float]: ...


class LMRescorer:
    """A language model's log-probability of each hypothesis, end of sentence included.

    Any :class:`lm.base.LanguageModel` works; a neural LM scores the list in one batch.
    """

    def __init__(self, lm: LanguageModel, name: str = "nlm") -> None:
        self.lm = lm
        self.name = name

    def score_nbest(self, posteriors: Posteriors, texts: Sequence[str]) -> list[float]:
        return list(self.lm.score_sentences([t.split() for t in texts]))


class LengthScorer:
    """The number of words (a word-insertion bonus, once weighted)."""

    def __init__(self, name: str = "length") -> None:
        self.name = name

    def score_nbest(self, posteriors: Posteriors, texts: Sequence[str]) -> list[float]:
        return [float(len(t.split())) for t in texts]


def add_scores(result: DecodeResult, posteriors: Posteriors,
               scorers: Sequence[SentenceScorer]) -> DecodeResult:
    """``result`` with every scorer's score added to each hypothesis's ``scores``.

    The hypotheses' order and total ``score`` are unchanged (see :func:`rerank`).
    """
    if posteriors.utt_id != result.utt_id:
        raise ValueError(f"posteriors of {posteriors.utt_id!r} given for the N-best list of "
                         f"{result.utt_id!r}")
    texts = [h.text for h in result.nbest]
    nbest = list(result.nbest)
    for scorer in scorers:
        if any(scorer.name in h.scores for h in nbest):
            raise ValueError(f"utterance {result.utt_id!r}: hypotheses already have a "
                             f"{scorer.name!r} score")
        values = scorer.score_nbest(posteriors, texts)
        nbest = [replace(h, scores={**h.scores, scorer.name: float(v)})
                 for h, v in zip(nbest, values)]
    return replace(result, nbest=tuple(nbest))


def _total(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    # a switched-off score adds nothing, even when it is -inf (no alignment, say)
    return sum(w * scores[name] for name, w in weights.items() if w != 0)


def rerank(result: DecodeResult, weights: Mapping[str, float]) -> DecodeResult:
    """The N-best list ranked by ``sum(weights[name] * score)``, best first.

    Every score of the hypotheses needs a weight (0 switches one off) and every weight a
    score: a missing or unknown name is an error, never a silent 0. Each hypothesis's
    ``score`` becomes its new total; ties keep the first-pass order.
    """
    names = sorted({n for h in result.nbest for n in h.scores})
    check_weights(names, weights, where=f"utterance {result.utt_id!r}")
    rescored: list[Hypothesis] = [replace(h, score=_total(h.scores, weights)) for h in result.nbest]
    order = sorted(range(len(rescored)), key=lambda i: -rescored[i].score)
    return replace(result, nbest=tuple(rescored[i] for i in order))


@dataclass(frozen=True)
class NbestTable:
    """A dev set's N-best lists as arrays, for weight sweeps without re-decoding.

    Attributes:
        names: the score names, one column each of ``scores``.
        utt_ids: utterances, in order; utterance ``u`` owns rows ``offsets[u]:offsets[u+1]``.
        offsets: ``(U + 1,)`` row offsets.
        texts: ``(H,)`` hypothesis texts.
        scores: ``(H, F)`` unweighted scores (``-inf`` allowed).
        word_errors, char_errors: ``(H,)`` edit distances to the reference.
        ref_words, ref_chars: ``(U,)`` reference lengths.
    """

    names: tuple[str, ...]
    utt_ids: tuple[str, ...]
    offsets: np.ndarray
    texts: tuple[str, ...]
    scores: np.ndarray
    word_errors: np.ndarray
    char_errors: np.ndarray
    ref_words: np.ndarray
    ref_chars: np.ndarray

    @classmethod
    def build(cls, results: Sequence[DecodeResult], refs: Mapping[str, str]) -> NbestTable:
        """Score every hypothesis against its reference (normalised, as in scoring)."""
        if not results:
            raise ValueError("no N-best lists to tabulate")
        names = tuple(sorted({n for r in results for h in r.nbest for n in h.scores}))
        rows, texts, werr, cerr, offsets, rw, rc = [], [], [], [], [0], [], []
        for r in results:
            if r.utt_id not in refs:
                raise ValueError(f"no reference text for utterance {r.utt_id!r}")
            if not r.nbest:
                raise ValueError(f"utterance {r.utt_id!r} has an empty N-best list")
            for h in r.nbest:
                missing = set(names) - set(h.scores)
                if missing:
                    raise ValueError(f"utterance {r.utt_id!r}: hypothesis {h.text!r} lacks "
                                     f"score(s) {sorted(missing)}")
                s = score_utterance(r.utt_id, refs[r.utt_id], h.text)
                rows.append([h.scores[n] for n in names])
                texts.append(h.text)
                werr.append(s.words.errors)
                cerr.append(s.chars.errors)
            rw.append(s.words.ref_len)
            rc.append(s.chars.ref_len)
            offsets.append(len(texts))
        return cls(names, tuple(r.utt_id for r in results), np.asarray(offsets, dtype=np.int64),
                   tuple(texts), np.asarray(rows, dtype=np.float64).reshape(len(texts), len(names)),
                   np.asarray(werr, dtype=np.int64), np.asarray(cerr, dtype=np.int64),
                   np.asarray(rw, dtype=np.int64), np.asarray(rc, dtype=np.int64))

    @property
    def num_utterances(self) -> int:
        return len(self.utt_ids)

    def totals(self, weights: Mapping[str, float]) -> np.ndarray:
        """``(H,)`` weighted totals; ``weights`` names every column exactly once."""
        check_weights(self.names, weights, where="N-best table")
        w = np.array([weights[n] for n in self.names], dtype=np.float64)
        on = w != 0  # a switched-off -inf score must not turn totals into nan
        return self.scores[:, on] @ w[on] if on.any() else np.zeros(len(self.texts))

    def choose(self, weights: Mapping[str, float]) -> np.ndarray:
        """``(U,)`` row index of each utterance's best hypothesis under ``weights``."""
        totals = self.totals(weights)
        return np.array([a + int(np.argmax(totals[a:b]))
                         for a, b in zip(self.offsets[:-1], self.offsets[1:])], dtype=np.int64)

    def error_rates(self, weights: Mapping[str, float]) -> tuple[float, float]:
        """``(WER, CER)`` in percent of the hypotheses ``weights`` choose."""
        rows = self.choose(weights)
        return self._rates(rows)

    def oracle_rates(self) -> tuple[float, float]:
        """``(WER, CER)`` in percent when each utterance's fewest-word-error hypothesis is
        chosen: the best any rescoring of these lists can do."""
        rows = np.array([a + int(np.argmin(self.word_errors[a:b]))
                         for a, b in zip(self.offsets[:-1], self.offsets[1:])], dtype=np.int64)
        return self._rates(rows)

    def _rates(self, rows: np.ndarray) -> tuple[float, float]:
        wer = 100.0 * self.word_errors[rows].sum() / max(1, self.ref_words.sum())
        cer = 100.0 * self.char_errors[rows].sum() / max(1, self.ref_chars.sum())
        return float(wer), float(cer)

    def chosen_texts(self, weights: Mapping[str, float]) -> dict[str, str]:
        """``{utt_id: text}`` of the hypotheses ``weights`` choose."""
        return {u: self.texts[i] for u, i in zip(self.utt_ids, self.choose(weights))}

    # -- files -----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (no pickles: strings are stored as unicode arrays)."""
        path = Path(path)
        arrays = {
            "names": np.array(self.names, dtype=str), "utt_ids": np.array(self.utt_ids, dtype=str),
            "texts": np.array(self.texts, dtype=str), "offsets": self.offsets, "scores": self.scores,
            "word_errors": self.word_errors, "char_errors": self.char_errors,
            "ref_words": self.ref_words, "ref_chars": self.ref_chars,
        }
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> NbestTable:
        try:
            with np.load(path, allow_pickle=False) as data:
                table = cls(tuple(data["names"].tolist()), tuple(data["utt_ids"].tolist()),
                            data["offsets"], tuple(data["texts"].tolist()), data["scores"],
                            data["word_errors"], data["char_errors"], data["ref_words"],
                            data["ref_chars"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not an N-best table: {exc}") from None
        h, u = len(table.texts), len(table.utt_ids)
        if (table.scores.shape != (h, len(table.names)) or table.offsets.shape != (u + 1,)
                or table.offsets[-1] != h or len(table.word_errors) != h):
            raise ValueError(f"{path}: N-best table arrays disagree in size")
        return table


class RescoringDecoder:
    """A first-pass decoder followed by N-best rescoring: ``decode`` adds the sentence
    scorers' scores to each hypothesis and re-ranks by ``weights`` (one per score)."""

    def __init__(self, first_pass: Any, scorers: Sequence[SentenceScorer],
                 weights: Mapping[str, float]) -> None:
        names = [s.name for s in scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"rescoring scorer names must be unique: {names}")
        expected = {"acoustic", *(s.name for s in getattr(first_pass, "scorers", ())), *names}
        check_weights(sorted(expected), weights, where="rescoring")
        self.first_pass = first_pass
        self.scorers = tuple(scorers)
        self.weights = dict(weights)

    def decode(self, posteriors: Posteriors) -> DecodeResult:
        result = self.first_pass.decode(posteriors)
        return rerank(add_scores(result, posteriors, self.scorers), self.weights)

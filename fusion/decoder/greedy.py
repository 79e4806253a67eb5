"""Greedy (best-path) CTC decoding, in NumPy (the core has no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from fusion.core.types import DecodeResult, Hypothesis, TokenSpan, spans_to_words

__all__ = ["GreedyDecoder", "best_path", "greedy_decode"]


def best_path(log_probs: np.ndarray, blank_id: int) -> tuple[list[TokenSpan], float]:
    """Best path of one utterance.

    Args:
        log_probs: ``(T, V)`` log-probabilities (a torch tensor on the CPU works too).
        blank_id: the CTC blank.

    Returns:
        The collapsed units (repeats merged, blanks dropped) with their frame spans, and the
        path's log-probability (sum of each frame's best log-probability). A tie between units
        goes to the lowest id.
    """
    lp = np.asarray(log_probs)
    n = lp.shape[0]
    if n == 0:
        return [], 0.0
    best = lp.argmax(axis=1)  # (T,)
    score = float(lp[np.arange(n), best].astype(np.float64).sum())
    starts = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])  # a new run begins at t
    ends = np.append(starts[1:], n)
    ids = best[starts]
    keep = ids != blank_id
    spans = [TokenSpan(int(i), int(s), int(e))
             for i, s, e in zip(ids[keep], starts[keep], ends[keep])]
    return spans, score


def greedy_decode(
    posteriors: Sequence[Posteriors], table: TokenTable
) -> list[DecodeResult]:
    """Greedy-decode utterances (each on its own: a batch of one == one at a time)."""
    for p in posteriors:
        if p.num_tokens != len(table):
            raise ValueError(
                f"utterance {p.utt_id!r}: posteriors have {p.num_tokens} columns but the "
                f"token table has {len(table)} tokens"
            )
    results = []
    for p in posteriors:
        spans, score = best_path(p.log_probs, table.blank_id)
        words = spans_to_words(table, spans, p.frame_shift, p.log_probs)
        hyp = Hypothesis(
            text=" ".join(w.word for w in words),
            score=score,
            scores={"acoustic": score},
            tokens=tuple(spans),
            words=words,
        )
        results.append(DecodeResult(p.utt_id, (hyp,), p.frame_shift, p.duration))
    return results


@dataclass(frozen=True)
class GreedyDecoder:
    """Greedy decoding as a decoder (``decode(posteriors)``), for the batch runner and the
    backends (:mod:`fusion.run.parallel`) that run any decoder."""

    table: TokenTable

    def decode(self, posteriors: Posteriors) -> DecodeResult:
        return greedy_decode([posteriors], self.table)[0]

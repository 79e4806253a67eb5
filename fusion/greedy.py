"""Greedy (best-path) CTC decoding, vectorised over a padded batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fusion.posteriors import Posteriors
from fusion.tokens import TokenTable
from fusion.types import DecodeResult, Hypothesis, TokenSpan, spans_to_words

if TYPE_CHECKING:  # torch is imported by the functions that use it (the core has none)
    import torch

__all__ = ["best_path", "greedy_decode"]


def best_path(
    log_probs: torch.Tensor, lengths: torch.Tensor, blank_id: int
) -> list[tuple[list[TokenSpan], float]]:
    """Best path of each utterance in a padded batch.

    Args:
        log_probs: ``(B, T, V)`` log-probabilities; frames past ``lengths`` are ignored.
        lengths: ``(B,)`` valid frame counts.
        blank_id: the CTC blank.

    Returns:
        Per utterance: the collapsed units (repeats merged, blanks dropped) with their frame
        spans, and the path's log-probability (sum of each frame's best log-probability).
    """
    import torch

    batch, frames, _ = log_probs.shape
    best_lp, best = log_probs.max(dim=-1)  # (B, T) each
    valid = torch.arange(frames).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    path_score = torch.where(valid, best_lp.double(), 0.0).sum(dim=1)  # (B,)
    run_start = torch.ones_like(valid)
    run_start[:, 1:] = best[:, 1:] != best[:, :-1]  # a new run begins at t
    run_start &= valid
    best_np, start_np = best.numpy(), run_start.numpy()
    out: list[tuple[list[TokenSpan], float]] = []
    for b in range(batch):
        n = int(lengths[b])
        starts = np.flatnonzero(start_np[b, :n])
        ends = np.append(starts[1:], n)
        ids = best_np[b, starts]
        keep = ids != blank_id
        spans = [TokenSpan(int(i), int(s), int(e))
                 for i, s, e in zip(ids[keep], starts[keep], ends[keep])]
        out.append((spans, float(path_score[b])))
    return out


def greedy_decode(
    posteriors: Sequence[Posteriors], table: TokenTable
) -> list[DecodeResult]:
    """Greedy-decode a batch of utterances (one padded argmax over the whole batch)."""
    if not posteriors:
        return []
    for p in posteriors:
        if p.num_tokens != len(table):
            raise ValueError(
                f"utterance {p.utt_id!r}: posteriors have {p.num_tokens} columns but the "
                f"token table has {len(table)} tokens"
            )
    import torch

    lengths = torch.tensor([p.num_frames for p in posteriors])
    padded = torch.zeros(len(posteriors), int(lengths.max()), len(table))  # (B, T, V)
    for b, p in enumerate(posteriors):
        padded[b, : p.num_frames] = torch.from_numpy(np.array(p.log_probs))
    results = []
    for p, (spans, score) in zip(posteriors, best_path(padded, lengths, table.blank_id)):
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

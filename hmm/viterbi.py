"""Viterbi for long inputs: sparse left-to-right arcs, checkpointed back-pointers.

A plain Viterbi keeps a back-pointer per frame and state (``T x S``) and hmmlearn's also
a dense ``S x S`` transition matrix. Here arcs are sparse and only go forward by a
bounded number of states (``dst - src`` in ``0 .. D-1``), so a frame costs ``O(D * S)``;
the forward pass keeps the Viterbi scores of every ``block``-th frame only (checkpoints),
and the back-trace recomputes one block of back-pointers at a time. Memory is
``O((T / block + block) * S)``, about ``2 * sqrt(T) * S`` with the default block, and
the result is the exact Viterbi path (ties may break differently from other
implementations). Emissions are computed one block at a time, never for all frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["checkpointed_viterbi"]

#: ``emissions(t0, t1) -> (t1 - t0, S)`` log-likelihoods of frames ``t0 .. t1 - 1``
EmissionFn = Callable[[int, int], np.ndarray]


def _banded(num_states: int, src: np.ndarray, dst: np.ndarray, log_prob: np.ndarray) -> np.ndarray:
    """``(D, S)`` log-weights: ``out[d, s]`` is the arc ``s - d -> s`` (``-inf``: none)."""
    offset = dst - src
    if (offset < 0).any():
        raise ValueError("checkpointed_viterbi needs a left-to-right graph (dst >= src on every arc)")
    out = np.full((int(offset.max()) + 1, num_states), -np.inf)
    out[offset, dst] = log_prob
    return out


def _step(delta: np.ndarray, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best predecessor score of every state and its offset (int8)."""
    cand = np.full(band.shape, -np.inf)
    cand[0] = delta + band[0]
    for d in range(1, band.shape[0]):
        cand[d, d:] = delta[:-d] + band[d, d:]
    best = np.argmax(cand, axis=0)
    return cand[best, np.arange(band.shape[1])], best.astype(np.int8)


def checkpointed_viterbi(
    log_start: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    log_prob: np.ndarray,
    emissions: EmissionFn,
    num_frames: int,
    final: np.ndarray,
    *,
    block: int | None = None,
) -> tuple[float, np.ndarray]:
    """Best state path of a left-to-right HMM, in bounded memory.

    Args:
        log_start: ``(S,)`` log start probabilities.
        src, dst, log_prob: the arcs (self-loops included) and their log-probabilities.
        emissions: ``(t0, t1) -> (t1 - t0, S)`` emission log-likelihoods.
        num_frames: ``T >= 1``.
        final: ``(S,)`` states a path may end in.
        block: checkpoint interval (default ``ceil(sqrt(T))``).

    Returns:
        ``(log_prob, states)``: the best path's score (``-inf`` if there is no path)
        and its ``(T,)`` states.
    """
    n_states = int(log_start.size)
    if num_frames < 1:
        raise ValueError("checkpointed_viterbi needs at least one frame")
    band = _banded(n_states, np.asarray(src), np.asarray(dst), np.asarray(log_prob))
    block = block or max(1, math.isqrt(num_frames - 1) + 1)
    if band.shape[0] > 127:
        raise ValueError("arcs may skip at most 126 states")

    # forward: checkpoints[k] = Viterbi scores at frame k * block
    checkpoints: list[np.ndarray] = []
    delta = np.empty(0)
    for t0 in range(0, num_frames, block):
        ll = emissions(t0, min(t0 + block, num_frames))  # (<= block, S)
        for i in range(ll.shape[0]):
            if t0 + i == 0:
                delta = log_start + ll[0]
            else:
                delta = _step(delta, band)[0] + ll[i]
            if i == 0:
                checkpoints.append(delta)
    end_scores = np.where(final, delta, -np.inf)
    state = int(np.argmax(end_scores))
    best = float(end_scores[state])
    path = np.empty(num_frames, dtype=np.int64)
    path[-1] = state
    if not np.isfinite(best):
        return best, path

    # backward, one block at a time: back-pointers of frames t0 + 1 .. t1
    for k in range(len(checkpoints) - 1, -1, -1):
        t0 = k * block
        t1 = min(t0 + block, num_frames - 1)
        if t1 <= t0:
            continue
        ll = emissions(t0 + 1, t1 + 1)  # (t1 - t0, S)
        pointers = np.empty((t1 - t0, n_states), dtype=np.int8)
        delta = checkpoints[k]
        for i in range(t1 - t0):
            delta, pointers[i] = _step(delta, band)
            delta = delta + ll[i]
        for t in range(t1, t0, -1):
            state -= int(pointers[t - t0 - 1, state])
            path[t - 1] = state
    return best, path

"""Forced alignment: a transcript laid onto the frames of its posteriors.

Two paths, one result type (:class:`Alignment`):

``"ctc"`` (fast)
    ``torchaudio.functional.forced_align`` on CTC's topology, with the scaled
    likelihoods as scores and no transition probabilities.
``"hmm"``
    Viterbi of an :class:`hmm.model.AlignmentHMM` (hmmlearn's ``decode``) on the
    topology and learned durations of a :class:`hmm.model.TiedDurationHMM`.

``"auto"`` takes the fast path when no duration model is given, else the HMM.

Confidence: a unit's confidence is the mean of its (plain, unscaled) frame posterior
``p(unit | o_t)`` over the frames aligned to it; a word's is the minimum over its units
(one badly matched letter makes the word doubtful).

Memory: a plain Viterbi keeps one back-pointer per frame and state, ``T x S`` cells
(hmmlearn's also a dense ``S x S`` transition matrix). Inputs with more than
:attr:`AlignerConfig.max_cells` cells are aligned by :func:`hmm.viterbi.checkpointed_viterbi`
instead (same paths and scores, sparse arcs, ``O(sqrt(T) * S)`` memory, emissions
computed block by block); ``Alignment.checkpointed`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchaudio.functional as taf

from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from fusion.core.types import TokenSpan, WordSpan, span_confidences, spans_to_words
from hmm.emissions import ScaledLikelihoods
from hmm.model import LOG_FLOOR, TiedDurationHMM, frames
from hmm.topology import START, AlignmentError, StateGraph, TopologyConfig, build_graph, transcript_ids
from hmm.viterbi import checkpointed_viterbi

__all__ = ["Alignment", "AlignerConfig", "Method", "align"]

Method = Literal["auto", "ctc", "hmm"]
METHODS: tuple[Method, ...] = ("auto", "ctc", "hmm")


@dataclass(frozen=True)
class AlignerConfig:
    """Options of :func:`align`.

    Attributes:
        method: ``"auto"``, ``"ctc"`` or ``"hmm"`` (module docstring).
        max_cells: most ``frames x states`` cells for torchaudio / hmmlearn; larger
            inputs (and graphs over the model's ``max_states``) go through the
            checkpointed Viterbi (bounded memory).
        block: checkpoint interval of that Viterbi (``None``: ``ceil(sqrt(T))``).
    """

    method: Method = "auto"
    max_cells: int = 20_000_000
    block: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.max_cells < 1:
            raise ValueError(f"max_cells must be >= 1, got {self.max_cells}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")


@dataclass(frozen=True, eq=False)
class Alignment:
    """The alignment of one utterance.

    Attributes:
        utt_id: the utterance.
        tokens: every transcript unit (word boundaries included) with its frames.
        words: word spans in seconds, each with its confidence (module docstring).
        token_confidences: confidence of each entry of ``tokens``.
        log_likelihood: score of the best path, natural log: summed emission
            log-likelihoods, plus transition log-probabilities on the HMM path.
        frame_tokens: ``(T,)`` the unit each frame is aligned to (the blank included).
        method: ``"ctc"`` or ``"hmm"``: which path produced it.
        checkpointed: whether the bounded-memory Viterbi produced it (long inputs).
    """

    utt_id: str
    tokens: tuple[TokenSpan, ...]
    words: tuple[WordSpan, ...]
    token_confidences: tuple[float, ...]
    log_likelihood: float
    frame_tokens: np.ndarray
    method: str
    checkpointed: bool = False


def _spans_from_positions(positions: np.ndarray, ids: list[int]) -> list[TokenSpan]:
    """Token spans from the transcript position of each frame (``-1``: blank); every
    position occupies one run of frames (the graphs are left to right)."""
    frames_at = np.flatnonzero(positions >= 0)
    pos = positions[frames_at]
    starts = np.r_[0, np.flatnonzero(np.diff(pos)) + 1]
    ends = np.r_[starts[1:], pos.size]
    if not np.array_equal(pos[starts], np.arange(len(ids))):
        raise RuntimeError("the alignment path skipped or revisited a transcript unit")
    return [TokenSpan(token, int(frames_at[a]), int(frames_at[b - 1]) + 1)
            for token, a, b in zip(ids, starts, ends)]


def _ctc_arcs(graph: StateGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``graph.structure()`` in sparse form, ``(log start (S,), src, dst)``: the same arcs
    without its ``S x S`` mask (1.9 GB at 30 minutes of speech)."""
    n = graph.num_states
    is_start = graph.arc_src == START
    start = np.zeros(n, dtype=bool)
    start[graph.arc_dst[is_start]] = True
    src, dst = graph.arc_src[~is_start], graph.arc_dst[~is_start]  # no self-loops among them
    has_exit = np.zeros(n, dtype=bool)
    has_exit[src] = True
    looping = np.flatnonzero(graph.loops | ~has_exit)  # a state without exits loops for ever
    with np.errstate(divide="ignore"):
        log_start = np.log(start.astype(np.float64))
    return log_start, np.r_[looping, src], np.r_[looping, dst]


def _ctc_positions(posteriors: Posteriors, ids: list[int], table: TokenTable,
                   emissions: ScaledLikelihoods) -> tuple[np.ndarray, float]:
    scores = emissions.log_likelihoods(posteriors.log_probs, utt_id=posteriors.utt_id)
    emission = torch.from_numpy(scores.astype(np.float32))[None]  # (1, T, V)
    targets = torch.tensor([ids], dtype=torch.int32)  # (1, L)
    labels, path_scores = taf.forced_align(emission, targets, blank=table.blank_id)
    labels_np = labels[0].numpy()
    # a new unit starts wherever a non-blank label differs from the frame before, or
    # follows a blank; consecutive equal labels are one unit (CTC collapses them)
    nonblank = labels_np != table.blank_id
    starts = nonblank & np.r_[True, (labels_np[1:] != labels_np[:-1]) | ~nonblank[:-1]]
    positions = np.where(nonblank, np.cumsum(starts) - 1, -1)
    return positions, float(path_scores[0].double().sum())


def align(
    posteriors: Posteriors,
    text: str,
    table: TokenTable,
    *,
    model: TiedDurationHMM | None = None,
    emissions: ScaledLikelihoods | None = None,
    config: AlignerConfig = AlignerConfig(),
) -> Alignment:
    """Align ``text`` to ``posteriors``.

    Args:
        posteriors: the utterance's frame log-posteriors.
        text: its normalised transcript (words split on whitespace).
        table: the token table spelling it.
        model: a (trained) duration model for the HMM path; its emissions are used.
        emissions: emissions for the fast path when no model is given (default: plain
            posteriors).
        config: method and memory bound.

    Raises:
        AlignmentError: naming the utterance, for an empty transcript, characters
            outside the table, or a transcript needing more frames than there are.
    """
    utt_id = posteriors.utt_id
    if not text.split():
        raise AlignmentError(f"utterance {utt_id!r}: empty transcript, nothing to align")
    if posteriors.num_tokens != len(table):
        raise AlignmentError(f"utterance {utt_id!r}: posteriors have {posteriors.num_tokens} tokens, "
                             f"the table {len(table)}")
    method = config.method
    if method == "auto":
        method = "hmm" if model is not None else "ctc"
    if method == "hmm" and model is None:
        model = TiedDurationHMM(table, emissions or ScaledLikelihoods())
    if model is not None and emissions is not None and model.emissions is not emissions:
        raise ValueError("give emissions either directly or through the model, not both")
    emis = model.emissions if model is not None else (emissions or ScaledLikelihoods())
    ids = transcript_ids(table, utt_id, text)
    n_frames = posteriors.num_frames

    if method == "ctc" and model is not None and not model.config.topology.is_ctc:
        raise ValueError(f"method='ctc' needs CTC's topology; this model has {model.config.topology}")
    topology = model.config.topology if method == "hmm" and model is not None else TopologyConfig()
    graph = build_graph(table, ids, topology, utt_id=utt_id)
    if graph.min_frames > n_frames:
        raise AlignmentError(
            f"utterance {utt_id!r}: the transcript needs at least {graph.min_frames} frames "
            f"but the posteriors have {n_frames}: transcript too long for the audio"
        )
    checkpointed = n_frames * graph.num_states > config.max_cells or (
        method == "hmm" and model is not None and graph.num_states > model.config.max_states)

    if checkpointed:
        if method == "ctc":  # CTC's topology scores no transitions
            log_start, src, dst = _ctc_arcs(graph)
            arc_log = np.zeros(src.size)
        else:
            assert model is not None
            startprob, src, dst, prob = graph.arc_probs(model.loop_, model.optional_blank_)
            with np.errstate(divide="ignore"):
                log_start, arc_log = np.log(startprob), np.log(prob)
        lp = posteriors.log_probs if method == "ctc" else np.maximum(posteriors.log_probs, LOG_FLOOR)

        def block_emissions(t0: int, t1: int) -> np.ndarray:
            return emis.log_likelihoods(lp[t0:t1], utt_id=utt_id)[:, graph.state_tokens]

        log_likelihood, states = checkpointed_viterbi(
            log_start, src, dst, arc_log, block_emissions, n_frames, graph.final, block=config.block)
        if not np.isfinite(log_likelihood):
            raise AlignmentError(f"utterance {utt_id!r}: no path through the transcript's graph")
        positions = graph.state_positions[states]
        frame_tokens = graph.state_tokens[states]
    elif method == "ctc":
        positions, log_likelihood = _ctc_positions(posteriors, ids, table, emis)
        frame_tokens = np.where(positions >= 0, np.asarray(ids + [0])[positions], table.blank_id)
    else:
        assert model is not None
        hmm = model.hmm(model.graph(utt_id, text))
        log_likelihood, states = hmm.decode(frames(posteriors))
        if not np.isfinite(log_likelihood):
            raise AlignmentError(f"utterance {utt_id!r}: no path through the transcript's graph")
        positions = graph.state_positions[states]
        frame_tokens = graph.state_tokens[states]

    spans = _spans_from_positions(positions, ids)
    return Alignment(
        utt_id=utt_id,
        tokens=tuple(spans),
        words=spans_to_words(table, spans, posteriors.frame_shift, posteriors.log_probs),
        token_confidences=tuple(span_confidences(spans, posteriors.log_probs)),
        log_likelihood=float(log_likelihood),
        frame_tokens=np.asarray(frame_tokens, dtype=np.int64),
        method=method,
        checkpointed=bool(checkpointed),
    )

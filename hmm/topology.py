"""State graphs of a transcript: the CTC topology and left-to-right token HMMs.

A transcript of ``L`` units becomes a left-to-right graph of states, each emitting one
unit (the blank included). Between units sit *blank slots*: ``none`` (no blank state),
``optional`` (a blank state that may be skipped) or ``mandatory`` (it must be passed).

Blank policies (:attr:`TopologyConfig.blank`):

``"ctc"``
    an optional blank before, after and between every two units, mandatory between
    two identical units: with one state per unit this is exactly CTC's topology
    (``2L + 1`` states, the graph of ``torchaudio.functional.forced_align``).
``"word"``
    optional blank (silence) only at the start, the end and around word boundaries
    (next to the ``|`` unit, or before a word-initial piece of a ``prefix`` table),
    still mandatory between identical units, which a CTC model cannot emit otherwise.
``"none"``
    no blank states at all.

Every unit is a chain of ``n = max(states_per_token, min_duration)`` states: the first
``n - states_per_token`` are passed in one frame each, the last ``states_per_token``
have self-loops, so a unit lasts at least ``n`` frames.

Transition probabilities are *tied* (see :meth:`StateGraph.matrices`): a state of unit
class ``c`` that loops stays with ``loop[c]``; it leaves with ``1 - loop[c]``, shared
among its exits: a skippable blank is entered with ``optional_blank``, skipped with
``1 - optional_blank``; any other single exit takes everything. The end of the
utterance is not a transition: a path must sit in a final state at the last frame
(the HMM enforces this on the emissions), and arcs out of a state sum to 1 over the
arcs it has. Arcs that the graph does not have are structural zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fusion.core.tokens import TokenTable, TokenTableError

__all__ = [
    "ARC_BLANK",
    "ARC_NEXT",
    "ARC_SKIP",
    "START",
    "AlignmentError",
    "BlankPolicy",
    "StateGraph",
    "TopologyConfig",
    "build_graph",
    "transcript_ids",
]

BlankPolicy = Literal["ctc", "word", "none"]
BLANK_POLICIES: tuple[BlankPolicy, ...] = ("ctc", "word", "none")

#: the source of arcs out of the (non-emitting) start
START = -1
#: an arc taken with the whole exit mass (chains, mandatory blanks, blank -> unit)
ARC_NEXT = 0
#: the arc into a skippable blank (probability ``optional_blank`` of the exit mass)
ARC_BLANK = 1
#: the arc skipping a skippable blank (probability ``1 - optional_blank``)
ARC_SKIP = 2


class AlignmentError(ValueError):
    """A transcript that cannot be aligned; the message names the utterance and why."""


@dataclass(frozen=True)
class TopologyConfig:
    """Shape of the per-transcript state graph.

    Attributes:
        states_per_token: ``k >= 1`` self-looping states per unit.
        min_duration: minimum frames per unit (``>= 1``); a unit gets
            ``max(k, min_duration)`` states.
        blank: where blank states go (``"ctc"``, ``"word"`` or ``"none"``).
    """

    states_per_token: int = 1
    min_duration: int = 1
    blank: BlankPolicy = "ctc"

    def __post_init__(self) -> None:
        for name in ("states_per_token", "min_duration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.blank not in BLANK_POLICIES:
            raise ValueError(f"blank must be one of {BLANK_POLICIES}, got {self.blank!r}")

    @property
    def states_per_unit(self) -> int:
        return max(self.states_per_token, self.min_duration)

    @property
    def is_ctc(self) -> bool:
        """Whether this is exactly CTC's topology (one state per unit, CTC blanks)."""
        return self.states_per_unit == 1 and self.blank == "ctc"


@dataclass(frozen=True, eq=False)
class StateGraph:
    """The state graph of one transcript (arrays are read-only).

    Attributes:
        utt_id: the utterance it was built for (named in errors).
        token_ids: the transcript's units, blank-free.
        state_tokens: ``(S,)`` the unit each state emits.
        state_positions: ``(S,)`` transcript position of each state, ``-1`` for blanks.
        loops: ``(S,)`` whether the state has a self-loop.
        final: ``(S,)`` whether a path may end in the state.
        arc_src, arc_dst, arc_kind: the arcs other than self-loops (``arc_src == START``
            for start arcs; kinds :data:`ARC_NEXT`, :data:`ARC_BLANK`, :data:`ARC_SKIP`).
        min_frames: the fewest frames any path through the graph needs.
    """

    utt_id: str
    token_ids: tuple[int, ...]
    state_tokens: np.ndarray
    state_positions: np.ndarray
    loops: np.ndarray
    final: np.ndarray
    arc_src: np.ndarray
    arc_dst: np.ndarray
    arc_kind: np.ndarray
    min_frames: int

    def __post_init__(self) -> None:
        for name in ("state_tokens", "state_positions", "loops", "final", "arc_src", "arc_dst",
                     "arc_kind"):
            arr = np.array(getattr(self, name))
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    @property
    def num_states(self) -> int:
        return int(self.state_tokens.size)

    def exit_weights(self, optional_blank: float) -> np.ndarray:
        """Share of its source's exit mass each arc takes (sums to 1 per source)."""
        weights = np.ones(self.arc_kind.size)
        for src in np.unique(self.arc_src):
            idx = np.flatnonzero(self.arc_src == src)
            kinds = self.arc_kind[idx]
            if (kinds == ARC_BLANK).any() and (kinds == ARC_SKIP).any():
                w = np.where(kinds == ARC_BLANK, optional_blank,
                             np.where(kinds == ARC_SKIP, 1.0 - optional_blank, 1.0))
            else:
                w = np.ones(idx.size)
            weights[idx] = w / w.sum()
        return weights

    def arc_probs(self, loop_probs: np.ndarray, optional_blank: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Tied probabilities in sparse form: ``(startprob (S,), src, dst, prob)`` over
        every arc between states, self-loops included (see :meth:`matrices`)."""
        n = self.num_states
        weights = self.exit_weights(optional_blank)
        startprob = np.zeros(n)
        is_start = self.arc_src == START
        np.add.at(startprob, self.arc_dst[is_start], weights[is_start])
        has_exit = np.zeros(n, dtype=bool)
        has_exit[self.arc_src[~is_start]] = True
        loop = np.where(self.loops, np.asarray(loop_probs, dtype=np.float64)[self.state_tokens], 0.0)
        loop = np.where(has_exit, loop, 1.0)  # a final state without exits loops for ever
        src, dst = self.arc_src[~is_start], self.arc_dst[~is_start]
        looping = np.flatnonzero(loop > 0)
        return (startprob, np.r_[looping, src], np.r_[looping, dst],
                np.r_[loop[looping], (1.0 - loop[src]) * weights[~is_start]])

    def matrices(self, loop_probs: np.ndarray, optional_blank: float) -> tuple[np.ndarray, np.ndarray]:
        """``(startprob (S,), transmat (S, S))`` from tied parameters.

        Args:
            loop_probs: ``(V,)`` self-loop probability of each unit class, in (0, 1).
            optional_blank: probability of entering a skippable blank, in (0, 1).
        """
        startprob, src, dst, prob = self.arc_probs(loop_probs, optional_blank)
        transmat = np.zeros((self.num_states, self.num_states))
        np.add.at(transmat, (src, dst), prob)
        return startprob, transmat

    def structure(self) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks ``(start, trans)`` of the arcs the graph has; the rest are
        structural zeros."""
        n = self.num_states
        start = np.zeros(n, dtype=bool)
        trans = np.zeros((n, n), dtype=bool)
        is_start = self.arc_src == START
        start[self.arc_dst[is_start]] = True
        trans[self.arc_src[~is_start], self.arc_dst[~is_start]] = True
        has_exit = trans.any(axis=1)
        trans[np.arange(n), np.arange(n)] = self.loops | ~has_exit
        return start, trans


def transcript_ids(table: TokenTable, utt_id: str, text: str) -> list[int]:
    """Spell ``text`` with ``table``; an :class:`AlignmentError` names the utterance when
    a character is not in the table."""
    try:
        return table.ids_from_text(text)
    except TokenTableError as exc:
        raise AlignmentError(f"utterance {utt_id!r}: {exc}") from None


def _slots(table: TokenTable, ids: list[int], policy: BlankPolicy) -> list[str]:
    """Blank slot before each unit and after the last: ``none|optional|mandatory``."""
    n = len(ids)
    slots = []
    for j in range(n + 1):
        if 0 < j < n and ids[j - 1] == ids[j]:
            slots.append("mandatory" if policy != "none" else "none")
        elif policy == "none":
            slots.append("none")
        elif policy == "ctc" or j == 0 or j == n:
            slots.append("optional")
        else:  # "word": around word boundaries
            boundary = table.boundary_id
            at_word = (ids[j - 1] == boundary or ids[j] == boundary
                       or (boundary is None and table.starts_word(ids[j])))
            slots.append("optional" if at_word else "none")
    return slots


def build_graph(table: TokenTable, token_ids: list[int] | tuple[int, ...], config: TopologyConfig,
                *, utt_id: str = "<utterance>") -> StateGraph:
    """Build the state graph of a blank-free unit sequence (see the module docstring).

    An empty sequence gives a single blank state (a silent utterance) unless the
    policy is ``"none"``, which raises :class:`AlignmentError`.
    """
    ids = [int(i) for i in token_ids]
    for i in ids:
        if not 0 <= i < len(table) or i == table.blank_id:
            raise AlignmentError(f"utterance {utt_id!r}: unit id {i} is not a non-blank unit of the table")
    if not ids and config.blank == "none":
        raise AlignmentError(f"utterance {utt_id!r}: an empty transcript has no states without blanks")
    slots = _slots(table, ids, config.blank)
    n_unit, k = config.states_per_unit, config.states_per_token
    tokens: list[int] = []
    positions: list[int] = []
    loops: list[bool] = []
    arcs: list[tuple[int, int, int]] = []

    def add(token: int, position: int, loop: bool) -> int:
        tokens.append(token)
        positions.append(position)
        loops.append(loop)
        return len(tokens) - 1

    pending: list[tuple[int, int]] = [(START, ARC_NEXT)]
    min_frames = 0
    for j, slot in enumerate(slots):
        if slot != "none":
            b = add(table.blank_id, -1, True)
            into = ARC_BLANK if slot == "optional" else ARC_NEXT
            arcs += [(src, b, into) for src, _ in pending]
            skips = [(src, ARC_SKIP) for src, _ in pending] if slot == "optional" else []
            pending = [(b, ARC_NEXT)] + skips
            min_frames += slot == "mandatory"
        if j == len(ids):
            break
        first = len(tokens)
        for m in range(n_unit):
            add(ids[j], j, m >= n_unit - k)
            if m:
                arcs.append((first + m - 1, first + m, ARC_NEXT))
        arcs += [(src, first, kind) for src, kind in pending]
        pending = [(first + n_unit - 1, ARC_NEXT)]
        min_frames += n_unit
    final = np.zeros(len(tokens), dtype=bool)
    final[[src for src, _ in pending]] = True
    arr = np.array(arcs, dtype=np.int64).reshape(-1, 3)
    return StateGraph(
        utt_id=utt_id, token_ids=tuple(ids),
        state_tokens=np.array(tokens, dtype=np.int64),
        state_positions=np.array(positions, dtype=np.int64),
        loops=np.array(loops, dtype=bool), final=final,
        arc_src=arr[:, 0], arc_dst=arr[:, 1], arc_kind=arr[:, 2],
        min_frames=max(min_frames, 1),
    )

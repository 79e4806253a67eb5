"""CTC prefix beam search with shallow fusion of named, weighted scorers.

The search keeps, for every distinct prefix (collapsed unit sequence), the log-probability
of the frames so far ending in blank (``p_b``) and in its last unit (``p_nb``): the
acoustic score is their log-sum. When a prefix completes a word, each word scorer
(:mod:`fusion.scorers`) scores it; a hypothesis ranks by

    weights["acoustic"] * acoustic + sum(weights[s.name] * score[s.name] for s in scorers)

and keeps each scorer's unweighted score. Pruning per frame: candidate units are the
``token_top_k`` most probable above ``token_min_logprob``; frames whose blank probability
reaches ``blank_skip`` only extend prefixes with blank; beams more than
``beam_threshold`` below the best are dropped, then all but the best ``beam_size``.

Token and word times of the returned hypotheses come from a CTC forced alignment of each
hypothesis, not from search bookkeeping: ``fusion._ctcsearch.align`` when built (the same
spans as ``torchaudio.functional.forced_align``, ties included), torchaudio's otherwise.

The search itself runs in C++ (``fusion/csrc/ctc_search.cpp``, KenLM linked in) when it
knows every scorer, and here otherwise (:attr:`SearchOptions.engine`). The C++ search is
this module's search step for step, so both return the same N-best lists and scores; it
is 8-11 times faster, and the Python one takes any scorer.

:meth:`BeamSearchDecoder.stream` decodes chunk by chunk (:class:`DecoderStream`): the
search's beams are carried over between chunks, a partial result is the best prefix so
far, and the final result is :meth:`BeamSearchDecoder.decode`'s for the whole utterance.
"""

from __future__ import annotations

import contextvars
import heapq
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fusion.defaults import ACOUSTIC, BEAM_SIZE
from fusion.posteriors import Posteriors
from fusion.scorers import WordScorer
from fusion.tokens import TokenTable
from fusion.types import DecodeResult, Hypothesis, PartialResult, TokenSpan, WordSpan, spans_to_words

if TYPE_CHECKING:  # torch is imported where the fallback aligner needs it
    import torch

try:
    from fusion import _ctcsearch
    _CTC_ERROR = ""
except ImportError as _exc:  # not built: ``make`` builds it (see setup.py)
    _ctcsearch = None
    _CTC_ERROR = str(_exc)

_new_tuple = tuple.__new__

__all__ = ["ENGINES", "BeamSearchDecoder", "DecoderStream", "SearchOptions", "StreamSnapshot",
           "candidate_units", "compiled_scorers", "floored", "lexicon_pruning"]

NEG_INF = -math.inf
ENGINES = ("auto", "compiled", "python")


def compiled_scorers(scorers: Sequence[WordScorer], weights: Mapping[str, float]) -> list[dict]:
    """What the compiled search needs of ``scorers``: each describes itself
    (:meth:`~fusion.scorers.WordScorer.compiled`); one it cannot run natively is called back."""
    return [s.compiled(float(weights[s.name])) for s in scorers]


@dataclass(frozen=True)
class SearchOptions:
    """Beam-search settings, checked once when made.

    Attributes:
        beam_size: beams kept after each frame.
        beam_threshold: drop beams scoring more than this below the best (natural log);
            ``math.inf`` disables. 10, pyctcdecode's ``beam_prune_logp``: on the dev
            posteriors of the GPU-trained stage-1 embedded model (word 4-gram, beam 32) it
            gave 18.00% WER against 18.65% with 15, and decoded 1.5x faster. Where an LM's
            unknown-word cost times its weight exceeds it, the search drops hypotheses
            that start an unknown word and may leave the rest of an utterance unsaid: with
            the cmusphinx 3-gram (no ``<unk>``, 23 nats) at the word 4-gram's weight 1.08,
            beam 8 cut 19 of 287 test outputs short, and a threshold of 15 only 6. So
            ``fusion tune`` tunes the weights per LM and then sweeps this threshold.
        token_top_k: candidate non-blank units per frame.
        token_min_logprob: candidates below this log-probability are skipped.
        blank_skip: frames whose blank probability is at least this only extend with
            blank (``None`` disables); 0.999 loses nothing measurable on peaky CTC output.
        floor_every_label: hold blank and a repeated unit to ``token_min_logprob`` too,
            as new units are (pyctcdecode's rule: a path passes a frame only through a
            label at or above the floor, or the frame's most probable label, which always
            passes). Off (the default), every prefix may stay in blank or repeat its last
            unit on any frame. On, a prefix cannot wait out speech in blank: where a word
            in progress (``"nocturna"``) can only go on at a partial-word charge
            (:class:`~fusion.scorers.LexiconScorer` ``partial=True``) while its own charge
            waits for its end, the search would otherwise keep it and leave the rest of the
            utterance unsaid (``benchmarks/results/dropin.md``).
        split_blank_ends: rank each prefix's blank-ending and label-ending paths as two
            candidates of the ``beam_size`` (pyctcdecode's beams, keyed by their last label),
            a prefix keeping only the mass of its ends that made the beam. Off (the default),
            a prefix ranks by the sum of both, as CTC prefix beam search does.
        nbest: hypotheses returned per utterance.
        engine: ``"compiled"`` runs the search in C++ (``fusion._ctcsearch``, KenLM linked
            in), which knows :class:`~fusion.scorers.LMScorer` over a word-level
            :class:`~lm.ngram.KenLM`, :class:`~fusion.scorers.WordBonus`,
            :class:`~fusion.scorers.LexiconScorer` and :class:`~fusion.scorers.HotwordScorer`;
            ``"python"`` runs it in Python and takes any scorer (a neural LM); ``"auto"``
            picks the compiled one when it is built and knows every scorer. Both give the
            same results.
    """

    beam_size: int = BEAM_SIZE
    beam_threshold: float = 10.0
    token_top_k: int = 16
    token_min_logprob: float = -5.0
    blank_skip: float | None = 0.999
    floor_every_label: bool = False
    split_blank_ends: bool = False
    nbest: int = 1
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"SearchOptions.engine must be one of {ENGINES}, got {self.engine!r}")
        for name in ("beam_size", "token_top_k", "nbest"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SearchOptions.{name} must be an integer >= 1, got {value!r}")
        if self.nbest > self.beam_size:
            raise ValueError(f"SearchOptions.nbest ({self.nbest}) cannot exceed beam_size "
                             f"({self.beam_size})")
        if not self.beam_threshold > 0:
            raise ValueError(f"SearchOptions.beam_threshold must be > 0, got {self.beam_threshold}")
        if not (self.token_min_logprob <= 0):
            raise ValueError("SearchOptions.token_min_logprob must be a log-probability <= 0")
        for flag in ("floor_every_label", "split_blank_ends"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"SearchOptions.{flag} must be True or False, "
                                 f"got {getattr(self, flag)!r}")
        if self.blank_skip is not None and not 0.0 < self.blank_skip <= 1.0:
            raise ValueError(f"SearchOptions.blank_skip must be in (0, 1] or None, "
                             f"got {self.blank_skip}")


def lexicon_pruning(num_units: int) -> dict[str, float | int]:
    """Per-frame pruning for a search under a lexicon constraint, as ``SearchOptions``
    keys: every unit a candidate down to log-probability -12, beams kept within 25.

    The right letter of a word the acoustic model misspells is often below the default
    floor of -5, and a constraint then leaves no good path. On the stage-1 embedded
    model's test posteriors (word 4-gram, beam 32; chosen on dev) the constraint with these
    settings gave 14.2% WER, with the defaults 22.6%, and the LM alone 16.9% (on the
    stage-10 embedded model's, ``benchmarks/results/decoder.md``: 6.4% against 6.7%)."""
    return {"token_top_k": max(1, num_units - 1), "token_min_logprob": -12.0,
            "beam_threshold": 25.0}


def floored(lp: np.ndarray, floor: float) -> np.ndarray:
    """``lp`` ``(T, V)`` with every label below ``floor`` made impossible (-inf), except each
    frame's most probable label (:attr:`SearchOptions.floor_every_label`)."""
    rows = np.arange(lp.shape[0])
    best = lp[rows, lp.argmax(axis=1)] if lp.shape[0] else np.zeros(0, lp.dtype)  # (T,)
    held = (lp < floor) & (lp < best[:, None])  # (T, V); ties with the best pass
    return np.where(held, np.float32(NEG_INF), lp).astype(lp.dtype, copy=False)


def candidate_units(lp: np.ndarray, blank: int, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top_k`` most probable non-blank units of each frame, best first (ties: the
    lower id first), and their log-probabilities: ``(T, k)`` each."""
    nonblank = np.delete(np.arange(lp.shape[1]), blank)  # (V - 1,)
    sub = lp[:, nonblank]  # (T, V - 1)
    order = np.argsort(-sub, axis=1, kind="stable")[:, : min(top_k, len(nonblank))]  # (T, k)
    return nonblank[order], np.take_along_axis(sub, order, axis=1)


def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for floats, -inf safe."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class _Prefix:
    """What the search knows of one prefix besides its probabilities (internal).

    All of it is a function of the prefix alone, so the search works it out once per
    prefix and utterance, however many frames propose that prefix again. ``pending`` is
    set while the completion of the word before it still waits for a deferred scorer
    (see :meth:`BeamSearchDecoder._resolve`); ``fused`` is then an upper bound.
    """

    __slots__ = ("partial", "states", "scores", "fused", "pterm", "pending")

    def __init__(self, partial: str, states: tuple[Hashable, ...], scores: tuple[float, ...],
                 fused: float, pterm: float, pending: tuple | None = None) -> None:
        self.partial = partial  # spelling of the word in progress
        self.states = states  # one state per word scorer, after the last completed word
        self.scores = scores  # unweighted word-scorer totals
        self.fused = fused  # weighted sum of ``scores``
        self.pterm = pterm  # weighted partial-word estimate (pruning only)
        self.pending = pending  # (word, parent states, scores, fused) awaiting scoring


class _Beam:
    """One prefix in the beam during the search (internal; discarded after the utterance)."""

    __slots__ = ("id", "last", "p_b", "p_nb", "info")

    def __init__(self, id: int, last: int, info: _Prefix, p_nb: float = NEG_INF) -> None:
        self.id = id  # the prefix's number (see ``_search``)
        self.last = last
        self.p_b = NEG_INF
        self.p_nb = p_nb
        self.info = info


class _Final(NamedTuple):
    """A finished hypothesis of the search (internal)."""

    prefix: tuple[int, ...]
    acoustic: float
    scores: tuple[float, ...]  # unweighted, end-of-utterance scores included
    fused: float  # weighted sum of ``scores``


class _SearchState:
    """The Python search between two chunks of frames (internal).

    Every prefix the search meets gets a number: ``ids[parent * vocab + unit]``. Its
    word-scorer bookkeeping is worked out once (``infos[n]``; None: ruled out by a
    constraint) and ``parents[n]`` rebuilds its units at the end."""

    __slots__ = ("beams", "infos", "parents", "ids", "cache", "partials")

    def __init__(self, beams: list[_Beam], infos: list[_Prefix | None],
                 parents: list[tuple[int, int]], ids: dict[int, int], cache: dict,
                 partials: dict) -> None:
        self.beams = beams
        self.infos = infos
        self.parents = parents
        self.ids = ids
        self.cache = cache  # (scorer, state, word) -> (state, score), for this utterance
        # partial word (or scorer, state, partial word) -> weighted partial-word estimate
        self.partials = partials

    def copy(self) -> _SearchState:
        """An independent copy: new beams and prefixes (the search changes them), the
        scorers' states shared (values the search never changes)."""
        made: dict[int, _Prefix] = {}

        def dup(p: _Prefix | None) -> _Prefix | None:
            if p is None:
                return None
            q = made.get(id(p))
            if q is None:
                q = made[id(p)] = _Prefix(p.partial, p.states, p.scores, p.fused, p.pterm, p.pending)
            return q

        infos = [dup(p) for p in self.infos]
        beams = []
        for b in self.beams:
            c = _Beam(b.id, b.last, dup(b.info), b.p_nb)  # type: ignore[arg-type]
            c.p_b = b.p_b
            beams.append(c)
        return _SearchState(beams, infos, list(self.parents), dict(self.ids), dict(self.cache),
                            dict(self.partials))

    def best(self, w_ac: float) -> tuple[tuple[int, ...], float]:
        """The units and total of the best beam now (the total the search ranks by)."""
        top, top_total = None, NEG_INF
        for b in self.beams:
            total = w_ac * _lae(b.p_b, b.p_nb) + b.info.fused + b.info.pterm
            if top is None or total > top_total:
                top, top_total = b, total
        units = []
        n = top.id if top is not None else 0
        while n:
            n, unit = self.parents[n]
            units.append(unit)
        return tuple(reversed(units)), top_total


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
        self._w = tuple(self.weights[s.name] for s in self.scorers)
        self._constraints = tuple(s for s in self.scorers if s.constraint)
        self._partial = tuple((i, self.weights[s.name], s) for i, s in enumerate(self.scorers)
                              if s.has_partial)
        # whether no partial-word estimate depends on a state
        self._stateless = not any(s.partial_uses_state for _, _, s in self._partial)
        self._batched = tuple((i, s) for i, s in enumerate(self.scorers) if s.batched)
        # batched scorers whose word scores can wait for the frame's pruning (an upper bound
        # stands in until then): a known maximum, a weight >= 0, a state-free partial score
        self._deferred = tuple(
            i for i, s in self._batched
            if s.max_word_score is not None and self._w[i] >= 0
            and (not s.partial_uses_state or not s.has_partial)
        )
        self._prefetched = tuple((i, s) for i, s in self._batched if i not in self._deferred)
        ends_word = [u == table.boundary_id or table.starts_word(u) for u in range(len(table))]
        self._ends_word = tuple(ends_word)
        # each unit's part in word grouping, for the compiled results path (ctc_align.h)
        self._word_kind = np.array([1 if u == table.boundary_id else 2 if e else 0
                                    for u, e in enumerate(ends_word)], dtype=np.int8)
        # the partial word a unit leaves: after a word-ending unit, its own spelling
        wb = len(table.word_boundary)
        self._starts = tuple("" if u == table.boundary_id else table.tokens[u][wb:] if e else None
                             for u, e in enumerate(ends_word))
        engine = options.engine
        if engine == "compiled" and _ctcsearch is None:
            raise ValueError(f"engine 'compiled': fusion._ctcsearch is not built "
                             f"(make builds it): {_CTC_ERROR}")
        self._spec = (compiled_scorers(self.scorers, self.weights)
                      if engine != "python" and _ctcsearch is not None else None)
        self._searcher: object | None = None  # a C++ object: made here, and after unpickling
        if self._spec is not None:
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
                opts.floor_every_label, opts.split_blank_ends)
        except RuntimeError as exc:  # KenLM failed to load a model the Python side loaded
            raise ValueError(f"compiled search: {exc}") from None
        return self._searcher

    @property
    def engine(self) -> str:
        """The search that runs: ``"compiled"`` or ``"python"``."""
        return "python" if self._spec is None else "compiled"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_searcher"] = None  # a C++ object: each process makes its own
        return state

    # -- word completion ----------------------------------------------------------------
    def _prefetch(self, infos: Iterable[_Prefix], cache: dict,
                  scorers: Sequence[tuple[int, WordScorer]]) -> None:
        """Score, in one call per batched scorer, every word these prefixes could complete."""
        for i, scorer in scorers:
            pairs = list({(p.states[i], p.partial) for p in infos if p.partial
                          and (i, p.states[i], p.partial) not in cache})
            for (state, word), hit in zip(pairs, scorer.score_words(pairs)):
                cache[(i, state, word)] = hit

    def _complete(self, states: tuple, scores: tuple, fused: float, word: str,
                  cache: dict) -> tuple[tuple, tuple, float]:
        """States, scores and fused score after ``word`` completes."""
        states, scores = list(states), list(scores)
        for i, scorer in enumerate(self.scorers):
            key = (i, states[i], word)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = scorer.score_word(states[i], word)
            states[i] = hit[0]
            scores[i] += hit[1]
            fused += self._w[i] * hit[1]
        return tuple(states), tuple(scores), fused

    def _bound(self, parent: _Prefix, word: str, cache: dict) -> _Prefix | None:
        """A pending completion of ``word`` when a deferred scorer has not scored it yet:
        the other scorers' states and an upper bound of the fused score."""
        states = parent.states
        if all((i, states[i], word) in cache for i in self._deferred):
            return None
        new, fused = list(states), parent.fused
        for i, scorer in enumerate(self.scorers):
            if i in self._deferred:
                fused += self._w[i] * scorer.max_word_score  # type: ignore[operator]
                continue
            key = (i, states[i], word)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = scorer.score_word(states[i], word)
            new[i] = hit[0]
            fused += self._w[i] * hit[1]
        return _Prefix("", tuple(new), parent.scores, fused, 0.0,
                       (word, parent.states, parent.scores, parent.fused))

    def _extend(self, parent: _Prefix, unit: int, cache: dict, partials: dict) -> _Prefix | None:
        """The prefix ``parent`` + ``unit`` (None if a constraint rules it out)."""
        states, scores, fused = parent.states, parent.scores, parent.fused
        pending = None
        partial = self._starts[unit]
        if partial is not None:  # the unit ends the word in progress
            word = parent.partial
            if word:
                if self._constraints and any(not c.accepts(word) for c in self._constraints):
                    return None
                bound = self._bound(parent, word, cache) if self._deferred else None
                if bound is None:
                    states, scores, fused = self._complete(states, scores, fused, word, cache)
                else:
                    states, fused, pending = bound.states, bound.fused, bound.pending
        else:
            partial = parent.partial + self.table.tokens[unit]
        if partial and self._constraints and any(not c.viable_prefix(partial)
                                                 for c in self._constraints):
            return None
        pterm = 0.0
        if partial and self._partial:
            pterm = partials.get(partial) if self._stateless else None
            if pterm is None:
                pterm = self._partial_term(states, partial, partials)
        return _Prefix(partial, states, scores, fused, pterm, pending)

    def _resolve(self, beams: list[_Beam], totals: list[float], cache: dict
                 ) -> tuple[list[_Beam], list[float]]:
        """Score the pending word completions that can still make the beam, in one batched
        call per deferred scorer, and drop the others.

        A pending beam's total is an upper bound. One that is below the ``beam_size``-th
        best exact total, or more than ``beam_threshold`` below the best exact total,
        cannot survive :meth:`_prune` whatever its real score, so it is never scored.
        """
        opts = self.options
        if opts.split_blank_ends:  # the candidates are the ends (see _prune_split)
            w_ac = self.weights[ACOUSTIC]
            exact = [x for b in beams if b.info.pending is None
                     for x in self._ends(b, w_ac) if x > NEG_INF]
        else:
            exact = [s for b, s in zip(beams, totals) if b.info.pending is None]
        cut = NEG_INF
        if exact:
            cut = max(exact) - opts.beam_threshold
            if len(exact) >= opts.beam_size:
                cut = max(cut, heapq.nlargest(opts.beam_size, exact)[-1])
            cut -= 1e-6  # bounds are sums in another order: never drop on rounding
        keep = [j for j, b in enumerate(beams) if b.info.pending is None or totals[j] >= cut]
        waiting = [j for j in keep if beams[j].info.pending is not None]
        if waiting:  # tighter bounds, where a scorer has them cheap
            tighter = [totals[j] for j in waiting]
            for i in self._deferred:
                scorer, w = self.scorers[i], self._w[i]
                pairs = [(beams[j].info.pending[1][i], beams[j].info.pending[0])  # type: ignore[index]
                         for j in waiting]
                for n, bound in enumerate(scorer.word_bounds(pairs)):
                    tighter[n] += w * (bound - scorer.max_word_score)  # type: ignore[operator]
            dropped = {j for j, ub in zip(waiting, tighter) if ub < cut}
            keep = [j for j in keep if j not in dropped]
        todo = [beams[j].info for j in keep if beams[j].info.pending is not None]
        if todo:
            for i in self._deferred:
                pairs = list({(p.pending[1][i], p.pending[0]) for p in todo  # type: ignore[index]
                              if (i, p.pending[1][i], p.pending[0]) not in cache})  # type: ignore[index]
                for (state, word), hit in zip(pairs, self.scorers[i].score_words(pairs)):
                    cache[(i, state, word)] = hit
            for p in todo:
                word, states, scores, fused = p.pending  # type: ignore[misc]
                p.states, p.scores, p.fused = self._complete(states, scores, fused, word, cache)
                p.pending = None
        w_ac = self.weights[ACOUSTIC]
        beams = [beams[j] for j in keep]
        totals = [w_ac * _lae(b.p_b, b.p_nb) + b.info.fused + b.info.pterm for b in beams]
        return beams, totals

    # -- search -------------------------------------------------------------------------
    def _search(self, lp: np.ndarray) -> list[_Final]:
        state = self._begin()
        self._advance(state, lp)
        return self._end(state)

    def _begin(self) -> _SearchState:
        """A search before its first frame: the root prefix is the only beam."""
        root = _Prefix("", tuple(s.start() for s in self.scorers), (0.0,) * len(self.scorers),
                       0.0, 0.0)
        first = _Beam(0, -1, root)
        first.p_b = 0.0
        return _SearchState([first], [root], [(-1, -1)], {}, {}, {})

    def _end(self, state: _SearchState) -> list[_Final]:
        """The N best of a search after its last frame (end-of-utterance scores added)."""
        return self._finish(state.beams, state.cache, self.weights[ACOUSTIC], state.parents)

    def _advance(self, state: _SearchState, lp: np.ndarray) -> None:
        """Take the frames of ``lp`` ``(T, V)``, the beams carried over in ``state``: a
        search advanced over any split of the frames is the search over all of them."""
        opts, table = self.options, self.table
        blank, boundary = table.blank_id, table.boundary_id
        n_frames, vocab = lp.shape
        if opts.floor_every_label:
            lp = floored(lp, opts.token_min_logprob)
        cand, cand_lp = candidate_units(lp, blank, opts.token_top_k)  # (T, k) each
        keep = cand_lp >= opts.token_min_logprob  # (T, k)
        if opts.floor_every_label:  # a frame's best unit passes even below the floor
            keep |= cand_lp > NEG_INF
        # frames where no unit but blank can start: every prefix only stays (cheap path)
        blank_only = ~keep.any(axis=1)
        if opts.blank_skip:
            blank_only |= lp[:, blank] >= math.log(opts.blank_skip)
        units_at = {
            int(t): [(u, v) for u, v, ok in zip(cand[t].tolist(), cand_lp[t].tolist(),
                                                keep[t].tolist()) if ok]
            for t in np.flatnonzero(~blank_only)
        }
        lp_rows = lp.tolist()
        w_ac = self.weights[ACOUSTIC]
        ends_word = self._ends_word
        spellings = table.tokens
        # units whose new prefix keeps its parent's word scores and has its partial-word
        # term cached under its spelling (when partial-word terms ignore the states)
        letter = [not e and self._stateless for e in ends_word]
        extend, partial_term = self._extend, self._partial_term
        cache, partials = state.cache, state.partials
        infos, parents, ids = state.infos, state.parents, state.ids
        beams = state.beams
        for t in range(n_frames):
            row = lp_rows[t]
            lp_blank = row[blank]
            units = units_at.get(t)
            if units is None:
                for b in beams:
                    total = _lae(b.p_b, b.p_nb)
                    b.p_nb = b.p_nb + row[b.last] if b.last >= 0 else NEG_INF
                    b.p_b = total + lp_blank
                continue
            if self._prefetched and any(ends_word[u] for u, _ in units):
                self._prefetch([b.info for b in beams], cache, self._prefetched)
            # a new prefix scoring below what the beams themselves keep cannot survive
            # _prune: it is never made (``live``: prefixes it may merge into instead)
            cut = self._cut(beams, row, lp_blank, w_ac)
            live = {b.id for b in beams}
            nxt: dict[int, _Beam] = {}
            for b in beams:
                bid, last, p_b, p_nb = b.id, b.last, b.p_b, b.p_nb
                total = _lae(p_b, p_nb)
                same = nxt.get(bid)
                if same is None:
                    same = nxt[bid] = _Beam(bid, last, b.info)
                same.p_b = _lae(same.p_b, total + lp_blank)
                if last >= 0:
                    same.p_nb = _lae(same.p_nb, p_nb + row[last])
                partial, fused, states = b.info.partial, b.info.fused, b.info.states
                base = bid * vocab
                for unit, unit_lp in units:
                    p = (p_b if unit == last else total) + unit_lp
                    if p == NEG_INF:
                        continue
                    if unit == boundary and not partial:
                        # a boundary with no word before it adds nothing to the text:
                        # fold its mass into the beam itself
                        if last >= 0:
                            same.p_nb = _lae(same.p_nb, p)
                        else:
                            same.p_b = _lae(same.p_b, p)
                        continue
                    cid = ids.get(base + unit)
                    if cid is None:
                        if letter[unit]:  # a new prefix that keeps its parent's word scores
                            pt = partial_term(states, partial + spellings[unit], partials)
                            if w_ac * p + fused + pt < cut:
                                continue
                        cid = ids[base + unit] = len(infos)
                        parents.append((bid, unit))
                        infos.append(extend(b.info, unit, cache, partials))
                    child = nxt.get(cid)
                    if child is None:
                        info = infos[cid]
                        if info is not None and (w_ac * p + info.fused + info.pterm >= cut
                                                 or cid in live):
                            nxt[cid] = _Beam(cid, unit, info, p)  # p_nb = log(0 + exp(p))
                    else:
                        child.p_nb = _lae(child.p_nb, p)
            beams = self._prune(list(nxt.values()), w_ac, cache)
        state.beams = beams

    def _compiled_search(self, lp: np.ndarray) -> list[_Final]:
        searcher = self._searcher if self._searcher is not None else self._make_searcher()
        return [_Final(*f) for f in searcher.search(lp)]  # type: ignore[attr-defined]

    def _cut(self, beams: list[_Beam], row: list[float], lp_blank: float, w_ac: float) -> float:
        """A total below which a new prefix (one that is not a beam now) cannot survive
        this frame's :meth:`_prune`.

        Such a prefix has one parent, so its total is known when it is made. Each beam's
        own blank and repeat mass gives a lower bound of its total after the frame (what
        other prefixes fold into it only adds): a new prefix below the ``beam_size``-th of
        these, or more than ``beam_threshold`` below the best, is pruned anyway.
        """
        if w_ac <= 0:
            return NEG_INF
        opts = self.options
        lows = []
        for b in beams:
            info = b.info
            to_blank = _lae(b.p_b, b.p_nb) + lp_blank
            repeat = b.p_nb + row[b.last] if b.last >= 0 else NEG_INF
            if opts.split_blank_ends:  # the two ends are candidates of their own
                lows.append(w_ac * to_blank + info.fused + info.pterm)
                lows.append(w_ac * repeat + info.fused + info.pterm)
            else:
                lows.append(w_ac * _lae(to_blank, repeat) + info.fused + info.pterm)
        cut = max(lows) - opts.beam_threshold
        if len(lows) >= opts.beam_size:
            cut = max(cut, heapq.nlargest(opts.beam_size, lows)[-1])
        return cut - 1e-6  # totals summed in another order: never drop on rounding

    def _partial_term(self, states: tuple, partial: str, partials: dict) -> float:
        if not partial:
            return 0.0
        if self._stateless:  # one term per spelling: cached under the spelling itself
            term = partials.get(partial)
            if term is None:
                term = partials[partial] = self._partial_term_of(states, partial, partials)
            return term
        return self._partial_term_of(states, partial, partials)

    def _partial_term_of(self, states: tuple, partial: str, partials: dict) -> float:
        term = 0.0
        for i, w, s in self._partial:
            key = (i, states[i] if s.partial_uses_state else None, partial)
            value = partials.get(key)
            if value is None:
                value = partials[key] = w * s.partial_score(states[i], partial)
            term += value
        return term

    def _prune(self, beams: list[_Beam], w_ac: float, cache: dict) -> list[_Beam]:
        opts = self.options
        totals = []
        pending = False
        for b in beams:
            a, c = b.p_b, b.p_nb
            if a < c:
                a, c = c, a
            info = b.info
            pending = pending or info.pending is not None
            # w_ac * log(exp(p_b) + exp(p_nb)) + fused + partial-word term
            totals.append(w_ac * (a if c == NEG_INF else a + math.log1p(math.exp(c - a)))
                          + info.fused + info.pterm)
        if pending:
            beams, totals = self._resolve(beams, totals, cache)
        if opts.split_blank_ends:
            kept = self._prune_split(beams, w_ac)
            if kept:  # else no finite candidate (an acoustic weight of 0): as one
                return kept
        order = sorted(range(len(beams)), key=totals.__getitem__, reverse=True)
        floor = totals[order[0]] - opts.beam_threshold
        return [beams[j] for j in order[: opts.beam_size] if totals[j] >= floor]

    @staticmethod
    def _ends(b: _Beam, w_ac: float) -> tuple[float, float]:
        """The totals of a beam's blank-ending and label-ending mass, ranked apart under
        :attr:`SearchOptions.split_blank_ends`."""
        info = b.info
        return (w_ac * b.p_b + info.fused + info.pterm, w_ac * b.p_nb + info.fused + info.pterm)

    def _prune_split(self, beams: list[_Beam], w_ac: float) -> list[_Beam]:
        """:meth:`_prune` under :attr:`SearchOptions.split_blank_ends`: each prefix's two ends
        rank as two candidates (pyctcdecode's beams, keyed by their last label); the
        ``beam_size`` best within ``beam_threshold`` of the best are kept, each prefix with the
        mass of its kept ends only, prefixes in the order of their best kept candidate."""
        opts = self.options
        cands = [(x, 2 * j + e) for j, b in enumerate(beams) for e, x in enumerate(self._ends(b, w_ac))]
        best = max((x for x, _ in cands if x == x), default=NEG_INF)  # NaN never counts as best
        floor = best - opts.beam_threshold
        ok = sorted(((x, c) for x, c in cands if x >= floor and x > NEG_INF),
                    key=lambda xc: (-xc[0], xc[1]))
        out: dict[int, _Beam] = {}
        for _, c in ok[: opts.beam_size]:
            j, label_end = divmod(c, 2)
            b = beams[j]
            kept = out.get(j)
            if kept is None:
                kept = out[j] = _Beam(b.id, b.last, b.info)
            if label_end:
                kept.p_nb = b.p_nb
            else:
                kept.p_b = b.p_b
        return list(out.values())

    def _finish(self, beams: list[_Beam], cache: dict, w_ac: float,
                parents: list[tuple[int, int]]) -> list[_Final]:
        """Complete each beam's last word, add end-of-utterance scores, rank, dedupe.

        A beam whose last word a constraint refuses is dropped, unless every beam's is
        (the audio ends inside a word): then none is, rather than return nothing."""
        finals: list[_Final] = []
        if self._batched:
            self._prefetch([b.info for b in beams], cache, self._batched)
        refused = [bool(b.info.partial) and any(not c.accepts(b.info.partial)
                                                for c in self._constraints) for b in beams]
        waive = all(refused)
        for b, refuse in zip(beams, refused):
            if refuse and not waive:
                continue
            info = b.info
            states, scores, fused = info.states, info.scores, info.fused
            if info.partial:
                states, scores, fused = self._complete(states, scores, fused, info.partial, cache)
            ends = list(scores)
            for i, scorer in enumerate(self.scorers):
                end = scorer.finish(states[i])
                ends[i] += end
                fused += self._w[i] * end
            units = []
            n = b.id
            while n:
                n, unit = parents[n]
                units.append(unit)
            finals.append(_Final(tuple(reversed(units)), _lae(b.p_b, b.p_nb), tuple(ends), fused))
        return self._rank(finals, w_ac)

    def _rank(self, finals: Iterable[_Final], w_ac: float) -> list[_Final]:
        """The ``nbest`` best of the finished beams, one per word sequence."""
        best: dict[tuple, tuple[float, _Final]] = {}
        for f in finals:
            key = tuple(map(tuple, self.table.words_from_ids(f.prefix)))  # same text, same key
            total = w_ac * f.acoustic + f.fused
            if key not in best or best[key][0] < total:
                best[key] = (total, f)
        ranked = sorted(best.values(), key=lambda x: x[0], reverse=True)
        return [f for _, f in ranked[: self.options.nbest]]

    # -- results ------------------------------------------------------------------------
    def _hypothesis(self, beam: _Final, lp: np.ndarray, probs: np.ndarray | None,
                    emissions: torch.Tensor | None, frame_shift: float) -> Hypothesis:
        acoustic = beam.acoustic
        spans, conf = self._align(beam.prefix, lp, probs, emissions)
        if conf is not None:  # the compiled aligner ran: group the words there too
            words = self._words(beam.prefix, spans, conf, frame_shift)
        else:
            words = spans_to_words(self.table, spans, frame_shift, lp)
        scores = {ACOUSTIC: acoustic, **{s.name: v for s, v in zip(self.scorers, beam.scores)}}
        return Hypothesis(
            text=" ".join(w.word for w in words),
            score=self.weights[ACOUSTIC] * acoustic + beam.fused,
            scores=scores,
            tokens=spans,
            words=words,
        )

    def _align(self, units: tuple[int, ...], lp: np.ndarray, probs: np.ndarray | None,
               emissions: torch.Tensor | None) -> tuple[tuple[TokenSpan, ...], list[float] | None]:
        """Token spans of ``units`` in ``lp`` ``(T, V)`` by CTC forced alignment, and their
        confidences when the compiled aligner works them out (else None).

        The compiled aligner (``fusion._ctcsearch.align``) gives the spans that
        ``torchaudio.functional.forced_align`` gives, and given ``probs`` (``lp``'s
        posteriors in float64) the confidences that :func:`~fusion.types.span_confidences`
        gives. Without it, torchaudio aligns ``emissions``, ``lp`` as a ``(1, T, V)`` tensor.
        """
        if not units:
            return (), None
        if _ctcsearch is not None:
            starts, ends, conf = _ctcsearch.align(lp, units, self.table.blank_id, probs)
            # tuple.__new__ makes the named tuples without a Python-level call each
            return tuple(map(_new_tuple, repeat(TokenSpan), zip(units, starts, ends))), conf
        import torch
        import torchaudio.functional as AF

        targets = torch.tensor([units], dtype=torch.int32)  # (1, L)
        labels, _ = AF.forced_align(emissions, targets, blank=self.table.blank_id)
        frames = labels[0].numpy()  # (T,)
        # a unit's span: from the frame where its label starts to the frame where it changes
        change = np.flatnonzero(frames[1:] != frames[:-1]) + 1
        bounds = np.concatenate(([0], change, [len(frames)]))  # runs of one label
        runs = frames[bounds[:-1]] != self.table.blank_id
        starts, ends = bounds[:-1][runs].tolist(), bounds[1:][runs].tolist()
        return tuple(TokenSpan(u, s, e) for u, s, e in zip(units, starts, ends)), None

    def _words(self, units: tuple[int, ...], spans: tuple[TokenSpan, ...], conf: list[float],
               frame_shift: float) -> tuple[WordSpan, ...]:
        """What :func:`~fusion.types.spans_to_words` makes of ``spans`` and their units'
        confidences ``conf``, with the words grouped in C++ (the same groups)."""
        first, last = _ctcsearch.group_words(units, self._word_kind)
        text = self.table.word_text
        return tuple(_new_tuple(WordSpan, (text(units[f:e + 1]), spans[f][1] * frame_shift,
                                           spans[e][2] * frame_shift, min(conf[f:e + 1])))
                     for f, e in zip(first, last))

    def decode(self, posteriors: Posteriors) -> DecodeResult:
        """Decode one utterance: its N-best list, best first."""
        if posteriors.num_tokens != len(self.table):
            raise ValueError(
                f"utterance {posteriors.utt_id!r}: posteriors have {posteriors.num_tokens} "
                f"columns but the token table has {len(self.table)} tokens"
            )
        lp = np.ascontiguousarray(posteriors.log_probs, dtype=np.float32)  # (T, V)
        with self._sessions():
            beams = self._compiled_search(lp) if self._spec is not None else self._search(lp)
        return self._result(posteriors.utt_id, lp, beams, posteriors.frame_shift,
                            posteriors.duration)

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
        probs = emissions = None
        if _ctcsearch is not None:  # the units' confidences sum these (NumPy's exp, not C's)
            probs = np.exp(lp.astype(np.float64)) if beams else None  # (T, V)
        else:  # torchaudio aligns a (1, T, V) tensor: one writable copy per utterance
            import torch

            emissions = torch.from_numpy(np.array(lp)).unsqueeze(0)
        nbest = tuple(self._hypothesis(b, lp, probs, emissions, frame_shift) for b in beams)
        return DecodeResult(utt_id, nbest, frame_shift, duration)

    def stream(self, frame_shift: float, utt_id: str = "stream") -> DecoderStream:
        """Decode one utterance chunk by chunk: see :class:`DecoderStream`.

        Args:
            frame_shift: seconds between frames, as :class:`~fusion.posteriors.Posteriors`.
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
    utterance wait for :meth:`finish`. The compiled search keeps its tables in a C++
    object between chunks; the Python search (any scorer, e.g. a neural LM) keeps its
    own, and the scorers' sessions (a neural LM's KV caches) stay open from the first
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
        if decoder._spec is not None:
            searcher = decoder._searcher if decoder._searcher is not None else decoder._make_searcher()
            self._search: object = self._in_sessions(searcher.stream)  # type: ignore[attr-defined]
        else:
            self._search = self._in_sessions(decoder._begin)

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
        if isinstance(self._search, _SearchState):
            self._in_sessions(self.decoder._advance, self._search, lp)
        else:
            self._in_sessions(self._search.accept, lp)  # type: ignore[attr-defined]
        lp.flags.writeable = False
        self._chunks.append(lp)
        self._frames += lp.shape[0]
        return self.partial()

    def partial(self) -> PartialResult:
        """The best prefix so far, by the total the search ranks by (its last word may be
        unfinished; no end-of-utterance scores): cheap, the beams' bookkeeping only."""
        if isinstance(self._search, _SearchState):
            units, total = self._search.best(self.decoder.weights[ACOUSTIC])
        else:
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
            if isinstance(self._search, _SearchState):
                beams = self._in_sessions(decoder._end, self._search)
            else:
                ends = self._in_sessions(self._search.finish)  # type: ignore[attr-defined]
                beams = [_Final(*f) for f in ends]
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
        return StreamSnapshot(self.decoder, self._copy_search(), tuple(self._chunks), self._frames)

    def restore(self, snapshot: StreamSnapshot) -> None:
        """Put the stream back to ``snapshot`` (taken from this stream or another of the
        same decoder); a finished stream can be restored too."""
        if not isinstance(snapshot, StreamSnapshot) or snapshot.decoder is not self.decoder:
            raise ValueError(f"stream {self.utt_id!r}: not a snapshot of a stream of this decoder")
        self._search = _copy_search(snapshot.search)
        if self._sessions is None:
            self._open()  # finished: its sessions were closed
        self._chunks = list(snapshot.chunks)
        self._frames = snapshot.frames
        self._finished = False

    def _copy_search(self) -> object:
        return _copy_search(self._search)

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


def _copy_search(search: object) -> object:
    """An independent copy of a search in progress (a C++ stream or a _SearchState)."""
    return search.copy()  # type: ignore[attr-defined]

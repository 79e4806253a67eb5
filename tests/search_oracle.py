"""The beam search in Python: the tests' oracle for the compiled search.

``PythonSearchDecoder`` is :class:`fusion.decoder.search.BeamSearchDecoder` with its search
(``fusion/decoder/csrc/ctc_search.cpp``) replaced by this module's, written for reading: the same
candidate units per frame in the same order, the same pruning bounds and the same order of
floating-point operations, so both give the same N-best lists, scores and times
(tests/test_ctcsearch.py compares them on random posteriors and scorer sets). Everything
after the search (alignment, words, streams' bookkeeping) is the library's.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable

import numpy as np

from fusion.core.defaults import ACOUSTIC
from fusion.decoder.search import BeamSearchDecoder, _Final

__all__ = ["SEARCHES", "PythonSearchDecoder", "candidate_units", "floored"]

NEG_INF = -math.inf


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
    prefix and utterance, however many frames propose that prefix again.
    """

    __slots__ = ("partial", "states", "scores", "fused", "pterm")

    def __init__(self, partial: str, states: tuple[Hashable, ...], scores: tuple[float, ...],
                 fused: float, pterm: float) -> None:
        self.partial = partial  # spelling of the word in progress
        self.states = states  # one state per word scorer, after the last completed word
        self.scores = scores  # unweighted word-scorer totals
        self.fused = fused  # weighted sum of ``scores``
        self.pterm = pterm  # weighted partial-word estimate (pruning only)


class _Beam:
    """One prefix in the beam during the search (internal; discarded after the utterance)."""

    __slots__ = ("id", "last", "p_b", "p_nb", "info")

    def __init__(self, id: int, last: int, info: _Prefix, p_nb: float = NEG_INF) -> None:
        self.id = id  # the prefix's number (see ``_search``)
        self.last = last
        self.p_b = NEG_INF
        self.p_nb = p_nb
        self.info = info


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
                q = made[id(p)] = _Prefix(p.partial, p.states, p.scores, p.fused, p.pterm)
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


class PythonSearchDecoder(BeamSearchDecoder):
    """:class:`~fusion.decoder.search.BeamSearchDecoder` searching in Python (same arguments)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        table = self.table
        self._w = tuple(self.weights[s.name] for s in self.scorers)
        self._constraints = tuple(s for s in self.scorers if s.constraint)
        self._partial = tuple((i, self.weights[s.name], s) for i, s in enumerate(self.scorers)
                              if s.has_partial)
        # whether no partial-word estimate depends on a state
        self._stateless = not any(s.partial_uses_state for _, _, s in self._partial)
        self._ends_word = tuple(u == table.boundary_id or table.starts_word(u) for u in range(len(table)))

    def _new_stream(self) -> _PythonStream:
        return _PythonStream(self, self._begin())

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

    def _extend(self, parent: _Prefix, unit: int, cache: dict, partials: dict) -> _Prefix | None:
        """The prefix ``parent`` + ``unit`` (None if a constraint rules it out)."""
        states, scores, fused = parent.states, parent.scores, parent.fused
        partial = self._starts[unit]
        if partial is not None:  # the unit ends the word in progress
            word = parent.partial
            if word:
                if self._constraints and any(not c.accepts(word) for c in self._constraints):
                    return None
                states, scores, fused = self._complete(states, scores, fused, word, cache)
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
        return _Prefix(partial, states, scores, fused, pterm)

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
            cands = list(nxt.values())
            if opts.recombines:
                cands = self._recombine(cands, w_ac)
            beams = self._prune(cands, w_ac)
        state.beams = beams

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
        # (with recombine, a beam may give way to a new prefix of its key: no beam_size bound)
        if not opts.recombines and len(lows) >= opts.beam_size:
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

    @staticmethod
    def _recombine(beams: list[_Beam], w_ac: float) -> list[_Beam]:
        """:attr:`SearchOptions.recombine`: of the candidates whose word scorers' states, word
        in progress and last unit agree, only the one of the best total stays (the first on
        ties), in the place of the first of them."""
        kept: dict[tuple, int] = {}
        out: list[_Beam] = []
        totals: list[float] = []
        for b in beams:
            key = (b.info.states, b.last, b.info.partial)
            total = w_ac * _lae(b.p_b, b.p_nb) + b.info.fused
            at = kept.get(key)
            if at is None:
                kept[key] = len(out)
                out.append(b)
                totals.append(total)
            elif total > totals[at]:
                out[at], totals[at] = b, total
        return out

    def _prune(self, beams: list[_Beam], w_ac: float) -> list[_Beam]:
        opts = self.options
        totals = []
        for b in beams:
            a, c = b.p_b, b.p_nb
            if a < c:
                a, c = c, a
            info = b.info
            # w_ac * log(exp(p_b) + exp(p_nb)) + fused + partial-word term
            totals.append(w_ac * (a if c == NEG_INF else a + math.log1p(math.exp(c - a)))
                          + info.fused + info.pterm)
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


class _PythonStream:
    """A search stepped chunk by chunk, as the compiled search's stream is."""

    def __init__(self, decoder: PythonSearchDecoder, state: _SearchState) -> None:
        self.decoder = decoder
        self.state = state

    def accept(self, lp: np.ndarray) -> None:
        self.decoder._advance(self.state, lp)

    def best(self) -> tuple[tuple[int, ...], float]:
        return self.state.best(self.decoder.weights[ACOUSTIC])

    def finish(self) -> list[_Final]:
        return self.decoder._end(self.state)

    def copy(self) -> _PythonStream:
        return _PythonStream(self.decoder, self.state.copy())


#: the two searches by name, for tests run over both
SEARCHES = {"python": PythonSearchDecoder, "compiled": BeamSearchDecoder}

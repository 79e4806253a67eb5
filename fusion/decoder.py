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
hypothesis (``torchaudio.functional.forced_align``), not from search bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF

from fusion.posteriors import Posteriors
from fusion.scorers import WordScorer
from fusion.tokens import TokenTable
from fusion.types import DecodeResult, Hypothesis, TokenSpan, spans_to_words

__all__ = ["BeamSearchDecoder", "SearchOptions"]

NEG_INF = -math.inf
ACOUSTIC = "acoustic"


@dataclass(frozen=True)
class SearchOptions:
    """Beam-search settings, checked once when made.

    Attributes:
        beam_size: beams kept after each frame.
        beam_threshold: drop beams scoring more than this below the best (natural log);
            ``math.inf`` disables.
        token_top_k: candidate non-blank units per frame.
        token_min_logprob: candidates below this log-probability are skipped.
        blank_skip: frames whose blank probability is at least this only extend with
            blank (``None`` disables); 0.999 loses nothing measurable on peaky CTC output.
        nbest: hypotheses returned per utterance.
    """

    beam_size: int = 32
    beam_threshold: float = 15.0
    token_top_k: int = 16
    token_min_logprob: float = -5.0
    blank_skip: float | None = 0.999
    nbest: int = 1

    def __post_init__(self) -> None:
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
        if self.blank_skip is not None and not 0.0 < self.blank_skip <= 1.0:
            raise ValueError(f"SearchOptions.blank_skip must be in (0, 1] or None, "
                             f"got {self.blank_skip}")


def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for floats, -inf safe."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class _Beam:
    """One prefix during the search (internal; discarded after the utterance)."""

    __slots__ = ("prefix", "last", "p_b", "p_nb", "partial", "states", "scores", "fused")

    def __init__(self, prefix: tuple[int, ...], last: int, partial: str,
                 states: tuple[Hashable, ...], scores: tuple[float, ...], fused: float) -> None:
        self.prefix = prefix
        self.last = last
        self.p_b = NEG_INF
        self.p_nb = NEG_INF
        self.partial = partial  # spelling of the word in progress
        self.states = states  # one state per word scorer, after the last completed word
        self.scores = scores  # unweighted word-scorer totals
        self.fused = fused  # weighted sum of ``scores``

    def stay(self) -> _Beam:
        return _Beam(self.prefix, self.last, self.partial, self.states, self.scores, self.fused)


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
                              if type(s).partial_score is not WordScorer.partial_score)
        self._batched = tuple((i, s) for i, s in enumerate(self.scorers) if s.batched)
        ends_word = [u == table.boundary_id or table.starts_word(u) for u in range(len(table))]
        self._ends_word = tuple(ends_word)

    # -- word completion ----------------------------------------------------------------
    def _prefetch(self, beams: Sequence[_Beam], cache: dict) -> None:
        """Score, in one call per batched scorer, every word these beams could complete."""
        for i, scorer in self._batched:
            pairs = list({(b.states[i], b.partial) for b in beams if b.partial
                          and (i, b.states[i], b.partial) not in cache})
            for (state, word), hit in zip(pairs, scorer.score_words(pairs)):
                cache[(i, state, word)] = hit

    def _complete(self, beam: _Beam, cache: dict) -> tuple[tuple, tuple, float]:
        """States, scores and fused score after the beam's partial word completes."""
        word = beam.partial
        states, scores, fused = list(beam.states), list(beam.scores), beam.fused
        for i, scorer in enumerate(self.scorers):
            key = (i, states[i], word)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = scorer.score_word(states[i], word)
            states[i] = hit[0]
            scores[i] += hit[1]
            fused += self._w[i] * hit[1]
        return tuple(states), tuple(scores), fused

    def _extend(self, beam: _Beam, unit: int, cache: dict) -> _Beam | None:
        table = self.table
        spelling = table.tokens[unit]
        states, scores, fused = beam.states, beam.scores, beam.fused
        if unit == table.boundary_id or table.starts_word(unit):
            if beam.partial:
                if any(not c.accepts(beam.partial) for c in self._constraints):
                    return None
                states, scores, fused = self._complete(beam, cache)
            partial = "" if unit == table.boundary_id else spelling[len(table.word_boundary):]
        else:
            partial = beam.partial + spelling
        if partial and any(not c.viable_prefix(partial) for c in self._constraints):
            return None
        return _Beam(beam.prefix + (unit,), unit, partial, states, scores, fused)

    # -- search -------------------------------------------------------------------------
    def _search(self, lp: np.ndarray) -> list[_Beam]:
        opts, table = self.options, self.table
        blank, boundary = table.blank_id, table.boundary_id
        n_frames, vocab = lp.shape
        k = min(opts.token_top_k, vocab - 1)
        masked = lp.copy()
        masked[:, blank] = NEG_INF
        cand = np.argpartition(-masked, k - 1, axis=1)[:, :k]  # (T, k) best non-blank units
        cand_lp = np.take_along_axis(lp, cand, axis=1)  # (T, k)
        keep = cand_lp >= opts.token_min_logprob  # (T, k)
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
        cache: dict = {}  # (scorer, state, word) -> (state, score), for this utterance
        partials: dict = {}  # (scorer states, partial word) -> weighted partial-word estimate

        root = _Beam((), -1, "", tuple(s.start() for s in self.scorers),
                     (0.0,) * len(self.scorers), 0.0)
        root.p_b = 0.0
        beams = [root]
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
            if self._batched and any(self._ends_word[u] for u, _ in units):
                self._prefetch(beams, cache)
            nxt: dict[tuple[int, ...], _Beam] = {}
            for b in beams:
                total = _lae(b.p_b, b.p_nb)
                same = nxt.get(b.prefix)
                if same is None:
                    same = nxt[b.prefix] = b.stay()
                same.p_b = _lae(same.p_b, total + lp_blank)
                if b.last >= 0:
                    same.p_nb = _lae(same.p_nb, b.p_nb + row[b.last])
                for unit, unit_lp in units:
                    p = (b.p_b if unit == b.last else total) + unit_lp
                    if p == NEG_INF:
                        continue
                    if unit == boundary and not b.partial:
                        # a boundary with no word before it adds nothing to the text:
                        # fold its mass into the beam itself
                        if b.last >= 0:
                            same.p_nb = _lae(same.p_nb, p)
                        else:
                            same.p_b = _lae(same.p_b, p)
                        continue
                    prefix = b.prefix + (unit,)
                    child = nxt.get(prefix)
                    if child is None:
                        child = self._extend(b, unit, cache)
                        if child is None:
                            continue
                        nxt[prefix] = child
                    child.p_nb = _lae(child.p_nb, p)
            beams = self._prune(list(nxt.values()), w_ac, partials)
        return self._finish(beams, cache, w_ac)

    def _partial_term(self, beam: _Beam, partials: dict) -> float:
        if not beam.partial:
            return 0.0
        term = 0.0
        for i, w, s in self._partial:
            key = (i, beam.states[i] if s.partial_uses_state else None, beam.partial)
            value = partials.get(key)
            if value is None:
                value = partials[key] = w * s.partial_score(beam.states[i], beam.partial)
            term += value
        return term

    def _prune(self, beams: list[_Beam], w_ac: float, partials: dict) -> list[_Beam]:
        opts = self.options
        if self._partial:
            scored = [(w_ac * _lae(b.p_b, b.p_nb) + b.fused + self._partial_term(b, partials), b)
                      for b in beams]
        else:
            scored = [(w_ac * _lae(b.p_b, b.p_nb) + b.fused, b) for b in beams]
        scored.sort(key=lambda x: x[0], reverse=True)
        floor = scored[0][0] - opts.beam_threshold
        return [b for s, b in scored[: opts.beam_size] if s >= floor]

    def _finish(self, beams: list[_Beam], cache: dict, w_ac: float) -> list[_Beam]:
        """Complete each beam's last word, add end-of-utterance scores, rank, dedupe."""
        finals: dict[tuple, tuple[float, _Beam]] = {}
        if self._batched:
            self._prefetch(beams, cache)
        for b in beams:
            if b.partial:
                if any(not c.accepts(b.partial) for c in self._constraints):
                    continue
                b.states, b.scores, b.fused = self._complete(b, cache)
                b.partial = ""
            scores = list(b.scores)
            for i, scorer in enumerate(self.scorers):
                end = scorer.finish(b.states[i])
                scores[i] += end
                b.fused += self._w[i] * end
            b.scores = tuple(scores)
            key = tuple(map(tuple, self.table.words_from_ids(b.prefix)))  # same text, same key
            total = w_ac * _lae(b.p_b, b.p_nb) + b.fused
            if key not in finals or finals[key][0] < total:
                finals[key] = (total, b)
        ranked = sorted(finals.values(), key=lambda x: x[0], reverse=True)
        return [b for _, b in ranked[: self.options.nbest]]

    # -- results ------------------------------------------------------------------------
    def _hypothesis(self, beam: _Beam, lp: np.ndarray, frame_shift: float) -> Hypothesis:
        acoustic = _lae(beam.p_b, beam.p_nb)
        spans = self._align(beam.prefix, lp)
        words = spans_to_words(self.table, spans, frame_shift, lp)
        scores = {ACOUSTIC: acoustic, **{s.name: v for s, v in zip(self.scorers, beam.scores)}}
        return Hypothesis(
            text=" ".join(w.word for w in words),
            score=self.weights[ACOUSTIC] * acoustic + beam.fused,
            scores=scores,
            tokens=spans,
            words=words,
        )

    def _align(self, units: tuple[int, ...], lp: np.ndarray) -> tuple[TokenSpan, ...]:
        if not units:
            return ()
        emissions = torch.tensor(lp).unsqueeze(0)  # (1, T, V)
        targets = torch.tensor([units], dtype=torch.int32)  # (1, L)
        labels, _ = AF.forced_align(emissions, targets, blank=self.table.blank_id)
        frames = labels[0].tolist()
        blank = self.table.blank_id
        starts = [t for t, label in enumerate(frames)
                  if label != blank and (t == 0 or label != frames[t - 1])]
        ends = [t + 1 for t, label in enumerate(frames)
                if label != blank and (t + 1 == len(frames) or label != frames[t + 1])]
        return tuple(TokenSpan(u, s, e) for u, s, e in zip(units, starts, ends))

    def decode(self, posteriors: Posteriors) -> DecodeResult:
        """Decode one utterance: its N-best list, best first."""
        if posteriors.num_tokens != len(self.table):
            raise ValueError(
                f"utterance {posteriors.utt_id!r}: posteriors have {posteriors.num_tokens} "
                f"columns but the token table has {len(self.table)} tokens"
            )
        lp = np.asarray(posteriors.log_probs, dtype=np.float32)
        with ExitStack() as sessions:
            for scorer in self.scorers:
                sessions.enter_context(scorer.session())
            beams = self._search(lp)
        nbest = tuple(self._hypothesis(b, lp, posteriors.frame_shift) for b in beams)
        return DecodeResult(posteriors.utt_id, nbest, posteriors.frame_shift, posteriors.duration)

    def decode_batch(self, batch: Sequence[Posteriors]) -> list[DecodeResult]:
        return [self.decode(p) for p in batch]

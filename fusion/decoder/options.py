"""Beam-search settings (:class:`SearchOptions`): data, checked once when made, below the
search itself (configs read them without loading the decoder)."""

from __future__ import annotations

from dataclasses import dataclass

from fusion.core.defaults import BEAM_SIZE

__all__ = ["SearchOptions", "lexicon_pruning"]


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
            (:class:`~fusion.decoder.scorers.LexiconScorer` ``partial=True``) while its own charge
            waits for its end, the search would otherwise keep it and leave the rest of the
            utterance unsaid (``benchmarks/results/dropin.md``).
        split_blank_ends: rank each prefix's blank-ending and label-ending paths as two
            candidates of the ``beam_size`` (pyctcdecode's beams, keyed by their last label),
            a prefix keeping only the mass of its ends that made the beam. Off (the default),
            a prefix ranks by the sum of both, as CTC prefix beam search does.
        recombine: of the prefixes a frame proposes whose word scorers' states, word in
            progress and last unit agree, keep only the best (hypothesis recombination, as
            flashlight does, and pyctcdecode with ``prune_history``): every continuation
            scores alike for them, so the others can hardly win, and the beam holds more
            distinct futures. ``None`` (the default): on for a 1-best search, off for N-best
            lists (``nbest > 1``), which keep the variants that differ only before the LM's
            history for rescoring to choose from. On the stage-33 acoustic model's
            posteriors with the default LM and weights (beam 32) it took pipeline WER from
            26.39 to 25.58 on the dev sets (the weights' grid optimum stayed at 0.6/1.5),
            and on the test splits (``benchmarks/results/acoustic.md``) real-speech 19.52
            -> 19.06, librispeech-test 28.56 -> 27.78, speechocean762-test 48.82 -> 48.53
            (each better beyond chance, paired bootstrap), at 1.3x the search time; it is
            what puts the pyctcdecode drop-in's WER below pyctcdecode's
            (``benchmarks/results/dropin.md``).
        nbest: hypotheses returned per utterance.
    """

    beam_size: int = BEAM_SIZE
    beam_threshold: float = 10.0
    token_top_k: int = 16
    token_min_logprob: float = -5.0
    blank_skip: float | None = 0.999
    floor_every_label: bool = False
    split_blank_ends: bool = False
    recombine: bool | None = None
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
        if self.recombine is not None and not isinstance(self.recombine, bool):
            raise ValueError(f"SearchOptions.recombine must be True, False or None, "
                             f"got {self.recombine!r}")
        for flag in ("floor_every_label", "split_blank_ends"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"SearchOptions.{flag} must be True or False, "
                                 f"got {getattr(self, flag)!r}")
        if self.blank_skip is not None and not 0.0 < self.blank_skip <= 1.0:
            raise ValueError(f"SearchOptions.blank_skip must be in (0, 1] or None, "
                             f"got {self.blank_skip}")

    @property
    def recombines(self) -> bool:
        """Whether the search recombines: :attr:`recombine`, or for ``None`` whether it is
        a 1-best search."""
        return self.nbest == 1 if self.recombine is None else self.recombine


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

"""One interface for every language model: ``start`` / ``score`` / ``finish``.

Units are words (word-level n-grams) or tokens (characters, subword pieces) as the model's
:attr:`LanguageModel.level` says. Scores are natural logs everywhere (KenLM's log10 is
converted once, inside its wrapper). States are immutable and hashable values: they pass
in and out of calls and nothing per-hypothesis lives on the model, so the same model
object serves shallow fusion, N-best rescoring and weight sweeps. The fusion weight is
never part of a model: the decoder owns the weights.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Literal

__all__ = ["LMError", "LanguageModel", "Level", "LMState", "perplexity"]

Level = Literal["word", "token"]
LMState = Hashable
"""An LM state: any immutable, hashable value the model hands out (equal states = equal
contexts as far as the model can tell)."""


class LMError(ValueError):
    """An LM file or input that cannot be used; the message names the file and line."""


class LanguageModel(ABC):
    """A left-to-right language model over words or tokens."""

    #: ``"word"``: units are whole words; ``"token"``: characters or subword pieces.
    level: Level

    @abstractmethod
    def start(self) -> LMState:
        """The state after the sentence start ``<s>``."""

    @abstractmethod
    def score(self, state: LMState, unit: str) -> tuple[LMState, float]:
        """``(next_state, log p(unit | state))``, natural log.

        A unit the model does not know gets the model's unknown-unit score (for KenLM,
        its ``<unk>`` probability); :meth:`contains` says whether a unit is known.
        """

    @abstractmethod
    def finish(self, state: LMState) -> float:
        """``log p(</s> | state)``, natural log."""

    @abstractmethod
    def contains(self, unit: str) -> bool:
        """Whether ``unit`` is in the model's vocabulary."""

    def compiled(self) -> dict[str, Any] | None:
        """How the compiled search can run this model natively, or None (it is then called
        back through its scorer, :meth:`fusion.decoder.scorers.WordScorer.compiled`)."""
        return None

    def score_many(
        self, states: Sequence[LMState], units: Sequence[str]
    ) -> list[tuple[LMState, float]]:
        """Score ``units[i]`` after ``states[i]`` for every ``i`` (neural models batch this)."""
        if len(states) != len(units):
            raise ValueError(f"{len(states)} states but {len(units)} units")
        return [self.score(s, u) for s, u in zip(states, units)]

    def finish_many(self, states: Sequence[LMState]) -> list[float]:
        """:meth:`finish` of every state (neural models batch this)."""
        return [self.finish(s) for s in states]

    def score_sentence(self, units: Iterable[str], *, eos: bool = True) -> float:
        """Total natural-log probability of a unit sequence after ``<s>`` (and ``</s>``)."""
        state, total = self.start(), 0.0
        for unit in units:
            state, lp = self.score(state, unit)
            total += lp
        return total + (self.finish(state) if eos else 0.0)

    def score_sentences(self, sentences: Sequence[Sequence[str]], *, eos: bool = True) -> list[float]:
        """:meth:`score_sentence` of each sentence (neural models batch this)."""
        return [self.score_sentence(s, eos=eos) for s in sentences]


def perplexity(
    lm: LanguageModel, sentences: Iterable[Sequence[str]], *, oov: str = "score",
    vocabulary: Callable[[str], bool] | None = None,
) -> tuple[float, int]:
    """Perplexity over sentences (``</s>`` counted as a predicted unit, as SRILM/KenLM do).

    Args:
        oov: ``"score"``: units outside the vocabulary count with the model's unknown-unit
            score (KenLM's convention); ``"skip"``: they are neither scored nor counted,
            though they stay in the context (SRILM's convention, fair to closed-vocabulary
            models whose ``<unk>`` is a placeholder).
        vocabulary: with ``oov="skip"``, which units count as in the vocabulary (default:
            ``lm.contains``). Pass another model's ``contains`` to score two models on
            exactly the same units, e.g. an open-vocabulary neural LM against an n-gram.

    Returns ``(perplexity, number of predicted units)``.
    """
    if oov not in ("score", "skip"):
        raise ValueError(f"oov must be 'score' or 'skip', got {oov!r}")
    batch = [list(s) for s in sentences]
    if oov == "score":
        total = sum(lm.score_sentences(batch))
        count = sum(len(s) + 1 for s in batch)
    else:
        known = vocabulary or lm.contains
        total, count = 0.0, 0
        for units in batch:
            state = lm.start()
            for unit in units:
                state, lp = lm.score(state, unit)
                if known(unit):
                    total, count = total + lp, count + 1
            total, count = total + lm.finish(state), count + 1
    if count == 0:
        raise LMError("perplexity of an empty text is undefined")
    return math.exp(-total / count), count

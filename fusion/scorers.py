"""Named knowledge sources for the beam search.

Every source is a scorer with a name; the decoder multiplies each scorer's own
(unweighted) score by the weight of the same name and adds. Word scorers see a word when
the search completes one; their state is an immutable, hashable value passed in and out.

``acoustic``
    the CTC prefix log-probability (kept by the search itself).
:class:`LMScorer`
    any word-level :class:`lm.base.LanguageModel` (KenLM n-gram, neural LM).
:class:`WordBonus`
    +1 per word (a word-insertion bonus once weighted).
:class:`LexiconScorer`
    -1 per word outside a word list (with a large weight: a lexicon constraint; with a
    moderate one: an OOV penalty); it also says which partial words can still become a
    listed word, so the search can drop the others early.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable
from typing import Any

from lm.base import LanguageModel

__all__ = ["LMScorer", "LexiconScorer", "WordBonus", "WordScorer"]


class WordScorer(ABC):
    """A knowledge source that scores whole words, left to right."""

    name: str
    #: a hard constraint: the search keeps only words this scorer :meth:`accepts`
    constraint: bool = False

    @abstractmethod
    def start(self) -> Hashable:
        """The state at the start of an utterance."""

    @abstractmethod
    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        """``(next_state, score)`` for ``word`` after ``state`` (unweighted)."""

    def finish(self, state: Hashable) -> float:
        """Score of ending the utterance in ``state`` (unweighted)."""
        return 0.0

    def accepts(self, word: str) -> bool:
        """Whether ``word`` is allowed (only consulted for constraints)."""
        return True

    def partial_score(self, partial: str) -> float:
        """An estimate of what the word in progress will score (used for pruning only)."""
        return 0.0

    def viable_prefix(self, partial: str) -> bool:
        """Whether a partial word can still become a word this scorer accepts."""
        return True


class LMScorer(WordScorer):
    """A word-level language model as a scorer: log p(word | history), natural log.

    Args:
        lm: any word-level language model.
        name: the scorer's name (its weight's key).
        unigrams: the LM's vocabulary. When given, a word in progress that no vocabulary
            word starts with is scored, for pruning, as the unknown word it will become
            (the LM's ``<unk>`` log-probability), so a beam cannot dodge LM costs by
            never ending a word.
    """

    def __init__(self, lm: LanguageModel, name: str = "lm", *,
                 unigrams: Iterable[str] | None = None) -> None:
        if lm.level != "word":
            raise ValueError(f"scorer {name!r}: needs a word-level LM, got level {lm.level!r}")
        self.lm = lm
        self.name = name
        self.prefixes: frozenset[str] | None = None
        if unigrams is not None:
            self.prefixes = frozenset(w[:i] for w in unigrams for i in range(1, len(w) + 1))
            self.unk_score = lm.score(lm.start(), "<unk>")[1]

    def partial_score(self, partial: str) -> float:
        if self.prefixes is None or partial in self.prefixes:
            return 0.0
        return self.unk_score

    def start(self) -> Hashable:
        return self.lm.start()

    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        return self.lm.score(state, word)

    def finish(self, state: Hashable) -> float:
        return self.lm.finish(state)


class WordBonus(WordScorer):
    """Scores +1 for every word: with weight ``w``, a word-insertion bonus of ``w``."""

    name = "word_bonus"

    def start(self) -> Hashable:
        return None

    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        return None, 1.0


class LexiconScorer(WordScorer):
    """Scores -1 for each word outside ``words``; knows which partial words are viable.

    With ``constraint=True`` the search produces listed words only (its weight then only
    matters for nothing: no word scores -1); otherwise the weight is an OOV penalty.
    """

    def __init__(self, words: Iterable[str], name: str = "lexicon", *,
                 constraint: bool = False) -> None:
        self.constraint = constraint
        self.words = frozenset(w for w in words if w)
        if not self.words:
            raise ValueError(f"scorer {name!r}: the word list is empty")
        self.prefixes = frozenset(w[:i] for w in self.words for i in range(1, len(w) + 1))
        self.name = name

    @classmethod
    def from_file(cls, path: Any, name: str = "lexicon", *, constraint: bool = False
                  ) -> LexiconScorer:
        """A lexicon from a text file: the first field of each line is a word."""
        with open(path, encoding="utf-8") as fh:
            return cls((line.split()[0] for line in fh if line.strip()), name=name,
                       constraint=constraint)

    def start(self) -> Hashable:
        return None

    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        return None, 0.0 if word in self.words else -1.0

    def accepts(self, word: str) -> bool:
        return word in self.words

    def viable_prefix(self, partial: str) -> bool:
        return partial in self.prefixes

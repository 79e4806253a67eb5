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
:class:`HotwordScorer`
    context biasing: a bonus for each word that continues a listed phrase, taken back
    if the phrase is not finished (an Aho-Corasick automaton over words).
:class:`LexiconScorer`
    -1 per word outside a word list (with a large weight: a lexicon constraint; with a
    moderate one: an OOV penalty); it also says which partial words can still become a
    listed word, so the search can drop the others early (a constraint) or charge them
    the penalty before they end (``partial=True``).

Partial-word estimates (:meth:`WordScorer.partial_score`) rank a hypothesis while its
last word is unfinished and are replaced by the word's own score when it completes.
:class:`LMScorer` and :class:`LexiconScorer` find which partial words can still become a
listed word the same way (:func:`word_prefixes`; the compiled search walks one character
trie for both).
"""

from __future__ import annotations

import logging
import math
import weakref
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from typing import Any

from fusion.core.tokens import TokenTable
from lm.base import LanguageModel

__all__ = ["HotwordScorer", "LMScorer", "LexiconScorer", "WordBonus", "WordScorer",
           "check_weights", "spelling_overlap", "warn_vocabulary_overlap", "word_prefixes"]

log = logging.getLogger(__name__)


def check_weights(names: Iterable[str], weights: Mapping[str, float], *, where: str) -> None:
    """The one rule of fusion: every score has a finite weight and every weight a score.

    ``names`` are the scores to weigh (the caller says whether ``acoustic`` is one); a
    missing or unknown name is a ``ValueError`` naming ``where``, never a silent 0."""
    names = sorted(set(names))
    missing = sorted(set(names) - set(weights))
    unknown = sorted(set(weights) - set(names))
    if missing or unknown:
        raise ValueError(f"{where}: the weights must name exactly the scores {names}: "
                         f"missing {missing} (0 switches a score off), unknown {unknown}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"{where}: weight of {name!r} must be a finite number, got {w!r}")


#: below this share of an LM's words that the token table can spell, the LM is warned about
MIN_SPELLING_OVERLAP = 0.5


class _Prefixes(frozenset):
    """A frozenset that can be weakly referenced (see :func:`word_prefixes`)."""


# word set -> its prefixes, while some scorer holds them
_PREFIXES: weakref.WeakValueDictionary[frozenset[str], frozenset[str]] = weakref.WeakValueDictionary()


def word_prefixes(words: frozenset[str]) -> frozenset[str]:
    """Every non-empty prefix of ``words`` (the words themselves included): the partial
    words that can still become one of them.

    Shared while in use: an LM's scorer and an unknown-word scorer over the same words
    hold one set (an LM's 72k words make 173k prefixes, 16 MB), freed with the last."""
    found = _PREFIXES.get(words)
    if found is None:
        found = _PREFIXES[words] = _Prefixes(w[:i] for w in words for i in range(1, len(w) + 1))
    return found


class WordScorer(ABC):
    """A knowledge source that scores whole words, left to right."""

    name: str
    #: a hard constraint: the search keeps only words this scorer :meth:`accepts`
    constraint: bool = False
    #: whether :meth:`partial_score` depends on the state (else it is cached per spelling)
    partial_uses_state: bool = True

    @abstractmethod
    def start(self) -> Hashable:
        """The state at the start of an utterance."""

    @abstractmethod
    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        """``(next_state, score)`` for ``word`` after ``state`` (unweighted)."""

    def score_words(self, pairs: Sequence[tuple[Hashable, str]]) -> list[tuple[Hashable, float]]:
        """:meth:`score_word` of many ``(state, word)`` pairs at once: the compiled search
        asks a scorer it calls back for a frame's word completions in one call (a neural
        LM batches them)."""
        return [self.score_word(state, word) for state, word in pairs]

    def session(self) -> AbstractContextManager[object]:
        """A context the search enters for each utterance (e.g. a neural LM's KV caches)."""
        return nullcontext()

    def finish(self, state: Hashable) -> float:
        """Score of ending the utterance in ``state`` (unweighted)."""
        return 0.0

    def finish_many(self, states: Sequence[Hashable]) -> list[float]:
        """:meth:`finish` of many states at once: the compiled search ends an utterance's
        beams in one call to a scorer it calls back (a neural LM batches them)."""
        return [self.finish(state) for state in states]

    def accepts(self, word: str) -> bool:
        """Whether ``word`` is allowed (only consulted for constraints)."""
        return True

    def partial_score(self, state: Hashable, partial: str) -> float:
        """An estimate of what the word in progress will score after ``state``: it ranks
        the hypothesis (pruning) while the word is unfinished and is replaced by the word's
        own score when it completes, so it is never part of a finished hypothesis's score."""
        return 0.0

    @property
    def has_partial(self) -> bool:
        """Whether :meth:`partial_score` can be other than 0 (the search skips it if not):
        by default, whether the scorer's class defines one."""
        return type(self).partial_score is not WordScorer.partial_score

    def viable_prefix(self, partial: str) -> bool:
        """Whether a partial word can still become a word this scorer accepts."""
        return True

    def compiled(self, weight: float) -> dict[str, Any]:
        """What the compiled search (``fusion.decoder._ctcsearch``) needs to run this scorer at
        ``weight``. By default the scorer itself, called back: its states interned per
        utterance, the words a frame's beams could complete scored in one
        :meth:`score_words` call, :meth:`partial_score` once per spelling (per state and
        spelling if :attr:`partial_uses_state`), :meth:`accepts` and :meth:`viable_prefix`
        once per string. A scorer the search runs natively says so (kinds ``"bonus"``,
        ``"lexicon"``, ``"hotwords"``, ``"kenlm"``) when its class keeps the methods that
        kind implements."""
        return {"kind": "python", "weight": weight, "scorer": self, "constraint": self.constraint,
                "partial": self.has_partial, "partial_uses_state": self.partial_uses_state}


def _keeps(scorer: WordScorer, cls: type, *names: str) -> bool:
    """Whether ``scorer``'s class keeps ``cls``'s ``names`` (a subclass that overrides one
    is called back rather than run natively)."""
    return all(getattr(type(scorer), n) is getattr(cls, n) for n in names)


# the methods every native kind implements in C++
_SCORING = ("start", "score_word", "finish", "finish_many", "partial_score", "has_partial", "accepts",
            "viable_prefix")


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
        self.unigrams: tuple[str, ...] | None = None
        self.prefixes: frozenset[str] | None = None
        if unigrams is not None:
            self.unigrams = tuple(unigrams)
            self.prefixes = word_prefixes(frozenset(w for w in self.unigrams if w))
            self.unk_score = lm.score(lm.start(), "<unk>")[1]

    partial_uses_state = False

    @property
    def has_partial(self) -> bool:
        """With unigrams (the ``<unk>`` rule) or a subclass's own estimate; else it is 0."""
        return self.prefixes is not None or not _keeps(self, LMScorer, "partial_score")

    def partial_score(self, state: Hashable, partial: str) -> float:
        if self.prefixes is None or partial in self.prefixes:
            return 0.0
        return self.unk_score

    def start(self) -> Hashable:
        return self.lm.start()

    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        return self.lm.score(state, word)

    def score_words(self, pairs: Sequence[tuple[Hashable, str]]) -> list[tuple[Hashable, float]]:
        if not _keeps(self, LMScorer, "score_word"):  # a subclass's own rule
            return super().score_words(pairs)
        return self.lm.score_many([s for s, _ in pairs], [w for _, w in pairs])

    def session(self) -> AbstractContextManager[object]:
        session = getattr(self.lm, "session", None)
        return session() if callable(session) else nullcontext()

    def finish(self, state: Hashable) -> float:
        return self.lm.finish(state)

    def finish_many(self, states: Sequence[Hashable]) -> list[float]:
        if not _keeps(self, LMScorer, "finish"):  # a subclass's own rule
            return super().finish_many(states)
        return self.lm.finish_many(states)

    def compiled(self, weight: float) -> dict[str, Any]:
        """A word-level KenLM runs natively (kind ``"kenlm"``); any other LM is called back,
        its partial-word estimate (the ``<unk>`` rule over the unigrams) computed natively."""
        if not _keeps(self, LMScorer, *_SCORING, "score_words"):
            return super().compiled(weight)
        unigrams = None if self.unigrams is None else list(self.unigrams)
        source = self.lm.compiled()
        if source is not None:
            return {**source, "weight": weight, "unigrams": unigrams}
        spec = super().compiled(weight)
        if unigrams is not None:
            spec.update(unigrams=unigrams, unk_score=self.unk_score)
        return spec


class WordBonus(WordScorer):
    """Scores +1 for every word: with weight ``w``, a word-insertion bonus of ``w``."""

    name = "word_bonus"

    def start(self) -> Hashable:
        return None

    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        return None, 1.0

    def compiled(self, weight: float) -> dict[str, Any]:
        if not _keeps(self, WordBonus, *_SCORING):
            return super().compiled(weight)
        return {"kind": "bonus", "weight": weight}


class LexiconScorer(WordScorer):
    """Scores -1 for each word outside ``words``; knows which partial words are viable.

    With ``constraint=True`` the search produces listed words only (its weight then only
    matters for nothing: no word scores -1); otherwise the weight is an OOV penalty. A
    constraint wants wider per-frame candidates than the default search options give
    (:func:`fusion.decoder.options.lexicon_pruning`, which ``fusion decode --lexicon`` applies).

    With ``partial=True`` a word in progress that no listed word starts with already
    scores -1 (:meth:`partial_score`): it can only end as an unlisted word, so the
    hypothesis is charged the penalty as soon as that is known, not when the word ends,
    and beams turn away from unknown words early (pyctcdecode charges its
    ``unk_score_offset`` to such partial words). The charge is replaced by the word's own
    -1 when it completes: a finished word is charged once, as without the option.
    Off by default: the default pipeline's results do not change.
    """

    def __init__(self, words: Iterable[str], name: str = "lexicon", *,
                 constraint: bool = False, partial: bool = False) -> None:
        self.constraint = constraint
        self.partial = bool(partial)
        self.words = frozenset(w for w in words if w)
        if not self.words:
            raise ValueError(f"scorer {name!r}: the word list is empty")
        self.name = name

    partial_uses_state = False

    @cached_property
    def prefixes(self) -> frozenset[str]:
        """Every prefix of a listed word (:func:`word_prefixes`): built on first use, since
        only a constraint or ``partial`` asks (an OOV penalty over an LM's 72k words would
        otherwise hold 173k strings, 16 MB, for nothing)."""
        return word_prefixes(self.words)

    @classmethod
    def from_file(cls, path: Any, name: str = "lexicon", *, constraint: bool = False,
                  partial: bool = False) -> LexiconScorer:
        """A lexicon from a text file: the first field of each line is a word."""
        with open(path, encoding="utf-8") as fh:
            return cls((line.split()[0] for line in fh if line.strip()), name=name,
                       constraint=constraint, partial=partial)

    def start(self) -> Hashable:
        return None

    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        return None, 0.0 if word in self.words else -1.0

    def accepts(self, word: str) -> bool:
        return word in self.words

    def viable_prefix(self, partial: str) -> bool:
        return partial in self.prefixes

    @property
    def has_partial(self) -> bool:
        return self.partial

    def partial_score(self, state: Hashable, partial: str) -> float:
        """-1 for a partial word no listed word starts with (with ``partial=True``), else 0."""
        if not self.partial or partial in self.prefixes:
            return 0.0
        return -1.0

    def compiled(self, weight: float) -> dict[str, Any]:
        if not _keeps(self, LexiconScorer, *_SCORING):
            return super().compiled(weight)
        return {"kind": "lexicon", "weight": weight, "words": sorted(self.words),
                "constraint": self.constraint, "partial": self.partial}


class HotwordScorer(WordScorer):
    """Context biasing towards listed phrases (hotwords), with per-phrase weights.

    Phrases form an Aho-Corasick automaton over words, so thousands of phrases cost one
    dictionary step per word. A word that extends a match scores the phrase's weight; when
    a partial match breaks, its bonus is taken back (as icefall's context graph does), so
    only completed phrases keep their bonus. A word in progress that begins the next word
    of a match earns that word's bonus for pruning, which keeps a hotword alive in the
    beam before it is complete.

    Args:
        phrases: ``{phrase: weight}`` or an iterable of phrases (weight 1). Phrases are
            normalised text; each word of a phrase scores ``weight``.
    """

    def __init__(self, phrases: Iterable[str] | dict[str, float], name: str = "hotwords") -> None:
        items = phrases.items() if isinstance(phrases, dict) else ((p, 1.0) for p in phrases)
        self.name = name
        # node 0 is the root; goto[node][word] -> node; depth and bonus per node
        self._goto: list[dict[str, int]] = [{}]
        self._bonus: list[float] = [0.0]  # total bonus granted on reaching the node
        self._final: list[bool] = [False]
        for phrase, weight in items:
            words = phrase.split()
            if not words:
                raise ValueError(f"scorer {name!r}: empty hotword phrase")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"scorer {name!r}: phrase {phrase!r} needs a finite weight > 0, "
                                 f"got {weight}")
            node = 0
            for word in words:
                nxt = self._goto[node].get(word)
                if nxt is None:
                    nxt = len(self._goto)
                    self._goto[node][word] = nxt
                    self._goto.append({})
                    self._bonus.append(self._bonus[node] + weight)
                    self._final.append(False)
                node = nxt
            self._final[node] = True
        if len(self._goto) == 1:
            raise ValueError(f"scorer {name!r}: no phrases")
        self._fail = self._failure_links()
        self._prefix_index: dict[int, dict[str, float]] = {}

    def _failure_links(self) -> list[int]:
        fail = [0] * len(self._goto)
        queue = list(self._goto[0].values())
        for node in queue:  # breadth first: a node's failure link is set before its children's
            for word, child in self._goto[node].items():
                f = fail[node]
                while f and word not in self._goto[f]:
                    f = fail[f]
                target = self._goto[f].get(word, 0)
                fail[child] = target if target != child else 0
                queue.append(child)
        return fail

    def automaton(self) -> dict[str, list]:
        """The automaton as plain lists (for the compiled search): per node its ``goto``
        words, ``fail`` link, ``bonus`` and whether a phrase ends there (``final``)."""
        return {"goto": [dict(g) for g in self._goto], "fail": list(self._fail),
                "bonus": list(self._bonus), "final": list(self._final)}

    def start(self) -> int:
        return 0

    def compiled(self, weight: float) -> dict[str, Any]:
        if not _keeps(self, HotwordScorer, *_SCORING):
            return super().compiled(weight)
        return {"kind": "hotwords", "weight": weight, **self.automaton()}

    def score_word(self, state: Hashable, word: str) -> tuple[Hashable, float]:
        node = int(state)  # type: ignore[arg-type]
        nxt = node
        while nxt and word not in self._goto[nxt]:
            nxt = self._fail[nxt]
        nxt = self._goto[nxt].get(word, 0)
        score = self._bonus[nxt] - self._bonus[node]  # > 0 on a match, < 0 takes back
        # a completed phrase keeps its bonus: matching starts afresh after it
        return (0 if self._final[nxt] else nxt), score

    def finish(self, state: Hashable) -> float:
        return -self._bonus[int(state)]  # type: ignore[arg-type]  # an unfinished phrase

    def _prefixes(self, node: int) -> dict[str, float]:
        """Every prefix of the words that continue ``node``, with the best such word's bonus."""
        index = self._prefix_index.get(node)
        if index is None:
            index = {}
            for word, child in self._goto[node].items():
                for i in range(1, len(word) + 1):
                    index[word[:i]] = max(index.get(word[:i], 0.0), self._bonus[child])
            self._prefix_index[node] = index
        return index

    def partial_score(self, state: Hashable, partial: str) -> float:
        node = int(state)  # type: ignore[arg-type]
        continued = self._prefixes(node).get(partial)
        if continued is not None:
            return continued - self._bonus[node]
        restarted = self._prefixes(0).get(partial, 0.0) if node else 0.0
        return restarted - self._bonus[node]  # a word that breaks the match takes it back


def spelling_overlap(words: Iterable[str], table: TokenTable) -> tuple[float, list[str]]:
    """The share of ``words`` that ``table``'s units can spell (every character of the word
    in some unit other than the blank and the boundary; a ``prefix`` table's marker left
    out), and up to three words it cannot. An LM whose words a table cannot spell (an
    upper-case LM for a lower-case table) never matches what the search writes."""
    marker = table.word_boundary if table.boundary_style == "prefix" else None
    chars: set[str] = set()
    for i, token in enumerate(table.tokens):
        if i == table.blank_id or i == table.boundary_id:
            continue
        chars.update(token.replace(marker, "") if marker else token)
    total = spelt = 0
    missing: list[str] = []
    for word in words:
        total += 1
        if chars.issuperset(word):
            spelt += 1
        elif len(missing) < 3:
            missing.append(word)
    return (spelt / total if total else 1.0), missing


def warn_vocabulary_overlap(words: Iterable[str], table: TokenTable, *, source: str,
                            minimum: float = MIN_SPELLING_OVERLAP) -> float:
    """Log one warning line naming ``source`` when ``table`` can spell less than ``minimum``
    of an LM's ``words``; returns the share it can spell."""
    words = list(words)
    share, missing = spelling_overlap(words, table)
    if share < minimum:
        log.warning(f"warning: {source}: the token table can spell only {100 * share:.1f}% of "
                    f"the LM's {len(words)} words (not e.g. {', '.join(map(repr, missing))}); "
                    "is the LM cased or spelt differently from the acoustic model's units?")
    return share

"""A drop-in for torchaudio's ``ctc_decoder`` (flashlight-text), on our compiled search.

Change one import::

    from torchaudio.models.decoder import ctc_decoder      # before
    from fusion.compat.torchaudio import ctc_decoder       # after

The factory takes torchaudio's arguments and defaults; the decoder takes ``(batch, frame,
num_tokens)`` float32 CPU emissions (and optional ``lengths``) and returns, per utterance,
its ``nbest`` :class:`CTCHypothesis` (``tokens``, ``words``, ``score``, ``timesteps``).
flashlight-text is not needed (its wheels stop at Python 3.12); torch is, for the tensors.

How torchaudio's settings map to our scorers (:mod:`fusion.decoder.scorers`), natural log inside:

* ``lm`` (a KenLM file) is a word n-gram: flashlight adds ``lm_weight`` times KenLM's
  log10 score, so our ``LMScorer`` gets ``lm_weight / ln(10)``; ``word_score`` is a
  ``WordBonus``.
* With a lexicon, only its words are produced (``unk_score=-inf``: a ``LexiconScorer``
  constraint); a finite ``unk_score`` lets other spellings through at that cost (an
  unknown-word ``LexiconScorer``), and they are reported as ``unk_word`` in ``words``.
  Each lexicon spelling must spell its word (our search reads words from their tokens).
* Without a lexicon, the LM is still a *word* n-gram, fused with partial-word scoring:
  flashlight's lexicon-free search queries a token-level LM instead, which ours does not
  take (an LM whose vocabulary holds ``sil_token`` is refused as token-level). ``lm_dict``
  then lists the LM's words for partial-word scoring.

Differences, on purpose: the search sums every alignment of a prefix (``log_add`` has no
effect); emissions are log-softmaxed per frame first (a per-frame constant, which changes
no ranking, so unnormalised scores work too, and the scores are then log-probabilities);
units below log-probability -12 are not extended (:func:`fusion.decoder.options.lexicon_pruning`'s
floor); ``sil_score`` other than 0 and custom ``CTCDecoderLM`` objects are refused; words
are given without a lexicon too. Online decoding (``decode_begin`` / ``decode_step`` /
``decode_end`` / ``get_final_hypothesis``) runs :meth:`BeamSearchDecoder.stream` and ends
with exactly what one call on the whole utterance gives. ``tokens`` are the collapsed
units, with ``sil_token``
where the search put one, and a ``sil_token`` around the utterance as flashlight's are;
``timesteps`` is each unit's first frame (flashlight's are one frame later: its paths
carry a start frame).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from fusion.core.defaults import LEXICON, LM, OOV
from fusion.core.defaults import WORD_BONUS as BONUS
from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from fusion.core.types import Hypothesis
from fusion.decoder.options import SearchOptions, lexicon_pruning
from fusion.decoder.scorers import LexiconScorer, LMScorer, WordBonus, WordScorer
from fusion.decoder.search import BeamSearchDecoder
from lm.arpa import LN10
from lm.ngram import KenLM, read_unigrams

if TYPE_CHECKING:
    import torch

__all__ = ["CTCDecoder", "CTCHypothesis", "ctc_decoder", "load_lexicon", "load_tokens"]


class CTCHypothesis(NamedTuple):
    """torchaudio's hypothesis: token ids ``(L,)``, words, total score, first frame of each
    token ``(L,)``."""

    tokens: Any  # torch.LongTensor
    words: list[str]
    score: float
    timesteps: Any  # torch.IntTensor


def load_tokens(tokens: str | os.PathLike | Sequence[str]) -> list[str]:
    """flashlight's token dictionary: a list, or a file with one token per line (further
    spellings on a line are aliases of the first; blank lines are skipped)."""
    if isinstance(tokens, (str, os.PathLike)):
        path = Path(tokens)
        if not path.is_file():
            raise ValueError(f"{path}: no such tokens file")
        out = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    else:
        out = list(tokens)
        if not all(isinstance(t, str) and t for t in out):
            raise ValueError("tokens must be non-empty strings")
    if not out:
        raise ValueError("tokens: the token list is empty")
    return out


def load_lexicon(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """flashlight's lexicon file: ``word token token ...`` per line, a word on several
    lines for several spellings."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such lexicon file")
    lexicon: dict[str, list[list[str]]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"{path}:{lineno}: a lexicon line needs a word and its spelling")
        lexicon.setdefault(fields[0], []).append(fields[1:])
    if not lexicon:
        raise ValueError(f"{path}: the lexicon is empty")
    return lexicon


def _log_softmax(emission: np.ndarray, utt: str) -> np.ndarray:
    """Per-frame log-softmax of ``(T, N)`` emissions, float32 (NaN and +inf refused)."""
    x = emission.astype(np.float64)
    if np.isnan(x).any() or np.isposinf(x).any():
        raise ValueError(f"{utt}: emissions have NaN or +inf")
    if len(x):
        m = x.max(axis=1, keepdims=True)
        m[~np.isfinite(m)] = 0
        with np.errstate(divide="ignore"):
            x = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    return x.astype(np.float32)


class CTCDecoder:
    """torchaudio's ``CTCDecoder`` interface over :class:`fusion.decoder.search.BeamSearchDecoder`.

    Build it with :func:`ctc_decoder`. It holds no per-utterance state and pickles.
    """

    def __init__(self, nbest: int, table: TokenTable, search: BeamSearchDecoder,
                 lexicon_words: frozenset[str] | None, unk_word: str) -> None:
        self.nbest = nbest
        self.table = table
        self.search = search
        self.tokens = list(table.tokens)
        self.blank = table.blank_id
        self.silence = table.boundary_id
        self._lexicon_words = lexicon_words
        self.unk_word = unk_word

    def _check(self, emissions: torch.Tensor, ndim: int) -> None:
        import torch

        if emissions.dtype != torch.float32:
            raise ValueError("emissions must be float32.")
        if not emissions.is_cpu:
            raise RuntimeError("emissions must be a CPU tensor.")
        if not emissions.is_contiguous():
            raise RuntimeError("emissions must be contiguous.")
        if emissions.ndim != ndim:
            raise RuntimeError(f"emissions must be {ndim}D. Found {emissions.shape}")
        if emissions.shape[-1] != len(self.table):
            raise ValueError(f"emissions have {emissions.shape[-1]} token columns but the "
                             f"decoder has {len(self.table)} tokens")

    def _decode_one(self, emission: np.ndarray, utt: str) -> list[CTCHypothesis]:
        import torch

        lp = _log_softmax(emission, utt)  # (T, N)
        result = self.search.decode(Posteriors(utt, lp, 1.0))
        return [self._hypothesis(h, len(lp), torch) for h in result.nbest[: self.nbest]]

    def _hypothesis(self, h: Hypothesis, n_frames: int, torch: Any) -> CTCHypothesis:
        ids = [t.token_id for t in h.tokens]
        steps = [t.start_frame for t in h.tokens]
        sil = self.silence
        if sil is not None:  # flashlight's paths begin and end in silence
            if not ids or ids[0] != sil:
                ids, steps = [sil, *ids], [0, *steps]
            if ids[-1] != sil or len(ids) == 1:
                ids, steps = [*ids, sil], [*steps, max(n_frames - 1, 0)]
        words = [w.word for w in h.words]
        if self._lexicon_words is not None:
            words = [w if w in self._lexicon_words else self.unk_word for w in words]
        return CTCHypothesis(tokens=torch.tensor(ids, dtype=torch.long), words=words,
                             score=float(h.score),
                             timesteps=torch.tensor(steps, dtype=torch.int32))

    def __call__(self, emissions: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> list[list[CTCHypothesis]]:
        """Decode a batch: emissions ``(batch, frame, num_tokens)``, lengths ``(batch,)``."""
        self._check(emissions, 3)
        if lengths is not None and not lengths.is_cpu:
            raise RuntimeError("lengths must be a CPU tensor.")
        batch, frames, _ = emissions.shape
        array = emissions.numpy()
        lens = [frames] * batch if lengths is None else [int(n) for n in lengths.tolist()]
        if len(lens) != batch or any(not 0 <= n <= frames for n in lens):
            raise ValueError(f"lengths must give {batch} lengths in [0, {frames}], got {lens}")
        return [self._decode_one(array[b, : lens[b]], f"utterance {b}") for b in range(batch)]

    def idxs_to_tokens(self, idxs: torch.Tensor) -> list[str]:
        """The token spellings of ``idxs``."""
        return [self.tokens[int(i)] for i in idxs]

    # -- online decoding (torchaudio's decode_begin / decode_step / decode_end) ---------------
    def decode_begin(self) -> None:
        """Start an utterance decoded chunk by chunk (:meth:`BeamSearchDecoder.stream`).
        As torchaudio's, the decoder then holds that one utterance's state."""
        self._stream = self.search.stream(1.0, "stream")
        self._final = None

    def decode_step(self, emissions: torch.Tensor) -> None:
        """Extend the utterance with ``emissions`` ``(frame, num_tokens)``."""
        self._check(emissions, 2)
        stream = getattr(self, "_stream", None)
        if stream is None:
            raise RuntimeError("decode_step before decode_begin")
        stream.accept(_log_softmax(emissions.numpy(), "stream"))

    def decode_end(self) -> None:
        """Finish the utterance (its last word, ``</s>``, the alignment of each hypothesis)."""
        stream = getattr(self, "_stream", None)
        if stream is None:
            raise RuntimeError("decode_end before decode_begin")
        self._final, self._stream = (stream.finish(), stream.num_frames), None

    def get_final_hypothesis(self) -> list[CTCHypothesis]:
        """The finished utterance's ``nbest`` hypotheses, best first."""
        import torch

        if getattr(self, "_final", None) is None:
            raise RuntimeError("get_final_hypothesis before decode_end")
        result, n_frames = self._final
        return [self._hypothesis(h, n_frames, torch) for h in result.nbest[: self.nbest]]


def _lm_vocabulary(lm: KenLM, path: Path) -> list[str] | None:
    """The LM's words: an ARPA's own, else ``vocab.txt`` beside a binary, else None."""
    if KenLM.is_arpa(path):
        return read_unigrams(path)
    beside = path.with_name("vocab.txt")
    return read_unigrams(beside) if beside.is_file() else None


def ctc_decoder(lexicon: str | os.PathLike | None, tokens: str | os.PathLike | Sequence[str],
                lm: str | os.PathLike | None = None, lm_dict: str | os.PathLike | None = None,
                nbest: int = 1, beam_size: int = 50, beam_size_token: int | None = None,
                beam_threshold: float = 50, lm_weight: float = 2, word_score: float = 0,
                unk_score: float = float("-inf"), sil_score: float = 0, log_add: bool = False,
                blank_token: str = "-", sil_token: str = "|", unk_word: str = "<unk>"
                ) -> CTCDecoder:
    """torchaudio's ``ctc_decoder`` (see the module docstring for the mapping)."""
    names = load_tokens(tokens)
    for what, tok in (("blank_token", blank_token), ("sil_token", sil_token)):
        if tok not in names:
            raise ValueError(f"{what} {tok!r} is not one of the tokens")
    if lm is not None and not isinstance(lm, (str, os.PathLike)):
        raise ValueError("lm must be a KenLM file path or None (custom CTCDecoderLM objects "
                         "are torchaudio's, not supported here)")
    if lm_dict is not None and not isinstance(lm_dict, (str, os.PathLike)):
        raise ValueError("lm_dict must be None or str type.")
    for name, value in (("beam_threshold", beam_threshold), ("lm_weight", lm_weight),
                        ("word_score", word_score), ("sil_score", sil_score)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if beam_threshold <= 0:
        raise ValueError(f"beam_threshold must be > 0, got {beam_threshold!r}")
    if sil_score != 0:
        raise ValueError("sil_score other than 0 is not supported (our search has no silence "
                         "score)")
    if isinstance(unk_score, bool) or not isinstance(unk_score, (int, float)) \
            or math.isnan(unk_score) or unk_score == math.inf:
        raise ValueError(f"unk_score must be a number or -inf, got {unk_score!r}")
    table = TokenTable(tuple(names), names.index(blank_token), sil_token, "separate")
    scorers: list[WordScorer] = []
    weights: dict[str, float] = {}
    words: frozenset[str] | None = None
    vocabulary: list[str] | None = None
    if lexicon is not None:
        entries = load_lexicon(lexicon)
        known_tokens = set(names)
        for word, spellings in entries.items():
            for spelling in spellings:
                unknown = [t for t in spelling if t not in known_tokens]
                if unknown:
                    raise ValueError(f"{lexicon}: word {word!r} is spelled with {unknown}, "
                                     "which are not tokens")
                spelled = "".join(t for t in spelling if t != sil_token)
                if spelled != word:
                    raise ValueError(f"{lexicon}: {word!r} is spelled {' '.join(spelling)!r}, "
                                     f"which reads {spelled!r}: this decoder reads words from "
                                     "their tokens, so each spelling must spell its word")
        words = frozenset(entries)
        vocabulary = sorted(words)
    elif lm_dict is not None:
        vocabulary = read_unigrams(lm_dict) if Path(lm_dict).is_file() else None
        if vocabulary is None:
            raise ValueError(f"{lm_dict}: no such lm_dict file")
    if lm is not None:
        path = Path(lm)
        if not path.is_file():
            raise ValueError(f"{path}: no such KenLM file")
        model = KenLM(path)
        if model.contains(sil_token):
            raise ValueError(f"{path} holds the silence token {sil_token!r}: it looks like a "
                             "token-level LM, and this decoder fuses word n-grams")
        if vocabulary is None:
            vocabulary = _lm_vocabulary(model, path)
        known = [w for w in vocabulary if model.contains(w)] if vocabulary else None
        scorers.append(LMScorer(model, LM, unigrams=known or None))
        weights[LM] = float(lm_weight) / LN10
    scorers.append(WordBonus())
    weights[BONUS] = float(word_score)
    if words is not None:
        if unk_score == -math.inf:
            scorers.append(LexiconScorer(words, LEXICON, constraint=True))
            weights[LEXICON] = 1.0
        else:
            scorers.append(LexiconScorer(words, OOV))
            weights[OOV] = -float(unk_score)
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}")
    if isinstance(nbest, bool) or not isinstance(nbest, int) or not 1 <= nbest:
        raise ValueError(f"nbest must be an integer >= 1, got {nbest!r}")
    top_k = len(names) - 1 if beam_size_token is None else beam_size_token
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"beam_size_token must be an integer >= 1 or None, got {beam_size_token!r}")
    options = SearchOptions(
        beam_size=beam_size, beam_threshold=float(beam_threshold),
        token_top_k=max(1, min(top_k, len(names) - 1)),
        token_min_logprob=lexicon_pruning(len(names))["token_min_logprob"],
        nbest=min(nbest, beam_size))
    search = BeamSearchDecoder(table, scorers, weights, options)
    return CTCDecoder(nbest, table, search, words, unk_word)

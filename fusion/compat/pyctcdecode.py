"""A drop-in for pyctcdecode: ``build_ctcdecoder`` and its decoder, on our compiled search.

Change one import::

    from pyctcdecode import build_ctcdecoder            # before
    from fusion.compat.pyctcdecode import build_ctcdecoder  # after

and the rest of the code stays: the same arguments and defaults (pyctcdecode 0.5.0's), the
same label conventions, the same input convention and the same result layouts.

What is pyctcdecode's here, exactly:

* **Labels** (:func:`normalize_labels`, pyctcdecode's ``Alphabet.build_alphabet``): the
  blank is ``""`` or a ``<pad>``/``[pad]`` label wherever it is (else ``"_"``, else one is
  appended, and the logits must then have that extra column); the word boundary is
  ``" "`` (or ``"|"`` where there is no ``" "``); ``<unk>``/``[unk]`` reads ``"⁇"``. A
  vocabulary with a label starting ``"▁"`` or ``"##"`` is BPE: ``"▁"`` starts a word
  (``"##"`` pieces are converted), ``<unk>`` reads ``"▁⁇▁"``. Case is kept.
* **Input** (:func:`pyctcdecode_log_probs`): rows summing to 1 on average are
  probabilities (logged after clipping at 1e-15), anything else is log-softmaxed and
  clipped at log(1e-15): logits and log-probabilities both work.
* **Scores**, natural log: each word adds ``alpha * ln p_LM(word | history) + beta``, and
  ``alpha * ln(10) * unk_score_offset`` (KenLM's log10 units, as pyctcdecode's
  ``unk_score_offset`` is) when the word is not among the unigrams; ``</s>`` ends the
  utterance when ``lm_score_boundary``. Like pyctcdecode, a partial word no unigram
  starts with is charged at once (ours: the unknown word's penalty, pyctcdecode's: the
  unscaled offset), and the charge gives way to the word's own score when it ends
  (``LexiconScorer(partial=True)``). ``token_min_logp`` holds every label, blank and
  a repeated one included, the frame's most probable label passing always
  (``SearchOptions.floor_every_label``): a beam cannot wait out speech in blank inside a
  word it can only go on with at that charge. Hotwords add ``hotword_weight`` for each word that
  is one of the hotwords' words (phrases are split into words, as pyctcdecode does).
  In our scorers' terms (:mod:`fusion.decoder.scorers`): ``LMScorer`` weighted ``alpha``,
  ``WordBonus`` weighted ``beta``, an unknown-word ``LexiconScorer`` (``"oov"``) weighted
  ``-alpha * ln(10) * unk_score_offset``, a ``HotwordScorer`` weighted ``hotword_weight``.
* **Results**: ``decode_beams`` gives ``(text, lm_state, [(word, (start_frame,
  end_frame))], logit_score, combined_score)`` per beam, best first; ``decode_beams_batch``
  the same without the LM state; ``decode`` / ``decode_batch`` the best text.

Where ours differs, on purpose:

* The search is ours (:class:`fusion.decoder.search.BeamSearchDecoder`, in C++): a CTC prefix
  search that sums every alignment of a prefix, with partial-word LM scoring for pruning
  only; as pyctcdecode's beams are keyed by their last label, a prefix's blank-ending and
  label-ending paths rank as two candidates (``SearchOptions.split_blank_ends``), and an
  LM without ``<unk>`` keeps KenLM's log10 -100 for unknown words as in pyctcdecode
  (``KenLM(missing_unk_log10=None)``). Beams that agree in their LM state, word in
  progress and last label are recombined, the best kept (``SearchOptions.recombine``, as
  pyctcdecode's ``prune_history=True`` does by the last n-1 words; here always): the beam
  then holds more distinct futures, which is what makes our WER no worse than
  pyctcdecode's (``benchmarks/results/dropin.md``), and ``decode_beams`` gives no two beams
  of one LM history. Hypotheses and scores are close to pyctcdecode's, not equal.
  ``prune_history`` is accepted and has no further effect. Word frames come from a CTC
  forced alignment of each hypothesis.
* The LM state in ``decode_beams`` is ``None``: the search keeps KenLM's state in C++, and
  ``lm_start_state`` is refused rather than ignored.
* ``lm_score_boundary=False`` calls its LM scorer back from the compiled search (the
  KenLM kind there always starts at ``<s>``).
* No class-level model registry: a decoder owns its models, pickles as its settings and
  is rebuilt in each worker process (``pool`` may be any ``multiprocessing`` pool).
* A label ending in ``"▁"`` (``"▁⁇▁"``) does not force a word break after it.
* Bad input raises one clear ``ValueError`` (a label set with no word boundary, two blank
  labels, a missing LM file, logits of the wrong shape or with NaN, non-finite weights).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fusion.core.defaults import HOTWORDS, LM, OOV
from fusion.core.defaults import WORD_BONUS as BONUS
from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from fusion.core.types import Hypothesis
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import HotwordScorer, LexiconScorer, LMScorer, WordBonus, WordScorer
from fusion.decoder.search import BeamSearchDecoder
from fusion.pipeline.build import build_decoder
from fusion.pipeline.config import DecodeConfig
from lm.arpa import LN10
from lm.ngram import KenLM, read_unigrams

__all__ = ["BeamSearchDecoderCTC", "DEFAULT_ALPHA", "DEFAULT_BEAM_WIDTH", "DEFAULT_BETA",
           "DEFAULT_HOTWORD_WEIGHT", "DEFAULT_MIN_TOKEN_LOGP", "DEFAULT_PRUNE_BEAMS",
           "DEFAULT_PRUNE_LOGP", "DEFAULT_SCORE_LM_BOUNDARY", "DEFAULT_UNK_LOGP_OFFSET",
           "build_ctcdecoder", "labels_table", "normalize_labels", "pyctcdecode_log_probs"]

logger = logging.getLogger(__name__)

# pyctcdecode 0.5.0's defaults (pyctcdecode/constants.py), one place for all of them
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 1.5
DEFAULT_UNK_LOGP_OFFSET = -10.0
DEFAULT_BEAM_WIDTH = 100
DEFAULT_HOTWORD_WEIGHT = 10.0
DEFAULT_PRUNE_LOGP = -10.0
DEFAULT_PRUNE_BEAMS = False
DEFAULT_MIN_TOKEN_LOGP = -5.0
DEFAULT_SCORE_LM_BOUNDARY = True
MIN_TOKEN_CLIP_P = 1e-15

BPE_TOKEN = "▁"
UNK_TOKEN = "⁇"
UNK_BPE_TOKEN = "▁⁇▁"
_SPECIAL_TOKEN = re.compile(r"^[<\[].+[>\]]$")
_BLANK_TOKEN = re.compile(r"^[<\[]pad[>\]]$", flags=re.IGNORECASE)
_UNK_TOKEN = re.compile(r"^[<\[]unk[>\]]$", flags=re.IGNORECASE)

#: what ``decode_beams`` returns per beam, and ``decode_beams_batch`` without the LM state
OutputBeam = tuple[str, None, list[tuple[str, tuple[int, int]]], float, float]
OutputBeamMPSafe = tuple[str, list[tuple[str, tuple[int, int]]], float, float]


# -- labels -------------------------------------------------------------------------------
def normalize_labels(labels: Sequence[str]) -> tuple[list[str], bool]:
    """pyctcdecode's ``Alphabet.build_alphabet``: the normalised labels and whether they are
    BPE (see the module docstring). Raises ``ValueError`` for duplicates, a space inside a
    BPE vocabulary, non-string labels, or two labels that both normalise to the blank."""
    labels = list(labels)
    if not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"labels must be a non-empty list of strings, got {labels!r:.80}")
    is_bpe = any(s.startswith("##") or s.startswith(BPE_TOKEN) for s in labels)
    if len(labels) != len(set(labels)):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise ValueError(f"labels contain duplicate entries {dup}: each label must be unique")
    if is_bpe and any(" " in s for s in labels):
        raise ValueError("labels contain ' ' although they look like BPE (a label starts with "
                         "'▁' or '##'): BPE marks word starts with '▁', not with a space label")
    out = labels[:]
    if is_bpe:
        if any(s.startswith("##") for s in labels):
            out = [s[2:] if s.startswith("##") else
                   s if _SPECIAL_TOKEN.match(s) or s in ("", BPE_TOKEN, UNK_BPE_TOKEN) else
                   BPE_TOKEN + s for s in out]
        out = ["" if _BLANK_TOKEN.match(s) else s for s in out]
    else:
        if "|" in out and " " not in out:
            out[out.index("|")] = " "
        out = ["" if _BLANK_TOKEN.match(s) else s for s in out]
        if "_" in out and "" not in out:
            out[out.index("_")] = ""
    if "" not in out:
        out.append("")  # pyctcdecode appends the blank: the logits need that column
    if out.count("") > 1:
        raise ValueError(f"labels have {out.count('')} blank labels ('' or <pad>) at "
                         f"{[i for i, s in enumerate(out) if s == '']}: give exactly one")
    unk = UNK_BPE_TOKEN if is_bpe else UNK_TOKEN
    out = [unk if _UNK_TOKEN.match(s) else s for s in out]
    if len(set(out)) != len(out):
        raise ValueError(f"labels normalise to duplicates ({labels!r:.80}): e.g. both ' ' and "
                         "'|', or '<unk>' beside '⁇'")
    return out, is_bpe


def labels_table(labels: Sequence[str], is_bpe: bool) -> TokenTable:
    """Our token table for pyctcdecode's normalised ``labels``: the ``""`` blank, ``" "``
    as a separate word boundary (regular labels) or ``"▁"`` as the word-start marker (BPE).

    Raises ``ValueError`` for regular labels without ``" "`` (pyctcdecode decodes them as
    one word per utterance, which is never what a CTC model with words means)."""
    blank = labels.index("")
    name = "<blank>"
    while name in labels:
        name = f"<{name}>"
    tokens = [name if i == blank else s for i, s in enumerate(labels)]
    if is_bpe:
        return TokenTable(tuple(tokens), blank, BPE_TOKEN, "prefix")
    if " " not in labels:
        raise ValueError(f"labels {list(labels)!r:.120} have no word boundary: give ' ' (or "
                         "'|') for a character vocabulary, or '▁'-prefixed pieces for BPE")
    return TokenTable(tuple(tokens), blank, " ", "separate")


# -- input --------------------------------------------------------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Row log-softmax as pyctcdecode computes it (scipy's way; -inf rows stay finite-safe)."""
    x_max = np.amax(x, axis=1, keepdims=True)
    x_max[~np.isfinite(x_max)] = 0
    tmp = x - x_max
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(tmp), axis=1, keepdims=True))
    return tmp - out


def pyctcdecode_log_probs(logits: Any, width: int) -> np.ndarray:
    """Validate ``logits`` ``(T, width)`` and convert them as pyctcdecode's ``decode_beams``
    does: probabilities (rows summing to 1 on average) are logged after clipping at 1e-15,
    anything else is log-softmaxed and clipped at log(1e-15). float32, C order."""
    arr = np.asarray(logits)
    if arr.ndim != 2:
        raise ValueError(f"Input logits have {arr.ndim} dimensions, but need 2: (time, "
                         f"vocabulary); got shape {arr.shape}")
    if arr.shape[1] != width:
        raise ValueError(f"Input logits shape is {arr.shape}, but vocabulary is size {width}. "
                         "Need logits of shape: (time, vocabulary)")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():  # -inf is a zero probability; NaN and +inf are errors
        bad = np.isnan(arr) | np.isposinf(arr)
        if bad.any():
            t = int(np.argwhere(bad)[0, 0])
            raise ValueError(f"Input logits have NaN or +inf (first at frame {t})")
    if arr.shape[0] == 0:
        return np.zeros((0, width), dtype=np.float32)
    if math.isclose(float(arr.sum(axis=1).mean()), 1):
        out = np.log(np.clip(arr, MIN_TOKEN_CLIP_P, 1))
    else:
        out = np.clip(_log_softmax(arr), np.log(MIN_TOKEN_CLIP_P), 0)
    return np.ascontiguousarray(out, dtype=np.float32)


# -- scorers --------------------------------------------------------------------------------
class _NoBoundaryLMScorer(LMScorer):
    """An n-gram scorer that starts without ``<s>`` and adds no ``</s>``
    (``lm_score_boundary=False``); the compiled search calls it back."""

    def start(self) -> Hashable:
        return self.lm.null_state()  # type: ignore[attr-defined]

    def finish(self, state: Hashable) -> float:
        return 0.0


@functools.lru_cache(maxsize=4)
def _lm_scorers(path: str, stamp: tuple[int, int], unigrams: tuple[str, ...] | None,
                boundary: bool) -> tuple[LMScorer, LexiconScorer | None]:
    """The n-gram scorer (with the unigrams it knows, for partial-word scoring) and the
    unknown-word scorer over them (None without unigrams) for one LM file.

    Cached per file (``stamp``: its size and mtime) and unigrams, so that worker processes
    that unpickle one decoder per task build the scorers once (the compiled search shares
    the KenLM model itself across decoders)."""
    lm = KenLM(path, missing_unk_log10=None)  # pyctcdecode keeps KenLM's -100 for <unk>
    known = None
    if unigrams is not None:
        # pyctcdecode keeps the unigrams the LM knows (its _prepare_unigram_set)
        known = tuple(sorted({w for w in unigrams if w and lm.contains(w)}))
        if not known:
            logger.warning("none of the %d unigrams is in %s: no partial-word or unknown-word "
                           "scoring", len(unigrams), path)
            known = None
    cls = LMScorer if boundary else _NoBoundaryLMScorer
    # pyctcdecode charges unk_score_offset to a partial word no unigram starts with
    oov = LexiconScorer(known, OOV, partial=True) if known else None
    return cls(lm, LM, unigrams=known), oov


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _hotword_words(hotwords: Iterable[str] | None) -> tuple[str, ...]:
    """pyctcdecode's hotword handling: phrases stripped, split into words, deduplicated."""
    if hotwords is None:
        return ()
    if isinstance(hotwords, str):
        raise ValueError("hotwords must be a list of strings, not one string")
    words: dict[str, None] = {}
    for phrase in hotwords:
        if not isinstance(phrase, str):
            raise ValueError(f"hotwords must be strings, got {phrase!r}")
        words.update(dict.fromkeys(phrase.split()))
    return tuple(words)


# -- the decoder ------------------------------------------------------------------------------
class BeamSearchDecoderCTC:
    """pyctcdecode's decoder interface over :class:`fusion.decoder.search.BeamSearchDecoder`.

    Build it with :func:`build_ctcdecoder`. It holds no per-utterance state; it pickles as
    its settings (each process rebuilds its search), so any ``multiprocessing`` pool can
    run :meth:`decode_batch` and :meth:`decode_beams_batch`.
    """

    _ALPHABET_SERIALIZED_FILENAME = "alphabet.json"
    _LANGUAGE_MODEL_SERIALIZED_DIRECTORY = "language_model"
    _MAX_SEARCHES = 8  # searches kept for different settings or hotwords (least recent goes)

    def __init__(self, labels: Sequence[str], kenlm_model_path: str | os.PathLike | None = None,
                 unigrams: Collection[str] | None = None, alpha: float = DEFAULT_ALPHA,
                 beta: float = DEFAULT_BETA, unk_score_offset: float = DEFAULT_UNK_LOGP_OFFSET,
                 lm_score_boundary: bool = DEFAULT_SCORE_LM_BOUNDARY) -> None:
        self._labels, self._is_bpe = normalize_labels(labels)
        self.table = labels_table(self._labels, self._is_bpe)
        self.kenlm_model_path = None if kenlm_model_path is None else str(kenlm_model_path)
        self._unigrams: tuple[str, ...] | None = None
        if self.kenlm_model_path is not None:
            path = Path(self.kenlm_model_path)
            if not path.is_file():
                raise ValueError(f"{path}: no such KenLM model file (kenlm_model_path)")
            if unigrams is None:
                unigrams = self._default_unigrams(path)
            elif isinstance(unigrams, str):
                raise ValueError("unigrams must be a collection of words, not one string")
            self._unigrams = None if unigrams is None else tuple(unigrams)
        elif unigrams is not None:
            logger.warning("unigrams given without a KenLM model: they are not used")
        self.alpha = self.beta = self.unk_score_offset = 0.0
        self.lm_score_boundary = True
        self._searches: OrderedDict[tuple, BeamSearchDecoder] = OrderedDict()
        self.reset_params(alpha=alpha, beta=beta, unk_score_offset=unk_score_offset,
                          lm_score_boundary=lm_score_boundary)

    @staticmethod
    def _default_unigrams(path: Path) -> list[str] | None:
        """The LM's words when none are given: an ARPA's own unigrams (pyctcdecode reads
        them from ``*.arpa``), else a ``vocab.txt`` beside a binary, else none (warned)."""
        if KenLM.is_arpa(path):
            return read_unigrams(path)
        beside = path.with_name("vocab.txt")
        if beside.is_file():
            return read_unigrams(beside)
        logger.warning("unigrams not provided and not found (%s is a binary with no vocab.txt "
                       "beside it): no unknown-word offset, decoding accuracy might be reduced",
                       path)
        return None

    # -- settings -------------------------------------------------------------------------
    def reset_params(self, alpha: float | None = None, beta: float | None = None,
                     unk_score_offset: float | None = None,
                     lm_score_boundary: bool | None = None) -> None:
        """Change the LM weight, word bonus, unknown-word offset or boundary scoring (None
        keeps a setting; a call that changes nothing keeps the searches built so far)."""
        before = (self.alpha, self.beta, self.unk_score_offset, self.lm_score_boundary)
        if alpha is not None:
            self.alpha = _finite("alpha", alpha)
        if beta is not None:
            self.beta = _finite("beta", beta)
        if unk_score_offset is not None:
            self.unk_score_offset = _finite("unk_score_offset", unk_score_offset)
        if lm_score_boundary is not None:
            if not isinstance(lm_score_boundary, (bool, np.bool_)):
                raise ValueError(f"lm_score_boundary must be True or False, got {lm_score_boundary!r}")
            self.lm_score_boundary = bool(lm_score_boundary)
        if self._searches and before == (self.alpha, self.beta, self.unk_score_offset,
                                         self.lm_score_boundary):
            return
        self._scorers: list[WordScorer] = []
        self._weights: dict[str, float] = {}
        if self.kenlm_model_path is not None:
            path = Path(self.kenlm_model_path)
            st = path.stat()
            lm, oov = _lm_scorers(str(path), (st.st_size, st.st_mtime_ns), self._unigrams,
                                  self.lm_score_boundary)
            self._scorers = [lm, WordBonus()]
            self._weights = {LM: self.alpha, BONUS: self.beta}
            if oov is not None:
                self._scorers.append(oov)
                self._weights[OOV] = -self.alpha * LN10 * self.unk_score_offset
        self._searches.clear()

    @property
    def labels(self) -> list[str]:
        """The normalised labels (pyctcdecode's ``decoder._alphabet.labels``)."""
        return self._labels[:]

    @property
    def is_bpe(self) -> bool:
        return self._is_bpe

    @property
    def unigrams(self) -> tuple[str, ...] | None:
        """The unigrams given (or read from the LM), before keeping those the LM knows."""
        return self._unigrams

    def _search(self, beam_width: int, beam_prune_logp: float, token_min_logp: float,
                hotwords: tuple[str, ...], hotword_weight: float, nbest: int) -> BeamSearchDecoder:
        """The search for these settings (kept for the next call with the same ones)."""
        key = (beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight, nbest)
        search = self._searches.get(key)
        if search is not None:
            self._searches.move_to_end(key)
            return search
        if isinstance(beam_width, bool) or not isinstance(beam_width, (int, np.integer)) \
                or beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
        if not (isinstance(beam_prune_logp, (int, float)) and beam_prune_logp < 0):
            raise ValueError(f"beam_prune_logp must be a negative log-probability (beams that "
                             f"far below the best are pruned), got {beam_prune_logp!r}")
        if not (isinstance(token_min_logp, (int, float)) and token_min_logp <= 0):
            raise ValueError(f"token_min_logp must be a log-probability <= 0, got {token_min_logp!r}")
        scorers, weights = list(self._scorers), dict(self._weights)
        if hotwords and _finite("hotword_weight", hotword_weight) != 0:
            scorers.append(HotwordScorer(dict.fromkeys(hotwords, 1.0), HOTWORDS))
            weights[HOTWORDS] = float(hotword_weight)
        options = SearchOptions(
            beam_size=int(beam_width), beam_threshold=-float(beam_prune_logp),
            # pyctcdecode's candidates: every unit at or above token_min_logp
            token_top_k=max(1, len(self.table) - 1), token_min_logprob=float(token_min_logp),
            floor_every_label=True,  # and blank too, as pyctcdecode's candidates are
            split_blank_ends=True,  # and a prefix's two ends rank as two of its beams
            recombine=True,  # beams with one LM history, word part and last label: the best
            nbest=min(int(nbest), int(beam_width)))
        # alpha, beta, unk_score_offset and hotword_weight as a decoding config: the scorers
        # are this file's (cached per LM file, pyctcdecode's unigram and boundary rules)
        config = DecodeConfig(search=options, weights=weights,
                              lm=None if self.kenlm_model_path is None else Path(self.kenlm_model_path))
        search = build_decoder(config, self.table, scorers=scorers)
        self._searches[key] = search
        if len(self._searches) > self._MAX_SEARCHES:
            self._searches.popitem(last=False)
        return search

    def _hypotheses(self, logits: Any, beam_width: int, beam_prune_logp: float,
                    token_min_logp: float, hotwords: Iterable[str] | None, hotword_weight: float,
                    nbest: int) -> tuple[Hypothesis, ...]:
        search = self._search(beam_width, beam_prune_logp, token_min_logp,
                              _hotword_words(hotwords), hotword_weight, nbest)
        # frame_shift 1: word start/end come out in frames, as pyctcdecode gives them
        return search.decode(self._posteriors(logits)).nbest

    def _posteriors(self, logits: Any) -> Posteriors:
        return Posteriors("logits", pyctcdecode_log_probs(logits, len(self.table)), 1.0)

    @staticmethod
    def _beam(h: Hypothesis) -> OutputBeam:
        frames = [(w.word, (int(w.start), int(w.end))) for w in h.words]
        return h.text, None, frames, float(h.scores["acoustic"]), float(h.score)

    # -- pyctcdecode's API ------------------------------------------------------------------
    def decode_beams(self, logits: np.ndarray, beam_width: int = DEFAULT_BEAM_WIDTH,
                     beam_prune_logp: float = DEFAULT_PRUNE_LOGP,
                     token_min_logp: float = DEFAULT_MIN_TOKEN_LOGP,
                     prune_history: bool = DEFAULT_PRUNE_BEAMS,
                     hotwords: Optional[Iterable[str]] = None,
                     hotword_weight: float = DEFAULT_HOTWORD_WEIGHT,
                     lm_start_state: None = None) -> list[OutputBeam]:
        """The beams of one utterance, best first: ``(text, None, word_frames, logit_score,
        combined_score)``; ``logits`` is ``(time, len(labels))``. ``prune_history`` has no
        effect (see the module docstring)."""
        if lm_start_state is not None:
            raise ValueError("lm_start_state is not supported: the compiled search keeps the LM "
                             "state itself (decode whole utterances)")
        return [self._beam(h) for h in self._hypotheses(
            logits, beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight,
            beam_width)]

    def decode(self, logits: np.ndarray, beam_width: int = DEFAULT_BEAM_WIDTH,
               beam_prune_logp: float = DEFAULT_PRUNE_LOGP,
               token_min_logp: float = DEFAULT_MIN_TOKEN_LOGP,
               hotwords: Optional[Iterable[str]] = None,
               hotword_weight: float = DEFAULT_HOTWORD_WEIGHT,
               lm_start_state: None = None) -> str:
        """The best text of one utterance."""
        if lm_start_state is not None:
            raise ValueError("lm_start_state is not supported: the compiled search keeps the LM "
                             "state itself (decode whole utterances)")
        search = self._search(beam_width, beam_prune_logp, token_min_logp,
                              _hotword_words(hotwords), hotword_weight, 1)
        return search.best_text(self._posteriors(logits))

    def _decode_beams_mp_safe(self, logits: np.ndarray, beam_width: int, beam_prune_logp: float,
                              token_min_logp: float, hotwords: Optional[Iterable[str]],
                              hotword_weight: float, nbest: int | None = None
                              ) -> list[OutputBeamMPSafe]:
        hyps = self._hypotheses(logits, beam_width, beam_prune_logp, token_min_logp, hotwords,
                                hotword_weight, beam_width if nbest is None else nbest)
        return [(text, frames, logit, combined)
                for text, _, frames, logit, combined in map(self._beam, hyps)]

    def decode_beams_batch(self, pool: Any, logits_list: list[np.ndarray],
                           beam_width: int = DEFAULT_BEAM_WIDTH,
                           beam_prune_logp: float = DEFAULT_PRUNE_LOGP,
                           token_min_logp: float = DEFAULT_MIN_TOKEN_LOGP,
                           prune_history: bool = DEFAULT_PRUNE_BEAMS,
                           hotwords: Optional[Iterable[str]] = None,
                           hotword_weight: float = DEFAULT_HOTWORD_WEIGHT
                           ) -> list[list[OutputBeamMPSafe]]:
        """:meth:`decode_beams` of each utterance, without the LM state: ``(text,
        word_frames, logit_score, combined_score)``; ``pool`` is None (one process) or a
        ``multiprocessing`` pool."""
        return self._map(pool, functools.partial(
            self._decode_beams_mp_safe, beam_width=beam_width, beam_prune_logp=beam_prune_logp,
            token_min_logp=token_min_logp, hotwords=hotwords, hotword_weight=hotword_weight),
            logits_list)

    def decode_batch(self, pool: Any, logits_list: list[np.ndarray],
                     beam_width: int = DEFAULT_BEAM_WIDTH,
                     beam_prune_logp: float = DEFAULT_PRUNE_LOGP,
                     token_min_logp: float = DEFAULT_MIN_TOKEN_LOGP,
                     hotwords: Optional[Iterable[str]] = None,
                     hotword_weight: float = DEFAULT_HOTWORD_WEIGHT) -> list[str]:
        """:meth:`decode` of each utterance; ``pool`` as in :meth:`decode_beams_batch`."""
        return self._map(pool, functools.partial(
            self.decode, beam_width=beam_width, beam_prune_logp=beam_prune_logp,
            token_min_logp=token_min_logp, hotwords=hotwords, hotword_weight=hotword_weight),
            logits_list)

    def _map(self, pool: Any, fn: Any, logits_list: list[np.ndarray]) -> list:
        logits_list = list(logits_list)
        for i, logits in enumerate(logits_list):  # every bad utterance found before any work
            try:
                pyctcdecode_log_probs(logits[:0] if np.ndim(logits) == 2 else logits,
                                      len(self.table))
            except ValueError as exc:
                raise ValueError(f"logits_list[{i}]: {exc}") from None
        if pool is None:
            return [fn(x) for x in logits_list]
        return pool.map(fn, logits_list)

    # -- pickling and files ------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"labels": self._labels, "kenlm_model_path": self.kenlm_model_path,
                "unigrams": self._unigrams, "alpha": self.alpha, "beta": self.beta,
                "unk_score_offset": self.unk_score_offset,
                "lm_score_boundary": self.lm_score_boundary}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def save_to_dir(self, filepath: str | os.PathLike) -> None:
        """pyctcdecode's layout: ``alphabet.json`` and, with an LM, ``language_model/``
        holding ``attrs.json``, ``unigrams.txt`` and a copy of the KenLM file (what
        pyctcdecode's and transformers' loaders read)."""
        root = Path(filepath)
        root.mkdir(parents=True, exist_ok=True)
        (root / self._ALPHABET_SERIALIZED_FILENAME).write_text(
            json.dumps({"labels": self._labels, "is_bpe": self._is_bpe}))
        if self.kenlm_model_path is None:
            return
        lm_dir = root / self._LANGUAGE_MODEL_SERIALIZED_DIRECTORY
        lm_dir.mkdir(exist_ok=False)
        (lm_dir / "attrs.json").write_text(json.dumps({
            "alpha": self.alpha, "beta": self.beta, "unk_score_offset": self.unk_score_offset,
            "score_boundary": self.lm_score_boundary}))
        known = getattr(self._scorers[0], "unigrams", None) or ()  # those the LM knows
        text = "".join(w + "\n" for w in sorted(known))
        (lm_dir / "unigrams.txt").write_text(text, encoding="utf-8")
        src = Path(self.kenlm_model_path)
        name = src.name if src.suffix in (".arpa", ".bin", ".binary") else \
            src.name + (".arpa" if KenLM.is_arpa(src) else ".bin")
        shutil.copy2(src, lm_dir / name)

    @classmethod
    def load_from_dir(cls, filepath: str | os.PathLike,
                      unigram_encoding: str | None = "utf-8") -> BeamSearchDecoderCTC:
        """A decoder from pyctcdecode's layout (see :meth:`save_to_dir`)."""
        root = Path(filepath)
        alphabet = root / cls._ALPHABET_SERIALIZED_FILENAME
        try:
            labels = json.loads(alphabet.read_text(encoding="utf-8"))["labels"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{alphabet}: cannot read pyctcdecode's alphabet: {exc}") from None
        lm_dir = root / cls._LANGUAGE_MODEL_SERIALIZED_DIRECTORY
        if not lm_dir.is_dir():
            return cls(labels)
        attrs_path, unigrams_path = lm_dir / "attrs.json", lm_dir / "unigrams.txt"
        try:
            attrs = json.loads(attrs_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{attrs_path}: cannot read the LM's settings: {exc}") from None
        expected = {"alpha", "beta", "unk_score_offset", "score_boundary"}
        if not isinstance(attrs, dict) or set(attrs) != expected:
            raise ValueError(f"{attrs_path}: expected the keys {sorted(expected)}, "
                             f"found {sorted(attrs) if isinstance(attrs, dict) else attrs!r}")
        if not unigrams_path.is_file():
            raise ValueError(f"{lm_dir}: no unigrams.txt")
        unigrams = unigrams_path.read_text(encoding=unigram_encoding).splitlines()
        models = [p for p in lm_dir.iterdir() if not p.name.startswith((".", "__"))
                  and p.name not in ("attrs.json", "unigrams.txt")]
        if len(models) != 1 or models[0].suffix not in (".arpa", ".bin", ".binary"):
            raise ValueError(f"{lm_dir}: expected one KenLM file (.arpa, .bin or .binary) "
                             f"beside attrs.json and unigrams.txt, found {sorted(p.name for p in models)}")
        return cls(labels, models[0], unigrams, alpha=attrs["alpha"], beta=attrs["beta"],
                   unk_score_offset=attrs["unk_score_offset"],
                   lm_score_boundary=attrs["score_boundary"])


def build_ctcdecoder(labels: Sequence[str], kenlm_model_path: str | os.PathLike | None = None,
                     unigrams: Collection[str] | None = None, alpha: float = DEFAULT_ALPHA,
                     beta: float = DEFAULT_BETA, unk_score_offset: float = DEFAULT_UNK_LOGP_OFFSET,
                     lm_score_boundary: bool = DEFAULT_SCORE_LM_BOUNDARY) -> BeamSearchDecoderCTC:
    """pyctcdecode's ``build_ctcdecoder``, on our compiled search.

    Args:
        labels: one label per logit column (see the module docstring's conventions).
        kenlm_model_path: a KenLM ARPA or binary word n-gram, or None for no LM.
        unigrams: the LM's words (default: an ARPA's own unigrams, or ``vocab.txt`` beside a
            binary); words the LM does not know are dropped, as pyctcdecode does.
        alpha: LM weight (on natural-log LM probabilities).
        beta: bonus per word (with an LM).
        unk_score_offset: added, in KenLM's log10 units before ``alpha``, for each word
            outside the unigrams.
        lm_score_boundary: score ``<s>`` and ``</s>`` around each utterance.
    """
    return BeamSearchDecoderCTC(labels, kenlm_model_path, unigrams, alpha=alpha, beta=beta,
                                unk_score_offset=unk_score_offset,
                                lm_score_boundary=lm_score_boundary)

"""From a :class:`~fusion.pipeline.config.DecodeConfig` to a decoder: the one factory.

:func:`build_decoder` is where paths and numbers become objects, for every caller: the
command line (``fusion decode``, ``demo``, ``tune``, batch runs), tuning, the
pyctcdecode adapter (:mod:`fusion.compat.pyctcdecode`) and the benchmarks::

    from fusion.pipeline.config import DecodeConfig
    from fusion.pipeline.build import build_decoder
    from fusion.core.posteriors import PosteriorsReader

    with PosteriorsReader("post.npz") as reader:
        decoder = build_decoder(DecodeConfig.default(), reader.token_table)
        for utt_id in reader.ids:
            print(decoder.decode(reader[utt_id]).best.text)

It imports neither argparse nor the command line; the neural LM, the HMM and pyctcdecode
are imported only when a config asks for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusion.core.defaults import ACOUSTIC, DEFAULT_LM, DEFAULT_WEIGHTS, OOV
from fusion.core.text import normalize_text
from fusion.core.tokens import TokenTable
from fusion.decoder.options import lexicon_pruning
from fusion.decoder.scorers import (HotwordScorer, LexiconScorer, LMScorer, WordBonus, WordScorer,
                                    check_weights, warn_vocabulary_overlap)
from fusion.decoder.search import BeamSearchDecoder
from fusion.pipeline.config import DecodeConfig
from lm.ngram import KenLM, read_unigrams

if TYPE_CHECKING:
    from fusion.decoder.pyctc import PyctcdecodeBackend
    from fusion.rescoring.rescore import RescoringDecoder

    Decoder = BeamSearchDecoder | PyctcdecodeBackend | RescoringDecoder

__all__ = ["DEFAULT_LM", "DEFAULT_WEIGHTS", "OOV", "build_decoder", "build_scorers",
           "lm_scorers", "read_hotwords", "rescoring_decoder"]


def build_decoder(config: DecodeConfig, table: TokenTable, *,
                  scorers: Sequence[WordScorer] | None = None) -> Decoder:
    """The decoder ``config`` describes, for posteriors over ``table``.

    Args:
        config: the pipeline (checked whole first: :meth:`DecodeConfig.validate`).
        table: the posteriors' token table.
        scorers: word scorers to use instead of those the config's files describe: ones
            loaded once for many decoders (tuning, the pyctcdecode adapter) or ones a
            file cannot describe (a neural LM). The config's weights and defaults still
            weigh them, and its search, pruning and rescoring still apply.

    Returns:
        a :class:`~fusion.decoder.search.BeamSearchDecoder` (``decoder = "beam"``), a
        :class:`~fusion.decoder.pyctc.PyctcdecodeBackend` (``"pyctcdecode"``), either followed
        by N-best rescoring (:class:`~fusion.rescoring.rescore.RescoringDecoder`) when the config
        has rescoring weights.

    Raises:
        ConfigError: settings that contradict each other.
        ValueError: weights that do not name exactly the scorers, unreadable files.
    """
    config.validate()
    scorers = list(build_scorers(config, table) if scorers is None else scorers)
    names = [s.name for s in scorers]
    weights = config.weights_for(names)
    check_weights(names, {k: v for k, v in weights.items() if k != ACOUSTIC},
                  where="decoding weights")
    first: Any
    if config.decoder == "pyctcdecode":
        from fusion.decoder.pyctc import FusionLanguageModel, PyctcdecodeBackend

        weights.pop(ACOUSTIC, None)  # 1: validate() says so
        first = PyctcdecodeBackend(table, FusionLanguageModel(scorers, weights) if scorers else None,
                                   beam_size=config.search.beam_size, nbest=config.search.nbest)
    else:
        options = config.search
        if any(s.constraint for s in scorers):  # wide candidates: at least lexicon_pruning's
            wide = lexicon_pruning(len(table))
            options = replace(options, token_top_k=max(options.token_top_k, wide["token_top_k"]),
                              token_min_logprob=min(options.token_min_logprob,
                                                    wide["token_min_logprob"]),
                              beam_threshold=max(options.beam_threshold, wide["beam_threshold"]))
        first = BeamSearchDecoder(table, scorers, weights, options)
    return rescoring_decoder(config, first) if config.rescore_weights is not None else first


def build_scorers(config: DecodeConfig, table: TokenTable | None = None) -> list[WordScorer]:
    """The word scorers of ``config``'s files: the LM and the word bonus (and the
    unknown-word scorer when the config weighs ``oov``), the lexicon, the hotwords."""
    config.validate()
    scorers: list[WordScorer] = []
    if config.lm is not None:
        scorers += lm_scorers(config.lm, config.lm_vocab, oov=OOV in config.weights, table=table)
    if config.lexicon is not None:
        scorers.append(LexiconScorer.from_file(config.lexicon, constraint=True))
    if config.hotwords is not None:
        scorers.append(HotwordScorer(read_hotwords(config.hotwords)))
    return scorers


def lm_scorers(lm: Path, vocab: Path | None = None, *, oov: bool = False,
               table: TokenTable | None = None) -> list[WordScorer]:
    """A word n-gram scorer and the word bonus. The LM's words (for partial-word scoring)
    come from ``vocab``, else the ARPA itself, else a ``vocab.txt`` beside a binary.
    Given the posteriors' ``table``, an LM whose words the table can hardly spell (an
    upper-case LM for a lower-case table) is warned about on stderr.

    With ``oov``, also an unknown-word penalty: a :class:`LexiconScorer` named ``oov`` over
    the LM's words, scoring -1 for each word outside them (its weight is the penalty, as
    pyctcdecode's ``unk_score_offset`` and flashlight's ``unk_score`` are). It needs the
    LM's words."""
    lm = Path(lm)
    if vocab is None:
        beside = lm.with_name("vocab.txt")
        vocab = lm if KenLM.is_arpa(lm) else beside if beside.exists() else None
    model = KenLM(lm)
    unigrams = read_unigrams(vocab) if vocab else None
    if unigrams and table is not None:
        source = str(lm) if vocab == lm else f"{lm} (words from {vocab})"
        warn_vocabulary_overlap(unigrams, table, source=source)
    scorers: list[WordScorer] = [LMScorer(model, unigrams=unigrams), WordBonus()]
    if oov:
        if not unigrams:
            raise ValueError(f"{lm}: an unknown-word penalty (weight 'oov') needs the LM's words: "
                             "give the LM's ARPA or a word list as its vocabulary (--lm-vocab)")
        scorers.append(LexiconScorer(unigrams, name=OOV))
    return scorers


def rescoring_decoder(config: DecodeConfig, first_pass: Any) -> RescoringDecoder:
    """``first_pass`` followed by the config's N-best rescoring (neural LM, HMM score)."""
    from fusion.rescoring.rescore import LMRescorer, RescoringDecoder

    config.validate()
    scorers: list = []
    if config.rescore_nlm is not None:
        from lm.neural import NeuralLM

        nlm = config.rescore_nlm
        scorers.append(LMRescorer(NeuralLM.default() if nlm == "default" else NeuralLM.load(nlm)))
    if config.rescore_hmm is not None:
        from hmm.model import TiedDurationHMM
        from hmm.scorer import AlignmentScorer

        scorers.append(AlignmentScorer(TiedDurationHMM.load(config.rescore_hmm)))
    return RescoringDecoder(first_pass, scorers, config.rescore_weights or {})


def read_hotwords(path: Path) -> dict[str, float]:
    """Phrases from a file: one a line, ``phrase`` or ``phrase<TAB>weight``; normalised."""
    phrases: dict[str, float] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            phrase, _, weight = line.rstrip("\n").partition("\t")
            try:
                value = float(weight) if weight.strip() else 1.0
            except ValueError:
                raise ValueError(f"{path}:{lineno}: weight {weight!r} is not a number") from None
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{path}:{lineno}: weight {weight.strip()!r} of {phrase!r} must "
                                 "be a finite number > 0")
            phrases[normalize_text(phrase)] = value
    return phrases

"""A drop-in for Hugging Face's ``Wav2Vec2ProcessorWithLM``, on our compiled search.

Change one import::

    from transformers import Wav2Vec2ProcessorWithLM          # before
    from fusion.compat.hf import Wav2Vec2ProcessorWithLM      # after

It wraps the feature extractor and the tokenizer as transformers' class does (``__call__``,
``pad``, ``save_pretrained``, ``from_pretrained`` of a local folder with ``alphabet.json``
and ``language_model/``), and decodes with :mod:`fusion.compat.pyctcdecode` instead of
pyctcdecode: ``batch_decode`` / ``decode`` return ``text``, ``logit_score``, ``lm_score``
(the combined score, as transformers names it) and, with ``output_word_offsets``,
``word_offsets`` (``{"word", "start_offset", "end_offset"}`` in logit frames).
:meth:`Wav2Vec2ProcessorWithLM.from_processor` builds one from a ``Wav2Vec2Processor`` and a
KenLM file. What it saves, transformers' own class (with pyctcdecode) loads.

transformers is needed (the ``hf`` extra) for the feature extractor and tokenizer; it is
imported only here. Unlike transformers' class, ``batch_decode`` starts no process pool of
its own unless asked (``pool``, or ``num_processes`` > 1): the caller chooses parallelism.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from fusion.compat.pyctcdecode import (DEFAULT_BEAM_WIDTH, DEFAULT_HOTWORD_WEIGHT,
                                       DEFAULT_MIN_TOKEN_LOGP, DEFAULT_PRUNE_LOGP, UNK_TOKEN,
                                       BeamSearchDecoderCTC, build_ctcdecoder)

__all__ = ["Wav2Vec2DecoderWithLMOutput", "Wav2Vec2ProcessorWithLM", "processor_labels"]

#: transformers pads a batch of logits with this value (rows of it are dropped)
PAD_LOGIT = -100.0


@dataclass
class Wav2Vec2DecoderWithLMOutput:
    """transformers' output of ``batch_decode``/``decode``: fields by name, key or index."""

    text: Any
    logit_score: Any = None
    lm_score: Any = None
    word_offsets: Any = None

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in {f.name for f in fields(self)}:
                raise KeyError(key)
            return getattr(self, key)
        return tuple(v for v in astuple(self) if v is not None)[key]

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("fusion.compat.hf needs transformers: pip install 'asrfuse[hf]'") from exc
    return transformers


def processor_labels(tokenizer: Any) -> list[str]:
    """The decoder labels of a ``Wav2Vec2CTCTokenizer``: its vocabulary in id order, the
    word delimiter as ``" "`` (pad, unk follow pyctcdecode's conventions)."""
    vocab = tokenizer.get_vocab()
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ValueError("the tokenizer's vocabulary ids are not 0..V-1: cannot map them to "
                         "logit columns")
    by_id = {i: t for t, i in vocab.items()}
    delimiter = getattr(tokenizer, "word_delimiter_token", None)
    return [" " if by_id[i] == delimiter else by_id[i] for i in ids]


class Wav2Vec2ProcessorWithLM:
    """Feature extractor + CTC tokenizer + our n-gram decoder, as transformers' class.

    Args:
        feature_extractor: a ``Wav2Vec2FeatureExtractor`` (any feature extractor works).
        tokenizer: a ``Wav2Vec2CTCTokenizer``.
        decoder: a :class:`fusion.compat.pyctcdecode.BeamSearchDecoderCTC` whose labels
            cover the tokenizer's vocabulary.
    """

    def __init__(self, feature_extractor: Any, tokenizer: Any, decoder: BeamSearchDecoderCTC
                 ) -> None:
        if not isinstance(decoder, BeamSearchDecoderCTC):
            raise TypeError(f"decoder must be a fusion.compat.pyctcdecode.BeamSearchDecoderCTC, "
                            f"got {type(decoder).__name__}")
        missing = self.get_missing_alphabet_tokens(decoder, tokenizer)
        if missing:
            raise ValueError(f"The tokens {sorted(missing)} are defined in the tokenizer's "
                             "vocabulary, but not in the decoder's alphabet.")
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.decoder = decoder

    @staticmethod
    def get_missing_alphabet_tokens(decoder: BeamSearchDecoderCTC, tokenizer: Any) -> set[str]:
        """Tokenizer tokens the decoder's labels lack (after the blank, delimiter and unk
        conventions), as transformers checks them."""
        from fusion.compat.pyctcdecode import _BLANK_TOKEN, _UNK_TOKEN

        delimiter = getattr(tokenizer, "word_delimiter_token", None)
        tokens = set()
        for t in tokenizer.get_vocab():
            tokens.add("" if _BLANK_TOKEN.match(t) else " " if t == delimiter else
                       UNK_TOKEN if _UNK_TOKEN.match(t) else t)
        return tokens - set(decoder.labels)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_processor(cls, processor: Any, kenlm_model_path: str | os.PathLike | None,
                       unigrams: Iterable[str] | None = None, **decoder_kwargs: Any
                       ) -> Wav2Vec2ProcessorWithLM:
        """From a ``Wav2Vec2Processor`` (its feature extractor and tokenizer) and a KenLM
        file; ``decoder_kwargs`` go to :func:`~fusion.compat.pyctcdecode.build_ctcdecoder`
        (``alpha``, ``beta``, ``unk_score_offset``, ``lm_score_boundary``)."""
        decoder = build_ctcdecoder(processor_labels(processor.tokenizer), kenlm_model_path,
                                   None if unigrams is None else list(unigrams), **decoder_kwargs)
        return cls(processor.feature_extractor, processor.tokenizer, decoder)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
                        ) -> Wav2Vec2ProcessorWithLM:
        """From a local folder saved by :meth:`save_pretrained` or transformers' class:
        ``preprocessor_config.json``, the tokenizer's files, ``alphabet.json`` and
        ``language_model/`` (``attrs.json``, ``unigrams.txt``, the KenLM file). ``alpha``,
        ``beta``, ``unk_score_offset``, ``score_boundary`` in ``kwargs`` override
        ``attrs.json``; the rest go to transformers' loaders. Nothing is downloaded."""
        root = Path(pretrained_model_name_or_path)
        if not root.is_dir():
            raise ValueError(f"{root}: not a folder (only local folders are read; nothing is "
                             "downloaded)")
        overrides = {k: kwargs.pop(k) for k in ("alpha", "beta", "unk_score_offset",
                                                "score_boundary") if kwargs.get(k) is not None}
        unigram_encoding = kwargs.pop("unigram_encoding", "utf-8")
        tf = _transformers()
        feature_extractor = tf.AutoFeatureExtractor.from_pretrained(str(root), **kwargs)
        tokenizer = tf.Wav2Vec2CTCTokenizer.from_pretrained(str(root), **kwargs)
        decoder = BeamSearchDecoderCTC.load_from_dir(root, unigram_encoding)
        if "score_boundary" in overrides:
            overrides["lm_score_boundary"] = overrides.pop("score_boundary")
        if overrides:
            decoder.reset_params(**overrides)
        return cls(feature_extractor, tokenizer, decoder)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """The feature extractor's and tokenizer's files, then the decoder's (pyctcdecode's
        layout, which transformers' ``Wav2Vec2ProcessorWithLM.from_pretrained`` reads)."""
        self.feature_extractor.save_pretrained(str(save_directory))
        self.tokenizer.save_pretrained(str(save_directory))
        self.decoder.save_to_dir(save_directory)

    @property
    def language_model(self) -> BeamSearchDecoderCTC:
        """Where transformers' ``language_model.alpha`` etc. live: the decoder itself."""
        return self.decoder

    # -- pre-processing ----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Audio to the feature extractor, ``text`` to the tokenizer (both: ``labels`` added)."""
        audio = kwargs.pop("audio", None)
        text = kwargs.pop("text", None)
        if args:
            audio, args = args[0], args[1:]
        if audio is None and text is None:
            raise ValueError("You need to specify either an `audio` or `text` input to process.")
        inputs = self.feature_extractor(audio, *args, **kwargs) if audio is not None else None
        if text is None:
            return inputs
        encodings = self.tokenizer(text, **{k: v for k, v in kwargs.items()
                                            if k != "sampling_rate"})
        if inputs is None:
            return encodings
        inputs["labels"] = encodings["input_ids"]
        return inputs

    def pad(self, *args: Any, **kwargs: Any) -> Any:
        """``input_features`` padded by the feature extractor, ``labels`` by the tokenizer."""
        features = kwargs.pop("input_features", None)
        labels = kwargs.pop("labels", None)
        if args:
            features, args = args[0], args[1:]
        if features is not None:
            features = self.feature_extractor.pad(features, *args, **kwargs)
        if labels is not None:
            labels = self.tokenizer.pad(labels, **kwargs)
        if labels is None:
            return features
        if features is None:
            return labels
        features["labels"] = labels["input_ids"]
        return features

    # -- decoding ------------------------------------------------------------------------------
    def _settings(self, beam_width: int | None, beam_prune_logp: float | None,
                  token_min_logp: float | None, hotwords: Iterable[str] | None,
                  hotword_weight: float | None, alpha: float | None, beta: float | None,
                  unk_score_offset: float | None, lm_score_boundary: bool | None,
                  n_best: int) -> dict[str, Any]:
        if isinstance(n_best, bool) or not isinstance(n_best, int) or n_best < 1:
            raise ValueError(f"n_best must be an integer >= 1, got {n_best!r}")
        self.decoder.reset_params(alpha=alpha, beta=beta, unk_score_offset=unk_score_offset,
                                  lm_score_boundary=lm_score_boundary)
        beam_width = DEFAULT_BEAM_WIDTH if beam_width is None else beam_width
        return {"beam_width": beam_width,
                "beam_prune_logp": DEFAULT_PRUNE_LOGP if beam_prune_logp is None else beam_prune_logp,
                "token_min_logp": DEFAULT_MIN_TOKEN_LOGP if token_min_logp is None else token_min_logp,
                "hotwords": None if hotwords is None else list(hotwords),
                "hotword_weight": DEFAULT_HOTWORD_WEIGHT if hotword_weight is None else hotword_weight,
                "nbest": n_best}

    @staticmethod
    def _offsets(frames: Sequence[tuple[str, tuple[int, int]]]) -> list[dict[str, Any]]:
        return [{"word": w, "start_offset": s, "end_offset": e} for w, (s, e) in frames]

    def batch_decode(self, logits: Any, pool: Any = None, num_processes: int | None = None,
                     beam_width: int | None = None, beam_prune_logp: float | None = None,
                     token_min_logp: float | None = None, hotwords: Iterable[str] | None = None,
                     hotword_weight: float | None = None, alpha: float | None = None,
                     beta: float | None = None, unk_score_offset: float | None = None,
                     lm_score_boundary: bool | None = None, output_word_offsets: bool = False,
                     n_best: int = 1) -> Wav2Vec2DecoderWithLMOutput:
        """Decode a batch of logits ``(batch, time, vocab)`` (rows of -100 are padding).

        ``alpha``/``beta``/``unk_score_offset``/``lm_score_boundary`` change the decoder's
        settings from this call on, as transformers' do. With ``n_best`` > 1 each field is a
        list per utterance."""
        settings = self._settings(beam_width, beam_prune_logp, token_min_logp, hotwords,
                                  hotword_weight, alpha, beta, unk_score_offset,
                                  lm_score_boundary, n_best)
        arrays = [np.asarray(a) for a in logits]
        logits_list = [a[(a != PAD_LOGIT).all(axis=-1)] if a.ndim == 2 else a for a in arrays]
        own = None
        if pool is None and num_processes is not None and num_processes > 1:
            pool = own = multiprocessing.get_context().Pool(num_processes)
        try:
            beams = self.decoder._map(pool, _BatchItem(self.decoder, settings), logits_list)
        finally:
            if own is not None:
                own.close()
                own.join()
        texts = [[b[0] for b in d][:n_best] for d in beams]
        logit_scores = [[b[2] for b in d][:n_best] for d in beams]
        lm_scores = [[b[3] for b in d][:n_best] for d in beams]
        offsets = [[self._offsets(b[1]) for b in d][:n_best] for d in beams] \
            if output_word_offsets else None
        if n_best == 1:
            return Wav2Vec2DecoderWithLMOutput(
                text=[t[0] for t in texts], logit_score=[s[0] for s in logit_scores],
                lm_score=[s[0] for s in lm_scores],
                word_offsets=None if offsets is None else [o[0] for o in offsets])
        return Wav2Vec2DecoderWithLMOutput(text=texts, logit_score=logit_scores,
                                           lm_score=lm_scores, word_offsets=offsets)

    def decode(self, logits: Any, beam_width: int | None = None,
               beam_prune_logp: float | None = None, token_min_logp: float | None = None,
               hotwords: Iterable[str] | None = None, hotword_weight: float | None = None,
               alpha: float | None = None, beta: float | None = None,
               unk_score_offset: float | None = None, lm_score_boundary: bool | None = None,
               output_word_offsets: bool = False, n_best: int = 1) -> Wav2Vec2DecoderWithLMOutput:
        """Decode one utterance's logits ``(time, vocab)``."""
        settings = self._settings(beam_width, beam_prune_logp, token_min_logp, hotwords,
                                  hotword_weight, alpha, beta, unk_score_offset,
                                  lm_score_boundary, n_best)
        beams = _BatchItem(self.decoder, settings)(logits)
        texts = [b[0] for b in beams][:n_best]
        logit_scores = [b[2] for b in beams][:n_best]
        lm_scores = [b[3] for b in beams][:n_best]
        offsets = [self._offsets(b[1]) for b in beams][:n_best] if output_word_offsets else None
        if n_best == 1:
            return Wav2Vec2DecoderWithLMOutput(texts[0], logit_scores[0], lm_scores[0],
                                               None if offsets is None else offsets[0])
        return Wav2Vec2DecoderWithLMOutput(texts, logit_scores, lm_scores, offsets)


class _BatchItem:
    """One utterance's beams under fixed settings (a picklable callable for pools)."""

    def __init__(self, decoder: BeamSearchDecoderCTC, settings: dict[str, Any]) -> None:
        self.decoder, self.settings = decoder, settings

    def __call__(self, logits: Any) -> list:
        s = self.settings
        return self.decoder._decode_beams_mp_safe(
            logits, s["beam_width"], s["beam_prune_logp"], s["token_min_logp"], s["hotwords"],
            s["hotword_weight"], nbest=s["nbest"])

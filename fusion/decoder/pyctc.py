"""pyctcdecode interoperability, both ways.

* :class:`FusionLanguageModel` makes our scorers (n-gram, neural LM, word bonus,
  hotwords, lexicon, with their weights) a pyctcdecode language model, so pipelines built
  on pyctcdecode (e.g. Hugging Face ``Wav2Vec2ProcessorWithLM``) can use them.
* :class:`PyctcdecodeBackend` runs pyctcdecode's own search as a first-pass decoder that
  returns our result types, selectable with ``fusion decode --decoder pyctcdecode``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from pyctcdecode import Alphabet, BeamSearchDecoderCTC
from pyctcdecode.language_model import AbstractLanguageModel

from fusion.core.defaults import BEAM_SIZE
from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from fusion.core.types import DecodeResult, Hypothesis, WordSpan
from fusion.decoder.scorers import WordScorer, check_weights

__all__ = ["FusionLanguageModel", "PyctcdecodeBackend", "pyctcdecode_labels"]


class FusionLanguageModel(AbstractLanguageModel):
    """Our weighted word scorers behind pyctcdecode's language-model interface.

    pyctcdecode adds what :meth:`score` returns to its acoustic log-probabilities, so the
    weights are applied here: ``sum(weights[s.name] * s.score_word(...))``.
    """

    def __init__(self, scorers: Sequence[WordScorer], weights: Mapping[str, float]) -> None:
        check_weights([s.name for s in scorers], weights, where="pyctcdecode language model")
        self.scorers = tuple(scorers)
        self.weights = tuple(float(weights[s.name]) for s in scorers)
        self._start = tuple(s.start() for s in self.scorers)

    @property
    def order(self) -> int:
        return max((getattr(getattr(s, "lm", None), "order", 1) for s in self.scorers), default=1)

    def get_start_state(self) -> tuple[Hashable, ...]:  # type: ignore[override]
        return self._start

    def score_partial_token(self, partial_token: str) -> float:
        return sum(w * s.partial_score(st, partial_token)
                   for w, s, st in zip(self.weights, self.scorers, self._start))

    def score(self, prev_state: tuple, word: str,  # type: ignore[override]
              is_last_word: bool = False) -> tuple[float, tuple]:
        total, states = 0.0, []
        for w, s, st in zip(self.weights, self.scorers, prev_state):
            st, value = s.score_word(st, word)
            if is_last_word:
                value += s.finish(st)
            total += w * value
            states.append(st)
        return total, tuple(states)


def pyctcdecode_labels(table: TokenTable) -> list[str]:
    """pyctcdecode's labels for a ``separate`` table: blank ``""``, boundary ``" "``."""
    if table.boundary_style != "separate":
        raise ValueError("the pyctcdecode backend needs a character table with a separate "
                         "word-boundary unit")
    return ["" if i == table.blank_id else " " if i == table.boundary_id else tok
            for i, tok in enumerate(table.tokens)]


class PyctcdecodeBackend:
    """pyctcdecode's beam search returning our :class:`~fusion.core.types.DecodeResult`.

    Args:
        table: the posteriors' token table (``separate`` style).
        language_model: any pyctcdecode language model (e.g. :class:`FusionLanguageModel`
            or pyctcdecode's own KenLM ``LanguageModel``), or ``None``.
        beam_size, nbest: as in :class:`~fusion.decoder.options.SearchOptions`.
        beam_prune_logp, token_min_logp: pyctcdecode's pruning settings.
    """

    def __init__(self, table: TokenTable, language_model: AbstractLanguageModel | None = None,
                 *, beam_size: int = BEAM_SIZE, nbest: int = 1, beam_prune_logp: float = -10.0,
                 token_min_logp: float = -5.0) -> None:
        self.table = table
        alphabet = Alphabet(pyctcdecode_labels(table), is_bpe=False)
        self._decoder = BeamSearchDecoderCTC(alphabet, language_model)
        self.beam_size, self.nbest = beam_size, nbest
        self.beam_prune_logp, self.token_min_logp = beam_prune_logp, token_min_logp

    def decode(self, posteriors: Posteriors) -> DecodeResult:
        lp = np.asarray(posteriors.log_probs)
        beams = self._decoder.decode_beams(
            lp, beam_width=self.beam_size, beam_prune_logp=self.beam_prune_logp,
            token_min_logp=self.token_min_logp)
        nbest = []
        shift = posteriors.frame_shift
        for _text, _state, text_frames, logit_score, combined in beams[: self.nbest]:
            words = tuple(WordSpan(word, start * shift, end * shift)
                          for word, (start, end) in text_frames)
            # pyctcdecode calls its combined score "lm_score"; "logit_score" is acoustic
            nbest.append(Hypothesis(text=" ".join(w.word for w in words), score=float(combined),
                                    scores={"acoustic": float(logit_score)}, words=words))
        return DecodeResult(posteriors.utt_id, tuple(nbest), posteriors.frame_shift,
                            posteriors.duration)

    def decode_batch(self, batch: Sequence[Posteriors]) -> list[DecodeResult]:
        return [self.decode(p) for p in batch]

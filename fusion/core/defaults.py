"""Every default of the decoding pipeline, in one place.

:class:`fusion.pipeline.config.DecodeConfig` takes its defaults from here, and
:func:`fusion.pipeline.build.build_decoder` turns such a config into a decoder; the command
line, tuning, batch runs, the compatibility adapters and the benchmarks all go through
those two, so changing a value here changes it everywhere. This module imports nothing of
ours (it is the bottom of the pipeline's layers).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

__all__ = ["ACOUSTIC", "BEAM_SIZE", "DECODERS", "DEFAULT_AM", "DEFAULT_LM", "DEFAULT_WEIGHTS",
           "EMBEDDED_ALIGN", "HOTWORDS", "LEXICON", "LM", "NO_LM", "OOV", "WORD_BONUS"]

#: the score names (and weight keys) of the pipeline's scorers (:mod:`fusion.decoder.scorers`)
ACOUSTIC = "acoustic"  # the posteriors' own log-probability; weight 1 unless given
LM = "lm"  # a word n-gram (:class:`fusion.decoder.scorers.LMScorer`)
WORD_BONUS = "word_bonus"  # +1 per word (:class:`fusion.decoder.scorers.WordBonus`)
LEXICON = "lexicon"  # a word list the output keeps to (:class:`fusion.decoder.scorers.LexiconScorer`)
HOTWORDS = "hotwords"  # phrases to bias towards (:class:`fusion.decoder.scorers.HotwordScorer`)
#: the unknown-word penalty: a :class:`~fusion.decoder.scorers.LexiconScorer` over the LM's words,
#: -1 per word outside them; its weight is the penalty (pyctcdecode's ``unk_score_offset``)
OOV = "oov"

#: the default word n-gram of beam search: CMU Sphinx's general-English 3-gram, chosen on the
#: dev sets (``lm/models/cmusphinx-3gram/MODEL_CARD.md``)
DEFAULT_LM = Path(__file__).resolve().parents[2] / "lm" / "models" / "cmusphinx-3gram" / "model.bin"
#: the embedded acoustic model (``fusion/models/am-default/MODEL_CARD.md``)
DEFAULT_AM = Path(__file__).resolve().parents[1] / "models" / "am-default" / "model.pt"
#: its alignment files (``benchmarks/bench_align.py --export``)
EMBEDDED_ALIGN = DEFAULT_AM.parent / "align"
#: what ``--lm`` and ``[lm] path`` say for "decode without an LM"
NO_LM = "none"
#: the weight of each scorer in use that the config gives none. lm and word_bonus:
#: ``fusion tune`` on the real dev sets (embedded acoustic model, default LM, beam 32),
#: rounded to the grid point beside the best
DEFAULT_WEIGHTS = MappingProxyType({LEXICON: 1.0, LM: 0.6, WORD_BONUS: 1.5, HOTWORDS: 2.0})

#: beams kept after each frame (``fusion.decoder.options.SearchOptions.beam_size`` must agree:
#: ``tests/test_pipeline.py`` checks it)
BEAM_SIZE = 32

#: the first-pass searches :func:`fusion.pipeline.build.build_decoder` builds: ours (C++ or
#: Python, :class:`fusion.decoder.search.BeamSearchDecoder`) or pyctcdecode's
DECODERS = ("beam", "pyctcdecode")

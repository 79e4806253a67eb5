"""The search: CTC beam search with shallow fusion, and the scorers it fuses.

:mod:`~fusion.decoder.search` (:class:`~fusion.decoder.search.BeamSearchDecoder`, over the
compiled search in ``csrc/``), :mod:`~fusion.decoder.scorers` (word n-gram, word bonus,
lexicon, hotwords, and the rule that weights name exactly the scores),
:mod:`~fusion.decoder.options` (:class:`~fusion.decoder.options.SearchOptions`),
:mod:`~fusion.decoder.greedy` (best path, NumPy only) and :mod:`~fusion.decoder.pyctc`
(pyctcdecode's search with our scorers). Imports :mod:`fusion.core` and ``lm.base`` only;
never torch.
"""

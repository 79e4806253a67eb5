"""The lowest layer: what every other part of asrfuse (and ``lm/``, ``hmm/``) builds on.

Token tables (:mod:`~fusion.core.tokens`), posteriors files (:mod:`~fusion.core.posteriors`,
streamed ``.npz`` reading in :mod:`~fusion.core.npzindex`), manifests and safe writes
(:mod:`~fusion.core.manifest`), results (:mod:`~fusion.core.types`), text normalisation and
error rates (:mod:`~fusion.core.text`, :mod:`~fusion.core.metrics`), word-timing formats
(:mod:`~fusion.core.formats`), simulated posteriors (:mod:`~fusion.core.simulate`) and every
default of the decoding pipeline (:mod:`~fusion.core.defaults`). It imports nothing else
of ours.
"""

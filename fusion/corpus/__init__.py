"""Synthetic English speech corpus: text sources, voices, synthesis, augmentation, builder.

Modules: :mod:`~fusion.corpus.sources` (sentences from Debian text packages, leakage
filter), :mod:`~fusion.corpus.voices` (voice catalogue), :mod:`~fusion.corpus.synth`
(one utterance), :mod:`~fusion.corpus.augment` (torchaudio augmentation),
:mod:`~fusion.corpus.build` (splits, manifests, parallel resumable build) and
:mod:`~fusion.cli.corpus` (the ``fusion data`` command).
"""

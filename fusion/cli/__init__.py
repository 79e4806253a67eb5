"""The command line, on top of everything else (nothing outside it imports it).

``fusion`` is :func:`fusion.cli.main.main`; each group of subcommands has its module:
:mod:`~fusion.cli.am` (training, posteriors), :mod:`~fusion.cli.corpus` (``fusion data``),
:mod:`~fusion.cli.lm` and :mod:`~fusion.cli.nlm` (language models), :mod:`~fusion.cli.tune`,
:mod:`~fusion.cli.transcribe` and :mod:`~fusion.rescoring.report`.
"""

"""The decoding pipeline as data, and the one factory that builds it.

:class:`~fusion.pipeline.config.DecodeConfig` (TOML/JSON, defaults from
:mod:`fusion.core.defaults`), :func:`~fusion.pipeline.build.build_decoder` (the decoder a
config describes: used by the command line, tuning, batch runs, the compatibility adapters
and the benchmarks) and :mod:`~fusion.pipeline.transcribe` (audio of any length in,
transcripts with word times out). Nothing here sees argparse.
"""

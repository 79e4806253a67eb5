"""asrfuse: a model-fusion decoding engine for CTC speech recognition.

The public names, the way in for decoding your own posteriors::

    from fusion import DecodeConfig, PosteriorsReader, build_decoder

    with PosteriorsReader("dev.npz") as reader:
        decoder = build_decoder(DecodeConfig(), reader.token_table)
        for posteriors in reader:
            print(decoder.decode(posteriors).best.text)

Each name is imported from its module on first use (PEP 562), so ``import fusion`` stays
light: no numpy, no torch, no compiled search until a name that needs them is used (and
no package metadata until ``__version__`` is read).
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms)

#: public name -> the module that defines it (the one place it lives)
_EXPORTS: dict[str, str] = {
    # the factory and its configuration
    "DecodeConfig": "fusion.pipeline.config",
    "ConfigError": "fusion.pipeline.config",
    "build_decoder": "fusion.pipeline.build",
    # the search
    "BeamSearchDecoder": "fusion.decoder.search",
    "SearchOptions": "fusion.decoder.options",
    "greedy_decode": "fusion.decoder.greedy",
    "RescoringDecoder": "fusion.rescoring.rescore",
    # scorers: named knowledge sources with a weight each
    "WordScorer": "fusion.decoder.scorers",
    "LMScorer": "fusion.decoder.scorers",
    "LexiconScorer": "fusion.decoder.scorers",
    "HotwordScorer": "fusion.decoder.scorers",
    "WordBonus": "fusion.decoder.scorers",
    # the lowest layer: tokens, posteriors, results, text, scoring
    "TokenTable": "fusion.core.tokens",
    "TokenTableError": "fusion.core.tokens",
    "character_table": "fusion.core.tokens",
    "Posteriors": "fusion.core.posteriors",
    "PosteriorsError": "fusion.core.posteriors",
    "PosteriorsReader": "fusion.core.posteriors",
    "PosteriorsWriter": "fusion.core.posteriors",
    "DecodeResult": "fusion.core.types",
    "Hypothesis": "fusion.core.types",
    "TokenSpan": "fusion.core.types",
    "WordSpan": "fusion.core.types",
    "normalize_text": "fusion.core.text",
    "score_corpus": "fusion.core.metrics",
    "word_errors": "fusion.core.metrics",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # what static checkers and editors see; at run time, __getattr__
    from typing import Any

    from fusion.core.metrics import score_corpus, word_errors  # noqa: F401
    from fusion.core.posteriors import (Posteriors, PosteriorsError, PosteriorsReader,  # noqa: F401
                                        PosteriorsWriter)
    from fusion.core.text import normalize_text  # noqa: F401
    from fusion.core.tokens import TokenTable, TokenTableError, character_table  # noqa: F401
    from fusion.core.types import DecodeResult, Hypothesis, TokenSpan, WordSpan  # noqa: F401
    from fusion.decoder.greedy import greedy_decode  # noqa: F401
    from fusion.decoder.options import SearchOptions  # noqa: F401
    from fusion.decoder.scorers import (HotwordScorer, LexiconScorer, LMScorer, WordBonus,  # noqa: F401
                                        WordScorer)
    from fusion.decoder.search import BeamSearchDecoder  # noqa: F401
    from fusion.pipeline.build import build_decoder  # noqa: F401
    from fusion.pipeline.config import ConfigError, DecodeConfig  # noqa: F401
    from fusion.rescoring.rescore import RescoringDecoder  # noqa: F401


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asrfuse")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name == "__version__":
        value = globals()[name] = _version()
        return value
    module = _EXPORTS.get(name)
    if module is None:  # also how ``from fusion import submodule`` finds a submodule
        raise AttributeError(f"module 'fusion' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

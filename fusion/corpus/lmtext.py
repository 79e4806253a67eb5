"""The LM text corpus: the same Debian texts as the speech corpus, split the same way.

It lives with the speech corpus because it is built from the corpus's sources and split
by the corpus's rule; ``lm/`` (which imports only the engine's lowest layer) trains on
the text files it writes. ``fusion lm text`` (:mod:`fusion.cli.lm`) runs it.

Every sentence of the speech corpus's sources (:mod:`fusion.corpus.sources`) goes to one
LM split chosen by the speech corpus's own rule (:func:`fusion.corpus.build.sentence_split`,
a hash of the sentence): ``train`` sentences train the LM; ``dev`` and ``test`` sentences,
the pool the speech dev/test transcripts are drawn from, are the LM's held-out text. So
no dev/test transcript is ever LM training text, and LM perplexity is measured on the
kind of text the decoder meets. Sentences of the real-speech dev set are removed
everywhere (:class:`fusion.corpus.sources.LeakageFilter`), as is any sentence listed in
extra exclusion files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from fusion.core.manifest import atomic_write
from fusion.core.text import normalize_text
from fusion.corpus.build import sentence_split
from fusion.corpus.sources import (SOURCES, LeakageFilter, asrfuse_home, corpus_sentences,
                                   load_forbidden_sentences)

__all__ = ["LM_SPLITS", "build_lm_text", "default_lm_text_dir"]

LM_SPLITS = ("train", "dev", "test")


def default_lm_text_dir() -> Path:
    return asrfuse_home() / "lm" / "text"


def _read_lines(paths: Iterable[Path]) -> set[str]:
    out: set[str] = set()
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            out.update(normalize_text(line) for line in fh if line.strip())
    return out


def build_lm_text(
    out_dir: str | Path,
    *,
    sources: Sequence[str] = SOURCES,
    heldout_fraction: float = 0.04,
    exclude_files: Sequence[str | Path] = (),
    forbidden: Sequence[str] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Write ``train.txt``, ``dev.txt``, ``test.txt`` (one sentence a line) and ``lm-text.json``.

    Args:
        out_dir: output folder.
        sources: text sources (see :data:`fusion.corpus.sources.SOURCES`).
        heldout_fraction: the speech corpus's held-out share (its ``CorpusOptions``).
        exclude_files: text files whose sentences must not be LM training text (e.g. a
            speech corpus's ``text/heldout.txt`` built with other options).
        forbidden: sentences to remove everywhere; default: the real-speech dev set.
        cache_dir: where source sentences are cached (default: under ``$ASRFUSE_HOME``).

    Returns:
        The summary written to ``lm-text.json`` (sentences and words per split and source).
    """
    out_dir = Path(out_dir)
    leakage = LeakageFilter(load_forbidden_sentences() if forbidden is None else forbidden)
    excluded = _read_lines(Path(p) for p in exclude_files)
    splits: dict[str, list[str]] = {s: [] for s in LM_SPLITS}
    per_source: Counter[tuple[str, str]] = Counter()
    for source, sentence in corpus_sentences(sources, leakage=leakage, cache_dir=cache_dir):
        split = sentence_split(sentence, heldout_fraction)
        if split == "train" and sentence in excluded:
            continue
        splits[split].append(sentence)
        per_source[(split, source)] += 1
    if not splits["train"]:
        raise ValueError(f"no LM training sentences from sources {list(sources)}")
    for split, sentences in splits.items():
        with atomic_write(out_dir / f"{split}.txt") as fh:
            fh.writelines(s + "\n" for s in sentences)
    summary = {
        "sources": list(sources),
        "heldout_fraction": heldout_fraction,
        "excluded_files": [str(p) for p in exclude_files],
        "splits": {
            split: {
                "sentences": len(sentences),
                "words": sum(len(s.split()) for s in sentences),
                "per_source": {src: n for (sp, src), n in sorted(per_source.items()) if sp == split},
            }
            for split, sentences in splits.items()
        },
    }
    with atomic_write(out_dir / "lm-text.json") as fh:
        fh.write(json.dumps(summary, indent=1) + "\n")
    return summary

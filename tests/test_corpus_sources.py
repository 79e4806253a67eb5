"""Text sources: sentence splitting, cleaning, caching and leakage exclusion."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from fusion.core.manifest import ManifestError
from fusion.core.text import normalize_text
from fusion.corpus import sources as sources_module
from fusion.corpus.sources import (ALL_SOURCES, LeakageFilter, SentenceFilter, SourceUnavailableError,
                                   cache_path, clean_sentence, corpus_sentences, find_real_speech_manifest,
                                   load_forbidden_sentences, source_sentences, split_sentences)

NORMALISED = re.compile(r"^[a-z']+( [a-z']+)*$")


def test_split_sentences_keeps_titles_and_dialogue_together() -> None:
    text = (
        'Mr. Darcy bowed. "Yes!" cried Mrs. E. Bennet; "why not?" '
        "Then she left at 10 o'clock. Dr. Grant agreed."
    )
    assert split_sentences(text) == [
        "Mister Darcy bowed.",
        '"Yes!" cried Missus E. Bennet; "why not?',  # closing quotes go with the break
        "Then she left at 10 o'clock.",
        "Doctor Grant agreed.",
    ]


def test_split_sentences_splits_long_sentences_at_clauses() -> None:
    long = "one two three four five; six seven eight nine ten: eleven twelve."
    assert split_sentences(long) == [long]
    assert split_sentences(long, max_words=6) == [
        "one two three four five;",
        "six seven eight nine ten:",
        "eleven twelve.",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("It was the 3rd of May, 1811.", "it was the third of may eighteen eleven"),
        ("\u201cDon\u2019t,\u201d said she -- _quite_ sure.", "don't said she quite sure"),
        ("Jack & Jill went up.", "jack and jill went up"),
        ("CHAPTER ONE", None),  # a heading: no lowercase letter
        ("Chapter XII of the book", None),  # Roman numerals are read ambiguously
        ("It cost \u00a35 in all.", None),  # symbols a voice reads its own way
        ("Too short.", None),
        (" ".join(["word"] * 31), None),
    ],
)
def test_clean_sentence(raw: str, expected: str | None) -> None:
    assert clean_sentence(raw) == expected


def test_sentence_filter_bounds() -> None:
    f = SentenceFilter(min_words=2, max_words=3, max_chars=15)
    assert f.accepts("two words")
    assert not f.accepts("one")
    assert not f.accepts("one two three four")
    assert not f.accepts("abcdefgh ijklmnopq")
    with pytest.raises(ValueError, match="min_words"):
        SentenceFilter(min_words=5, max_words=2)


def test_leakage_filter_exact_and_substring() -> None:
    leak = LeakageFilter(["In 1813.", "the press yard", "the quick brown fox jumps"])
    assert leak("in eighteen thirteen")  # equal after normalisation
    assert not leak("born in eighteen thirteen")  # short ones only match whole sentences
    assert leak("The press yard")
    assert not leak("near the press yard")
    assert leak("and then the quick brown fox jumps over it")  # a long one inside
    assert leak("the quick brown fox jumps")
    assert not leak("the quick brown fox jumpsuit")  # on word boundaries only
    assert not leak("a quick brown fox jumps")
    assert leak.exclude(["a b c", "the press yard", "x the quick brown fox jumps"]) == ["a b c"]


def _write_manifest(path: Path, texts: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"u{i}", "audio": f"{i}.wav", "text": text}) + "\n")
    return path


def test_load_forbidden_sentences(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path / "m.jsonl", ["Hello World", "in 1813", "hello world"])
    assert load_forbidden_sentences(path) == ["hello world", "in eighteen thirteen"]
    with pytest.raises(ManifestError, match="missing.jsonl: cannot open"):
        load_forbidden_sentences(tmp_path / "missing.jsonl")


def test_real_speech_sentences_never_reach_training_text(tmp_path: Path) -> None:
    """Sentences equal to, or containing a long, real-speech sentence are dropped."""
    manifest = find_real_speech_manifest()
    if manifest is None:
        manifest = _write_manifest(
            tmp_path / "real.jsonl", ["in eighteen thirteen", "has never been surpassed"]
        )
    forbidden = load_forbidden_sentences(manifest)
    long = [s for s in forbidden if len(s.split()) >= 4]
    assert long, "the real-speech set has sentences of four words or more"
    cache = tmp_path / "cache"
    cache.mkdir()
    clean = ["a perfectly ordinary sentence", "another harmless one here"]
    leaking = [forbidden[0], f"and so {long[0]} they said", long[-1]]
    # A cache file stands in for the source.
    cache_path("austen", cache_dir=cache).write_text(
        "\n".join(clean + leaking) + "\n", encoding="utf-8"
    )
    pairs = corpus_sentences(("austen",), leakage=LeakageFilter(forbidden), cache_dir=cache)
    assert [s for _, s in pairs] == clean


def test_corpus_sentences_dedupes_across_sources(tmp_path: Path) -> None:
    cache_path("kjv", cache_dir=tmp_path).write_text("a b c\nd e f\n", encoding="utf-8")
    cache_path("web", cache_dir=tmp_path).write_text("d e f\ng h i\n", encoding="utf-8")
    pairs = corpus_sentences(("kjv", "web"), leakage=LeakageFilter([]), cache_dir=tmp_path)
    assert pairs == [("kjv", "a b c"), ("kjv", "d e f"), ("web", "g h i")]


def test_unknown_source() -> None:
    with pytest.raises(ValueError, match="unknown text source 'nope'"):
        source_sentences("nope")


@pytest.mark.parametrize("source", ALL_SOURCES)
def test_real_source_extraction_and_cache(source: str, tmp_path: Path) -> None:
    """Each installed Debian text source yields many clean, normalised sentences."""
    try:
        sentences = source_sentences(source, cache_dir=tmp_path)
    except SourceUnavailableError as exc:
        pytest.skip(f"Debian text package not installed: {exc}")
    except ImportError as exc:
        pytest.skip(f"optional Python package missing: {exc}")
    assert len(sentences) > 10_000
    assert len(set(sentences)) == len(sentences)
    for s in sentences[:: max(1, len(sentences) // 500)]:
        assert NORMALISED.match(s), s
        assert normalize_text(s) == s
        assert 3 <= len(s.split()) <= 30
    cached = list(tmp_path.glob(f"{source}-*.txt"))
    assert cached == [cache_path(source, cache_dir=tmp_path)]
    assert source_sentences(source, cache_dir=tmp_path) == sentences  # read back from cache


# What diatheke prints for a commentary: a comment once per verse it covers, its
# continuation lines, verse-range headings, references and an attribution.
FAKE_COMMENTARY = """\
Genesis 1:1:
Genesis 1:2:  * Verses 2-3 *    God said, Let there be light; and there was light. Compare \
what the apostle says in 1Jo 5:20.
Genesis 1:3:  * Verses 2-3 *    God said, Let there be light; and there was light. Compare \
what the apostle says in 1Jo 5:20.
The darkness of the soul is lifted by grace alone. \u2014* Matthew Henry. *
Genesis 1:4: The Hebrew word \u05d0\u05d5\u05e8 is here rendered light by the translators.
Genesis 1:5: Those who by sin were darkness, by grace become light in the Lord!
(MHCC)
"""


def test_commentary_source_from_diatheke(tmp_path: Path, monkeypatch) -> None:
    """Each comment once, headings and attributions gone, no references or foreign script."""
    bin_dir, mods = tmp_path / "bin", tmp_path / "mods.d"
    bin_dir.mkdir()
    mods.mkdir()
    (bin_dir / "diatheke").write_text(
        "#!/bin/sh\n"
        'case "$*" in *"-b MHCC -f plain -k Gen 1:1-Rev 22:21"*) ;; *) exit 3 ;; esac\n'
        f"cat {tmp_path / 'out.txt'}\n")
    (bin_dir / "diatheke").chmod(stat.S_IRWXU)
    (tmp_path / "out.txt").write_text(FAKE_COMMENTARY, encoding="utf-8")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(sources_module, "SWORD_MODS_DIR", mods)
    with pytest.raises(SourceUnavailableError, match="install the Debian package sword-comm-mhcc"):
        source_sentences("mhcc", cache_dir=tmp_path)
    (mods / "mhcc.conf").write_text("[MHCC]\n")
    assert source_sentences("mhcc", cache_dir=tmp_path) == [
        "god said let there be light and there was light",
        "the darkness of the soul is lifted by grace alone",  # "Matthew Henry": too short
        "those who by sin were darkness by grace become light in the lord",
    ]  # the reference and the Hebrew sentences are left out

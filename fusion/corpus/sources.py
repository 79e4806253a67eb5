"""English sentences from texts that ship in Debian packages.

Six sources, each read from its installed package:

========== ===================================================== =======================
name       text                                                  Debian package
========== ===================================================== =======================
austen     Jane Austen's six novels (R data, read with ``rdata``) ``r-cran-janeaustenr``
kjv        the King James Bible (its ``bible`` program)           ``bible-kjv``
web        the World English Bible (SWORD module, ``diatheke``)   ``sword-text-web``,
                                                                  ``diatheke``
wordnet    WordNet's quoted example sentences                     ``wordnet-base``
mhcc       Matthew Henry's Concise Commentary (SWORD, ``diatheke``) ``sword-comm-mhcc``
tdavid     C. H. Spurgeon's Treasury of David (SWORD, ``diatheke``) ``sword-comm-tdavid``
========== ===================================================== =======================

The first four are the default (:data:`SOURCES`: every corpus and LM built so far). The
two commentaries (:data:`EXTRA_SOURCES`: English prose of 1706 and 1869-85; 34,259 and
94,520 sentences kept) are opt-in: they supply new training sentences once the default
ones are used up, without changing the dev and test sets that the default sources define.

:func:`source_sentences` splits a source into sentences, normalises each with
:func:`fusion.core.text.normalize_text`, keeps those of sensible length and dedupes; the result
is cached as a text file, one sentence a line. :func:`corpus_sentences` merges sources and
drops every sentence that would leak the real-speech evaluation set
(:class:`LeakageFilter`). The same sentences feed the speech corpus and the LM text.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fusion.core.manifest import atomic_write, iter_jsonl
from fusion.core.text import normalize_text

__all__ = [
    "ALL_SOURCES",
    "EXTRA_SOURCES",
    "SOURCES",
    "LeakageFilter",
    "SentenceFilter",
    "SourceUnavailableError",
    "asrfuse_home",
    "cache_path",
    "clean_sentence",
    "corpus_sentences",
    "extract_sentences",
    "find_real_speech_manifest",
    "load_forbidden_sentences",
    "source_sentences",
    "split_sentences",
]

SOURCES: tuple[str, ...] = ("austen", "kjv", "web", "wordnet")
EXTRA_SOURCES: tuple[str, ...] = ("mhcc", "tdavid")
ALL_SOURCES: tuple[str, ...] = SOURCES + EXTRA_SOURCES

# Bump when extraction or cleaning changes, so cached sentence files are rebuilt.
_EXTRACT_VERSION = 1

AUSTEN_DATA = Path("/usr/lib/R/site-library/janeaustenr/data")
WORDNET_DIR = Path("/usr/share/wordnet")
WEB_MODULE = "engWEB2015eb"
SWORD_MODS_DIR = Path("/usr/share/sword/mods.d")  # the installed SWORD modules' .conf files


class SourceUnavailableError(RuntimeError):
    """A text source whose Debian package (file or program) is not installed."""


def asrfuse_home() -> Path:
    """The project's data folder: ``$ASRFUSE_HOME``, by default ``~/.cache/asrfuse``."""
    return Path(os.environ.get("ASRFUSE_HOME") or Path.home() / ".cache" / "asrfuse")


@dataclass(frozen=True)
class SentenceFilter:
    """Which normalised sentences to keep: word count and character bounds."""

    min_words: int = 3
    max_words: int = 30
    max_chars: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(
                f"SentenceFilter: need 1 <= min_words <= max_words, got "
                f"{self.min_words} and {self.max_words}"
            )
        if self.max_chars < 1:
            raise ValueError(f"SentenceFilter: max_chars must be >= 1, got {self.max_chars}")

    def accepts(self, sentence: str) -> bool:
        """Whether a normalised sentence is within the bounds."""
        return (
            self.min_words <= sentence.count(" ") + 1 <= self.max_words
            and len(sentence) <= self.max_chars
        )

    def key(self) -> str:
        return f"w{self.min_words}-{self.max_words}-c{self.max_chars}"


# --- splitting and cleaning -------------------------------------------------------------

# Abbreviations spelled the way LibriSpeech transcripts spell them.
_ABBREVIATIONS = {
    "Mr": "Mister", "Mrs": "Missus", "Dr": "Doctor", "St": "Saint", "Esq": "Esquire",
    "Col": "Colonel", "Capt": "Captain", "Gen": "General", "Rev": "Reverend",
}  # fmt: skip
_ABBREV = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.")
# A sentence ends at . ! or ? (with any closing quotes or brackets) before white space and
# a capital letter or digit, except after a lone initial ("E. Ferrars").
_BOUNDARY = re.compile(
    r"(?<![\s(][A-Z]\.)(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(]*[A-Z0-9])"
)
_CLAUSE = re.compile(r"(?<=[;:])\s+")
_ROMAN = re.compile(r"\b[IVXLC]{2,}\b")
_SYMBOLS = re.compile(r"[£$%*#@=<>{}\[\]|/\\~^]")


def split_sentences(text: str, *, max_words: int | None = None) -> list[str]:
    """Split running text into sentences at ``.``, ``!`` and ``?``.

    Common titles (``Mr.``, ``Mrs.``, ``Dr.`` ...) are spelled out first so that their
    full stops do not end sentences. A sentence longer than ``max_words`` words is split
    again at ``;`` and ``:`` into clauses.
    """
    text = _ABBREV.sub(lambda m: _ABBREVIATIONS[m.group(1)], " ".join(text.split()))
    out: list[str] = []
    for sentence in _BOUNDARY.split(text):
        if max_words is not None and len(sentence.split()) > max_words:
            out.extend(_CLAUSE.split(sentence))
        else:
            out.append(sentence)
    return [s.strip() for s in out if s.strip()]


def clean_sentence(raw: str, sentence_filter: SentenceFilter = SentenceFilter()) -> str | None:
    """Normalise one raw sentence, or return ``None`` if it should not be spoken.

    Rejected: headings (no lowercase letter), Roman numerals (``CHAPTER XII``, read
    ambiguously), symbols a TTS voice reads in its own way (``£``, ``%`` ...), and
    sentences outside ``sentence_filter``'s bounds.
    """
    if not re.search(r"[a-z]", raw) or _ROMAN.search(raw) or _SYMBOLS.search(raw):
        return None
    sentence = normalize_text(raw.replace("&", " and "))
    return sentence if sentence and sentence_filter.accepts(sentence) else None


# --- the sources --------------------------------------------------------------------------


def _austen_passages() -> Iterator[str]:
    """Paragraphs of the six novels, from janeaustenr's lazy-load R database."""
    import rdata  # optional dependency (the ``corpus`` extra)

    index_path, db_path = AUSTEN_DATA / "Rdata.rdx", AUSTEN_DATA / "Rdata.rdb"
    if not index_path.is_file() or not db_path.is_file():
        raise SourceUnavailableError(
            f"austen: {index_path} not found; install the Debian package r-cran-janeaustenr"
        )
    index = rdata.read_rds(index_path)
    blob = db_path.read_bytes()
    for name, (offset, length) in index["variables"].items():
        # Each object: a 4-byte length, then a zlib-compressed serialised R object.
        chunk = blob[int(offset) : int(offset) + int(length)]
        try:
            parsed = rdata.parser.parse_data(zlib.decompress(chunk[4:]), extension=".rds")
        except (zlib.error, ValueError) as exc:
            raise SourceUnavailableError(f"austen: {db_path}: cannot read {name!r}: {exc}")
        lines = [str(line) for line in rdata.conversion.convert(parsed)]
        paragraph: list[str] = []
        for line in [*lines, ""]:
            if line.strip():
                paragraph.append(line.strip())
            elif paragraph:
                yield " ".join(paragraph)
                paragraph = []


def _run(source: str, cmd: Sequence[str], package: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise SourceUnavailableError(
            f"{source}: program {cmd[0]!r} not found; install the Debian package {package}"
        )
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SourceUnavailableError(
            f"{source}: {' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.stdout


def _kjv_passages() -> Iterator[str]:
    """Verses of the King James Bible, from ``bible -f`` (one ``Ge1:1 text`` a line)."""
    text = _run("kjv", ["bible", "-f", "gen1:1-rev22:21"], "bible-kjv")
    for line in text.splitlines():
        _ref, _, verse = line.partition(" ")
        if verse.strip():
            yield verse


_OSIS_DROP = re.compile(r"<(title|note)\b[^>]*>.*?</\1>", re.DOTALL)
_OSIS_TAG = re.compile(r"<[^>]+>")
# "Genesis 1:1: text"; diatheke repeats a psalm's title as plain text before the reference
# of each later verse line, so the verse is whatever follows the reference.
_WEB_REF = re.compile(r"\b\d+:\d+: ")


def _web_passages() -> Iterator[str]:
    """Verses of the World English Bible, from ``diatheke``'s OSIS output."""
    if not (SWORD_MODS_DIR / f"{WEB_MODULE}.conf").is_file():
        raise SourceUnavailableError(
            f"web: SWORD module {WEB_MODULE} not found; install the Debian package sword-text-web"
        )
    cmd = ["diatheke", "-b", WEB_MODULE, "-f", "osis", "-k", "Gen 1:1-Rev 22:21"]
    text = _run("web", cmd, "diatheke")
    # Word elements come glued together (<w>God</w><w>created</w>): part them first.
    text = _OSIS_TAG.sub("", _OSIS_DROP.sub(" ", text.replace("</w><w", "</w> <w")))
    for line in text.splitlines():
        ref = _WEB_REF.search(line)
        if ref and line[ref.end() :].strip():
            yield line[ref.end() :]


# SWORD commentary modules: source -> (module, the keys it annotates, Debian package)
COMMENTARIES: dict[str, tuple[str, str, str]] = {
    "mhcc": ("MHCC", "Gen 1:1-Rev 22:21", "sword-comm-mhcc"),
    "tdavid": ("TDavid", "Ps 1:1-Ps 150:6", "sword-comm-tdavid"),
}
_COMMENTARY_REF = re.compile(r"^(?:[1-3] )?[A-Z][A-Za-z ]*? \d+:\d+: ?")
_COMMENTARY_HEADING = re.compile(r"\*\s*(?:Verses?|Ver\.)\s[\d\s,-]+\*")
# asterisks mark headings and italics; dashes set off speakers' names ("—* Matthew Henry. *")
_COMMENTARY_MARKS = str.maketrans({"*": " ", "\u2014": " ", "\u2013": " "})
_TYPOGRAPHIC = frozenset("\u2018\u2019\u201c\u201d\u2026")


def _commentary_passages(source: str) -> Iterator[str]:
    """Paragraphs of a SWORD commentary, from ``diatheke``'s plain output.

    diatheke prints a comment once for every verse it covers ("Genesis 1:2: text", the
    same text again for 1:3 ...): each paragraph is kept once. Verse-range headings
    (``* Verses 3-5 *``) are dropped; asterisks and dashes become spaces.
    """
    module, key, package = COMMENTARIES[source]
    if not (SWORD_MODS_DIR / f"{module.lower()}.conf").is_file():
        raise SourceUnavailableError(
            f"{source}: SWORD module {module} not found; install the Debian package {package}"
        )
    text = _run(source, ["diatheke", "-b", module, "-f", "plain", "-k", key], "diatheke")
    seen: set[str] = set()
    for line in text.splitlines():
        ref = _COMMENTARY_REF.match(line)
        body = line[ref.end():] if ref else line
        if body.strip() and body not in seen:
            seen.add(body)
            yield _COMMENTARY_HEADING.sub(" ", body).translate(_COMMENTARY_MARKS)


def _commentary_sentence_ok(raw: str) -> bool:
    """No digits (verse references, "ver. 3", dates of the quoted authors) and nothing
    beyond ASCII but typographic quotes (Hebrew, Greek, Latin-1 names)."""
    return not any(c.isdigit() or (ord(c) > 127 and c not in _TYPOGRAPHIC) for c in raw)


_EXAMPLE = re.compile(r'"([^"]+)"')


def _wordnet_passages() -> Iterator[str]:
    """The quoted example sentences in WordNet's ``data.*`` glosses."""
    files = sorted(WORDNET_DIR.glob("data.*"))
    if not files:
        raise SourceUnavailableError(
            f"wordnet: no data.* files in {WORDNET_DIR}; install the Debian package wordnet-base"
        )
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # the licence header
                    continue
                _, _, gloss = line.partition(" | ")
                for example in _EXAMPLE.findall(gloss):
                    yield example if example.rstrip()[-1:] in ".!?" else example + "."


PASSAGES: dict[str, Callable[[], Iterator[str]]] = {
    "austen": _austen_passages,
    "kjv": _kjv_passages,
    "web": _web_passages,
    "wordnet": _wordnet_passages,
    **{name: partial(_commentary_passages, name) for name in COMMENTARIES},
}
# Per source, a test on each raw sentence before it is cleaned
RAW_FILTERS: dict[str, Callable[[str], bool]] = {name: _commentary_sentence_ok for name in COMMENTARIES}


def _check_source(source: str) -> None:
    if source not in PASSAGES:
        raise ValueError(f"unknown text source {source!r}; choose from {', '.join(ALL_SOURCES)}")


def extract_sentences(source: str, sentence_filter: SentenceFilter = SentenceFilter()) -> list[str]:
    """Read a source, split, clean and dedupe its sentences (first occurrence kept).

    Raises:
        SourceUnavailableError: the source's Debian package is missing.
    """
    _check_source(source)
    seen: dict[str, None] = {}
    raw_ok = RAW_FILTERS.get(source, lambda raw: True)
    for passage in PASSAGES[source]():
        for raw in split_sentences(passage, max_words=sentence_filter.max_words):
            sentence = clean_sentence(raw, sentence_filter) if raw_ok(raw) else None
            if sentence is not None:
                seen.setdefault(sentence)
    return list(seen)


def cache_path(
    source: str, sentence_filter: SentenceFilter = SentenceFilter(), cache_dir: Path | None = None
) -> Path:
    """Where :func:`source_sentences` caches a source: ``cache_dir`` (default
    ``asrfuse_home() / "text"``), a name that records extraction version and filter."""
    _check_source(source)
    cache_dir = asrfuse_home() / "text" if cache_dir is None else Path(cache_dir)
    return cache_dir / f"{source}-v{_EXTRACT_VERSION}-{sentence_filter.key()}.txt"


def source_sentences(
    source: str,
    *,
    sentence_filter: SentenceFilter = SentenceFilter(),
    cache_dir: Path | None = None,
    refresh: bool = False,
) -> list[str]:
    """The normalised sentences of one source, cached as a text file (:func:`cache_path`:
    a change of extraction version or filter rebuilds it)."""
    path = cache_path(source, sentence_filter, cache_dir)
    if path.is_file() and not refresh:
        return path.read_text(encoding="utf-8").splitlines()
    sentences = extract_sentences(source, sentence_filter)
    with atomic_write(path) as fh:
        fh.writelines(s + "\n" for s in sentences)
    return sentences


# --- leakage of the real-speech evaluation set --------------------------------------------

REAL_SPEECH_RELATIVE = Path("shared/data/real-speech/manifest.jsonl")


def find_real_speech_manifest() -> Path | None:
    """The real-speech manifest: ``$ASRFUSE_REAL_SPEECH``, else ``shared/`` in or beside
    the repository; ``None`` when there is none."""
    env = os.environ.get("ASRFUSE_REAL_SPEECH")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for base in (repo, repo.parent):
        if (base / REAL_SPEECH_RELATIVE).is_file():
            return base / REAL_SPEECH_RELATIVE
    return None


def load_forbidden_sentences(manifest: Path | None = None) -> list[str]:
    """Normalised ``text`` of every line of a manifest (the real-speech one by default).

    Raises:
        FileNotFoundError: no manifest given and none found.
    """
    path = manifest if manifest is not None else find_real_speech_manifest()
    if path is None:
        raise FileNotFoundError(
            f"real-speech manifest not found (looked for {REAL_SPEECH_RELATIVE} in and beside "
            "the repository); set ASRFUSE_REAL_SPEECH to its path"
        )
    texts = (obj.get("text") for _, obj in iter_jsonl(path))
    return sorted({normalize_text(t) for t in texts if isinstance(t, str) and t.strip()})


class LeakageFilter:
    """Tells whether a sentence would leak forbidden (evaluation) sentences into training.

    A sentence leaks if it equals a forbidden sentence, or contains, on word boundaries,
    a forbidden sentence of at least ``min_substring_words`` words. Sentences are compared
    after :func:`normalize_text`.
    """

    def __init__(self, forbidden: Iterable[str], *, min_substring_words: int = 4) -> None:
        normalised = {normalize_text(s) for s in forbidden} - {""}
        self.exact = frozenset(normalised)
        long = sorted(
            (s for s in normalised if len(s.split()) >= min_substring_words), key=len, reverse=True
        )
        self._contains = (
            re.compile(r"(?:^| )(?:" + "|".join(map(re.escape, long)) + r")(?: |$)")
            if long
            else None
        )

    def __call__(self, sentence: str) -> bool:
        """True if ``sentence`` must not be used for training."""
        sentence = normalize_text(sentence)
        return sentence in self.exact or bool(
            self._contains is not None and self._contains.search(sentence)
        )

    def exclude(self, sentences: Iterable[str]) -> list[str]:
        """The sentences that do not leak, in their order."""
        return [s for s in sentences if not self(s)]


def corpus_sentences(
    sources: Sequence[str] = SOURCES,
    *,
    leakage: LeakageFilter,
    sentence_filter: SentenceFilter = SentenceFilter(),
    cache_dir: Path | None = None,
) -> list[tuple[str, str]]:
    """``(source, sentence)`` pairs from several sources, deduped across them (the first
    source listed keeps a shared sentence) and with every leaking sentence removed."""
    seen: dict[str, str] = {}
    for source in sources:
        for sentence in source_sentences(
            source, sentence_filter=sentence_filter, cache_dir=cache_dir
        ):
            seen.setdefault(sentence, source)
    return [(src, s) for s, src in seen.items() if not leakage(s)]

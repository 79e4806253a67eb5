"""Synthetic accents: pronunciation rules applied to espeak-ng's phonemes.

A held-out voice says some common words its own way, and a model that spells what it hears
spells them wrong ("de" for "the"). Each rule here is a feature that many accents of English
share (J. C. Wells, *Accents of English*, 1982; E. W. Schneider et al., *A Handbook of
Varieties of English*, 2004), none chosen from what the held-out voices get wrong:

==== ================================ =========================================================
code rule                             heard in, among others
==== ================================ =========================================================
ts   TH-stopping: th -> t, d          Ireland, the Caribbean, New York, India, West Africa
tf   TH-fronting: th -> f, v          London and south-east England, African American English
hd   H-dropping (word-initial)        most of England and Wales, the Caribbean
gd   -ing -> -in                      nearly every accent in casual speech
cr   final cluster reduction          African American English, the Caribbean, West Africa
     (-nd, -ld -> -n, -l; -st, -ft,
     -kt, -pt -> -s, -f, -k, -p)
fd   final obstruent devoicing        English of German, Dutch, Slavic and Turkish speakers
mo   FACE and GOAT as monophthongs    Scotland, northern England, Wales, the Caribbean, India
tl   no tense/lax contrast in i, u    Scotland, the Caribbean, West Africa, Singapore, India
vw   v -> w                           India, the Caribbean, older London speech
sv   full vowels for schwa            syllable-timed Englishes: Caribbean, West African,
                                      Indian, Singaporean
==== ================================ =========================================================

:func:`accent_phonemes` rewrites a phoneme string (espeak-ng's ``-x`` mnemonics, words
separated by spaces); :func:`accented_text` turns a sentence into the phoneme input
(``[[...]]``) that makes espeak-ng speak it with a set of rules. The transcript stays the
sentence's spelling. :func:`fusion.corpus.voices.accent_voices` makes the voices that use
them (``espeaka-*``, training only).

flite and festival speak the same rules through their lexicons. Each rule also rewrites the
phones of the CMU lexicon that both engines' US voices read (festival's copy,
:data:`CMU_LEXICON`, lower-case ARPAbet, every vowel with its stress digit):
:func:`accented_lexicon` rewrites the sentence's words, and :func:`flite_addenda` and
:func:`festival_lexicon` give the changed words to the engine (flite's ``-add_lex`` file,
festival's ``lex.add.entry``), which then speaks the sentence with its own text analysis,
prosody and voice. Words the lexicon lacks keep the engine's pronunciation. FACE and GOAT
as monophthongs (``mo``) is the one rule ARPAbet cannot write (it has no /e:/ or /o:/):
:func:`fusion.corpus.voices.phone_accent_voices` (``flitea-*``, ``festivala-*``) draws from
the other nine.

festival's voices of other languages read English the same way (:data:`FOREIGN_PHONES`):
every word of the sentence goes to the voice's lexicon with its CMU phones mapped to the
nearest of the voice's own (:func:`foreign_lexicon`), so a new speaker, an Italian's or a
Finn's diphones, speaks English with the phones of their language. They are the voices
:func:`fusion.corpus.voices.foreign_voices` makes (``festivalx-*``, training only).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "ACCENT_RULES",
    "CMU_LEXICON",
    "FOREIGN_PHONES",
    "PHONE_SETS",
    "AccentRule",
    "ForeignPhones",
    "accent_phonemes",
    "accented_lexicon",
    "accented_text",
    "check_rules",
    "cmu_lexicon",
    "espeak_phonemes",
    "festival_lexicon",
    "flite_addenda",
    "foreign_lexicon",
]

PHONE_SETS = ("espeak", "arpabet")
CMU_LEXICON = Path("/usr/share/festival/dicts/cmu/cmudict-0.4.out")

Rewrites = tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...]


@dataclass(frozen=True)
class AccentRule:
    """One pronunciation rule: regular-expression rewrites of one word's phonemes, in order:
    ``rewrites`` of espeak-ng's mnemonics, ``arpabet`` of the CMU lexicon's phones (``None``:
    the rule cannot be written in ARPAbet)."""

    code: str
    name: str
    rewrites: Rewrites
    arpabet: Rewrites | None = None

    def for_phone_set(self, phone_set: str) -> Rewrites | None:
        return self.rewrites if phone_set == "espeak" else self.arpabet


# espeak-ng's English mnemonics: T and D are the th sounds, h only /h/, IN the -ing ending;
# I and U are lax i and u except as the end of a diphthong (aI, eI, OI; aU, oU, @U) or the
# start of a centring one (I@, U@); @ is schwa except inside i@, e@, A@, O@, U@, 3, @L, @U.
# A word may end in pause marks (``_:``), which the word-final rules look past.
_FINAL_VOICED = {"dZ": "tS", "Z": "S", "b": "p", "d": "t", "g": "k", "v": "f", "z": "s", "D": "T"}
_END = r"(?=(?:_:?)*$)"
# ARPAbet words are space-separated phones, vowels with their stress digit ("dh ax0");
# (?<!\S) and (?!\S) bound one phone.
_ARPA_FINAL_VOICED = {"jh": "ch", "zh": "sh", "b": "p", "d": "t", "g": "k", "v": "f", "z": "s",
                      "dh": "th"}  # fmt: skip

ACCENT_RULES: dict[str, AccentRule] = {
    rule.code: rule
    for rule in (
        AccentRule("ts", "TH-stopping", (("T", "t"), ("D", "d")),
                   ((r"(?<!\S)th(?!\S)", "t"), (r"(?<!\S)dh(?!\S)", "d"))),
        AccentRule("tf", "TH-fronting", (("T", "f"), (r"^([',]?)D", r"\1d"), ("D", "v")),
                   ((r"(?<!\S)th(?!\S)", "f"), (r"^dh(?!\S)", "d"), (r"(?<!\S)dh(?!\S)", "v"))),
        AccentRule("hd", "H-dropping", ((r"^([',]?)h", r"\1"),), ((r"^hh ", ""),)),
        AccentRule("gd", "-ing as -in", (("IN" + _END, "In"),), ((r"(?<!\S)ih0 ng$", "ih0 n"),)),
        AccentRule("cr", "final cluster reduction",
                   ((r"(?<=[nl])d" + _END, ""), (r"(?<=[sfkp])t" + _END, "")),
                   ((r"(?<!\S)([nl]) d$", r"\1"), (r"(?<!\S)([sfkp]) t$", r"\1"))),
        AccentRule("fd", "final obstruent devoicing",
                   (("(dZ|Z|b|d|g|v|z|D)" + _END, lambda m: _FINAL_VOICED[m.group(1)]),),
                   ((r"(?<!\S)(jh|zh|b|d|g|v|z|dh)$", lambda m: _ARPA_FINAL_VOICED[m.group(1)]),)),
        AccentRule("mo", "FACE and GOAT as monophthongs", (("eI", "e:"), ("(?:oU|@U)", "o:"))),
        AccentRule("tl", "no tense/lax contrast",
                   ((r"(?<![aeO])I[2#]?(?!@)", "i:"), (r"(?<![ao@])U(?!@)", "u:")),
                   ((r"(?<!\S)ih(?=\d)", "iy"), (r"(?<!\S)uh(?=\d)", "uw"))),
        AccentRule("vw", "v as w", (("v", "w"),), ((r"(?<!\S)v(?!\S)", "w"),)),
        AccentRule("sv", "full vowels for schwa",
                   ((r"(?<![ieAOU3])@[25]?(?![LU])", "a"), ("a#", "a")),
                   ((r"(?<!\S)a[xh]0(?!\S)", "aa0"),)),
    )
}  # fmt: skip


def check_rules(codes: Sequence[str], phone_set: str = "espeak") -> None:
    """Refuse, by name, codes that are not in :data:`ACCENT_RULES` or that ``phone_set``
    (one of :data:`PHONE_SETS`) cannot write."""
    if phone_set not in PHONE_SETS:
        raise ValueError(f"unknown phone set {phone_set!r}; choose from {', '.join(PHONE_SETS)}")
    unknown = [c for c in codes if c not in ACCENT_RULES]
    if unknown:
        raise ValueError(
            f"unknown accent rule(s) {', '.join(unknown)}; choose from {', '.join(ACCENT_RULES)}"
        )
    unwritable = [c for c in codes if ACCENT_RULES[c].for_phone_set(phone_set) is None]
    if unwritable:
        raise ValueError(f"accent rule(s) {', '.join(unwritable)} cannot be written in {phone_set}")


def _rewrite(word: str, codes: Sequence[str], phone_set: str) -> str:
    for code in codes:
        for pattern, repl in ACCENT_RULES[code].for_phone_set(phone_set) or ():
            word = re.sub(pattern, repl, word)
    return word


def accent_phonemes(phonemes: str, codes: Sequence[str]) -> str:
    """``phonemes`` (espeak-ng mnemonics, one word per space-separated token, lines kept)
    with the rules named by ``codes`` applied to every word, in the order given."""
    check_rules(codes)
    return "\n".join(
        " ".join(_rewrite(word, codes, "espeak") for word in line.split())
        for line in phonemes.splitlines()
    )


def espeak_phonemes(text: str, model: str, timeout: float = 120.0) -> str:
    """espeak-ng's phoneme mnemonics for ``text`` in voice ``model`` (``en-us+m3``)."""
    proc = subprocess.run(  # the text on stdin: a leading "-" is no option there
        ["espeak-ng", "-q", "-x", "-v", model, "--stdin"],
        input=text, capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(
            f"espeak-ng -x -v {model} failed (exit {proc.returncode}) on {text!r}: "
            f"{proc.stderr.strip()[-300:]}"
        )
    return proc.stdout.strip()


def accented_text(text: str, model: str, codes: Sequence[str], timeout: float = 120.0) -> str:
    """espeak-ng input that speaks ``text`` in voice ``model`` with the rules ``codes``:
    its phonemes, rewritten, as ``[[...]]`` phoneme input, one bracket a clause."""
    check_rules(codes)
    rewritten = accent_phonemes(espeak_phonemes(text, model, timeout), codes)
    return " ".join(f"[[{line}]]" for line in rewritten.splitlines() if line.strip())


_VOWELS = frozenset("aa ae ah ao aw ax axr ay eh el em en er ey ih iy ow oy uh uw".split())
_ENTRY = re.compile(r'^\("([^"]+)" \S+ \((.*)\)\)$')
_SYLLABLE = re.compile(r"\(\(([^()]*)\) (\d)\)")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


@cache
def cmu_lexicon(path: Path = CMU_LEXICON) -> dict[str, str]:
    """The CMU lexicon festival (and so flite's CMU voices) reads, each word's first entry
    as space-separated ARPAbet phones, every vowel with its syllable's stress digit
    (``"nothing": "n ah1 th ih0 ng"``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the CMU lexicon is missing (Debian festival installs it)")
    lexicon: dict[str, str] = {}
    with path.open(encoding="latin-1") as f:
        for line in f:
            match = _ENTRY.match(line.strip())
            if match is None or match.group(1) in lexicon:
                continue
            lexicon[match.group(1)] = " ".join(
                phone + stress if phone in _VOWELS else phone
                for phones, stress in _SYLLABLE.findall(match.group(2))
                for phone in phones.split()
            )
    return lexicon


def accented_lexicon(
    text: str, codes: Sequence[str], lexicon: dict[str, str] | None = None
) -> dict[str, str]:
    """The words of ``text`` that the rules ``codes`` change, each with its rewritten
    ARPAbet phones (:func:`cmu_lexicon` by default); words the lexicon lacks are left out."""
    return {
        word: new
        for word, (old, new) in _rewritten_words(text, codes, lexicon).items()
        if new and new != old
    }


def _rewritten_words(
    text: str, codes: Sequence[str], lexicon: dict[str, str] | None
) -> dict[str, tuple[str, str]]:
    """Each distinct word of ``text`` in ``lexicon`` (:func:`cmu_lexicon` by default): its
    ARPAbet phones, and those phones rewritten by the rules ``codes``."""
    check_rules(codes, "arpabet")
    lexicon = cmu_lexicon() if lexicon is None else lexicon
    return {
        word: (lexicon[word], _rewrite(lexicon[word], codes, "arpabet").strip())
        for word in dict.fromkeys(_WORD.findall(text.lower()))
        if word in lexicon
    }


def flite_addenda(words: dict[str, str]) -> str:
    """A flite ``-add_lex`` file that pronounces each word with its phones."""
    return "".join(f"{word} : {phones}\n" for word, phones in words.items())


def festival_lexicon(words: dict[str, str]) -> str:
    """festival Scheme that adds each word, with its phones, to the current voice's lexicon
    (syllabified by festival's ``lex.syllabify.phstress``)."""
    return "".join(
        f'(lex.add.entry (list "{word}" nil (lex.syllabify.phstress \'({phones}))))\n'
        for word, phones in words.items()
    )


@dataclass(frozen=True)
class ForeignPhones:
    """How a festival voice of another language reads English: each ARPAbet phone (without
    its stress digit) as that voice's nearest phones (``""``: left out); ``vowels`` are the
    voice's syllable nuclei, and a stressed vowel takes ``stressed_suffix`` where the voice
    names stressed vowels apart (Italian ``a1``)."""

    language: str
    phones: dict[str, str]
    vowels: frozenset[str]
    stressed_suffix: str = ""


# ARPAbet consonants every mapping below shares.
_SHARED = {c: c for c in "b d f g k l m n p r s t v w".split()}
FOREIGN_PHONES: dict[str, ForeignPhones] = {
    # festvox-itapc16k: an Italian man's diphones. No /h/, no th, no schwa or lax vowels.
    "pc_diphone": ForeignPhones("italian", {
        **_SHARED, "aa": "a", "ae": "E", "ah": "a", "ao": "O", "aw": "a w", "ax": "a",
        "axr": "E r", "ay": "a j", "eh": "E", "el": "e l", "em": "e m", "en": "e n",
        "er": "E r", "ey": "e j", "ih": "i", "iy": "i", "ow": "o", "oy": "O j", "uh": "u",
        "uw": "u", "ch": "tS", "dh": "d", "hh": "", "jh": "dZ", "ng": "ng", "sh": "S",
        "th": "t", "y": "j", "z": "z", "zh": "Z",
    }, frozenset("i e E a o O u".split()), stressed_suffix="1"),
    # festvox-suopuhe-mv: a Finnish man's diphones. Long vowels for tense ones, no voiced
    # sibilants or affricates, v for w.
    "hy_fi_mv_diphone": ForeignPhones("finnish", {
        **_SHARED, "aa": "a:", "ae": "e", "ah": "a", "ao": "o:", "aw": "a u", "ax": "e",
        "axr": "e r", "ay": "a i", "eh": "e", "el": "e l", "em": "e m", "en": "e n",
        "er": "e r", "ey": "e i", "ih": "i", "iy": "i:", "ow": "o u", "oy": "o i",
        "uh": "u", "uw": "u:", "ch": "t S", "dh": "d", "hh": "h", "jh": "t S", "ng": "N",
        "sh": "S", "th": "T", "w": "v", "y": "j", "z": "s", "zh": "S",
    }, frozenset("a e i o u a: e: i: o: u:".split())),
}  # fmt: skip


def _foreign_syllables(phones: str, foreign: ForeignPhones) -> list[tuple[list[str], int]]:
    """ARPAbet ``phones`` (vowels with stress digits) as the voice's phones, in syllables
    (one a vowel; of the consonants between two vowels the last opens the next syllable),
    each with its stress (1 where the English vowel was stressed)."""
    mapped: list[tuple[str, int | None]] = []  # phone, and stress if a vowel
    for phone in phones.split():
        base = phone.rstrip("012")
        stress = 1 if phone[len(base):] in ("1", "2") else 0
        first = True
        for q in foreign.phones[base].split():
            if q in foreign.vowels:
                # a diphthong's second vowel (Finnish "a u") is unstressed
                mapped.append((q + foreign.stressed_suffix if stress and first else q,
                               stress if first else 0))
                first = False
            else:
                mapped.append((q, None))
    nuclei = [i for i, (_, stress) in enumerate(mapped) if stress is not None]
    if not nuclei:
        return [([q for q, _ in mapped], 0)] if mapped else []
    starts = [0] + [max(a + 1, b - 1) for a, b in zip(nuclei, nuclei[1:])]
    ends = starts[1:] + [len(mapped)]
    return [([q for q, _ in mapped[a:b]], mapped[n][1] or 0)
            for a, b, n in zip(starts, ends, nuclei)]  # fmt: skip


def foreign_lexicon(
    text: str, model: str, codes: Sequence[str] = (), lexicon: dict[str, str] | None = None
) -> str:
    """festival Scheme that gives every word of ``text`` the CMU lexicon has (after the
    accent rules ``codes``) to festival voice ``model``'s lexicon, its phones mapped by
    :data:`FOREIGN_PHONES`."""
    if model not in FOREIGN_PHONES:
        raise ValueError(
            f"no English phone map for festival voice {model!r}; have {', '.join(FOREIGN_PHONES)}"
        )
    entries = []
    for word, (_, phones) in _rewritten_words(text, codes, lexicon).items():
        syllables = _foreign_syllables(phones, FOREIGN_PHONES[model])
        if syllables:
            body = " ".join(f"(({' '.join(p)}) {stress})" for p, stress in syllables)
            entries.append(f"(lex.add.entry '(\"{word}\" nil ({body})))\n")
    return "".join(entries)

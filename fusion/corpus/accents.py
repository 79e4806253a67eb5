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
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "ACCENT_RULES",
    "AccentRule",
    "accent_phonemes",
    "accented_text",
    "check_rules",
    "espeak_phonemes",
]


@dataclass(frozen=True)
class AccentRule:
    """One pronunciation rule: regular-expression rewrites of one word's phonemes, in order."""

    code: str
    name: str
    rewrites: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...]


# espeak-ng's English mnemonics: T and D are the th sounds, h only /h/, IN the -ing ending;
# I and U are lax i and u except as the end of a diphthong (aI, eI, OI; aU, oU, @U) or the
# start of a centring one (I@, U@); @ is schwa except inside i@, e@, A@, O@, U@, 3, @L, @U.
# A word may end in pause marks (``_:``), which the word-final rules look past.
_FINAL_VOICED = {"dZ": "tS", "Z": "S", "b": "p", "d": "t", "g": "k", "v": "f", "z": "s", "D": "T"}
_END = r"(?=(?:_:?)*$)"

ACCENT_RULES: dict[str, AccentRule] = {
    rule.code: rule
    for rule in (
        AccentRule("ts", "TH-stopping", (("T", "t"), ("D", "d"))),
        AccentRule("tf", "TH-fronting", (("T", "f"), (r"^([',]?)D", r"\1d"), ("D", "v"))),
        AccentRule("hd", "H-dropping", ((r"^([',]?)h", r"\1"),)),
        AccentRule("gd", "-ing as -in", (("IN" + _END, "In"),)),
        AccentRule("cr", "final cluster reduction",
                   ((r"(?<=[nl])d" + _END, ""), (r"(?<=[sfkp])t" + _END, ""))),
        AccentRule("fd", "final obstruent devoicing",
                   (("(dZ|Z|b|d|g|v|z|D)" + _END, lambda m: _FINAL_VOICED[m.group(1)]),)),
        AccentRule("mo", "FACE and GOAT as monophthongs", (("eI", "e:"), ("(?:oU|@U)", "o:"))),
        AccentRule("tl", "no tense/lax contrast",
                   ((r"(?<![aeO])I[2#]?(?!@)", "i:"), (r"(?<![ao@])U(?!@)", "u:"))),
        AccentRule("vw", "v as w", (("v", "w"),)),
        AccentRule("sv", "full vowels for schwa",
                   ((r"(?<![ieAOU3])@[25]?(?![LU])", "a"), ("a#", "a"))),
    )
}  # fmt: skip


def check_rules(codes: Sequence[str]) -> None:
    """Refuse, by name, codes that are not in :data:`ACCENT_RULES`."""
    unknown = [c for c in codes if c not in ACCENT_RULES]
    if unknown:
        raise ValueError(
            f"unknown accent rule(s) {', '.join(unknown)}; choose from {', '.join(ACCENT_RULES)}"
        )


def accent_phonemes(phonemes: str, codes: Sequence[str]) -> str:
    """``phonemes`` (espeak-ng mnemonics, one word per space-separated token, lines kept)
    with the rules named by ``codes`` applied to every word, in the order given."""
    check_rules(codes)
    lines = []
    for line in phonemes.splitlines():
        words = []
        for word in line.split():
            for code in codes:
                for pattern, repl in ACCENT_RULES[code].rewrites:
                    word = re.sub(pattern, repl, word)
            words.append(word)
        lines.append(" ".join(words))
    return "\n".join(lines)


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

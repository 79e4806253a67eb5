"""Text normalisation shared by transcripts, LM text and scoring.

One function, :func:`normalize_text`, turns free English text into the form every
transcript in this project takes: lowercase words of ``a-z`` and apostrophes, numbers
spelled out, one space between words. References and hypotheses are scored after the
same normalisation, so formatting never counts as an error.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

__all__ = ["normalize_text", "spell_number"]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_THOUSANDS = re.compile(r"\b(\d{1,3}(?:,\d{3})+)\b")
_YEAR = re.compile(r"\b(1[1-9]\d\d)\b")
_NUMBER = re.compile(r"\d+")
_DROP = re.compile(r"[^a-z' ]+")
# Apostrophes that are quotation marks rather than part of a word (don't, o'clock, james').
_QUOTE = re.compile(r"(?<![a-z])'+|'+(?![a-z])")


def spell_number(digits: str, *, ordinal: bool = False) -> str:
    """Spell a string of digits as English words: ``"42"`` -> ``"forty two"``."""
    words = num2words(int(digits), to="ordinal" if ordinal else "cardinal", lang="en")
    return words.replace("-", " ").replace(",", "")


def _spell_decimal(match: re.Match[str]) -> str:
    whole, frac = match.groups()
    return f"{spell_number(whole)} point {' '.join(spell_number(d) for d in frac)}"


def _spell_year(digits: str) -> str:
    return num2words(int(digits), to="year", lang="en").replace("-", " ")


def normalize_text(text: str) -> str:
    """Normalise text to lowercase words of ``a-z`` and ``'`` separated by single spaces.

    Numbers are spelled out (``"1811"`` -> ``"eighteen eleven"`` as a year from 1100 to
    1999, ``"42"`` -> ``"forty two"``,
    ``"3rd"`` -> ``"third"``, ``"2.5"`` -> ``"two point five"``); hyphens and other
    punctuation become word breaks; accents are stripped (``"café"`` -> ``"cafe"``);
    apostrophes inside words are kept (``"don't"``), quotation apostrophes are not.
    The function is idempotent: ``normalize_text(normalize_text(s)) == normalize_text(s)``.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.translate(_APOSTROPHES).lower()
    text = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _ORDINAL.sub(lambda m: f" {spell_number(m.group(1), ordinal=True)} ", text)
    text = _DECIMAL.sub(lambda m: f" {_spell_decimal(m)} ", text)
    text = _YEAR.sub(lambda m: f" {_spell_year(m.group(1))} ", text)
    text = _NUMBER.sub(lambda m: f" {spell_number(m.group(0))} ", text)
    text = _DROP.sub(" ", text)
    text = _QUOTE.sub(" ", text)
    return " ".join(text.split())

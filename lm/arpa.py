"""ARPA back-off n-gram files: a strict reader and a pure-Python scorer.

:func:`read_arpa` checks a file line by line and fails with :class:`~lm.base.LMError`
naming the file and line (truncated file, counts that disagree with the body, bad UTF-8,
malformed entries). :class:`ArpaLM` scores with the standard back-off rule; it is the
reference the KenLM wrapper is tested against, and it serves small models without KenLM.
Probabilities are stored as natural logs: the file's log10 values are converted once,
here, on reading.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lm.base import LanguageModel, LMError

__all__ = ["ArpaLM", "ArpaModel", "LN10", "UNK_LOG10", "read_arpa"]

LN10 = math.log(10.0)
#: KenLM's probability for ``<unk>`` when a model lists none (log10).
UNK_LOG10 = -100.0
BOS, EOS, UNK = "<s>", "</s>", "<unk>"

_COUNT = re.compile(r"^ngram\s+(\d+)\s*=\s*(\d+)$")
_SECTION = re.compile(r"^\\(\d+)-grams:$")


@dataclass(frozen=True)
class ArpaModel:
    """The contents of an ARPA file: per order, n-gram -> (log_prob, log_backoff), natural log."""

    order: int
    counts: tuple[int, ...]
    ngrams: tuple[dict[tuple[str, ...], tuple[float, float]], ...]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        fh = opener(path, "rb")
    except OSError as exc:
        raise LMError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        try:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield lineno, raw.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise LMError(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from None
        except (OSError, EOFError) as exc:  # corrupt or truncated gzip stream
            raise LMError(f"{path}: cannot read: {exc}") from None


def read_arpa(path: str | Path) -> ArpaModel:
    """Read and check an ARPA file (plain or ``.gz``).

    Raises:
        LMError: naming the file and line of the first problem.
    """
    path = Path(path)
    lines = _lines(path)
    where = f"{path}"

    def next_content() -> tuple[int, str] | None:
        for lineno, line in lines:
            if line:
                return lineno, line
        return None

    # header: skip anything before \data\ (some tools write comments there)
    for lineno, line in lines:
        if line == "\\data\\":
            break
    else:
        raise LMError(f"{where}: no \\data\\ header: not an ARPA file")
    declared: dict[int, int] = {}
    item = next_content()
    while item is not None and _COUNT.match(item[1]):
        lineno, line = item
        n, count = map(int, _COUNT.match(line).groups())  # type: ignore[union-attr]
        if n != len(declared) + 1:
            raise LMError(f"{where}:{lineno}: expected 'ngram {len(declared) + 1}=...', got {line!r}")
        declared[n] = count
        item = next_content()
    if not declared:
        raise LMError(f"{where}: \\data\\ declares no n-gram counts")
    order = len(declared)
    tables: list[dict[tuple[str, ...], tuple[float, float]]] = []
    for n in range(1, order + 1):
        if item is None:
            raise LMError(f"{where}: file ends before the \\{n}-grams: section (truncated?)")
        lineno, line = item
        m = _SECTION.match(line)
        if not m or int(m.group(1)) != n:
            raise LMError(f"{where}:{lineno}: expected '\\{n}-grams:', got {line!r}")
        table: dict[tuple[str, ...], tuple[float, float]] = {}
        highest = n == order
        for lineno, line in lines:
            if not line:
                continue
            if line.startswith("\\"):
                item = (lineno, line)
                break
            fields = line.split()
            if len(fields) not in (n + 1, n + 2) or (highest and len(fields) == n + 2):
                raise LMError(
                    f"{where}:{lineno}: a {n}-gram entry needs log10 probability, {n} word(s)"
                    f"{'' if highest else ' and an optional back-off'}; got {line!r}"
                )
            try:
                prob = float(fields[0])
                backoff = float(fields[n + 1]) if len(fields) == n + 2 else 0.0
            except ValueError:
                raise LMError(f"{where}:{lineno}: not a number in {line!r}") from None
            if not (math.isfinite(backoff) and (math.isfinite(prob) or prob == -math.inf)) \
                    or prob > 0:
                raise LMError(f"{where}:{lineno}: log10 probability must be <= 0 in {line!r}")
            key = tuple(fields[1 : n + 1])
            if key in table:
                raise LMError(f"{where}:{lineno}: duplicate {n}-gram {' '.join(key)!r}")
            table[key] = (prob * LN10, backoff * LN10)
        else:
            raise LMError(f"{where}: file ends inside the \\{n}-grams: section (truncated?)")
        if len(table) != declared[n]:
            raise LMError(
                f"{where}:{item[0]}: \\data\\ declares ngram {n}={declared[n]} but the "
                f"\\{n}-grams: section has {len(table)} entries"
            )
        tables.append(table)
    if item is None or item[1] != "\\end\\":
        got = "end of file" if item is None else repr(item[1])
        raise LMError(f"{where}: expected \\end\\ after the {order}-grams, got {got} (truncated?)")
    return ArpaModel(order=order, counts=tuple(declared[n] for n in range(1, order + 1)),
                     ngrams=tuple(tables))


class ArpaLM(LanguageModel):
    """A word-level back-off n-gram model scored in Python from an ARPA file.

    ``log p(w | h)`` is the n-gram's probability if ``h w`` is listed, else the back-off
    weight of ``h`` plus ``log p(w | h[1:])``. A word outside the vocabulary scores as
    ``<unk>`` (log10 -100 when the model lists none, as KenLM does). States are tuples
    of the last words, cut to the longest suffix the model lists (equal futures, equal
    states).
    """

    level = "word"

    def __init__(self, source: str | Path | ArpaModel) -> None:
        self.model = source if isinstance(source, ArpaModel) else read_arpa(source)
        unigrams = self.model.ngrams[0]
        self._unk = unigrams.get((UNK,), (UNK_LOG10 * LN10, 0.0))[0]

    @property
    def order(self) -> int:
        return self.model.order

    def contains(self, unit: str) -> bool:
        return (unit,) in self.model.ngrams[0] and unit not in (BOS, EOS, UNK)

    def start(self) -> tuple[str, ...]:
        return self._state((BOS,))

    def _log_prob(self, history: tuple[str, ...], word: str) -> float:
        ngrams = self.model.ngrams
        backoff = 0.0
        for k in range(len(history), -1, -1):  # longest context first
            context = history[len(history) - k:]
            entry = ngrams[k].get(context + (word,))
            if entry is not None:
                return backoff + entry[0]
            if k:
                backoff += ngrams[k - 1].get(context, (0.0, 0.0))[1]
        return backoff + self._unk

    def _state(self, history: tuple[str, ...]) -> tuple[str, ...]:
        history = history[-(self.order - 1):] if self.order > 1 else ()
        while history and history not in self.model.ngrams[len(history) - 1]:
            history = history[1:]
        return history

    def score(self, state: tuple[str, ...], unit: str) -> tuple[tuple[str, ...], float]:
        word = unit if (unit,) in self.model.ngrams[0] else UNK
        return self._state(state + (word,)), self._log_prob(state, word)

    def finish(self, state: tuple[str, ...]) -> float:
        return self._log_prob(state, EOS)

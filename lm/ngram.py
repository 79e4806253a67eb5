"""KenLM n-gram models behind the common interface, and building them with KenLM's tools.

:class:`KenLM` loads an ARPA (plain or gzipped) or a KenLM binary and scores with state.
Scores come out as natural logs (KenLM's log10 times ln 10, converted here and nowhere
else). Models are built by KenLM's ``lmplz`` (modified Kneser-Ney, with pruning) and
converted by ``build_binary``; ``make install`` compiles both from the kenlm sdist into
``.venv/bin``.

A character- or piece-level n-gram is the same machinery over text whose "words" are the
units: :func:`units_text` writes such text, and :class:`KenLM` with ``level="token"``
scores units instead of words.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lm import _kenlm as kenlm  # KenLM's own binding, built by setup.py
from lm.arpa import LN10, read_arpa
from lm.base import LanguageModel, Level, LMError

__all__ = ["KenLM", "build_arpa", "build_binary", "char_units", "find_tool", "read_unigrams",
           "sentences_of", "units_text"]

#: The unit that stands for the space between words in character-level LM text.
WORD_BOUNDARY = "|"


class KenLM(LanguageModel):
    """A KenLM model (ARPA or binary).

    States are ``kenlm.State`` values, hashable and compared by content. The wrapper
    never writes to a state it has handed out: each call fills a fresh one. A word
    outside the vocabulary scores as KenLM's ``<unk>``; a model without ``<unk>`` (for
    which KenLM substitutes log10 -100, making every unknown word a dead end that a
    search escapes by leaving the rest of an utterance unsaid) scores it at
    ``missing_unk_log10`` instead (-10: the size of pyctcdecode's unknown-word offset,
    which pyctcdecode itself adds to KenLM's -100). The compiled search
    (``fusion/decoder/csrc/ctc_search.cpp``) does the same.

    Args:
        path: ARPA (``.arpa``, ``.arpa.gz``) or KenLM binary file.
        level: ``"word"`` for word models, ``"token"`` for character/piece models.
        missing_unk_log10: what an unknown word scores (log10) when the model has no
            ``<unk>``; None keeps KenLM's -100 (pyctcdecode's behaviour, for the drop-in).
    """

    def __init__(self, path: str | Path, *, level: Level = "word",
                 missing_unk_log10: float | None = -10.0) -> None:
        self.path = Path(path)
        self.missing_unk_log10 = missing_unk_log10
        if level not in ("word", "token"):
            raise ValueError(f"level must be 'word' or 'token', got {level!r}")
        self.level = level
        if not self.path.is_file():
            raise LMError(f"{self.path}: no such LM file")
        try:
            self._loaded: kenlm.Model | None = kenlm.Model(str(self.path))
        except (OSError, RuntimeError, ValueError) as exc:  # ValueError: its message not UTF-8
            # KenLM says little about where an ARPA file is broken: our reader does.
            if _looks_like_arpa(self.path):
                try:
                    read_arpa(self.path)
                except LMError as problem:
                    raise LMError(f"{problem} (and it is not a KenLM binary, which starts "
                                  "with 'mmap lm')") from None
            raise LMError(f"{self.path}: KenLM cannot load it: {exc}") from None
        self.order = self._model.order
        out = kenlm.State()
        # KenLM puts exactly -100 where an ARPA file lacks <unk>
        self._unk_missing = (missing_unk_log10 is not None
                             and self._model.BaseScore(self.null_state(), "<unk>", out) == -100.0)

    @property
    def _model(self) -> kenlm.Model:
        model = self._loaded
        if model is None:  # released: load again (the file loaded once, so it loads)
            model = self._loaded = kenlm.Model(str(self.path))
        return model

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (see :meth:`release`)."""
        return self._loaded is not None

    def release(self) -> None:
        """Free the model's memory; the next query loads it again from its file.

        The compiled search loads its own copy of the file: a decoder that runs it
        releases this one, so that a model is in memory once, not twice."""
        self._loaded = None

    @staticmethod
    def is_arpa(path: str | Path) -> bool:
        """Whether ``path`` holds an ARPA file (anything but a KenLM binary)."""
        return _looks_like_arpa(Path(path))

    def __reduce__(self):  # picklable for worker processes: each reloads from the path
        return (_load_kenlm, (str(self.path), self.level, self.missing_unk_log10))

    def contains(self, unit: str) -> bool:
        return unit in self._model and unit not in ("<s>", "</s>", "<unk>")

    def compiled(self) -> dict[str, Any] | None:
        """A word-level model runs in the compiled search, which loads the file itself (the
        same scores: its ``<unk>`` rule is ``missing_unk_log10``'s)."""
        kept = all(getattr(type(self), n) is getattr(KenLM, n) for n in ("start", "score", "finish"))
        if self.level != "word" or not kept:  # a subclass that scores otherwise is called back
            return None
        return {"kind": "kenlm", "path": str(self.path), "missing_unk_log10": self.missing_unk_log10}

    def start(self) -> kenlm.State:
        state = kenlm.State()
        self._model.BeginSentenceWrite(state)
        return state

    def null_state(self) -> kenlm.State:
        """A state with no context (no ``<s>``), for scoring fragments."""
        state = kenlm.State()
        self._model.NullContextWrite(state)
        return state

    def score(self, state: kenlm.State, unit: str) -> tuple[kenlm.State, float]:
        out, model = kenlm.State(), self._model
        log10 = model.BaseScore(state, unit, out)
        if self._unk_missing and unit not in model:
            log10 = self.missing_unk_log10
        return out, log10 * LN10

    def finish(self, state: kenlm.State) -> float:
        return self._model.BaseScore(state, "</s>", kenlm.State()) * LN10

    def score_sentence(self, units: Iterable[str], *, eos: bool = True) -> float:
        if self._unk_missing:  # unknown words as :meth:`score` scores them
            return super().score_sentence(units, eos=eos)
        return self._model.score(" ".join(units), bos=True, eos=eos) * LN10


def _load_kenlm(path: str, level: Level, missing_unk_log10: float | None = -10.0) -> KenLM:
    return KenLM(path, level=level, missing_unk_log10=missing_unk_log10)


def _looks_like_arpa(path: Path) -> bool:
    """Anything but a KenLM binary (whose files start with ``mmap lm``)."""
    with path.open("rb") as fh:
        return not fh.read(8).startswith(b"mmap lm ")


def find_tool(name: str) -> Path:
    """Locate a KenLM tool (``lmplz``, ``build_binary``).

    Looked for in ``$ASRFUSE_KENLM_BIN``, beside the running Python (the venv's ``bin``),
    then on ``PATH``.
    """
    candidates = []
    if os.environ.get("ASRFUSE_KENLM_BIN"):
        candidates.append(Path(os.environ["ASRFUSE_KENLM_BIN"]) / name)
    candidates.append(Path(sys.executable).parent / name)
    which = shutil.which(name)
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise LMError(
        f"KenLM's {name} was not found (looked in $ASRFUSE_KENLM_BIN, {candidates[0].parent} "
        "and PATH): run `make install`, which builds it from the kenlm sdist"
    )


def build_arpa(
    text: str | Path,
    output: str | Path,
    *,
    order: int,
    prune: Sequence[int] = (),
    memory: str = "20%",
    discount_fallback: bool = True,
    temp_dir: str | Path | None = None,
) -> Path:
    """Estimate a modified Kneser-Ney ARPA model from text with KenLM's ``lmplz``.

    Args:
        text: one sentence per line, units separated by spaces.
        output: the ARPA file to write (``.gz`` compresses); written atomically.
        order: 2 to 6.
        prune: count thresholds per order (``lmplz --prune``), e.g. ``(0, 0, 1)`` drops
            singleton trigrams; empty for no pruning.
        memory: ``lmplz -S`` memory budget.
        discount_fallback: let ``lmplz`` fall back to fixed discounts when the counts of
            counts of a small corpus cannot estimate them.
    """
    text, output = Path(text), Path(output)
    if not 2 <= order <= 6:
        raise ValueError(f"order must be between 2 and 6, got {order}")
    if prune and (len(prune) > order or any(p < 0 for p in prune) or list(prune) != sorted(prune)):
        raise ValueError(f"prune thresholds must be non-decreasing, >= 0, at most {order} of them")
    if not text.is_file():
        raise LMError(f"{text}: no such text file")
    if not _has_content(text):
        raise LMError(f"{text}: the training text is empty")
    cmd = [str(find_tool("lmplz")), "-o", str(order), "-S", memory,
           "-T", str(temp_dir or tempfile.gettempdir())]
    if prune:
        cmd += ["--prune", *map(str, prune)]
    if discount_fallback:
        cmd.append("--discount_fallback")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        opener = gzip.open if output.suffix == ".gz" else open
        with text.open("rb") as src, tempfile.TemporaryFile() as log, subprocess.Popen(
            cmd, stdin=src, stdout=subprocess.PIPE, stderr=log
        ) as proc, opener(tmp, "wb") as dst:
            shutil.copyfileobj(proc.stdout, dst)  # type: ignore[arg-type]
            if proc.wait() != 0:
                log.seek(0)
                stderr = log.read().decode(errors="replace")
                raise LMError(f"lmplz failed on {text}:\n{stderr.strip()[-2000:]}")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def build_binary(arpa: str | Path, output: str | Path, *, data_structure: str = "trie",
                 quantize: int | None = None) -> Path:
    """Convert an ARPA file to KenLM's binary format (``probing`` or ``trie``), atomically;
    ``quantize`` bits (a trie's probabilities and back-offs, ``build_binary -q N -b N``; the
    default 3-gram's is 8) shrink it, at a small cost in precision."""
    if data_structure not in ("probing", "trie"):
        raise ValueError(f"data_structure must be 'probing' or 'trie', got {data_structure!r}")
    if quantize is not None and (data_structure != "trie" or not 1 <= quantize <= 25):
        raise ValueError(f"quantize needs a trie and 1 to 25 bits, got {quantize!r} ({data_structure})")
    arpa, output = Path(arpa), Path(output)
    tmp = output.with_name(f".{output.name}.tmp")
    bits = [] if quantize is None else ["-q", str(quantize), "-b", str(quantize)]
    cmd = [str(find_tool("build_binary")), *bits, data_structure, str(arpa), str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            if _looks_like_arpa(arpa):
                read_arpa(arpa)
            raise LMError(f"build_binary failed on {arpa}:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def _has_content(path: Path) -> bool:
    with path.open("rb") as fh:
        return any(line.strip() for line in fh)


def char_units(sentence: str) -> list[str]:
    """A sentence as character-level LM units: ``"hi yo"`` -> ``h i | y o``."""
    return list(WORD_BOUNDARY.join(sentence.split()))


def sentences_of(path: Path, level: str) -> list[list[str]]:
    """Read text as unit sequences: words, or characters with ``|`` between words."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip()]
    except UnicodeDecodeError as exc:
        raise LMError(f"{path}: not UTF-8 ({exc.reason})") from None
    return [char_units(line) if level == "char" else line.split() for line in lines]


def units_text(sentences: Iterable[str], output: str | Path) -> Path:
    """Write sentences as character-level LM text: ``"hi yo"`` -> ``"h i | y o"``."""
    output = Path(output)
    with output.open("w", encoding="utf-8") as fh:
        for sentence in sentences:
            units = char_units(sentence)
            if units:
                fh.write(" ".join(units) + "\n")
    return output


def read_unigrams(path: str | Path) -> list[str]:
    """The words of an LM: the ``\\1-grams:`` of an ARPA file (plain or gzipped), or the
    first field of each line of a word list. ``<s>``, ``</s>`` and ``<unk>`` are left out."""
    path = Path(path)
    try:
        words = _read_words(path)
    except UnicodeDecodeError as exc:
        raise LMError(f"{path}: not UTF-8 text ({exc.reason}): not an ARPA file or a word "
                      "list") from None
    except (OSError, EOFError) as exc:
        raise LMError(f"{path}: cannot read the LM's words: {exc}") from None
    return [w for w in words if w not in ("<s>", "</s>", "<unk>")]


def _read_words(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    words: list[str] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        first = fh.readline()
        if first.strip() != "\\data\\":  # a word list
            words = [line.split()[0] for line in [first, *fh] if line.strip()]
        else:
            for line in fh:
                if line.startswith("\\1-grams:"):
                    break
            for line in fh:
                if line.startswith("\\"):
                    break
                fields = line.split()
                if len(fields) >= 2:
                    words.append(fields[1])
    return words

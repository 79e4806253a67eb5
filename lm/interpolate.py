"""Static linear interpolation of ARPA back-off n-gram models into one ARPA model.

The semantics are SRILM's ``ngram -mix-lm ... -write-lm``:

* the vocabulary is the union of the models' unigrams and the n-gram set is the union of
  their explicit n-grams (plus any missing context prefix of a listed n-gram, which an ARPA
  model must list);
* each listed n-gram ``h w`` gets ``p(w | h) = sum_k lambda_k p_k(w | h)``, each
  ``p_k`` computed through model ``k``'s own back-off;
* each context's back-off weight is recomputed so that the mixture's distribution over
  the vocabulary sums to one::

      bow(h) = (1 - sum_{w listed after h} p(w | h)) / (1 - sum_{w listed after h} p(w | h'))

  with ``h'`` the history shortened by its oldest word and ``p(w | h')`` the mixture
  model's own (back-off) probability.

Words a model does not know get probability zero from it (SRILM's closed-vocabulary
behaviour), not that model's ``<unk>`` probability: each model then stays a distribution
over the union vocabulary, and so does the mixture (giving every unknown word ``<unk>``'s
probability would count ``<unk>``'s mass once per such word). ``<unk>`` itself is a word
like any other: the mixture gives it ``sum_k lambda_k p_k(<unk> | h)``, zero from a model
that lists none. In a history, a word a model does not know is a context that model has
never seen: it backs off past it. For a decoding LM ``<unk>`` can instead be left out
(``drop_unk``: a closed-vocabulary mixture, unigrams renormalised), so that a decoder scores
unknown words with its own penalty as it does for a model without ``<unk>``: an input's
``<unk>`` probability is the mass of all its unknown words, far too much for any one
spelling a search proposes.

The mixture is exact (equal to querying the models separately and mixing) for every
listed n-gram. For a word reached by back-off it is the usual static approximation: the
mixture has one back-off weight per context where the dynamic mixture has one per model,
so they agree only where the models back off alike (for example, from a context no model
lists). The normalisation holds either way.

Everything runs on NumPy arrays: n-grams are rows of word ids, each order sorted, and an
n-gram's key is ``index of its prefix in the order below * |V| + word``, so a lookup is a
chain of ``searchsorted`` calls. Natural logs inside; the ARPA files' log10 is converted
on reading (:func:`lm.arpa.read_arpa`) and on writing.

:func:`fit_weights` estimates the weights that maximise the likelihood of a dev text by
EM (SRILM's ``compute-best-mix``).
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lm.arpa import BOS, LN10, UNK, read_arpa
from lm.base import LMError

__all__ = ["Mixture", "MixStats", "NgramIndex", "Tables", "check_weights", "fit_weights",
           "dev_probabilities", "load_models", "log_prob", "mix", "mix_arpa", "common_perplexities",
           "write_arpa"]

#: log10 "zero" of ARPA files (written for a probability or back-off weight of zero).
LOG10_ZERO = -99.0
#: Tolerance on the weights' sum.
WEIGHT_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class NgramIndex:
    """The union n-gram set.

    ``rows[n-1]`` holds the n-grams of order ``n`` as an ``(M_n, n)`` array of word ids,
    sorted lexicographically; ``keys[n-1]`` their keys (sorted too): the word id for a
    unigram, ``index of the (n-1)-word prefix in rows[n-2] * size + last word id`` above.
    Every word is a unigram, so ``keys[0] == arange(size)``.
    """

    words: tuple[str, ...]
    rows: tuple[np.ndarray, ...]
    keys: tuple[np.ndarray, ...]

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def order(self) -> int:
        return len(self.rows)

    def keys_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys of arbitrary n-grams ``(M, n)``, and whether each key is defined (its every
        proper prefix is in the index and its words are known; ids < 0 mean unknown)."""
        size = self.size
        valid = np.all(rows >= 0, axis=1)
        key = np.where(valid, rows[:, 0], 0).astype(np.int64)
        for j in range(1, rows.shape[1]):
            pos, found = _find(self.keys[j - 1], key, valid)
            valid = found
            key = pos * size + np.where(rows[:, j] >= 0, rows[:, j], 0)
        return key, valid


@dataclass(frozen=True)
class Tables:
    """A back-off model over an :class:`NgramIndex`'s keys: per order, the sorted keys of
    the n-grams it lists, their natural-log probabilities and back-off weights."""

    keys: tuple[np.ndarray, ...]
    log_prob: tuple[np.ndarray, ...]
    log_backoff: tuple[np.ndarray, ...]

    @property
    def order(self) -> int:
        return len(self.keys)


@dataclass
class MixStats:
    """What :func:`mix` found while normalising."""

    counts: tuple[int, ...] = ()
    #: contexts whose listed words already take all the mixture's mass (back-off set to 0)
    full_contexts: int = 0
    #: contexts with mass left but no word to back off to (their listed words are scaled up
    #: to take it; only where every word is listed after the shorter context)
    lost_mass_contexts: int = 0
    lost_mass_max: float = 0.0


@dataclass(frozen=True)
class Mixture:
    """A mixed model: its index, its tables and the statistics of its construction."""

    index: NgramIndex
    tables: Tables
    weights: tuple[float, ...]
    stats: MixStats = field(default_factory=MixStats)


# ---------------------------------------------------------------------------- lookups

def _find(table: np.ndarray, key: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``key`` in the sorted ``table`` and whether each is there (and valid)."""
    if len(table) == 0:
        return np.zeros(len(key), np.int64), np.zeros(len(key), bool)
    pos = np.minimum(np.searchsorted(table, key), len(table) - 1)
    return pos, valid & (table[pos] == key)


class _Query:
    """Keys of the word spans of a batch of rows ``(M, n)``, computed once, shared by every
    model scored on them."""

    def __init__(self, index: NgramIndex, rows: np.ndarray) -> None:
        self.index, self.rows = index, rows
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def span(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        if (start, end) not in self._cache:
            self._cache[start, end] = self.index.keys_of(self.rows[:, start:end])
        return self._cache[start, end]


def log_prob(tables: Tables, query: _Query) -> np.ndarray:
    """``ln p(w | h)`` of each row ``h w`` of the query under a back-off model: the longest
    listed n-gram's probability plus the back-off weights of the longer contexts passed.
    ``-inf`` for a word the model does not list."""
    rows = query.rows
    count, n = rows.shape
    out = np.full(count, -np.inf)
    acc = np.zeros(count)
    pending = np.ones(count, bool)
    for m in range(min(n, tables.order), 0, -1):  # longest n-gram first
        key, valid = query.span(n - m, n)
        pos, found = _find(tables.keys[m - 1], key, valid)
        hit = pending & found
        out[hit] = acc[hit] + tables.log_prob[m - 1][pos[hit]]
        pending &= ~found
        if m > 1:
            ckey, cvalid = query.span(n - m, n - 1)
            cpos, cfound = _find(tables.keys[m - 2], ckey, cvalid)
            add = pending & cfound
            acc[add] += tables.log_backoff[m - 2][cpos[add]]
    return out


# ---------------------------------------------------------------------------- reading

@dataclass
class _Raw:
    """One model read: per order, rows of word ids, ln probabilities, ln back-offs."""

    path: Path
    rows: list[np.ndarray]
    log_prob: list[np.ndarray]
    log_backoff: list[np.ndarray]


def _read_raw(path: Path, ids: dict[str, int], drop: frozenset[str] = frozenset()) -> _Raw:
    """Read one ARPA (strictly, with :func:`read_arpa`), adding its words to ``ids``;
    n-grams with a word of ``drop`` are left out."""
    with path.open("rb") as fh:
        if fh.read(8).startswith(b"mmap lm "):
            raise LMError(f"{path}: a KenLM binary: mixing needs the model's ARPA file")
    model = read_arpa(path)
    for (word,) in model.ngrams[0]:
        if word not in drop:
            ids.setdefault(word, len(ids))
    raw = _Raw(path, [], [], [])
    for n, table in enumerate(model.ngrams, start=1):
        if drop:
            table = {g: v for g, v in table.items() if drop.isdisjoint(g)}
        try:
            flat = np.fromiter((ids[w] for gram in table for w in gram), np.int32,
                               count=n * len(table))
        except KeyError:
            bad = next(g for g in table if any(w not in ids for w in g))
            word = next(w for w in bad if w not in ids)
            raise LMError(f"{path}: the {n}-gram {' '.join(bad)!r} has {word!r}, which is "
                          "not among the 1-grams") from None
        raw.rows.append(flat.reshape(len(table), n))
        values = np.fromiter((x for v in table.values() for x in v), np.float64,
                             count=2 * len(table)).reshape(len(table), 2)
        raw.log_prob.append(values[:, 0].copy())
        raw.log_backoff.append(values[:, 1].copy())
    return raw


def _unique_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of an integer array, sorted lexicographically."""
    if len(rows) == 0:
        return rows
    order = np.lexsort(rows.T[::-1])
    rows = rows[order]
    keep = np.ones(len(rows), bool)
    keep[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    return rows[keep]


def _build_index(words: Sequence[str], raws: Sequence[_Raw]) -> NgramIndex:
    """The union of the models' n-grams, closed under prefixes, with its keys."""
    top = max(len(r.rows) for r in raws)
    union: list[np.ndarray] = [np.empty((0, n), np.int32) for n in range(1, top + 1)]
    above: np.ndarray | None = None
    for n in range(top, 1, -1):  # top down: each order gains the prefixes of the one above
        parts = [r.rows[n - 1] for r in raws if len(r.rows) >= n]
        if above is not None:
            parts.append(above[:, :n])
        union[n - 1] = above = _unique_rows(np.concatenate(parts))
    union[0] = np.arange(len(words), dtype=np.int32)[:, None]
    keys: list[np.ndarray] = [np.arange(len(words), dtype=np.int64)]
    partial = NgramIndex(tuple(words), tuple(union), tuple(keys))
    for n in range(2, top + 1):
        prefix, _ = partial.keys_of(union[n - 1][:, :-1])
        # every prefix is in the order below (closed above), so no key is undefined
        keys.append(np.searchsorted(keys[n - 2], prefix) * len(words) + union[n - 1][:, -1])
        partial = NgramIndex(tuple(words), tuple(union), tuple(keys))
    return partial


def _tables(index: NgramIndex, raw: _Raw) -> Tables:
    keys, probs, backoffs = [], [], []
    for rows, lp, bow in zip(raw.rows, raw.log_prob, raw.log_backoff):
        key, _ = index.keys_of(rows)
        order = np.argsort(key, kind="stable")
        keys.append(key[order])
        probs.append(lp[order])
        backoffs.append(bow[order])
    return Tables(tuple(keys), tuple(probs), tuple(backoffs))


def load_models(paths: Sequence[str | Path], *, drop_words: Sequence[str] = ()
                ) -> tuple[NgramIndex, list[Tables]]:
    """Read ARPA models (plain or ``.gz``) into one union index and a table set per model,
    leaving out every n-gram with a word of ``drop_words`` (e.g. ``<unk>``; :func:`mix`
    with ``renormalise=True`` then gives the mass they had back to the other words).

    Raises:
        LMError: a missing or broken file, a KenLM binary (its ARPA is needed), an n-gram
            with a word that is not a unigram.
    """
    ids: dict[str, int] = {}
    raws = []
    for path in map(Path, paths):
        if not path.is_file():
            raise LMError(f"{path}: no such LM file")
        raws.append(_read_raw(path, ids, frozenset(drop_words)))
    words = tuple(ids)  # in order of first appearance: ids[word] == position
    index = _build_index(words, raws)
    return index, [_tables(index, raw) for raw in raws]


# ---------------------------------------------------------------------------- mixing

def check_weights(weights: Sequence[float], models: int) -> tuple[float, ...]:
    """Validate mixture weights: one per model, each in [0, 1], summing to 1."""
    weights = tuple(float(w) for w in weights)
    if len(weights) != models:
        raise LMError(f"{len(weights)} weight(s) given for {models} model(s): give one per model")
    if not all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in weights):
        raise LMError(f"mixture weights must lie in [0, 1], got {list(weights)}")
    if abs(sum(weights) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise LMError(f"mixture weights must sum to 1, got {list(weights)} (sum {sum(weights):g})")
    return weights


def _mixed_log_prob(models: Sequence[Tables], weights: Sequence[float], query: _Query) -> np.ndarray:
    """``ln sum_k lambda_k p_k(w | h)`` for each row of the query."""
    with np.errstate(divide="ignore"):
        log_weights = np.log(np.asarray(weights, dtype=np.float64))
    total = np.full(len(query.rows), -np.inf)
    for lw, tables in zip(log_weights, models):
        if lw > -np.inf:
            total = np.logaddexp(total, lw + log_prob(tables, query))
    return total


def mix(index: NgramIndex, models: Sequence[Tables], weights: Sequence[float], *,
        renormalise: bool = False) -> Mixture:
    """The static linear mixture of back-off models on their union index (module doc).

    With ``renormalise``, the mixed unigrams are scaled to sum to one (for models read
    with words left out: the back-off weights then normalise every context too)."""
    weights = check_weights(weights, len(models))
    top = index.order
    probs = [_mixed_log_prob(models, weights, _Query(index, index.rows[n - 1]))
             for n in range(1, top + 1)]
    if BOS in index.words:  # <s> is a context, never predicted: ARPA's log10 -99
        probs[0][index.words.index(BOS)] = -np.inf
    if renormalise:
        probs[0] -= np.logaddexp.reduce(probs[0])
    if BOS in index.words:
        probs[0][index.words.index(BOS)] = LOG10_ZERO * LN10
    backoffs = [np.zeros(len(index.rows[n - 1])) for n in range(1, top + 1)]
    mixture = Tables(index.keys, tuple(probs), tuple(backoffs))
    stats = MixStats(counts=tuple(len(r) for r in index.rows))
    for n in range(2, top + 1):  # contexts of order n - 1, lowest first
        rows = index.rows[n - 1]
        context = index.keys[n - 1] // index.size  # position of each row's prefix
        lower = log_prob(mixture, _Query(index, rows[:, 1:]))  # uses back-offs below n - 1
        contexts = len(index.rows[n - 2])
        listed = np.bincount(context, weights=np.exp(probs[n - 1]), minlength=contexts)
        shorter = np.bincount(context, weights=np.exp(lower), minlength=contexts)
        backoffs[n - 2][:], lost = _backoff_weights(1.0 - listed, 1.0 - shorter, stats)
        if lost.any():  # no word to back off to: the listed words share the mass left
            scale = np.zeros(contexts)
            scale[lost] = np.log(listed[lost])
            probs[n - 1] -= scale[context]
    return Mixture(index, mixture, weights, stats)


def _backoff_weights(left: np.ndarray, lower_left: np.ndarray, stats: MixStats
                     ) -> tuple[np.ndarray, np.ndarray]:
    """ln of ``left / lower_left`` per context, with the edge cases of finite precision:
    no mass left (back-off 0, written as log10 -99) and no mass below to give it to
    (back-off 1; those contexts are returned as a mask: the caller scales their listed
    words up)."""
    eps = 1e-12
    out = np.zeros(len(left))
    normal = (left > eps) & (lower_left > eps)
    out[normal] = np.log(left[normal]) - np.log(lower_left[normal])
    full = (left <= eps) & (lower_left > eps)
    out[full] = LOG10_ZERO * LN10
    lost = (left > eps) & (lower_left <= eps)
    stats.full_contexts += int(full.sum())
    stats.lost_mass_contexts += int(lost.sum())
    if lost.any():
        stats.lost_mass_max = max(stats.lost_mass_max, float(left[lost].max()))
    return out, lost


# ---------------------------------------------------------------------------- writing

def write_arpa(mixture: Mixture, output: str | Path, *, chunk: int = 200_000) -> Path:
    """Write a mixture as an ARPA file (``.gz`` compresses), atomically."""
    output = Path(output)
    index, tables = mixture.index, mixture.tables
    words = np.asarray(index.words, dtype=object)
    tmp = output.with_name(f".{output.name}.tmp")
    output.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if output.suffix == ".gz" else open
    try:
        with opener(tmp, "wt", encoding="utf-8") as fh:
            fh.write("\\data\\\n")
            for n, rows in enumerate(index.rows, start=1):
                fh.write(f"ngram {n}={len(rows)}\n")
            for n, rows in enumerate(index.rows, start=1):
                fh.write(f"\n\\{n}-grams:\n")
                highest = n == index.order
                for start in range(0, len(rows), chunk):
                    part = rows[start:start + chunk]
                    grams = words[part[:, 0]]
                    for j in range(1, n):
                        grams = grams + " " + words[part[:, j]]
                    prob = _log10(tables.log_prob[n - 1][start:start + chunk])
                    if highest:
                        lines = map("{:.7f}\t{}".format, prob, grams)
                    else:
                        bow = _log10(tables.log_backoff[n - 1][start:start + chunk])
                        lines = map("{:.7f}\t{}\t{:.7f}".format, prob, grams, bow)
                    fh.write("\n".join(lines))
                    fh.write("\n")
            fh.write("\n\\end\\\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def _log10(values: np.ndarray) -> list[float]:
    """Natural logs as ARPA log10 values, zero probabilities as -99."""
    return np.maximum(values / LN10, LOG10_ZERO).tolist()


# ---------------------------------------------------------------------------- weights

def dev_probabilities(index: NgramIndex, models: Sequence[Tables],
                      sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, int]:
    """Each model's probability of each dev token (words and ``</s>``), shape ``(K, T)``.

    A word outside the union vocabulary is left out (SRILM's perplexity leaves OOVs out);
    in a history it is ``<unk>`` where a model lists one. Returns the matrix and the number
    of words left out.
    """
    ids = {w: i for i, w in enumerate(index.words)}
    unk = ids.get(UNK, -1)
    top = index.order
    groups: dict[int, list[list[int]]] = {}
    skipped = 0
    for sentence in sentences:
        seq = [ids[BOS]] if BOS in ids else [-1]
        seq += [ids.get(w, unk) if w not in (BOS, UNK) else unk for w in sentence]
        seq.append(ids.get("</s>", -1))
        for i in range(1, len(seq)):
            word = sentence[i - 1] if i <= len(sentence) else "</s>"
            if word not in ids or word in (BOS, UNK):
                skipped += 1
                continue
            row = seq[max(0, i - top + 1): i + 1]
            groups.setdefault(len(row), []).append(row)
    columns = []
    for length, rows in sorted(groups.items()):
        query = _Query(index, np.asarray(rows, dtype=np.int64))
        columns.append(np.exp(np.stack([log_prob(t, query) for t in models])))
    if not columns:
        raise LMError("the dev text has no word the models know")
    return np.concatenate(columns, axis=1), skipped


def fit_weights(probs: np.ndarray, *, tol: float = 1e-9, max_iter: int = 10_000
                ) -> tuple[tuple[float, ...], float, int]:
    """EM for the mixture weights maximising ``sum_t ln sum_k lambda_k probs[k, t]``.

    Starts from equal weights; stops when no weight moves by more than ``tol``.
    Returns ``(weights, perplexity of the mixture on the tokens, iterations)``.
    """
    k, count = probs.shape
    if count == 0:
        raise LMError("no dev tokens to fit mixture weights on")
    weights = np.full(k, 1.0 / k)
    for iteration in range(1, max_iter + 1):
        mixed = weights @ probs
        if np.any(mixed <= 0):
            raise LMError("a dev token has probability zero under every model")
        new = (weights[:, None] * probs / mixed).mean(axis=1)
        done = np.max(np.abs(new - weights)) < tol
        weights = new / new.sum()
        if done:
            break
    ppl = math.exp(-float(np.mean(np.log(weights @ probs))))
    return tuple(float(w) for w in weights), ppl, iteration


def common_perplexities(probs: np.ndarray, weights: Sequence[float]) -> dict:
    """Perplexities on the tokens of :func:`dev_probabilities` that every model knows (each
    model alone, and the mixture), comparable with one another; and the mixture's on all
    its tokens."""
    weights = np.asarray(weights, dtype=np.float64)
    known = np.all(probs > 0, axis=0)

    def ppl(p: np.ndarray) -> float:
        return math.exp(-float(np.mean(np.log(p)))) if len(p) else float("nan")

    return {"tokens": int(probs.shape[1]), "mixture": ppl(weights @ probs),
            "common_tokens": int(known.sum()), "common_mixture": ppl(weights @ probs[:, known]),
            "common_models": [ppl(p[known]) for p in probs]}


def mix_arpa(models: Sequence[str | Path], output: str | Path, weights: Sequence[float], *,
             drop_unk: bool = False) -> Mixture:
    """Mix ARPA files with the given weights and write the mixture as an ARPA file;
    with ``drop_unk``, a closed-vocabulary mixture: ``<unk>`` left out, unigrams renormalised.

    Raises:
        LMError: bad weights, a missing or broken model, or an output that is an input.
    """
    check_output(models, output)
    check_weights(weights, len(models))
    index, tables = load_models(models, drop_words=(UNK,) if drop_unk else ())
    mixture = mix(index, tables, weights, renormalise=drop_unk)
    write_arpa(mixture, output)
    return mixture


def check_output(models: Sequence[str | Path], output: str | Path) -> None:
    """Refuse an output path that names one of the input models."""
    out = Path(output).resolve()
    for model in map(Path, models):
        if model.resolve() == out or (out.exists() and model.exists() and os.path.samefile(model, out)):
            raise LMError(f"{output}: the output would overwrite the input model {model}")

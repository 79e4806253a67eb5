"""Resumable, sharded batch decoding of large posteriors collections.

Input is one or many posteriors ``.npz`` files, or list files naming them (a text file
with one path a line, or JSONL with a ``"posteriors"`` or ``"path"`` key per line;
relative paths resolve against the list's folder). Utterances are streamed one at a
time (arrays are never held beyond the one being decoded), numbered in input order
and cut into shards of ``shard_size``. Memory stays flat in the number of utterances
but for a compact index, about 50 bytes an utterance (its id and where its array lies,
read from the archive's directory a chunk at a time: ``PosteriorsReader(compact=True)``); what
a shard holds (its journal lines) is bounded by ``shard_size``. The output folder ``OUT`` holds::

    OUT/plan.json                       what was asked (inputs, shard size, decoder)
    OUT/shards/shard-00000.jsonl        one finished shard's hypotheses (atomic)
    OUT/shards/shard-00000.errors.jsonl its failed utterances with the reason (atomic)
    OUT/shards/shard-00000.journal      the shard in progress, one line per utterance
    OUT/hyps.jsonl                      every shard merged, in input order (atomic)
    OUT/errors.jsonl                    every failure merged (only when there are any)
    OUT/.lock                           held (flock) while a run works in OUT

A shard is finished when its ``.jsonl`` exists. The journal of the shard in progress is
appended and flushed after each utterance, so a run killed at any moment (even
``kill -9``) and started again with ``resume=True`` skips the finished shards and the
finished utterances of the shard in progress, and its ``hyps.jsonl`` is byte-identical
to an uninterrupted run's. A torn last journal line is dropped and redone.

Failures of one utterance (unreadable, NaN, wrong vocabulary size, a decoder exception)
are recorded with their reason and the others go on. An utterance with no frames is an
empty hypothesis, as with ``fusion decode -o``. Failures of the run (unwritable output,
disk full, inputs changed since the run began) raise :class:`BatchError` naming the file
and the problem (:class:`BatchOutputError` for output files); no partial output file is
left (writes go through :func:`fusion.core.manifest.atomic_write`).

The plan records each input's content fingerprint: a hash of its zip directory's member
names, sizes and CRC-32s (what ``.npz`` archives store for every member, checked again
when a member is read), so fingerprinting a multi-GB file reads only its directory. A
resumed run whose input changed (regenerated posteriors of the same size and ids
included) is refused, naming the file.

Worker processes are used only when the caller asks (``workers > 1``): they go through
:func:`fusion.run.parallel.decode_parallel` and read their utterances from the files
themselves, so only ids travel to them. Another :class:`fusion.run.parallel.Backend` (e.g.
:class:`fusion.run.distributed.RayBackend`, ``--backend ray``) decodes the same references
elsewhere; its workers need the input files at the same paths. The output is the same.

The command line is ``fusion decode ... --out-dir`` (:mod:`fusion.cli.main`), which builds the
decoder with :func:`fusion.pipeline.build.build_decoder` and records its config in the plan.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fusion.core.manifest import OutputConflict, OutputError, atomic_write, check_outputs, output_error
from fusion.core.posteriors import (DEFAULT_TOLERANCE, KINDS, ArrayLocation, Kind, Posteriors,
                                    PosteriorsError, PosteriorsReader, read_located)
from fusion.core.tokens import TokenTable, TokenTableError
from fusion.run.parallel import Backend, Decoder, LocalBackend

__all__ = [
    "BatchError",
    "BatchOptions",
    "BatchOutputError",
    "BatchSummary",
    "decode_batch",
    "expand_inputs",
    "stored_token_table",
]

FORMAT = "asrfuse-batch"
PLAN = "plan.json"
PLAN_VERSION = 2  # 2: each input's content fingerprint
HYPS = "hyps.jsonl"
ERRORS = "errors.jsonl"
SHARDS = "shards"
_OK, _ERR = b"ok\t", b"err\t"


class BatchError(Exception):
    """A batch run that cannot go on; the message names the file and the problem."""


class BatchOutputError(BatchError, OutputError):
    """A batch run's output file cannot be written (disk full, read-only, ...)."""


@dataclass(frozen=True)
class BatchOptions:
    """How a batch run reads, splits and decodes.

    Attributes:
        shard_size: utterances per shard (the unit of atomic output).
        workers: decoding processes (1: in this process; more start a spawn pool).
        chunksize: utterances queued per worker (bounds what is in flight).
        threads_per_worker: torch threads in each worker.
        kind: what a plain ``.npz`` holds (asrfuse files say it themselves).
        frame_shift: seconds per frame of a plain ``.npz``.
        tolerance: row-normalisation tolerance when validating posteriors.
        allow_empty: decode utterances with no frames into empty hypotheses (default,
            the one rule of ``fusion decode``); ``False`` records them as failures.
        progress: tqdm bar with throughput and ETA; ``None``: only on a terminal.
    """

    shard_size: int = 1000
    workers: int = 1
    chunksize: int = 16
    threads_per_worker: int = 1
    kind: Kind | None = None
    frame_shift: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    allow_empty: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        for name in ("shard_size", "workers", "chunksize", "threads_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BatchOptions.{name} must be an integer >= 1, got {value!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"BatchOptions.kind must be one of {KINDS}, got {self.kind!r}")
        if self.frame_shift is not None and not self.frame_shift > 0:
            raise ValueError(f"BatchOptions.frame_shift must be > 0, got {self.frame_shift!r}")


@dataclass(frozen=True)
class BatchSummary:
    """What a (possibly resumed) batch run did.

    Attributes:
        out_dir: the output folder.
        hyps: the merged hypotheses file.
        errors: the merged failures file, or ``None`` when nothing failed.
        utterances: utterances in the input.
        decoded: utterances with a hypothesis.
        failed: utterances recorded as failures.
        shards: shards in the run.
        shards_skipped: shards already finished when this call began.
        utterances_skipped: utterances already finished (in finished shards or journals).
        seconds: wall time of this call.
    """

    out_dir: Path
    hyps: Path
    errors: Path | None
    utterances: int
    decoded: int
    failed: int
    shards: int
    shards_skipped: int
    utterances_skipped: int
    seconds: float


# -- inputs -------------------------------------------------------------------------------
def _open_reader(path: str | Path, table: TokenTable | None, options: BatchOptions, *,
                 compact: bool = False) -> PosteriorsReader:
    """A reader whose failures on a damaged file are all :class:`PosteriorsError`."""
    try:
        return PosteriorsReader(path, kind=options.kind, frame_shift=options.frame_shift,
                                token_table=table, tolerance=options.tolerance, compact=compact)
    except PosteriorsError:
        raise
    except Exception as exc:  # numpy/zipfile raise many types on a damaged archive
        raise PosteriorsError(f"{path}: not a readable posteriors .npz ({type(exc).__name__}: "
                              f"{exc})") from None


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Absolute ``.npz`` paths from ``.npz`` files and list files, in order.

    A list file is a text file of paths (one a line, ``#`` comments and blank lines
    skipped) or JSONL whose objects carry ``"posteriors"`` or ``"path"``.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise BatchError(f"{path}: no such input file")
        if path.suffix == ".npz":
            out.append(path.resolve())
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BatchError(f"{path}: cannot read the list of posteriors files ({exc})") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BatchError(f"{path}:{lineno}: not JSON ({exc})") from None
                entry = obj.get("posteriors", obj.get("path")) if isinstance(obj, dict) else None
                if not isinstance(entry, str):
                    raise BatchError(f"{path}:{lineno}: needs a string 'posteriors' or 'path'")
                line = entry
            item = Path(line) if Path(line).is_absolute() else path.parent / line
            if not item.is_file():
                raise BatchError(f"{path}:{lineno}: no such posteriors file {item}")
            out.append(item.resolve())
    if not out:
        raise BatchError("no posteriors files given")
    return out


@dataclass
class _Plan:
    """Every input's compact index (arrays are never loaded here) and the shard layout.

    What it holds grows with the corpus only by the index: each utterance's id and where
    its array lies, about 50 bytes an utterance (compact :class:`PosteriorsReader` s,
    which hold no open file).
    """

    files: list[Path]
    indexes: list[PosteriorsReader]
    offsets: list[int]  # global index of each file's first utterance
    duplicates: dict[int, str]  # global index -> reason (only the duplicates)
    table: TokenTable
    shard_size: int
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.offsets[-1] + len(self.indexes[-1]) if self.indexes else 0

    @property
    def num_shards(self) -> int:
        return -(-self.total // self.shard_size)

    def shard_range(self, k: int) -> range:
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.total))

    def locate(self, g: int) -> tuple[int, str]:
        f = bisect_right(self.offsets, g) - 1
        return f, self.indexes[f].ids[g - self.offsets[f]]

    def reference(self, g: int) -> tuple[int, int, str, str | None, ArrayLocation | None]:
        """What a worker needs to read and decode utterance ``g`` (see :class:`_UtteranceJob`)."""
        f = bisect_right(self.offsets, g) - 1
        i = g - self.offsets[f]
        index = self.indexes[f]
        return g, f, index.ids[i], self.duplicates.get(g), index.location(i)


def _find_duplicates(indexes: Sequence[PosteriorsReader], files: Sequence[Path]) -> dict[int, str]:
    """Global index -> reason, for every id seen before (in input order).

    Sorts the ids' hashes (16 bytes an utterance, for this call only) instead of holding
    a set of every id.
    """
    import numpy as np

    hashes = np.fromiter((hash(utt_id) for index in indexes for utt_id in index.ids),
                         dtype=np.int64)
    order = np.argsort(hashes, kind="stable")
    ranked = hashes[order]
    del hashes
    equal = np.flatnonzero(ranked[1:] == ranked[:-1])  # ranked[j] == ranked[j + 1]
    del ranked
    runs = np.split(equal, np.flatnonzero(np.diff(equal) != 1) + 1) if equal.size else []
    starts = np.cumsum([0] + [len(index) for index in indexes])
    duplicates: dict[int, str] = {}
    for run in runs:  # utterances whose ids have one hash: equal ids, or a collision
        first: dict[str, int] = {}
        for g in sorted(int(x) for x in order[run[0]:run[-1] + 2]):
            f = int(np.searchsorted(starts, g, side="right")) - 1
            utt_id = indexes[f].ids[g - int(starts[f])]
            if utt_id in first:
                duplicates[g] = (f"utterance {utt_id!r}: duplicate id (first in "
                                 f"{files[first[utt_id]]})")
            else:
                first[utt_id] = f
    return duplicates


def _make_plan(files: list[Path], table: TokenTable | None, options: BatchOptions,
               decoder_id: str) -> _Plan:
    indexes: list[PosteriorsReader] = []
    offsets: list[int] = []
    inputs: list[dict[str, Any]] = []
    n = 0
    for path in files:
        index = _open_reader(path, table, options, compact=True)
        if table is None:
            table = index.token_table
        indexes.append(index)
        offsets.append(n)
        n += len(index)
        digest = hashlib.sha256()
        for i, utt_id in enumerate(index.ids):
            digest.update(("\n" if i else "").encode() + utt_id.encode("utf-8", "surrogatepass"))
        inputs.append({"path": str(path), "bytes": path.stat().st_size,
                       "utterances": len(index), "ids_sha256": digest.hexdigest(),
                       "content": index.fingerprint})
    if table is None:
        raise BatchError(f"{files[0]} carries no token table: pass one (--tokens)")
    if n == 0:
        raise BatchError("the inputs hold no utterances")
    duplicates = _find_duplicates(indexes, files)
    record = {
        "format": FORMAT, "version": PLAN_VERSION, "shard_size": options.shard_size, "utterances": n,
        "kind": options.kind, "frame_shift": options.frame_shift,
        "tolerance": options.tolerance, "allow_empty": options.allow_empty,
        "decoder": decoder_id, "token_table": table.to_dict(), "inputs": inputs,
    }
    return _Plan(files, indexes, offsets, duplicates, table, options.shard_size, record)


# -- work done in the decoding process (or a worker) ------------------------------------
class _UtteranceJob:
    """Reads one utterance by reference, decodes it and returns its output line.

    Given to :func:`decode_parallel` as the "decoder": only references (index, file, id,
    known problem, where the array lies) travel to workers, each worker reads its
    utterances itself: by location when the plan has one (one open file, no index),
    else through a :class:`PosteriorsReader` of the file.
    """

    def __init__(self, decoder: Decoder, files: Sequence[Path], kinds: Sequence[Kind],
                 table: TokenTable, options: BatchOptions) -> None:
        self.decoder = decoder
        self.files = [str(f) for f in files]
        self.kinds = list(kinds)
        self.table = table
        self.options = options
        self._readers: dict[int, Any] = {}  # file -> PosteriorsReader or open file: one at a time

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}}

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def _reader(self, f: int, located: bool) -> Any:
        reader = self._readers.get(f)
        if reader is None:
            for old in list(self._readers):  # utterances come in file order: keep one open
                self._readers.pop(old).close()
            if located:
                try:
                    reader = open(self.files[f], "rb")
                except OSError as exc:
                    raise PosteriorsError(f"{self.files[f]}: not a readable .npz file ({exc})") from None
            else:
                reader = _open_reader(self.files[f], self.table, self.options)
            self._readers[f] = reader
        return reader

    def _load(self, f: int, utt_id: str, loc: ArrayLocation | None) -> Posteriors:
        if loc is None:
            return self._reader(f, False)[utt_id]
        return read_located(self._reader(f, True), loc, utt_id, kind=self.kinds[f],
                            token_table=self.table, tolerance=self.options.tolerance,
                            source=self.files[f])

    def decode(self, ref: tuple[int, int, str, str | None, ArrayLocation | None]
               ) -> tuple[int, bytes]:
        g, f, utt_id, problem, loc = ref
        if problem is None:
            try:
                posteriors = self._load(f, utt_id, loc)
            except (PosteriorsError, KeyError) as exc:
                problem = str(exc).strip("'\"")
            except Exception as exc:  # a damaged archive member: zlib.error, EOFError, ...
                problem = f"utterance {utt_id!r}: cannot be read ({type(exc).__name__}: {exc})"
            else:
                if posteriors.num_frames == 0 and not self.options.allow_empty:
                    problem = f"utterance {utt_id!r}: no frames (empty posteriors)"
                else:
                    try:
                        result = self.decoder.decode(posteriors)
                        row = json.dumps(result.to_dict(self.table), ensure_ascii=False)
                    except Exception as exc:  # one utterance's failure must not stop the run
                        problem = f"utterance {utt_id!r}: decoder failed ({type(exc).__name__}: {exc})"
                    else:
                        return g, _OK + row.encode("utf-8") + b"\n"
        err = {"id": utt_id, "file": self.files[f], "error": problem}
        return g, _ERR + json.dumps(err, ensure_ascii=False).encode("utf-8") + b"\n"


# -- output folder ---------------------------------------------------------------------------
def _shard_path(shards: Path, k: int, suffix: str) -> Path:
    return shards / f"shard-{k:05d}{suffix}"


def _io_error(path: Path, exc: OSError) -> BatchOutputError:
    error = output_error(path, exc)
    return BatchOutputError(error.path, str(error), error.errno)


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    try:
        with atomic_write(path, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
    except OSError as exc:
        raise _io_error(path, exc) from None


def _remove_stale_temporaries(folder: Path) -> None:
    for tmp in folder.glob(".*.tmp"):  # left by atomic_write when a run was killed
        tmp.unlink(missing_ok=True)


class _Journal:
    """The shard in progress: lines appended and flushed one utterance at a time."""

    def __init__(self, path: Path, expected: Sequence[str]) -> None:
        self.path = path
        self.expected = expected
        self.lines: list[bytes] = _read_journal(path, expected)
        self._fh: Any = None

    @property
    def complete(self) -> bool:
        return len(self.lines) == len(self.expected)

    def append(self, line: bytes) -> None:
        try:
            if self._fh is None:
                self._fh = open(self.path, "r+b" if self.path.exists() else "wb")
                self._fh.seek(sum(len(x) for x in self.lines))
                self._fh.truncate()
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            self.close()
            try:  # do not leave a torn line behind
                os.truncate(self.path, sum(len(x) for x in self.lines))
            except OSError:
                pass
            raise _io_error(self.path, exc) from None
        self.lines.append(line)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None


def _line_id(line: bytes) -> str | None:
    for prefix in (_OK, _ERR):
        if line.startswith(prefix):
            try:
                obj = json.loads(line[len(prefix):])
            except ValueError:
                return None
            return obj.get("id") if isinstance(obj, dict) else None
    return None


def _read_journal(path: Path, expected: Sequence[str]) -> list[bytes]:
    """The journal's complete lines that match the expected ids, in order."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines: list[bytes] = []
    for raw in data.split(b"\n")[:-1]:  # the part after the last newline is torn
        if len(lines) == len(expected) or _line_id(raw) != expected[len(lines)]:
            break
        lines.append(raw + b"\n")
    return lines


def _finish_shard(shards: Path, k: int, journal: _Journal) -> None:
    """Write a shard's errors, then its hypotheses (which mark it finished)."""
    journal.close()
    errors = [x[len(_ERR):] for x in journal.lines if x.startswith(_ERR)]
    errors_path = _shard_path(shards, k, ".errors.jsonl")
    if errors:
        _write_atomic(errors_path, errors)
    else:
        errors_path.unlink(missing_ok=True)
    _write_atomic(_shard_path(shards, k, ".jsonl"),
                  (x[len(_OK):] for x in journal.lines if x.startswith(_OK)))
    journal.path.unlink(missing_ok=True)


def _copy_into(path: Path, sources: Iterable[Path]) -> None:
    try:
        with atomic_write(path, "wb") as out:
            for src in sources:
                with open(src, "rb") as fh:
                    shutil.copyfileobj(fh, out)
    except OSError as exc:
        raise _io_error(path, exc) from None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def _prepare_out_dir(out_dir: Path, plan: _Plan, resume: bool) -> None:
    plan_path = out_dir / PLAN
    if plan_path.exists():
        if not resume:
            raise BatchError(f"{out_dir} already holds a batch run ({plan_path}): pass resume=True "
                             "(--resume) to continue it, or choose an empty folder")
        try:
            old = json.loads(plan_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BatchError(f"{plan_path}: unreadable ({exc})") from None
        if not isinstance(old, dict) or old.get("version") != PLAN_VERSION:
            version = old.get("version") if isinstance(old, dict) else None
            raise BatchError(f"cannot resume {out_dir}: its {PLAN} is version {version}, from "
                             f"another asrfuse (this one writes version {PLAN_VERSION}, with "
                             "content fingerprints); use a new folder")
        _check_inputs_unchanged(out_dir, old.get("inputs"), plan.record["inputs"])
        changed = sorted(k for k in set(old) | set(plan.record) if old.get(k) != plan.record.get(k))
        if changed:
            raise BatchError(f"cannot resume {out_dir}: settings changed since the run recorded "
                             f"in {plan_path} ({', '.join(changed)}); use a new folder")
    else:
        if (out_dir / SHARDS).exists() and any((out_dir / SHARDS).iterdir()):
            raise BatchError(f"{out_dir / SHARDS} holds shards but no {PLAN}: choose an empty folder")
        _write_atomic(plan_path, [json.dumps(plan.record, indent=1).encode("utf-8") + b"\n"])


def _check_inputs_unchanged(out_dir: Path, old: Any, new: list[dict[str, Any]]) -> None:
    """Refuse to resume when an input file differs from the one the run began with."""
    if not isinstance(old, list) or [x.get("path") for x in old if isinstance(x, dict)] != [
            x["path"] for x in new]:
        raise BatchError(f"cannot resume {out_dir}: the input files are not the ones the run "
                         f"began with (see {out_dir / PLAN}); use a new folder")
    for was, now in zip(old, new):
        if was != now:
            what = ", ".join(k for k in ("content", "bytes", "utterances", "ids_sha256")
                             if was.get(k) != now.get(k))
            raise BatchError(f"cannot resume {out_dir}: {now['path']} changed since the run "
                             f"began ({what} differ); restore it or use a new folder")


# -- the run ------------------------------------------------------------------------------
def decode_batch(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    decoder: Decoder,
    *,
    table: TokenTable | None = None,
    options: BatchOptions = BatchOptions(),
    resume: bool = False,
    decoder_id: str = "",
    backend: Backend | None = None,
) -> BatchSummary:
    """Decode every utterance of ``inputs`` into ``out_dir`` shard by shard (see module doc).

    Args:
        inputs: posteriors ``.npz`` files and/or list files naming them.
        out_dir: output folder (created); must be empty or hold a run to resume.
        decoder: anything with ``decode(Posteriors) -> DecodeResult`` (picklable when
            ``options.workers > 1``), e.g. :class:`~fusion.decoder.greedy.GreedyDecoder` or
            ``BeamSearchDecoder``.
        table: token table of the posteriors (default: the one stored in the first file).
        options: shard size, workers, reading settings.
        resume: continue the run recorded in ``out_dir``.
        decoder_id: a description of the decoder and its settings; a resumed run must
            give the same one, so shards from two different decoders never mix.
        backend: where utterances are decoded (default: :class:`LocalBackend` with
            ``options.workers``); it does not change the output, so a run may resume
            on another backend.

    Raises:
        BatchError: inputs unreadable or changed, output unwritable or full, or
            ``out_dir`` holding another run.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    files = expand_inputs(inputs)
    try:
        check_outputs({name: out_dir / name for name in (PLAN, HYPS, ERRORS)},
                      {**{f"input {path}": path for path in inputs},
                       **{f"input {path}": path for path in files}})
    except OutputConflict as exc:
        raise BatchError(str(exc)) from None
    except OutputError as exc:
        raise _io_error(exc.path, exc) from None
    try:
        plan = _make_plan(files, table, options, decoder_id)
    except (PosteriorsError, TokenTableError) as exc:
        raise BatchError(str(exc)) from None
    shards = out_dir / SHARDS
    try:
        shards.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / ".lock", "a+b")
    except OSError as exc:
        raise _io_error(out_dir, exc) from None
    try:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"{out_dir} is in use by another batch run") from None
        _remove_stale_temporaries(out_dir)
        _remove_stale_temporaries(shards)
        _prepare_out_dir(out_dir, plan, resume)
        if backend is None:
            # a few utterances per task: the per-task hand-off costs the parent CPU time
            # that the workers need (2 workers on 2 cores)
            backend = LocalBackend(options.workers, options.chunksize * options.workers,
                                   options.threads_per_worker, chunk=max(1, options.chunksize // 4))
        return _run(plan, out_dir, shards, decoder, options, backend, start)
    finally:
        lock.close()


def _run(plan: _Plan, out_dir: Path, shards: Path, decoder: Decoder, options: BatchOptions,
         backend: Backend, start: float) -> BatchSummary:
    pending: list[tuple[int, int]] = []  # (shard, utterances already in its journal)
    skipped_shards = skipped_utts = 0
    for k in range(plan.num_shards):
        span = plan.shard_range(k)
        journal_path = _shard_path(shards, k, ".journal")
        if _shard_path(shards, k, ".jsonl").exists():
            journal_path.unlink(missing_ok=True)
            skipped_shards += 1
            skipped_utts += len(span)
            continue
        journal = _Journal(journal_path, [plan.locate(g)[1] for g in span])
        if journal.complete:  # killed between its last utterance and its shard file
            _finish_shard(shards, k, journal)
            skipped_utts += len(span)
            continue
        skipped_utts += len(journal.lines)
        pending.append((k, len(journal.lines)))

    def references() -> Iterator[tuple[int, int, str, str | None, ArrayLocation | None]]:
        for k, done in pending:
            for g in plan.shard_range(k)[done:]:
                yield plan.reference(g)

    job = _UtteranceJob(decoder, plan.files, [index.kind for index in plan.indexes], plan.table,
                        options)
    results = backend.decode(job, references())
    current: tuple[int, _Journal] | None = None
    bar = tqdm(total=plan.total, initial=skipped_utts, unit="utt", desc="decode",
               disable=None if options.progress is None else not options.progress,
               dynamic_ncols=True)
    try:
        for g, line in results:  # type: ignore[misc]
            k = g // plan.shard_size
            if current is None or current[0] != k:
                span = plan.shard_range(k)
                current = (k, _Journal(_shard_path(shards, k, ".journal"),
                                       [plan.locate(i)[1] for i in span]))
            current[1].append(line)
            bar.update(1)
            if current[1].complete:
                _finish_shard(shards, k, current[1])
                current = None
                bar.set_postfix(shards=f"{k + 1}/{plan.num_shards}", refresh=False)
    finally:
        if current is not None:
            current[1].close()
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()
        job.close()
    return _merge(plan, out_dir, shards, skipped_shards, skipped_utts, start)


def _merge(plan: _Plan, out_dir: Path, shards: Path, skipped_shards: int, skipped_utts: int,
           start: float) -> BatchSummary:
    parts = [_shard_path(shards, k, ".jsonl") for k in range(plan.num_shards)]
    missing = [p for p in parts if not p.exists()]
    if missing:
        raise BatchError(f"{missing[0]}: shard missing after the run (removed by someone?)")
    error_parts = [p for k in range(plan.num_shards)
                   if (p := _shard_path(shards, k, ".errors.jsonl")).exists()]
    hyps = out_dir / HYPS
    _copy_into(hyps, parts)
    errors: Path | None = out_dir / ERRORS
    assert errors is not None
    if error_parts:
        _copy_into(errors, error_parts)
        failed = sum(_count_lines(p) for p in error_parts)
    else:
        errors.unlink(missing_ok=True)
        errors, failed = None, 0
    return BatchSummary(
        out_dir=out_dir, hyps=hyps, errors=errors, utterances=plan.total,
        decoded=plan.total - failed, failed=failed, shards=plan.num_shards,
        shards_skipped=skipped_shards, utterances_skipped=skipped_utts,
        seconds=time.perf_counter() - start)


def stored_token_table(inputs: str | Path, options: BatchOptions = BatchOptions()) -> TokenTable:
    """The token table stored in the first posteriors file of ``inputs`` (a ``.npz`` or a
    list file), read from its index only.

    Raises:
        BatchError: the file is unreadable or carries no token table.
    """
    files = expand_inputs([inputs])
    try:
        table = _open_reader(files[0], None, options, compact=True).token_table
    except PosteriorsError as exc:
        raise BatchError(str(exc)) from None
    if table is None:
        raise BatchError(f"{files[0]} carries no token table: give one (--tokens)")
    return table

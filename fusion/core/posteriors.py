"""Frame posteriors: the T x V natural-log probabilities a CTC model emits for one utterance.

The caller states what an array holds (``log_probs``, ``probs`` or ``logits``); nothing
is guessed. :meth:`Posteriors.from_array` converts to log-probabilities and validates,
with errors that name the utterance and the problem.

Files are ``.npz`` archives holding many utterances, written one utterance at a time by
:class:`PosteriorsWriter` (nothing has to sit in memory) and read lazily by
:class:`PosteriorsReader`. Utterance ids are kept exactly (any string), the token table
and frame shifts travel with the arrays. An ``.npz`` written by another pipeline, one
array per utterance keyed by its id, reads too when the caller states ``kind`` and
``frame_shift``. ``PosteriorsReader(path, compact=True)`` opens an archive of millions of
utterances with flat memory (its zip directory streamed by :mod:`fusion.core.npzindex`), and
hands where each array lies to other processes (:meth:`PosteriorsReader.location`,
:func:`read_located`), as batch runs do.
"""

from __future__ import annotations

import json
import math
import zipfile
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

import numpy as np

from fusion.core.manifest import atomic_write
from fusion.core.npzindex import (IdList, JsonStream, MemberTable, NpzMember, Unsupported,
                                  content_fingerprint, read_member, scan_npz, unicode_text)
from fusion.core.tokens import TokenTable

__all__ = [
    "ArrayLocation",
    "KINDS",
    "Kind",
    "Posteriors",
    "PosteriorsError",
    "PosteriorsReader",
    "PosteriorsWriter",
    "read_located",
    "to_log_probs",
]

Kind = Literal["log_probs", "probs", "logits"]
KINDS: tuple[Kind, ...] = ("log_probs", "probs", "logits")
FORMAT = "asrfuse-posteriors"
_META_KEY = "__asrfuse_meta__"
DEFAULT_TOLERANCE = 1e-3


class PosteriorsError(ValueError):
    """Posteriors that are malformed; the message names the utterance and the problem."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _row_logsumexp(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.sum(np.exp(x - m), axis=1, keepdims=True)))[:, 0]


def to_log_probs(
    array: np.ndarray,
    kind: Kind,
    *,
    utt_id: str = "<utterance>",
    num_tokens: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Validate a T x V array of the stated ``kind`` and return float32 log-probabilities.

    Checks, each failing with :class:`PosteriorsError` naming ``utt_id``: rank 2; ``V``
    equal to ``num_tokens`` when given; no NaN and no ``+inf`` (``-inf`` is a zero
    probability and allowed in ``log_probs`` and ``logits``); rows that are
    distributions within ``tolerance`` (for ``log_probs``: logsumexp of each row is 0;
    for ``probs``: values in [0, 1] summing to 1). ``logits`` are log-softmaxed.
    """
    _check_kind(kind)
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise PosteriorsError(
            f"utterance {utt_id!r}: posteriors must be a 2-D array (frames x tokens), "
            f"got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise PosteriorsError(
            f"utterance {utt_id!r}: posteriors must be floating point, got dtype {arr.dtype}"
        )
    n_frames, vocab = arr.shape
    if num_tokens is not None and vocab != num_tokens:
        raise PosteriorsError(
            f"utterance {utt_id!r}: posteriors have {vocab} columns but the token table "
            f"has {num_tokens} tokens"
        )
    if vocab == 0:
        raise PosteriorsError(f"utterance {utt_id!r}: posteriors have no token columns")
    x = arr.astype(np.float64, copy=False)
    if np.isnan(x).any():
        t = int(np.argwhere(np.isnan(x))[0, 0])
        raise PosteriorsError(f"utterance {utt_id!r}: NaN in posteriors (first at frame {t})")
    if np.isposinf(x).any():
        t = int(np.argwhere(np.isposinf(x))[0, 0])
        raise PosteriorsError(f"utterance {utt_id!r}: +inf in posteriors (first at frame {t})")
    if n_frames == 0:
        return np.zeros((0, vocab), dtype=np.float32)

    if kind == "probs":
        if np.isneginf(x).any() or (x < -tolerance).any() or (x > 1 + tolerance).any():
            t = int(np.argwhere(np.isneginf(x) | (x < -tolerance) | (x > 1 + tolerance))[0, 0])
            raise PosteriorsError(
                f"utterance {utt_id!r}: frame {t} has values outside [0, 1], so these are "
                "not probabilities (state kind='log_probs' or 'logits' if that is what they are)"
            )
        sums = x.sum(axis=1)
        bad = np.abs(sums - 1.0) > tolerance
        if bad.any():
            t = int(np.argmax(bad))
            raise PosteriorsError(
                f"utterance {utt_id!r}: probabilities of frame {t} sum to {sums[t]:.6g}, "
                f"not 1 (tolerance {tolerance}); state kind='logits' for unnormalised scores"
            )
        with np.errstate(divide="ignore"):
            out = np.log(np.clip(x, 0.0, None) / sums[:, None])
    elif kind == "log_probs":
        lse = _row_logsumexp(x)
        bad = ~(np.abs(lse) <= tolerance)
        if bad.any():
            t = int(np.argmax(bad))
            raise PosteriorsError(
                f"utterance {utt_id!r}: frame {t} is not a log-probability distribution "
                f"(logsumexp {lse[t]:.6g}, expected 0 within {tolerance}); state "
                "kind='logits' for unnormalised scores or kind='probs' for probabilities"
            )
        out = x - lse[:, None]
    else:  # logits
        lse = _row_logsumexp(x)
        if np.isneginf(lse).any():
            t = int(np.argmax(np.isneginf(lse)))
            raise PosteriorsError(f"utterance {utt_id!r}: every logit of frame {t} is -inf")
        out = x - lse[:, None]
    return out.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Posteriors:
    """Log-probabilities of one utterance.

    Attributes:
        utt_id: utterance id.
        log_probs: float32 array, frames x tokens, natural-log probabilities.
        frame_shift: seconds between frames (e.g. 0.04 for 4x subsampled 10 ms frames).
    """

    utt_id: str
    log_probs: np.ndarray
    frame_shift: float

    def __post_init__(self) -> None:
        if not isinstance(self.utt_id, str) or not self.utt_id:
            raise PosteriorsError(f"utterance id must be a non-empty string, got {self.utt_id!r}")
        if not (isinstance(self.frame_shift, (int, float)) and math.isfinite(self.frame_shift)
                and self.frame_shift > 0):
            raise PosteriorsError(
                f"utterance {self.utt_id!r}: frame_shift must be a positive number of seconds, "
                f"got {self.frame_shift!r}"
            )
        arr = np.asarray(self.log_probs)
        if arr.ndim != 2:
            raise PosteriorsError(
                f"utterance {self.utt_id!r}: posteriors must be a 2-D array (frames x tokens), "
                f"got shape {arr.shape}"
            )
        arr = arr.astype(np.float32, copy=False)
        arr.flags.writeable = False
        object.__setattr__(self, "log_probs", arr)
        object.__setattr__(self, "frame_shift", float(self.frame_shift))

    @classmethod
    def from_array(
        cls,
        utt_id: str,
        array: np.ndarray,
        *,
        kind: Kind,
        frame_shift: float,
        token_table: TokenTable | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> Posteriors:
        """Validate ``array`` of the stated ``kind`` and wrap it (see :func:`to_log_probs`)."""
        num_tokens = len(token_table) if token_table is not None else None
        log_probs = to_log_probs(
            array, kind, utt_id=utt_id, num_tokens=num_tokens, tolerance=tolerance
        )
        return cls(utt_id=utt_id, log_probs=log_probs, frame_shift=frame_shift)

    @property
    def num_frames(self) -> int:
        return int(self.log_probs.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.log_probs.shape[1])

    @property
    def duration(self) -> float:
        """Seconds covered by the frames."""
        return self.num_frames * self.frame_shift


class PosteriorsWriter:
    """Write utterances into an ``.npz`` one at a time; the file appears whole on close.

    Example::

        with PosteriorsWriter("dev.npz", token_table=table) as writer:
            for p in posteriors:
                writer.write(p)

    The archive is written to a temporary file renamed over ``path`` on a clean close,
    so an interrupted run never leaves a partial ``path``.
    """

    def __init__(self, path: str | Path, *, token_table: TokenTable | None = None,
                 compress: bool = False) -> None:
        self.path = Path(path)
        self.token_table = token_table
        self._compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self._entries: list[dict] = []
        self._ids: set[str] = set()
        self._ctx = atomic_write(self.path, "wb")
        self._zip = zipfile.ZipFile(self._ctx.__enter__(), "w", self._compression, allowZip64=True)

    def write(self, posteriors: Posteriors) -> None:
        if posteriors.utt_id in self._ids:
            raise PosteriorsError(f"utterance {posteriors.utt_id!r} written twice to {self.path}")
        if self.token_table is not None and posteriors.num_tokens != len(self.token_table):
            raise PosteriorsError(
                f"utterance {posteriors.utt_id!r}: posteriors have {posteriors.num_tokens} "
                f"columns but the token table has {len(self.token_table)} tokens"
            )
        key = f"u{len(self._entries)}"
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(posteriors.log_probs))
        self._entries.append(
            {"id": posteriors.utt_id, "key": key, "frame_shift": posteriors.frame_shift}
        )
        self._ids.add(posteriors.utt_id)

    def close(self) -> None:
        meta = {
            "format": FORMAT,
            "version": 1,
            "kind": "log_probs",
            "token_table": self.token_table.to_dict() if self.token_table else None,
            "utterances": self._entries,
        }
        with self._zip.open(f"{_META_KEY}.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array(json.dumps(meta, ensure_ascii=False)))
        self._zip.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was."""
        self._zip.close()
        try:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def __enter__(self) -> PosteriorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ArrayLocation(NamedTuple):
    """Where one utterance's array lies in an archive: with an open file, all that
    :func:`read_located` needs (no index), so it can travel to another process."""

    member: NpzMember
    frame_shift: float


def read_located(fh: BinaryIO, location: ArrayLocation, utt_id: str, *, kind: Kind,
                 token_table: TokenTable | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 source: str | Path = "<archive>") -> Posteriors:
    """Read and validate the utterance at ``location`` of the open archive ``fh``, as
    :class:`PosteriorsReader` reads and reports it (errors name ``source``)."""
    try:
        array = read_member(fh, location.member)
    except Exception as exc:  # zlib.error, EOFError, BadZipFile (CRC), ...
        raise PosteriorsError(f"{source}: utterance {utt_id!r} cannot be read ({exc})") from None
    return Posteriors.from_array(utt_id, array, kind=kind, frame_shift=location.frame_shift,
                                 token_table=token_table, tolerance=tolerance)


def _check_stored_table(path: Path, meta_table: object,
                        token_table: TokenTable | None) -> TokenTable | None:
    """The token table stored in metadata, checked against the one given."""
    stored = (TokenTable.from_dict(meta_table, source=f"{path} token table")  # type: ignore[arg-type]
              if meta_table else None)
    if token_table is not None and stored is not None and token_table != stored:
        raise PosteriorsError(f"{path}: the file's token table differs from the one given")
    return stored


@dataclass
class _CompactIndex:
    """What compact mode keeps: ids, and where each one's array lies (``members`` and
    ``shifts`` are ``None`` for a file read the normal way)."""

    ids: IdList
    kind: Kind
    token_table: TokenTable | None
    fingerprint: str
    members: MemberTable | None = None
    shifts: array | None = None


def _stream_index(path: Path, kind: Kind | None, frame_shift: float | None,
                  token_table: TokenTable | None) -> _CompactIndex:
    """The compact index of ``path``, its zip directory and metadata read a chunk at a time
    (:class:`fusion.core.npzindex.Unsupported` for what it does not handle)."""
    with open(path, "rb") as fh:
        members, meta, fingerprint = scan_npz(fh, _META_KEY)
        if meta is None:  # a plain .npz: one array per utterance, keyed by its id
            if kind is None or frame_shift is None:
                raise Unsupported("plain .npz without kind and frame shift")
            _check_kind(kind)
            shifts = array("d", [float(frame_shift)]) * len(members)
            return _CompactIndex(members.keys, kind, token_table, fingerprint, members, shifts)
        ids, shifts = IdList(), array("d")
        head: dict[str, Any] = {}
        text = JsonStream(unicode_text(fh, meta))
        text.take("{")
        while not (not head and text.peek() == "}"):
            key = text.value()
            text.take(":")
            if not isinstance(key, str) or key in head:
                raise Unsupported("odd metadata")
            if key == "utterances" and text.peek() == "[":
                text.take("[")
                while not (len(ids) == 0 and text.peek() == "]"):
                    entry = text.value()
                    try:
                        utt_id, member = str(entry["id"]), str(entry["key"])
                        shifts.append(float(entry["frame_shift"]))
                    except Exception:
                        raise Unsupported("odd utterance entry") from None
                    if len(ids) >= len(members) or members.keys[len(ids)] != member:
                        raise Unsupported("utterances not in member order")
                    ids.append(utt_id)
                    if text.take(",]") == "]":
                        break
                else:
                    text.take("]")  # an empty list
                head[key] = True
            else:
                head[key] = text.value()
            if text.take(",}") == "}":
                break
        else:
            text.take("}")  # an empty object
        if text.peek() or head.get("utterances") is not True or len(ids) != len(members):
            raise Unsupported("odd metadata")
    if head.get("format") != FORMAT or head.get("kind") not in KINDS:
        raise Unsupported("not asrfuse metadata")
    if kind is not None and kind != head["kind"]:
        raise Unsupported("kind differs")
    try:
        stored = _check_stored_table(path, head.get("token_table"), token_table)
    except Exception:
        raise Unsupported("odd or different token table") from None
    return _CompactIndex(ids, head["kind"], token_table or stored, fingerprint, members, shifts)


class PosteriorsReader:
    """Lazy reader of a posteriors ``.npz``: arrays load one utterance at a time.

    Files written by :class:`PosteriorsWriter` carry their kind, frame shifts and token
    table. For a plain ``.npz`` (one array per utterance, keyed by id) pass ``kind`` and
    ``frame_shift``. Every array is validated when read (:func:`to_log_probs`).

    ``compact=True`` opens a huge archive with flat memory: instead of :mod:`zipfile`'s
    ``ZipInfo`` per member, the parsed metadata and id tables (about 1 KiB an
    utterance), the zip directory and the metadata are read a chunk at a time and only
    each utterance's id and where its array lies are kept (about 50 bytes an
    utterance, :mod:`fusion.core.npzindex`); :meth:`location` hands that place to another
    process (:func:`read_located`). The file is open only while arrays are read. An
    archive this mode does not handle (members that are not ``.npy``, metadata not as
    :class:`PosteriorsWriter` writes it, damage) is read the normal way, with the same
    results and errors. Both modes give the same ids, arrays and errors.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        kind: Kind | None = None,
        frame_shift: float | None = None,
        token_table: TokenTable | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        compact: bool = False,
    ) -> None:
        self.path = Path(path)
        self.tolerance = tolerance
        self._compact: _CompactIndex | None = None
        self._fh: BinaryIO | None = None  # compact mode: the archive, open while reading
        self._normal: PosteriorsReader | None = None  # compact mode, unhandled file
        self._hash_order: tuple[np.ndarray, np.ndarray] | None = None
        if compact:
            self._open_compact(kind, frame_shift, token_table)
        else:
            self._open_npz(kind, frame_shift, token_table)

    def _open_npz(self, kind: Kind | None, frame_shift: float | None,
                  token_table: TokenTable | None) -> None:
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise PosteriorsError(f"{self.path}: not a readable .npz file ({exc})") from None
        try:
            # our own handle: np.load leaks its file when a damaged archive fails to open
            npz = np.load(self._file, allow_pickle=False)
        except Exception as exc:  # np.load raises many types on a damaged file
            self._file.close()
            raise PosteriorsError(f"{self.path}: not a readable .npz file ({exc})") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            self._file.close()
            raise PosteriorsError(f"{self.path}: a single .npy array, not an .npz archive")
        npz.fid = self._file  # closed with the archive (NpzFile.close and its __del__)
        self._npz = npz
        try:
            self._read_header(kind, frame_shift, token_table)
        except Exception as exc:
            self._npz.close()
            if isinstance(exc, PosteriorsError):
                raise
            raise PosteriorsError(
                f"{self.path}: corrupt metadata ({type(exc).__name__}: {exc})") from None

    def _open_compact(self, kind: Kind | None, frame_shift: float | None,
                      token_table: TokenTable | None) -> None:
        try:
            index = _stream_index(self.path, kind, frame_shift, token_table)
        except Exception:  # Unsupported, or damage: the normal way says what is wrong
            with PosteriorsReader(self.path, kind=kind, frame_shift=frame_shift,
                                  token_table=token_table, tolerance=self.tolerance) as normal:
                ids = IdList()
                for utt_id in normal.ids:
                    ids.append(utt_id)
                index = _CompactIndex(ids, normal.kind, normal.token_table,
                                      content_fingerprint(self.path))
        self._compact = index
        self._frame_shift = frame_shift  # to read the normal way, when needed
        self.kind = index.kind
        self.token_table = index.token_table

    def _read_header(self, kind: Kind | None, frame_shift: float | None,
                     token_table: TokenTable | None) -> None:
        keys = list(self._npz.files)
        if _META_KEY in keys:
            meta = json.loads(str(self._npz[_META_KEY]))
            if not isinstance(meta, dict):
                raise PosteriorsError(f"{self.path}: corrupt metadata (not a JSON object)")
            if meta.get("format") != FORMAT:
                raise PosteriorsError(f"{self.path}: unknown format {meta.get('format')!r}")
            stored_table = _check_stored_table(self.path, meta.get("token_table"), token_table)
            if meta.get("kind") not in KINDS:
                raise PosteriorsError(f"{self.path}: corrupt metadata (kind {meta.get('kind')!r})")
            if kind is not None and kind != meta["kind"]:
                raise PosteriorsError(
                    f"{self.path}: file holds {meta['kind']!r}, but kind={kind!r} was stated"
                )
            self.kind: Kind = meta["kind"]
            self.token_table = token_table or stored_table
            self._entries = [(str(e["id"]), str(e["key"]), float(e["frame_shift"]))
                             for e in meta["utterances"]]
        else:
            if kind is None or frame_shift is None:
                raise PosteriorsError(
                    f"{self.path}: a plain .npz (no asrfuse metadata) needs kind= and "
                    "frame_shift= stated by the caller"
                )
            _check_kind(kind)
            self.kind = kind
            self.token_table = token_table
            self._entries = [(k, k, float(frame_shift)) for k in keys]
        self._by_id = {utt_id: i for i, (utt_id, _, _) in enumerate(self._entries)}

    @property
    def ids(self) -> Sequence[str]:
        """Utterance ids in file order (a list; in compact mode a compact sequence)."""
        if self._compact is not None:
            return self._compact.ids
        return [e[0] for e in self._entries]

    @property
    def fingerprint(self) -> str:
        """The archive's :func:`fusion.core.npzindex.content_fingerprint` (free in compact mode)."""
        if self._compact is not None:
            return self._compact.fingerprint
        return content_fingerprint(self.path)

    def location(self, index: int) -> ArrayLocation | None:
        """Where utterance ``index`` (a position in :attr:`ids`) lies, for
        :func:`read_located`; ``None`` unless compact mode streamed this file."""
        c = self._compact
        if c is None or c.members is None or c.shifts is None:
            return None
        return ArrayLocation(c.members[index], c.shifts[index])

    def __len__(self) -> int:
        return len(self._compact.ids) if self._compact is not None else len(self._entries)

    def _position(self, utt_id: object) -> int | None:
        if self._compact is None:
            return self._by_id.get(utt_id)  # type: ignore[arg-type]
        if not isinstance(utt_id, str):
            return None
        ids = self._compact.ids
        if self._hash_order is None:  # 16 bytes an utterance, built on the first look-up
            hashes = np.fromiter((hash(x) for x in ids), dtype=np.int64, count=len(ids))
            order = np.argsort(hashes, kind="stable")
            self._hash_order = (hashes[order], order)
        ranked, order = self._hash_order
        h = hash(utt_id)
        lo, hi = np.searchsorted(ranked, h, "left"), np.searchsorted(ranked, h, "right")
        for i in reversed(order[lo:hi]):  # the last of equal ids, as the normal mode
            if ids[int(i)] == utt_id:
                return int(i)
        return None

    def __contains__(self, utt_id: object) -> bool:
        return self._position(utt_id) is not None

    def _load(self, index: int) -> Posteriors:
        if self._compact is not None:
            return self._load_compact(index)
        utt_id, key, shift = self._entries[index]
        try:
            array = self._npz[key]
        except Exception as exc:  # zlib.error, EOFError, BadZipFile (CRC), ...
            raise PosteriorsError(f"{self.path}: utterance {utt_id!r} cannot be read ({exc})") from None
        return Posteriors.from_array(
            utt_id, array, kind=self.kind, frame_shift=shift,
            token_table=self.token_table, tolerance=self.tolerance,
        )

    def _load_compact(self, index: int) -> Posteriors:
        utt_id = self._compact.ids[index]  # type: ignore[union-attr]
        location = self.location(index)
        if location is None:  # a file compact mode reads the normal way
            if self._normal is None:
                self._normal = PosteriorsReader(self.path, kind=self.kind,
                                                frame_shift=self._frame_shift,
                                                token_table=self.token_table,
                                                tolerance=self.tolerance)
            return self._normal[utt_id]
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")
            except OSError as exc:
                raise PosteriorsError(f"{self.path}: not a readable .npz file ({exc})") from None
        return read_located(self._fh, location, utt_id, kind=self.kind,
                            token_table=self.token_table, tolerance=self.tolerance,
                            source=self.path)

    def __getitem__(self, utt_id: str) -> Posteriors:
        index = self._position(utt_id)
        if index is None:
            raise KeyError(f"{self.path}: no utterance {utt_id!r}")
        return self._load(index)

    def __iter__(self) -> Iterator[Posteriors]:
        for i in range(len(self)):
            yield self._load(i)

    def close(self) -> None:
        """Close the archive (compact mode: the files opened to read arrays; its index
        stays and a later read opens the file again)."""
        if self._compact is None:
            self._npz.close()
            return
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._normal is not None:
            self._normal.close()
            self._normal = None

    def __enter__(self) -> PosteriorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

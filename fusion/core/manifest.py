"""JSONL manifests (NeMo/lhotse style) and hypothesis files.

A manifest line is one utterance: ``{"id": ..., "audio": ..., "text": ..., "duration": ...}``.
``audio`` paths that are relative resolve against the manifest's folder. Keys other than
these four are kept in :attr:`Utterance.extra` and written back unchanged.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURES",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "ManifestError",
    "OutputConflict",
    "OutputError",
    "Utterance",
    "atomic_write",
    "check_outputs",
    "current_umask",
    "output_error",
    "iter_jsonl",
    "read_manifest",
    "write_failures",
    "write_jsonl",
    "write_manifest",
]

_KNOWN = ("id", "audio", "text", "duration")


#: Exit statuses of every ``fusion`` command.
EXIT_OK = 0  #: everything done
EXIT_FAILURES = 1  #: ran to the end, but some utterances failed (listed in the errors file)
EXIT_BAD_INPUT = 2  #: bad input or arguments (an output that would overwrite an input included)
EXIT_OUTPUT = 74  #: an output file cannot be written (sysexits.h's EX_IOERR); names the file


class ManifestError(ValueError):
    """A manifest or JSONL file that cannot be read; the message names file and line."""


class OutputError(OSError):
    """An output file that cannot be created or written (disk full, read-only folder, ...).

    The message names the file and the problem; commands exit with :data:`EXIT_OUTPUT`.
    """

    def __init__(self, path: str | Path, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.errno = code


class OutputConflict(ValueError):
    """An output that would overwrite an input, or two outputs that are one file."""


_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system", errno.ENOTDIR: "a part of the path is not a folder",
            errno.EISDIR: "it is a folder", errno.ENOENT: "the folder does not exist"}


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """``exc``, raised while writing ``path``, as a one-line :class:`OutputError`."""
    if isinstance(exc, OutputError):
        return exc
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(path, f"cannot write {path}: {reason}", exc.errno)


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """A file's resolved path (symbolic links followed) and, when it exists, its device
    and inode (one file under two names: hard links)."""
    try:
        st = path.stat()
    except OSError:
        return path.resolve(), None
    return path.resolve(), (st.st_dev, st.st_ino)


def _probe_writable(path: Path) -> None:
    """Raise :class:`OutputError` unless a file can be created where ``path`` goes (in its
    folder, or the nearest folder above it that exists, which :func:`atomic_write` would
    create it under). Leaves nothing behind."""
    if path.is_dir():
        raise OutputError(path, f"cannot write {path}: it is a folder", errno.EISDIR)
    folder = path.parent
    while not folder.exists():
        if folder.is_symlink():  # a dangling link: mkdir would fail on it
            raise OutputError(path, f"cannot write {path}: {folder} is a broken link",
                              errno.ENOENT)
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(path, f"cannot write {path}: {folder} is not a folder", errno.ENOTDIR)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    os.unlink(probe)


def check_outputs(outputs: Mapping[str, str | Path | None],
                  inputs: Mapping[str, str | Path | None] = {}) -> None:
    """Refuse, before anything runs, outputs that would overwrite an input or each other,
    and outputs that cannot be written. Every command that writes files calls this.

    Args:
        outputs: what each output is called on the command line (``"-o"``, ``"--ctm"``)
            and its path; ``None`` entries are skipped.
        inputs: the same for the inputs (``"posteriors"``, ``"--lm"``, ...).

    Raises:
        OutputConflict: an output is an input (same path, a symbolic or a hard link to
            it), or two outputs are one file.
        OutputError: an output's folder cannot be written (read-only, missing permission,
            not a folder, ...).
    """
    seen: dict[Path | tuple[int, int], tuple[str, Path]] = {}
    for name, raw in inputs.items():
        if raw is not None:
            resolved, inode = _identity(Path(raw))
            for key in (resolved, inode):
                if key is not None:
                    seen.setdefault(key, (name, Path(raw)))
    outs = [(name, Path(p)) for name, p in outputs.items() if p is not None]
    written: dict[Path | tuple[int, int], tuple[str, Path]] = {}
    for name, path in outs:
        keys = [key for key in _identity(path) if key is not None]
        for key in keys:
            if key in seen:
                in_name, in_path = seen[key]
                raise OutputConflict(f"{name} {path} is the input {in_name} {in_path}: "
                                     "refusing to overwrite an input; choose another output")
            if key in written:
                other_name, other = written[key]
                raise OutputConflict(f"{name} {path} and {other_name} {other} are one file: "
                                     "choose different outputs")
        written.update((key, (name, path)) for key in keys)
    for _, path in outs:
        _probe_writable(path)


@dataclass(frozen=True)
class Utterance:
    """One manifest entry. ``audio`` is absolute after reading; ``text`` may be ``None``."""

    id: str
    audio: str | None = None
    text: str | None = None
    duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.audio is not None:
            audio = Path(self.audio)
            if relative_to is not None and audio.is_absolute():
                try:
                    audio = audio.relative_to(relative_to.resolve())
                except ValueError:
                    pass
            out["audio"] = str(audio)
        if self.text is not None:
            out["text"] = self.text
        if self.duration is not None:
            out["duration"] = self.duration
        out.update(self.extra)
        return out


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, obj


def _parse_utterance(obj: dict[str, Any], where: str, base: Path) -> Utterance:
    utt_id = obj.get("id")
    if not isinstance(utt_id, str) or not utt_id:
        raise ManifestError(f"{where}: 'id' must be a non-empty string, got {utt_id!r}")
    audio = obj.get("audio")
    if audio is not None:
        if not isinstance(audio, str) or not audio:
            raise ManifestError(f"{where}: utterance {utt_id!r}: 'audio' must be a path string")
        audio = str(Path(audio) if Path(audio).is_absolute() else base / audio)
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise ManifestError(f"{where}: utterance {utt_id!r}: 'text' must be a string")
    duration = obj.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            raise ManifestError(f"{where}: utterance {utt_id!r}: 'duration' must be a number")
        if not math.isfinite(duration) or duration < 0:
            raise ManifestError(
                f"{where}: utterance {utt_id!r}: 'duration' must be finite and >= 0, "
                f"got {duration}"
            )
        duration = float(duration)
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    return Utterance(id=utt_id, audio=audio, text=text, duration=duration, extra=extra)


def read_manifest(path: str | Path, *, require: Iterable[str] = ()) -> list[Utterance]:
    """Read a JSONL manifest.

    Args:
        path: the manifest file.
        require: fields every line must have (any of ``audio``, ``text``, ``duration``).

    Raises:
        ManifestError: naming file, line and utterance for bad JSON, a missing or
            duplicate id, a missing required field or a field of the wrong type.
    """
    path = Path(path)
    base = path.resolve().parent
    required = tuple(require)
    for name in required:
        if name not in _KNOWN[1:]:
            raise ValueError(f"require: {name!r} is not one of {_KNOWN[1:]}")
    seen: dict[str, int] = {}
    out: list[Utterance] = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        utt = _parse_utterance(obj, where, base)
        if utt.id in seen:
            raise ManifestError(f"{where}: duplicate id {utt.id!r} (first on line {seen[utt.id]})")
        seen[utt.id] = lineno
        for name in required:
            if getattr(utt, name) is None:
                raise ManifestError(f"{where}: utterance {utt.id!r} has no {name!r}")
        out.append(utt)
    return out


def current_umask() -> int:
    """This process's umask (read from ``/proc`` where it can be, which leaves it alone)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _sweep_temporaries(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers that were killed (``kill -9``, the
    OOM killer): their names carry the writer's process id, and that process is gone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or an exception (``KeyboardInterrupt`` and ``SystemExit`` included, which
    ``fusion`` raises on SIGINT and SIGTERM) leaves any earlier ``path`` untouched and
    no partial file. The temporary file's name carries this process's id
    (``.NAME.PID.XXXXXXXX.tmp``): one left by a writer that was killed outright is
    removed by the next ``atomic_write`` of the same ``path``. The file gets the
    permissions the umask gives a new file (``0o666 & ~umask``), not ``mkstemp``'s 0600.

    Raises:
        OutputError: the file cannot be created, flushed or renamed into place (errors of
            the caller's own writes to the file object are the caller's to report).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise output_error(path, exc) from None
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise output_error(path, exc) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write dicts as JSONL atomically; returns the number of lines written."""
    n = 0
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> int:
    """Write a manifest; audio paths under the manifest's folder are stored relative."""
    base = Path(path).parent
    return write_jsonl(path, (u.to_dict(relative_to=base) for u in utterances))


def write_failures(path: str | Path, failures: Sequence[dict[str, Any]], *, total: int,
                   command: str) -> int:
    """Record a command's failed utterances in ``path`` (JSONL) and say so on stderr.

    With no failures, a ``path`` left by an earlier run is removed (a clean run leaves no
    stale failure list). When ``path`` cannot be written, the failures are printed on
    stderr instead, one JSON object a line after a line that says so: they are never lost.

    Returns:
        the exit status: :data:`EXIT_OK`, :data:`EXIT_FAILURES`, or :data:`EXIT_OUTPUT`
        when ``path`` could not be written.
    """
    path = Path(path)
    if not failures:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            print(f"{command}: warning: cannot remove the stale failure list {path} "
                  f"({exc.strerror})", file=sys.stderr)
        return EXIT_OK
    rows = [json.dumps(f, ensure_ascii=False) + "\n" for f in failures]
    try:
        with atomic_write(path) as fh:
            try:
                fh.writelines(rows)
            except OSError as exc:
                raise output_error(path, exc) from None
    except OSError as exc:
        print(f"{command}: error: {output_error(path, exc)}; the {len(failures)} failed "
              "utterances follow on stderr instead:", file=sys.stderr)
        sys.stderr.writelines(rows)
        return EXIT_OUTPUT
    print(f"{command}: {len(failures)} of {total} utterances failed; see {path}", file=sys.stderr)
    return EXIT_FAILURES

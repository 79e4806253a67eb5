"""JSONL manifests (NeMo/lhotse style) and hypothesis files.

A manifest line is one utterance: ``{"id": ..., "audio": ..., "text": ..., "duration": ...}``.
``audio`` paths that are relative resolve against the manifest's folder. Keys other than
these four are kept in :attr:`Utterance.extra` and written back unchanged.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ManifestError",
    "Utterance",
    "atomic_write",
    "iter_jsonl",
    "read_manifest",
    "write_jsonl",
    "write_manifest",
]

_KNOWN = ("id", "audio", "text", "duration")


class ManifestError(ValueError):
    """A manifest or JSONL file that cannot be read; the message names file and line."""


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


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or an exception leaves any earlier ``path`` untouched and no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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

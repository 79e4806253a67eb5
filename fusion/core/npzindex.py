"""Streamed reading of ``.npz`` archives (zips of ``.npy`` members) with flat memory.

:mod:`zipfile` (and so ``np.load``) keeps a ``ZipInfo`` per member, about 1 KiB each,
for as long as an archive is open. Here the zip central directory is read a chunk at a
time and only what reading a member needs is kept, in flat arrays (:class:`MemberTable`,
about 40 bytes a member plus its name); a member is read with an open file and its
:class:`NpzMember` alone (:func:`read_member`), its CRC-32 checked as :mod:`zipfile`
checks it. :func:`unicode_text` and :class:`JsonStream` read a large JSON document
stored as a 0-d unicode ``.npy`` member one piece at a time.

What this module does not handle (encrypted members, compression other than stored or
deflated, damage) raises :class:`Unsupported`, or the error :mod:`zipfile` would raise
for a damaged member; callers then read the archive through ``np.load``.
:mod:`fusion.core.posteriors` builds its compact reading mode on it.

:func:`content_fingerprint` names what any file holds (a hash of a zip's directory, or of
the bytes of anything else).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import re
import struct
import sys
import zipfile
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

__all__ = [
    "IdList",
    "JsonStream",
    "MemberDigest",
    "MemberTable",
    "NpzMember",
    "Unsupported",
    "content_fingerprint",
    "read_member",
    "scan_npz",
    "unicode_text",
]

CHUNK = 1 << 16
_WS = re.compile(r"[ \t\n\r]*")
_JSON = json.JSONDecoder()
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


class Unsupported(Exception):
    """An archive (or part of one) that streamed reading does not handle."""


class IdList:
    """Strings in one ``bytes`` blob with their end offsets: ~9 bytes each beyond the text."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        self._blob += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._blob))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        if i < 0:
            i += len(self._ends)
        start = self._ends[i - 1] if i else 0
        return self._blob[start:self._ends[i]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class NpzMember(NamedTuple):
    """Where one ``.npy`` member of an archive lies (all a reader with an open file needs).

    Attributes:
        key: the member's name without ``.npy`` (the key ``np.load`` gives it).
        offset: byte offset of its local file header.
        size: compressed size in bytes.
        method: ``zipfile.ZIP_STORED`` or ``zipfile.ZIP_DEFLATED``.
        crc: CRC-32 of the uncompressed bytes.
    """

    key: str
    offset: int
    size: int
    method: int
    crc: int

    @property
    def name(self) -> str:
        return self.key + ".npy"


class MemberTable:
    """:class:`NpzMember` s in flat arrays: ~25 bytes a member beyond its key's text."""

    def __init__(self) -> None:
        self.keys = IdList()
        self._offset, self._size = array("q"), array("q")
        self._method, self._crc = array("B"), array("L")

    def append(self, member: NpzMember) -> None:
        self.keys.append(member.key)
        self._offset.append(member.offset)
        self._size.append(member.size)
        self._method.append(member.method)
        self._crc.append(member.crc)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> NpzMember:
        return NpzMember(self.keys[i], self._offset[i], self._size[i], self._method[i],
                         self._crc[i])


class MemberDigest:
    """SHA-256 over a zip's members as its central directory lists them: name, compressed
    size, method and the CRC-32 of the uncompressed bytes."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, name: str, size: int, method: int, crc: int) -> None:
        self._hash.update(f"{name}\0{size}\0{method}\0{crc}\n".encode("utf-8", "surrogatepass"))

    def hexdigest(self) -> str:
        return "zip-crc32:" + self._hash.hexdigest()


def content_fingerprint(path: str | Path) -> str:
    """What ``path`` holds, in a short string that changes when its content does.

    A zip (every ``.npz``, a torch checkpoint): a hash of its members' names, sizes and
    CRC-32s, read from the central directory alone (a zip stores each member's CRC there,
    and reading a member checks it), so a multi-GB file costs a directory read. Anything
    else: SHA-256 of the bytes, read 1 MiB at a time. :func:`scan_npz` gives the same
    fingerprint for an ``.npz``.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            digest = MemberDigest()
            for info in archive.infolist():
                digest.add(info.filename, info.compress_size, info.compress_type, info.CRC)
            return digest.hexdigest()
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    whole = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            whole.update(block)
    return "sha256:" + whole.hexdigest()


def _zip_members(fh: BinaryIO) -> Iterator[tuple[str, int, int, int, int]]:
    """``(name, header offset, compressed size, method, crc)`` of every member, read from the
    central directory a chunk at a time (as :mod:`zipfile` reads it, without its ZipInfos)."""
    size = fh.seek(0, os.SEEK_END)
    tail_at = max(0, size - (22 + 0xFFFF))
    fh.seek(tail_at)
    tail = fh.read()
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        raise Unsupported("no end of central directory")
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", tail[pos:pos + 22])
    concat = tail_at + pos - cd_size - cd_offset
    locator = tail[pos - 20:pos] if pos >= 20 else b""
    # as zipfile does, follow a zip64 end record whenever its locator is there: Python
    # writes one for a directory past 2 GiB even when the plain record's values fit
    if len(locator) == 20 and locator[:4] == b"PK\x06\x07":
        fh.seek(struct.unpack("<Q", locator[8:16])[0])
        record = fh.read(56)
        if len(record) != 56 or record[:4] != b"PK\x06\x06":
            raise Unsupported("zip64 end record missing")
        count, cd_size, cd_offset = struct.unpack("<32xQQQ", record)
        concat = tail_at + pos - cd_size - cd_offset - 76
    elif count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise Unsupported("zip64 locator missing")
    fh.seek(cd_offset + concat)
    buf, at = b"", 0

    def take(n: int) -> bytes:
        nonlocal buf, at
        if len(buf) - at < n:
            more = fh.read(max(CHUNK, n))
            buf, at = buf[at:] + more, 0
            if len(buf) < n:
                raise Unsupported("central directory truncated")
        out = buf[at:at + n]
        at += n
        return out

    for _ in range(count):
        (sig, flags, method, crc, csize, usize, name_len, extra_len, comment_len,
         offset) = struct.unpack("<4s4xHH4xLLLHHH8xL", take(46))
        if sig != b"PK\x01\x02" or flags & 0x1:
            raise Unsupported("bad or encrypted central directory entry")
        raw = take(name_len)
        extra = take(extra_len)
        take(comment_len)
        if 0xFFFFFFFF in (csize, usize, offset):
            values = _zip64_extra(extra)
            if usize == 0xFFFFFFFF:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF:
                offset = values.pop(0)
        name = raw.decode("utf-8" if flags & 0x800 else "cp437")
        yield name, offset + concat, csize, method, crc


def _zip64_extra(extra: bytes) -> list[int]:
    while len(extra) >= 4:
        tag, length = struct.unpack("<HH", extra[:4])
        if tag == 1:
            body = extra[4:4 + length]
            return list(struct.unpack(f"<{len(body) // 8}Q", body[:len(body) // 8 * 8]))
        extra = extra[4 + length:]
    raise Unsupported("zip64 extra field missing")


def scan_npz(fh: BinaryIO, special: str) -> tuple[MemberTable, NpzMember | None, str]:
    """Every ``.npy`` member of an open archive, in directory order, read a chunk at a time.

    Args:
        fh: the archive, opened for binary reading.
        special: the key of one member to return apart (e.g. a metadata member).

    Returns:
        ``(members other than special, special or None, fingerprint)``; the fingerprint
        is :func:`content_fingerprint`'s.

    Raises:
        Unsupported: a member that is not a stored or deflated ``.npy``, ``special``
            twice, or a directory this reader cannot follow.
    """
    members, found, digest = MemberTable(), None, MemberDigest()
    for name, offset, size, method, crc in _zip_members(fh):
        digest.add(name, size, method, crc)
        if method not in _METHODS or not name.endswith(".npy"):
            raise Unsupported(f"member {name!r}")
        member = NpzMember(name[:-4], offset, size, method, crc)
        if member.key == special:
            if found is not None:
                raise Unsupported(f"two {name!r} members")
            found = member
        else:
            members.append(member)
    return members, found, digest.hexdigest()


def _member_chunks(fh: BinaryIO, member: NpzMember) -> Iterator[bytes]:
    """A member's bytes, uncompressed, a chunk at a time; its CRC is checked at the end."""
    fh.seek(member.offset)
    head = fh.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("Bad magic number for file header")
    name_len, extra_len = struct.unpack("<26xHH", head)
    fh.seek(name_len + extra_len, os.SEEK_CUR)
    if member.method not in _METHODS:
        raise NotImplementedError(f"compression method {member.method} not supported")
    inflate = zlib.decompressobj(-15) if member.method == zipfile.ZIP_DEFLATED else None
    running, size = 0, member.size
    while size > 0:
        data = fh.read(min(size, CHUNK))
        if not data:
            raise EOFError
        size -= len(data)
        if inflate is not None:
            data = inflate.decompress(data)
        running = zlib.crc32(data, running)
        yield data
    if inflate is not None:
        data = inflate.flush()
        running = zlib.crc32(data, running)
        yield data
    if running != member.crc:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {member.name!r}")


def read_member(fh: BinaryIO, member: NpzMember) -> Any:
    """What ``np.load(...)[member.key]`` gives: the member's array (or its bytes when it is
    not an ``.npy``). Damage raises what :mod:`zipfile` and numpy raise for it."""
    data = b"".join(_member_chunks(fh, member))
    if not data.startswith(np.lib.format.MAGIC_PREFIX):
        return data
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


class _ChunkReader:
    """``read(n)`` over an iterator of byte chunks (for numpy's .npy header readers)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buf = chunks, b""

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            more = next(self._chunks, None)
            if more is None:
                break
            self._buf += more
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def rest(self) -> Iterator[bytes]:
        if self._buf:
            yield self._buf
        yield from self._chunks


def unicode_text(fh: BinaryIO, member: NpzMember) -> Iterator[str]:
    """The text of a 0-d unicode ``.npy`` member (e.g. ``np.array(json_text)``), decoded a
    chunk at a time."""
    reader = _ChunkReader(_member_chunks(fh, member))
    version = np.lib.format.read_magic(reader)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(reader)
    if shape != () or dtype.kind != "U" or dtype.byteorder not in "<=>|":
        raise Unsupported(f"{member.name!r} is not a unicode scalar")
    big = dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")
    decoder = codecs.getincrementaldecoder("utf-32-be" if big else "utf-32-le")()
    left = dtype.itemsize
    for chunk in reader.rest():
        chunk = chunk[:left]
        left -= len(chunk)
        yield decoder.decode(chunk)
        if not left:
            break
    if left:
        raise Unsupported(f"{member.name!r} truncated")
    yield decoder.decode(b"", final=True)


class JsonStream:
    """JSON values read one at a time from text that arrives in pieces.

    The caller walks the document's structure with :meth:`take` (one of the given
    punctuation characters) and :meth:`value` (one whole JSON value); malformed text
    raises :class:`Unsupported`.
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces, self._buf, self._pos, self._eof = pieces, "", 0, False

    def _fill(self) -> bool:
        piece = next(self._pieces, None)
        if piece is None:
            self._eof = True
            return False
        self._buf, self._pos = self._buf[self._pos:] + piece, 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end)."""
        while True:
            self._pos = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def take(self, chars: str) -> str:
        """Consume the next non-blank character, which must be one of ``chars``."""
        c = self.peek()
        if not c or c not in chars:
            raise Unsupported(f"expected one of {chars!r}")
        self._pos += 1
        return c

    def value(self) -> Any:
        """Consume and return the next JSON value."""
        self.peek()
        while True:
            try:
                value, end = _JSON.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError:
                if self._fill():
                    continue
                raise Unsupported("not JSON") from None
            if end == len(self._buf) and not self._eof and self._fill():
                continue  # a number may go on in the next piece
            self._pos = end
            return value

"""Decoding many utterances over worker processes the caller asks for.

Workers are started with ``spawn`` (safe with threads, CUDA and macOS), each receives the
decoder once (pickled; a KenLM model reloads itself from its path) and then only
posteriors. Results come back in input order. Nothing here is global in the parent.

Workers exit when the parent dies, even by SIGKILL (the OOM killer's signal), which runs
none of the parent's clean-up: on Linux the kernel kills them (``PR_SET_PDEATHSIG``), and
elsewhere a watchdog thread in each worker notices within a second that its parent is
gone (see :func:`exit_with_parent`). The resource tracker that ``multiprocessing`` starts
beside the pool needs nothing more: it exits once every process holding its pipe (the
parent and the workers) is gone.

A :class:`Backend` says where a run's utterances are decoded: :class:`LocalBackend`
(this machine's processes, via :func:`decode_parallel`) or
:class:`fusion.distributed.RayBackend` (a Ray cluster); both give the same results.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from fusion.posteriors import Posteriors
from fusion.types import DecodeResult

__all__ = ["Backend", "Decoder", "LocalBackend", "chunked", "decode_parallel", "exit_with_parent"]


class Decoder(Protocol):
    def decode(self, posteriors: Posteriors) -> DecodeResult: ...


class Backend(Protocol):
    """Where utterances are decoded.

    ``decode(decoder, items)`` yields ``decoder.decode(item)`` for every item, in input
    order, reading ``items`` lazily; closing the iterator early stops the work.
    """

    def decode(self, decoder: Any, items: Iterable[Any]) -> Iterator[Any]: ...


_worker_decoder: Decoder | None = None  # set once in each worker process by _init


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent: int, *, interval: float = 1.0) -> None:
    """Make this (worker) process exit when process ``parent`` dies, however it dies.

    Call it first thing in a pool's initializer, with the parent's pid passed from the
    parent (``os.getpid()`` there). On Linux the kernel sends this process SIGKILL when
    the parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon thread checks
    every ``interval`` seconds whether this process has been handed to another parent,
    and exits if so. A parent that died before this call is caught at once.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog alone
            pass
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, interval), daemon=True,
                     name="exit-with-parent").start()


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _init(decoder: Decoder, threads: int, parent: int) -> None:
    global _worker_decoder
    exit_with_parent(parent)
    torch = sys.modules.get("torch")  # loaded with the decoder where it needs torch (a neural LM)
    if torch is not None:
        torch.set_num_threads(threads)
    _worker_decoder = decoder


def _decode_many(items: list[Posteriors]) -> list[DecodeResult]:
    assert _worker_decoder is not None  # set by the pool initializer
    return [_worker_decoder.decode(p) for p in items]


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` consecutive items (the last may be shorter), read lazily."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decode_parallel(
    decoder: Decoder,
    posteriors: Iterable[Posteriors],
    *,
    workers: int,
    in_flight: int | None = None,
    threads_per_worker: int = 1,
    chunk: int = 1,
) -> Iterator[DecodeResult]:
    """Decode ``posteriors`` with ``workers`` processes (1: in this process), in order.

    The input is consumed lazily: at most ``in_flight`` utterances (default: four per
    worker, at least one ``chunk`` per worker) are queued at a time, so a large corpus is
    never all in memory. A worker gets ``chunk`` utterances per task (more than 1 saves the
    per-task hand-off when utterances are short). Closing the iterator early cancels what
    is still queued.
    """
    if workers < 1 or chunk < 1:
        raise ValueError(f"workers and chunk must be at least 1, got {workers} and {chunk}")
    if workers == 1:
        yield from (decoder.decode(p) for p in posteriors)
        return
    window = max(workers, (in_flight or 4 * workers) // chunk)  # in chunks
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                             initargs=(decoder, threads_per_worker, os.getpid())) as pool:
        queued: deque[Future[list[DecodeResult]]] = deque()
        try:
            for items in chunked(posteriors, chunk):
                queued.append(pool.submit(_decode_many, items))
                if len(queued) >= window:
                    yield from queued.popleft().result()
            while queued:
                yield from queued.popleft().result()
        finally:
            for future in queued:
                future.cancel()


@dataclass(frozen=True)
class LocalBackend:
    """Decoding on this machine: :func:`decode_parallel` with these settings."""

    workers: int = 1
    in_flight: int | None = None
    threads_per_worker: int = 1
    chunk: int = 1

    def decode(self, decoder: Any, items: Iterable[Any]) -> Iterator[Any]:
        return decode_parallel(decoder, items, workers=self.workers, in_flight=self.in_flight,
                               threads_per_worker=self.threads_per_worker, chunk=self.chunk)

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

A :class:`Backend` says where work runs: :class:`LocalBackend` (this machine's processes,
via :func:`decode_parallel`) or :class:`fusion.run.distributed.RayBackend` (a Ray cluster);
both give the same results. It streams a decoder over utterances (``decode``), or opens a
:class:`WorkerPool` whose workers each hold one state, sent once, for many rounds of calls
(``pool``: a weight tuner's trials, each decoding the same dev set with new weights).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from fusion.core.posteriors import Posteriors
from fusion.core.types import DecodeResult

__all__ = ["Backend", "Decoder", "LocalBackend", "WorkerPool", "call_held", "chunked",
           "decode_parallel", "exit_with_parent", "hold"]


class Decoder(Protocol):
    def decode(self, posteriors: Posteriors) -> DecodeResult: ...


class WorkerPool(Protocol):
    """Workers that each hold the same state (sent to each once).

    ``map(fn, items)`` is ``[fn(state, item) for item in items]``, each call in some
    worker, results in input order; the first failure is raised. ``size`` is how many
    calls run at once (split work into a few times as many items).
    """

    size: int

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any]) -> list[Any]: ...


class Backend(Protocol):
    """Where work runs.

    ``decode(decoder, items)`` yields ``decoder.decode(item)`` for every item, in input
    order, reading ``items`` lazily; closing the iterator early stops the work.
    ``pool(state)`` opens a :class:`WorkerPool` over ``state`` (picklable), closed with the
    context.
    """

    def decode(self, decoder: Any, items: Iterable[Any]) -> Iterator[Any]: ...

    def pool(self, state: Any) -> AbstractContextManager[WorkerPool]: ...


_worker_state: Any = None  # what this worker process holds (a decoder, or a pool's state): hold()


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


def hold(state: Any, threads: int) -> None:
    """Keep ``state`` (a decoder, or a pool's state) in this worker process, with ``threads``
    torch threads where the state loaded torch (a neural LM)."""
    global _worker_state
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    _worker_state = state


def _start_worker(payload: bytes, threads: int, parent: int) -> None:
    """A pool worker's initializer: exit with the parent (:func:`exit_with_parent`) before
    loading the state, which can take long (an n-gram, a dev set), then hold it."""
    exit_with_parent(parent)
    hold(pickle.loads(payload), threads)


def _worker_pool(workers: int, state: Any, threads: int) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(pickle.dumps(state), threads, os.getpid()))


def _decode_many(items: list[Posteriors]) -> list[DecodeResult]:
    return [_worker_state.decode(p) for p in items]


def call_held(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    """``fn(state, item)`` over the state this worker process holds (:func:`hold`)."""
    return fn(_worker_state, item)


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
    with _worker_pool(workers, decoder, threads_per_worker) as pool:
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

    @contextmanager
    def pool(self, state: Any) -> Iterator[WorkerPool]:
        """``workers`` processes holding ``state`` (1: this process)."""
        if self.workers == 1:
            yield _ProcessPool(None, 1, state)
            return
        with _worker_pool(self.workers, state, self.threads_per_worker) as executor:
            try:
                yield _ProcessPool(executor, self.workers)
            finally:
                executor.shutdown(cancel_futures=True)


@dataclass(frozen=True)
class _ProcessPool:
    executor: ProcessPoolExecutor | None  # None: calls run in this process, over ``state``
    size: int
    state: Any = None

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any]) -> list[Any]:
        if self.executor is None:
            return [fn(self.state, item) for item in items]
        futures = [self.executor.submit(call_held, fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()

"""Decoding many utterances over worker processes the caller asks for.

Workers are started with ``spawn`` (safe with threads, CUDA and macOS), each receives the
decoder once (pickled; a KenLM model reloads itself from its path) and then only
posteriors. Results come back in input order. Nothing here is global in the parent.

A :class:`Backend` says where a run's utterances are decoded: :class:`LocalBackend`
(this machine's processes, via :func:`decode_parallel`) or
:class:`fusion.distributed.RayBackend` (a Ray cluster); both give the same results.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from fusion.posteriors import Posteriors
from fusion.types import DecodeResult

__all__ = ["Backend", "Decoder", "LocalBackend", "chunked", "decode_parallel"]


class Decoder(Protocol):
    def decode(self, posteriors: Posteriors) -> DecodeResult: ...


class Backend(Protocol):
    """Where utterances are decoded.

    ``decode(decoder, items)`` yields ``decoder.decode(item)`` for every item, in input
    order, reading ``items`` lazily; closing the iterator early stops the work.
    """

    def decode(self, decoder: Any, items: Iterable[Any]) -> Iterator[Any]: ...


_worker_decoder: Decoder | None = None  # set once in each worker process by _init


def _init(decoder: Decoder, threads: int) -> None:
    global _worker_decoder
    import torch

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
                             initargs=(decoder, threads_per_worker)) as pool:
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

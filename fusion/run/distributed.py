"""Decoding and trial evaluation on a Ray cluster (or a Ray started in this process).

The same work as :mod:`fusion.run.parallel`, spread over the machines of a Ray cluster:

* :func:`decode_ray` is :func:`fusion.run.parallel.decode_parallel` on Ray actors: each actor
  receives the decoder once (pickled through the object store; a KenLM model reloads
  itself from its path) and then only posteriors; results come back in input order, at
  most ``in_flight`` utterances are queued at a time.
* :class:`RayBackend` is a :class:`fusion.run.parallel.Backend` on Ray: for the sharded batch
  runner (``fusion decode --out-dir ... --backend ray``), ``fusion decode -o`` and the weight
  tuner's trials (its ``pool``: the dev set and scorers in the object store once, fetched
  once per worker process).
* :func:`map_ray` runs ``fn(item)`` for every item as Ray tasks, results in order (a
  weight tuner evaluating trials).

Where Ray runs is the caller's choice, ``address``:

* ``None``: the cluster named by ``RAY_ADDRESS`` when it is set, else a new Ray in this
  process with ``num_cpus`` CPUs (default: all);
* ``"local"``: a new Ray in this process with ``num_cpus`` CPUs;
* ``"auto"``: the cluster already running on this machine (``ray start --head`` here, or
  ``ray start --address=HEAD:6379`` joining it);
* ``"HOST:PORT"`` or ``"ray://HOST:10001"``: that cluster.

If this process is already connected to Ray (``ray.init`` was called), that connection
is used whatever ``address`` says, and left open. Otherwise the connection made here is
closed when the work ends (a Ray started here stops; a cluster joined stays up).

Workers on other machines import ``fusion`` themselves and open files by the paths they
are given: install asrfuse on every node and keep posteriors, LMs and lexicons on a
filesystem all nodes see at the same paths.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fusion.core.posteriors import Posteriors
from fusion.core.types import DecodeResult
from fusion.run import parallel
from fusion.run.parallel import Decoder, WorkerPool

__all__ = ["RayBackend", "check_address", "decode_ray", "map_ray", "ray_session"]

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = "the Ray backend needs ray: pip install 'ray[default]'"
CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's HOST:PORT (Ray itself waits minutes)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def check_address(address: str | None) -> None:
    """Raise :class:`ConnectionError` at once when nothing listens at a ``HOST:PORT`` address.

    Other addresses (``None``, ``"local"``, ``"auto"``, ``"ray://..."``) are left to Ray.
    """
    if not address or address in ("local", "auto") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"Ray address {address!r}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster at {address} ({exc}): start one with "
                              "'ray start --head', or check the address") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """The ``ray`` module, connected as ``address`` says (see the module doc).

    Args:
        address: ``None``, ``"local"``, ``"auto"``, ``"HOST:PORT"`` or ``"ray://..."``.
        num_cpus: CPUs of a Ray started here; only for ``None`` (without
            ``RAY_ADDRESS``) and ``"local"``.

    Raises:
        ValueError: ``num_cpus`` given for a cluster that is joined, or not >= 1.
        ConnectionError: no cluster at ``address``.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int)
                                 or num_cpus < 1):
        raise ValueError(f"num_cpus must be an integer >= 1, got {num_cpus!r}")
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    elif num_cpus is not None:
        raise ValueError(f"num_cpus={num_cpus} sets the size of a Ray started here; the "
                         f"cluster at {address!r} has its own: leave num_cpus out")
    else:
        check_address(address)
        ray.init(address=address)
    try:
        yield ray
    finally:
        ray.shutdown()


class _DecoderActor:
    """One decoder in one Ray worker process; utterances come one call at a time."""

    def __init__(self, decoder: Decoder, threads: int) -> None:
        self.decoder = decoder
        if "torch" in sys.modules:  # else torch reads OMP_NUM_THREADS, which Ray sets
            sys.modules["torch"].set_num_threads(threads)

    def decode(self, item: Any) -> Any:
        return self.decoder.decode(item)


def decode_ray(
    decoder: Decoder,
    posteriors: Iterable[Posteriors],
    *,
    workers: int | None = None,
    in_flight: int | None = None,
    threads_per_worker: int = 1,
    address: str | None = None,
    num_cpus: int | None = None,
) -> Iterator[DecodeResult]:
    """Decode ``posteriors`` with ``workers`` Ray actors, in order.

    The same contract as :func:`fusion.run.parallel.decode_parallel`, and the same results:
    the input is consumed lazily (at most ``in_flight`` utterances, default four per
    actor, are queued at a time); a decoder exception stops the iteration and is raised
    here (as ``ray.exceptions.RayTaskError``, an instance of the original type too), and
    so is the loss of an actor (``ray.exceptions.RayActorError``, as a dead worker process
    breaks the local pool; a batch run then resumes with ``--resume``); closing the
    iterator early stops the actors.

    Args:
        decoder: anything picklable with ``decode(item)``; shipped once to each actor.
        posteriors: the utterances (or whatever ``decoder.decode`` takes).
        workers: actors (default: one per ``threads_per_worker`` CPUs of the cluster).
        in_flight: utterances queued at most.
        threads_per_worker: CPUs (and torch threads) reserved for each actor.
        address: where Ray runs (see the module doc).
        num_cpus: CPUs of a Ray started here.
    """
    for name, value in (("workers", workers), ("in_flight", in_flight),
                        ("threads_per_worker", threads_per_worker)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    with ray_session(address, num_cpus) as ray:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        n = workers or max(1, cpus // threads_per_worker)
        if n * threads_per_worker > cpus:
            raise ValueError(f"{n} workers of {threads_per_worker} CPUs need "
                             f"{n * threads_per_worker} CPUs; the Ray cluster has {cpus}")
        actor = ray.remote(_DecoderActor).options(num_cpus=threads_per_worker)
        shared = ray.put(decoder)
        actors = [actor.remote(shared, threads_per_worker) for _ in range(n)]
        window = in_flight or 4 * n
        queued: deque[tuple[Any, int]] = deque()  # (result ref, actor), in input order
        try:
            for item in posteriors:
                if len(queued) >= window:
                    yield ray.get(queued.popleft()[0])
                a = _least_busy(ray, queued, n)
                queued.append((actors[a].decode.remote(item), a))
            while queued:
                yield ray.get(queued.popleft()[0])
        finally:  # closed early or failed: drop what is still queued
            for ref, _ in queued:
                ray.cancel(ref)
            for handle in actors:
                ray.kill(handle)


def _least_busy(ray: Any, queued: deque[tuple[Any, int]], n: int) -> int:
    """The actor with the fewest unfinished calls (results waiting in order don't count)."""
    busy = [0] * n
    if queued:
        refs = [ref for ref, _ in queued]
        _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        pending = set(unfinished)
        for ref, a in queued:
            busy[a] += ref in pending
    return min(range(n), key=busy.__getitem__)


@dataclass(frozen=True)
class RayBackend:
    """A :class:`fusion.run.parallel.Backend` on Ray: :func:`decode_ray` with these settings.

    Creating one checks that ray is installed and that something listens at a
    ``HOST:PORT`` address; Ray is reached when decoding starts.
    """

    address: str | None = None
    workers: int | None = None
    in_flight: int | None = None
    threads_per_worker: int = 1
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        _import_ray()
        check_address(self.address)

    def decode(self, decoder: Any, items: Iterable[Any]) -> Iterator[Any]:
        return decode_ray(decoder, items, workers=self.workers, in_flight=self.in_flight,
                          threads_per_worker=self.threads_per_worker, address=self.address,
                          num_cpus=self.num_cpus)

    @contextmanager
    def pool(self, state: Any) -> Iterator[WorkerPool]:
        """Ray tasks of ``threads_per_worker`` CPUs over ``state``, put in the object store
        once; ``size``: ``workers``, else the CPUs of the cluster over ``threads_per_worker``."""
        with ray_session(self.address, self.num_cpus) as ray:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            size = self.workers or max(1, cpus // self.threads_per_worker)
            yield _RayPool(ray, (ray.put(state),), self.threads_per_worker, size)


def _call_held(ref: tuple[Any], threads: int, fn: Callable[[Any, Any], R], item: Any) -> R:
    """A pool's Ray task: ``fn(state, item)``, the state fetched once per worker process
    (``ref`` is in a tuple so that Ray hands the reference over, not its value)."""
    key = ref[0].hex()
    if _held_key.get("key") != key:
        import ray

        parallel.hold(ray.get(ref[0]), threads)
        _held_key["key"] = key
    return parallel.call_held(fn, item)


_held_key: dict[str, str] = {}  # the object whose state this Ray worker process holds


@dataclass(frozen=True)
class _RayPool:
    ray: Any
    ref: tuple[Any]
    threads: int
    size: int

    def map(self, fn: Callable[[Any, Any], R], items: Sequence[Any]) -> list[R]:
        return map_ray(functools.partial(_call_held, self.ref, self.threads, fn), items,
                       cpus_per_task=self.threads)


def _call(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def map_ray(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_task: float = 1,
) -> list[R]:
    """``[fn(item) for item in items]``, each call a Ray task; results in input order.

    ``fn`` and the items must be picklable (a module-level function, or a
    ``functools.partial`` of one). The first failure is raised (an instance of the
    original exception type) and the other tasks are cancelled.

    Args:
        fn: the function, called once per item.
        items: its arguments.
        address: where Ray runs (see the module doc); ``"local"`` starts Ray here.
        num_cpus: CPUs of a Ray started here.
        cpus_per_task: CPUs Ray reserves for each call (and its torch threads).
    """
    items = list(items)
    if not items:
        return []
    with ray_session(address, num_cpus) as ray:
        task = ray.remote(_call).options(num_cpus=cpus_per_task)
        shared = ray.put(fn)  # shipped once, not with every item
        refs = [task.remote(shared, item) for item in items]
        try:
            return ray.get(refs)
        except BaseException:
            # cancel only what has not finished: cancelling a task whose result is
            # arriving can abort the driver (Ray's "it != submissible_tasks_.end()"
            # check, ray-project/ray#54798), as it did once in our CI (Ray 2.60)
            _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in unfinished:
                ray.cancel(ref)
            raise

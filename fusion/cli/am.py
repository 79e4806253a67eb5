"""Command-line hooks of the acoustic model: ``train``, ``pretrain``, ``posteriors``,
``average`` and ``adapt-tune``.

:func:`add_parsers` registers the five subcommands on an ``argparse`` subparsers
object; each sets ``func`` to its ``run_*`` function, which takes the parsed
arguments and returns an exit code (0 success, 1 some utterances failed, 2 bad input,
130 stopped by a signal with a checkpoint written).

Configs are TOML files read as data (``tomllib``); ``--set section.key=VALUE`` (VALUE
in TOML syntax) overrides single keys. Unknown sections and keys are errors.

Training runs under jemalloc when it can (:mod:`fusion.run.allocator`).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from fusion.am.config import ConfigError, PretrainConfig, TrainConfig, load_config, parse_overrides
from fusion.am.features import UtteranceError
from fusion.am.model import CheckpointError
from fusion.core.defaults import DEFAULT_AM
from fusion.core.manifest import (EXIT_BAD_INPUT, EXIT_OUTPUT, ManifestError, OutputError, check_outputs,
                                  output_error, read_manifest, write_failures)
from fusion.core.posteriors import PosteriorsError
from fusion.core.tokens import TokenTable, TokenTableError
from fusion.run.allocator import allocator_name, prefer_jemalloc

__all__ = [
    "add_parsers",
    "main",
    "run_average",
    "run_posteriors",
    "run_pretrain",
    "run_train",
]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True,
                   help="run folder: checkpoints, log.jsonl, curves.png (an existing "
                        "last.pt there is resumed)")
    p.add_argument("--config", type=Path, help="TOML config (data only; unknown keys are errors)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config key (TOML value), e.g. --set optim.lr=2e-3")
    p.add_argument("--threads", type=int, help="torch threads (overrides run.num_threads)")
    p.add_argument("--cache", type=Path, help="feature cache folder (default: OUT/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    """The test-time adaptation flags (``fusion posteriors``, ``fusion demo``)."""
    from fusion.am.adapt import AdaptConfig

    d = AdaptConfig()
    g = p.add_argument_group(
        "test-time adaptation", "SUTA: a few unsupervised gradient steps on each utterance "
        "alone before decoding it, for voices and channels the model never heard "
        "(several times slower; our own models only). Settings: the flags given, else the "
        "model's own (MODEL.adapt.json beside the checkpoint, from fusion adapt-tune), "
        "else the defaults shown")
    g.add_argument("--adapt", action="store_true",
                   help="adapt with the model's own settings (or the defaults)")
    g.add_argument("--adapt-steps", type=int, metavar="N",
                   help=f"steps per utterance; N > 0 turns adaptation on, 0 off "
                        f"(default: off; with --adapt, {d.steps})")
    g.add_argument("--adapt-lr", type=float, help=f"AdamW rate (default: {d.lr:g})")
    g.add_argument("--adapt-params", metavar="GROUPS",
                   help="what moves, '+'-joined: norm (LayerNorms), frontend (the conv "
                        f"subsampling), all (default: {'+'.join(d.params)})")
    g.add_argument("--adapt-min-seconds", type=float,
                   help=f"shorter utterances are not adapted (default: {d.min_seconds:g})")
    g.add_argument("--adapt-mix", type=float,
                   help=f"share of the adapted posteriors in a mixture with the plain ones "
                        f"(default: {d.mix:g}; under an LM, 0.7 did better on our dev sets)")


ADAPT_FLAGS = {"adapt_steps": "steps", "adapt_lr": "lr", "adapt_params": "params",
               "adapt_min_seconds": "min_seconds", "adapt_mix": "mix"}


def adapt_config_from_args(args: argparse.Namespace, checkpoint: Path | None = None) -> Any:
    """The :class:`~fusion.am.adapt.AdaptConfig` the flags ask for, or None (off).

    On with ``--adapt`` or ``--adapt-steps N > 0``. Each setting is the flag's, else the
    one in ``checkpoint``'s settings file (:func:`fusion.am.adapt_tune.settings_path`),
    else the default. ValueError for bad values or a bad settings file."""
    from fusion.am.adapt_tune import model_settings, settings_path

    if not args.adapt and not args.adapt_steps:
        return None
    flags = {key: getattr(args, flag) for flag, key in ADAPT_FLAGS.items()
             if getattr(args, flag) is not None}
    config = model_settings(checkpoint, **flags)
    if config.steps == 0:
        if "steps" not in flags:  # the defaults adapt, so the model's own settings chose 0
            print(f"fusion: {settings_path(checkpoint)} chose no adaptation for this model "
                  "(0 steps); --adapt-steps N forces it", file=sys.stderr)
        return None
    return config


REPEAT_HELP = ("how many times each --train manifest is given per epoch, one whole number "
               ">= 1 per manifest (default 1 each): weights a small shard")


def add_parsers(subparsers: Any) -> None:
    """Register ``train``, ``pretrain``, ``posteriors``, ``average`` and ``adapt-tune`` on
    ``subparsers``."""
    p = subparsers.add_parser(
        "train", help="train the Conformer CTC acoustic model (resumable)",
        description="Train a Conformer CTC model on a manifest; rerun to resume.")
    p.add_argument("--train", type=Path, nargs="+", required=True, metavar="MANIFEST",
                   help="training manifests (audio, text): one, or several shards, each "
                        "featurised and cached on its own and joined in the order given")
    p.add_argument("--repeat", type=int, nargs="+", metavar="N", help=REPEAT_HELP)
    p.add_argument("--dev", type=Path, help="dev manifest for greedy CER")
    p.add_argument("--pretrained", type=Path, help="BEST-RQ (or CTC) checkpoint to start the encoder from")
    _common(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "pretrain", help="BEST-RQ self-supervised pretraining of the encoder (resumable)",
        description="Masked prediction of random-projection codes; audio only.")
    p.add_argument("--train", type=Path, nargs="+", required=True, metavar="MANIFEST",
                   help="manifests with audio (several are joined in the order given)")
    p.add_argument("--repeat", type=int, nargs="+", metavar="N", help=REPEAT_HELP)
    p.add_argument("--dev", type=Path, help="dev manifest (masked-prediction loss)")
    _common(p)
    p.set_defaults(func=run_pretrain)

    p = subparsers.add_parser(
        "posteriors", help="run an acoustic model over a manifest -> posteriors .npz",
        description="T x V log-probabilities per utterance. Bad audio is reported per "
                    "utterance (see --errors); the rest are written.")
    p.add_argument("manifest", type=Path, help="manifest JSONL with 'audio'")
    p.add_argument("-o", "--output", type=Path, required=True, help="posteriors .npz to write")
    p.add_argument("--model", type=Path,
                   help=f"asrfuse checkpoint (default: {DEFAULT_AM})")
    p.add_argument("--hf-model", type=Path,
                   help="a saved Hugging Face Wav2Vec2ForCTC folder instead of --model")
    p.add_argument("--tokens", type=Path, help="token table JSON for --hf-model "
                   "(default: the folder's vocab.json, blank <pad>, boundary |)")
    p.add_argument("--chunk-seconds", type=float, default=30.0,
                   help="longer audio is processed in chunks (default: %(default)s)")
    p.add_argument("--overlap-seconds", type=float, default=4.0,
                   help="overlap between chunks (default: %(default)s)")
    p.add_argument("--batch-seconds", type=float, default=160.0,
                   help="padded audio per batch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--errors", type=Path,
                   help="failed utterances JSONL (default: OUTPUT with .errors.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_adapt_arguments(p)
    p.set_defaults(func=run_posteriors)

    p = subparsers.add_parser(
        "average", help="average the weights of CTC checkpoints of one model -> a model",
        description="Checkpoint averaging: the mean of the checkpoints' weights, written "
                    "as a deployable model (fp16 unless --fp32). A run keeps its last "
                    "snapshots in RUN/snapshots with run.keep_snapshots. With --weights, a "
                    "weighted mean: e.g. a model and one fine-tuned from it, interpolated.")
    p.add_argument("checkpoints", type=Path, nargs="+",
                   help="CTC checkpoints (model, best, last or snapshot files) of one model")
    p.add_argument("--weights", type=float, nargs="+", metavar="W",
                   help="one weight per checkpoint averaged (after --last), >= 0; "
                        "normalised to sum to 1 (default: all equal)")
    p.add_argument("-o", "--output", type=Path, required=True, help="model .pt to write")
    p.add_argument("--last", type=int, metavar="K",
                   help="only the last K of the checkpoints given (snapshot names sort by step)")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.set_defaults(func=run_average)

    p = subparsers.add_parser(
        "adapt-tune", help="choose test-time adaptation settings for a model on dev sets",
        description="Scores greedy CER on DEV (and TARGET) after 0..--max-steps steps at "
                    "each rate, and keeps the setting with the lowest TARGET CER whose DEV "
                    "CER is at most --max-cost above the plain model's (without TARGET: the "
                    "lowest DEV CER; 0 steps when nothing helps). Writes MODEL.adapt.json "
                    "beside the checkpoint, which --adapt then uses.")
    p.add_argument("--model", type=Path,
                   help=f"asrfuse checkpoint (default: {DEFAULT_AM})")
    p.add_argument("--dev", type=Path, required=True,
                   help="guard manifest (audio, text): conditions the model knows")
    p.add_argument("--target", type=Path,
                   help="manifest of the conditions adaptation is for (audio, text), "
                        "e.g. real speech")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4, 2e-4, 3e-4, 5e-4, 1e-3],
                   metavar="LR", help="rates to try (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=5,
                   help="step counts 1..N are scored (default: %(default)s)")
    p.add_argument("--max-cost", type=float, default=0.1,
                   help="CER points DEV may lose against the plain model (default: %(default)s)")
    p.add_argument("--adapt-params", metavar="GROUPS",
                   help="what moves, '+'-joined: norm, frontend, all (default: norm+frontend)")
    p.add_argument("--adapt-min-seconds", type=float,
                   help="shorter utterances are not adapted (default: 1.5)")
    p.add_argument("-o", "--output", type=Path,
                   help="settings file to write (default: MODEL.adapt.json beside the model)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_adapt_tune)


def _fail(cmd: str, exc: Exception) -> int:
    """Say what went wrong, in one line; the exit status: 74 when an output file cannot be
    written, else 2 (see :mod:`fusion.core.manifest`)."""
    print(f"fusion {cmd}: error: {exc}", file=sys.stderr)
    return EXIT_OUTPUT if isinstance(exc, OutputError) else EXIT_BAD_INPUT


def run_train(args: argparse.Namespace) -> int:
    from fusion.am.train import train_ctc

    print(f"memory allocator: {allocator_name()}", file=sys.stderr)
    try:
        overrides = parse_overrides(args.set)
        if args.threads:
            overrides.setdefault("run", {})["num_threads"] = args.threads
        config = load_config(TrainConfig, args.config, overrides)
        state = train_ctc(args.train, args.dev, args.out, config, pretrained=args.pretrained,
                          cache_dir=args.cache, progress=not args.no_progress,
                          repeats=args.repeat)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, CheckpointError, ManifestError, TokenTableError, ValueError,
            FileNotFoundError) as exc:
        return _fail("train", exc)
    print(f"trained {state.step} steps -> {args.out / 'model.pt'} "
          f"(best dev CER {state.best_metric})", file=sys.stderr)
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from fusion.am.pretrain import pretrain_bestrq

    print(f"memory allocator: {allocator_name()}", file=sys.stderr)
    try:
        overrides = parse_overrides(args.set)
        if args.threads:
            overrides.setdefault("run", {})["num_threads"] = args.threads
        config = load_config(PretrainConfig, args.config, overrides)
        state = pretrain_bestrq(args.train, args.dev, args.out, config, cache_dir=args.cache,
                                progress=not args.no_progress, repeats=args.repeat)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, CheckpointError, ManifestError, ValueError, FileNotFoundError) as exc:
        return _fail("pretrain", exc)
    print(f"pretrained {state.step} steps -> {args.out / 'last.pt'}", file=sys.stderr)
    return 0


def run_adapt_tune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fusion.am.adapt import AdaptConfig
    from fusion.am.adapt_tune import settings_path, tune_adaptation
    from fusion.am.model import load_model

    torch.set_num_threads(max(1, args.threads))
    checkpoint = args.model or DEFAULT_AM
    out = args.output or settings_path(checkpoint)
    try:
        flags = {k: v for k, v in (("params", args.adapt_params),
                                   ("min_seconds", args.adapt_min_seconds)) if v is not None}
        base = replace(AdaptConfig(), **flags)
        check_outputs({"-o": out}, {"--model": checkpoint, "--dev": args.dev, "--target": args.target})
        dev = read_manifest(args.dev, require=("audio", "text"))
        target = read_manifest(args.target, require=("audio", "text")) if args.target else None
        model = load_model(checkpoint)
        record = tune_adaptation(
            model, dev, target, lrs=args.lr, max_steps=args.max_steps, max_cost=args.max_cost,
            base=base, progress=not args.no_progress, checkpoint=checkpoint, out=out,
            names={"dev": str(args.dev), "target": str(args.target)})
    except (CheckpointError, ManifestError, ValueError, FileNotFoundError, OSError) as exc:
        return _fail("adapt-tune", exc)
    sets = [name for name in ("dev", "target") if name in record["sets"]]
    print("  ".join(["lr      steps"] + [f"{name} CER %" for name in sets]))
    for row in record["grid"]:
        mark = "  <- chosen" if row == record["chosen"] else ""
        print(f"{row['lr']:<7g} {row['steps']:>5}  "
              + "  ".join(f"{row[f'{name}_cer']:>9.2f}" for name in sets) + mark)
    for name in sets:
        for utt_id, reason in record["sets"][name]["failed"]:
            print(f"fusion adapt-tune: {name}: skipped {utt_id}: {reason}", file=sys.stderr)
    c = record["config"]
    print(f"chosen: {c['steps']} steps at lr {c['lr']:g} ({record['rule']}); wrote {out}")
    return 0


def run_average(args: argparse.Namespace) -> int:
    from fusion.am.model import average_checkpoints, save_checkpoint

    paths = list(args.checkpoints)
    if args.last is not None:
        if args.last < 1:
            return _fail("average", ValueError(f"--last must be >= 1, got {args.last}"))
        paths = sorted(paths)[-args.last:]
    try:
        check_outputs({"-o": args.output}, {f"checkpoint {p}": p for p in paths})
        data = average_checkpoints(paths, half=not args.fp32, weights=args.weights)
        save_checkpoint(args.output, data)
    except (CheckpointError, OSError, ValueError) as exc:
        return _fail("average", exc)
    weights = f", weights {' '.join(f'{w:g}' for w in args.weights)}" if args.weights else ""
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}{weights}) "
          f"-> {args.output}", file=sys.stderr)
    return 0


def _hf_adapter(folder: Path, tokens: Path | None) -> Any:
    from transformers import Wav2Vec2ForCTC

    from fusion.am.infer import HFWav2Vec2Adapter, token_table_from_hf_vocab

    if tokens is not None:
        table = TokenTable.load(tokens)
    else:
        vocab_path = folder / "vocab.json"
        if not vocab_path.is_file():
            raise FileNotFoundError(f"{vocab_path}: no vocabulary; pass --tokens")
        table = token_table_from_hf_vocab(json.loads(vocab_path.read_text(encoding="utf-8")))
    try:
        model = Wav2Vec2ForCTC.from_pretrained(str(folder))
    except pickle.UnpicklingError:
        raise CheckpointError(f"{folder}: refused: its weights file holds more than tensors (a "
                              "pickle that could run code when loaded); use a safetensors "
                              "checkpoint") from None
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError, ...
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"{folder}: not a loadable Hugging Face Wav2Vec2ForCTC model "
                              f"({type(exc).__name__}: {reason})") from None
    return HFWav2Vec2Adapter(model, table)


def run_posteriors(args: argparse.Namespace) -> int:
    from fusion.am.infer import CTCModelAdapter, write_posteriors
    from fusion.am.model import load_model

    torch.set_num_threads(max(1, args.threads))
    errors_path = args.errors or args.output.with_suffix(".errors.jsonl")
    try:
        utterances = read_manifest(args.manifest, require=("audio",))
        check_outputs({"-o": args.output, "--errors": errors_path},
                      {"manifest": args.manifest, "--model": args.model, "--tokens": args.tokens,
                       **{f"audio of {u.id!r}": u.audio for u in utterances}})
        if args.hf_model is not None:
            if args.adapt or args.adapt_steps:
                raise ValueError("--adapt/--adapt-steps works with our own models (--model), "
                                 "not --hf-model")
            adapter = _hf_adapter(args.hf_model, args.tokens)
        else:
            checkpoint = args.model or DEFAULT_AM
            adapt = adapt_config_from_args(args, checkpoint)
            adapter = CTCModelAdapter(load_model(checkpoint), adapt)

        def report(err: UtteranceError) -> None:
            print(f"fusion posteriors: {err}", file=sys.stderr)

        try:  # audio errors are the utterances' own (reported above): an OSError here is -o's
            written, errors = write_posteriors(
                utterances, adapter, args.output, on_error=report,
                max_batch_seconds=args.batch_seconds, chunk_seconds=args.chunk_seconds,
                overlap_seconds=args.overlap_seconds, progress=not args.no_progress,
            )
        except OSError as exc:
            raise output_error(args.output, exc) from None
    except (CheckpointError, ManifestError, TokenTableError, PosteriorsError, ValueError,
            FileNotFoundError, OSError) as exc:
        return _fail("posteriors", exc)
    print(f"wrote posteriors of {written} utterances -> {args.output}", file=sys.stderr)
    return write_failures(errors_path, [{"id": e.utt_id, "error": e.reason, "type": type(e).__name__}
                                        for e in errors],
                          total=len(utterances), command="fusion posteriors")


def main(argv: list[str] | None = None) -> int:
    """``python -m fusion.cli.am {train,pretrain,posteriors,average} ...`` (same as ``fusion ...``)."""
    parser = argparse.ArgumentParser(prog="python -m fusion.cli.am")
    add_parsers(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    if argv is None:  # a process of its own: training may restart under jemalloc
        prefer_jemalloc(args.command)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``fusion`` command line: one parser, one subcommand per job.

Exit statuses (:mod:`fusion.core.manifest`): 0 done; 1 done, but some utterances failed (they
are listed in the errors file); 2 bad input or arguments, an output that would overwrite
an input included (nothing is written), and a command whose optional extra is not installed
(one line naming it: ``pip install 'asrfuse[am]'``); 74 an output file cannot be written
(disk full, read-only folder, ...; the message names it). SIGTERM ends a command as Ctrl-C
does (status 143): the output files being written are removed, earlier ones are left as they
were.

The core commands (``decode``, ``score``, ``align``, ``report``) are built here; the others
live in the modules of their extras (:data:`EXTENSIONS`) and are imported only when one of
them runs, so ``import fusion.cli.main``, ``fusion --help``, ``fusion decode`` and ``fusion
score`` load no torch, optuna, matplotlib, transformers or pyctcdecode.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fusion import __version__
from fusion.cli.backend import add_backend_arguments, batch_backend, decode_backend
from fusion.core.defaults import BEAM_SIZE
from fusion.core.defaults import DECODERS as SEARCHES
from fusion.core.defaults import DEFAULT_AM, DEFAULT_LM, DEFAULT_WEIGHTS, EMBEDDED_ALIGN, NO_LM, OOV
from fusion.core.formats import ctm_lines, srt_cues, srt_text
from fusion.core.manifest import (EXIT_BAD_INPUT, EXIT_FAILURES, EXIT_OK, EXIT_OUTPUT, ManifestError,
                                  OutputError, atomic_write, check_outputs, iter_jsonl, output_error,
                                  read_manifest, write_failures)
from fusion.core.metrics import Comparison, CorpusScore, WordErrors, compare, score_corpus, word_errors
from fusion.core.posteriors import KINDS, Posteriors, PosteriorsError, PosteriorsReader
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.text import normalize_text
from fusion.core.tokens import TokenTable, TokenTableError, character_table
from fusion.core.types import DecodeResult
from fusion.decoder.greedy import GreedyDecoder, greedy_decode
from fusion.pipeline.build import build_decoder
from fusion.pipeline.config import DecodeConfig
from fusion.run import batch
from fusion.run.allocator import prefer_jemalloc
from fusion.run.parallel import Decoder
from lm.base import LMError

DECODERS = ("greedy", *SEARCHES)


def get_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``fusion`` parser, every subcommand built in full (``"*"``, which needs every
    extra), or the subcommands of :data:`EXTENSIONS` listed by name and help and only
    ``command``'s built in full (its module imported; None: none), parsing one of the others
    building it then. ImportError where a module to build cannot be imported."""
    parser = argparse.ArgumentParser(
        prog="fusion",
        description="Model-fusion decoding engine for CTC speech recognition.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("decode", help="decode posteriors into hypotheses (JSONL)")
    p.add_argument("posteriors", type=Path, help="posteriors .npz (many utterances)")
    p.add_argument("-o", "--output", type=Path, help="hypotheses JSONL to write (or --out-dir)")
    p.add_argument("--tokens", type=Path,
                   help="token table JSON (default: the table stored in the posteriors file)")
    p.add_argument("--kind", choices=KINDS,
                   help="what a plain .npz holds (files written by asrfuse say it themselves)")
    p.add_argument("--frame-shift", type=float, help="seconds per frame, for a plain .npz")
    p.add_argument("--decoder", choices=DECODERS, default="greedy", help="search (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="utterances a worker takes at a time (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="decoding processes (default: %(default)s)")
    add_backend_arguments(p)
    p.add_argument("--ctm", type=Path, help="also write the best hypotheses' words as CTM")
    p.add_argument("--errors", type=Path,
                   help="where failed utterances are recorded (default: OUTPUT with .errors.jsonl)")
    beam = p.add_argument_group(
        "beam search (--decoder beam or pyctcdecode)",
        "Settings come from --config (TOML/JSON, see fusion.pipeline.config), then these flags. "
        f"Without --lm, the embedded word 3-gram; default weights: {dict(DEFAULT_WEIGHTS)}; "
        f"beam {BEAM_SIZE}.")
    beam.add_argument("--config", type=Path, help="decoding config file (TOML or JSON)")
    beam.add_argument("--beam-size", type=int)
    beam.add_argument("--nbest", type=int, help="hypotheses per utterance")
    beam.add_argument("--lm", type=Path,
                      help=f"word n-gram: ARPA, ARPA.gz or KenLM binary (default: the embedded "
                      f"word 3-gram, {DEFAULT_LM}; '{NO_LM}': no LM)")
    beam.add_argument("--lm-vocab", type=Path,
                      help="the LM's words (ARPA or word list) for partial-word scoring "
                      "(default: the LM itself when it is an ARPA)")
    beam.add_argument("--lm-weight", type=float)
    beam.add_argument("--word-bonus", type=float)
    beam.add_argument("--oov-penalty", type=float,
                      help="cost of each word outside the LM's words (weight 'oov'; default: "
                      "none); needs the LM's words (an ARPA LM or --lm-vocab)")
    beam.add_argument("--lexicon", type=Path, help="word list: only its words are produced")
    beam.add_argument("--hotwords", type=Path,
                      help="phrases to bias towards, one a line, optionally TAB and a weight")
    beam.add_argument("--hotword-weight", type=float)
    add_batch_arguments(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("score", help="WER and CER of hypotheses against a reference manifest")
    p.add_argument("--ref", type=Path, required=True, help="manifest JSONL with 'id' and 'text'")
    p.add_argument("--hyp", type=Path, required=True, help="hypotheses JSONL with 'id' and 'text'")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--no-normalize", action="store_true",
                   help="score the texts as they are (default: normalise both sides)")
    p.add_argument("--word-errors", type=int, default=0, metavar="N",
                   help="also list the N reference words misrecognised most, with what they were "
                        "heard as (like sclite's confusion pairs)")
    p.add_argument("--compare", type=Path, metavar="HYP_B",
                   help="a second system's hypotheses: its rates beside --hyp's and whether "
                        "the difference is beyond chance (paired bootstrap over utterances: "
                        "interval of B - A and the probability that B is better)")
    p.add_argument("--resamples", type=int, default=10_000,
                   help="bootstrap resamples for --compare (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed for --compare (default: 0)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("align", help="force-align transcripts to posteriors: word times, "
                       f"confidences [{CORE_EXTRAS['align']}]")
    p.add_argument("posteriors", type=Path, help="posteriors .npz")
    p.add_argument("--text", type=Path, required=True, help="manifest JSONL with 'id' and 'text'")
    p.add_argument("-o", "--output", type=Path, required=True, help="alignments JSONL to write")
    p.add_argument("--ctm", type=Path, help="also write CTM")
    p.add_argument("--srt", type=Path, help="also write SRT subtitles (utterances in order)")
    p.add_argument("--method", choices=("auto", "ctc", "hmm"), default="auto",
                   help="ctc: torchaudio forced_align; hmm: HMM Viterbi (default: %(default)s: "
                        "hmm with --hmm, else ctc)")
    p.add_argument("--hmm", metavar="FILE|default",
                   help="trained duration HMM (JSON, as benchmarks/bench_align.py writes); "
                        "'default': the embedded acoustic model's")
    p.add_argument("--calibration", metavar="FILE|default",
                   help="word-time calibration (hmm.timing JSON) applied to the word times; "
                        "'default': the embedded acoustic model's, for the method used. Both "
                        "defaults fit only posteriors of the embedded model")
    p.add_argument("--tokens", type=Path, help="token table JSON, for a plain .npz")
    p.add_argument("--kind", choices=KINDS, help="what a plain .npz holds")
    p.add_argument("--frame-shift", type=float, help="seconds per frame, for a plain .npz")
    p.add_argument("--errors", type=Path,
                   help="where failed utterances are recorded (default: OUTPUT with .errors.jsonl)")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("report", help="HTML report (and PNGs) of a tuning run and the "
                       f"benchmarks [{CORE_EXTRAS['report']}]")
    p.add_argument("tune_dir", type=Path, help="the output folder of 'fusion tune'")
    p.add_argument("-o", "--out-dir", type=Path, required=True, help="where index.html goes")
    p.add_argument("--fusion-json", type=Path, help="the ablation benchmark (fusion.json)")
    p.add_argument("--decoder-json", type=Path, help="the decoder benchmark (decoder.json)")
    p.set_defaults(func=cmd_report)

    for ext in EXTENSIONS:
        if command == "*" or command in ext.commands:
            ext.register(sub)
        else:
            for name, text in ext.commands.items():
                _add_placeholder(sub, name, text, ext.extra)
    return parser


@dataclass(frozen=True)
class Extension:
    """Subcommands whose code lives in a module of their own, imported only to run them.

    Attributes:
        target: ``"module:function"``; the function registers the subcommands on an
            ``argparse`` subparsers object.
        extra: the optional extra of asrfuse they need (``pip install 'asrfuse[EXTRA]'``),
            or None for the core.
        commands: each subcommand's name and its one-line help (what ``fusion --help``
            lists without importing the module; a test checks them against the module's).
    """

    target: str
    extra: str | None
    commands: dict[str, str]

    def register(self, sub: Any) -> None:
        """Import the module and add its subcommands in full (ImportError if it cannot)."""
        module, _, function = self.target.partition(":")
        getattr(importlib.import_module(module), function)(sub)


#: every subcommand outside the core ones, in ``fusion --help``'s order
EXTENSIONS = (
    Extension("fusion.cli.main:add_demo_parser", "am", {
        "demo": "transcribe a manifest's audio end to end and print WER/CER"}),
    Extension("fusion.cli.am:add_parsers", "am", {
        "train": "train the Conformer CTC acoustic model (resumable)",
        "pretrain": "BEST-RQ self-supervised pretraining of the encoder (resumable)",
        "posteriors": "run an acoustic model over a manifest -> posteriors .npz",
        "average": "average the weights of CTC checkpoints of one model -> a model",
        "adapt-tune": "choose test-time adaptation settings for a model on dev sets"}),
    Extension("fusion.cli.nlm:add_parsers", "neural", {
        "lm-train-neural": "train (or resume) the neural Transformer LM",
        "lm-export-neural": "write a small model-only neural LM file",
        "lm-eval-neural": "word-normalised perplexity of texts"}),
    Extension("fusion.cli.main:add_data_parser", "corpus", {
        "data": "build the synthetic speech corpus, or import LibriSpeech / Speech Commands"}),
    Extension("fusion.cli.lm:add_parser", None, {
        "lm": "language models: text corpus, n-gram build, perplexity"}),
    Extension("fusion.cli.tune:add_parser", "tune", {
        "tune": "tune fusion weights on a dev set (grid, random, TPE; rescoring)"}),
    Extension("fusion.cli.transcribe:add_parser", "am", {
        "transcribe": "transcribe audio files of any length (VAD segments, beam search)"}),
)
#: the extra each core subcommand needs beyond the core, where it needs one
CORE_EXTRAS = {"align": "am", "report": "tune"}


def add_data_parser(sub: Any) -> None:
    """Register ``data`` (the corpus builders and importers)."""
    from fusion.cli import corpus as corpus_cli

    corpus_cli.add_parser(sub).set_defaults(func=corpus_cli.run)


def _add_placeholder(sub: Any, name: str, text: str, extra: str | None) -> None:
    """``name`` as ``fusion --help`` lists it; parsing it loads the real subcommand."""
    p = sub.add_parser(name, help=text + (f" [{extra}]" if extra else ""), add_help=False,
                       prefix_chars="\0")  # every argument goes to ``rest`` as it is
    p.add_argument("rest", nargs="*")
    p.set_defaults(func=lambda args: _run(name, [name, *args.rest], False))


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (the first word not an option; the top level takes
    no option with a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _extra_of(command: str | None) -> str | None:
    for ext in EXTENSIONS:
        if command in ext.commands:
            return ext.extra
    return CORE_EXTRAS.get(command or "")


def _requirement_extras() -> dict[str, list[str]]:
    """Our installed distribution's optional requirements: normalised distribution name ->
    the extras that list it, in setup.cfg's order ({} where the metadata is missing)."""
    try:
        requires = importlib.metadata.requires("asrfuse") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[str]] = {}
    for req in requires:
        m = re.match(r"\s*([A-Za-z0-9._-]+).*;.*extra\s*==\s*[\"']([^\"']+)[\"']", req)
        if m:
            out.setdefault(re.sub(r"[-_.]+", "_", m[1]).lower(), []).append(m[2])
    return out


def missing_extra(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """One line for a module a command needs but cannot import, naming the extra to install;
    None where the module is not one of an extra's (a fault, not a missing extra).

    The extra is the command's own where its requirements hold the module, else the first
    extra that lists it, else the command's own (a module pulled in by one of its packages)."""
    if not exc.name:
        return None
    top = exc.name.partition(".")[0]
    if top in ("fusion", "lm", "hmm"):  # our own package: a broken install, not an extra
        return None
    own = _extra_of(command)
    listed = _requirement_extras().get(re.sub(r"[-_.]+", "_", top).lower(), [])
    extra = own if own in listed else listed[0] if listed else own
    if extra is None:
        return None
    return (f"needs {top!r}, which is not installed: pip install 'asrfuse[{extra}]' "
            f"(the {extra} extra)")


def main(argv: Sequence[str] | None = None) -> int:
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    return _run(_command(argv), argv, own_process)


def _run(command: str | None, argv: list[str], own_process: bool) -> int:
    """Parse ``argv`` (``command``'s subcommand built in full) and run it."""
    try:
        parser = get_parser(command)
    except ModuleNotFoundError as exc:
        line = missing_extra(exc, command)
        if line is None:
            raise
        print(f"fusion {command}: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(argv)
    if own_process:
        prefer_jemalloc(args.command)  # training and transcribing may restart under jemalloc
        terminate_on_sigterm()
    try:
        return int(args.func(args))
    except OutputError as exc:
        print(f"fusion {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except ModuleNotFoundError as exc:
        line = missing_extra(exc, args.command)
        print(f"fusion {args.command}: error: {line or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ManifestError, PosteriorsError, TokenTableError, LMError, FileNotFoundError,
            ValueError, ConnectionError, ImportError) as exc:
        print(f"fusion {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def terminate_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does, through ``finally`` blocks and context
    managers (``SystemExit(143)``), so that :func:`fusion.core.manifest.atomic_write` removes the
    temporary files of outputs being written. Python's default is to die on the spot."""
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


# -- decode -----------------------------------------------------------------------------
def _readable(reader: PosteriorsReader, failures: list[dict]) -> Iterator[Posteriors]:
    """Utterances one at a time; unreadable or invalid ones go to ``failures``."""
    for utt_id in reader.ids:
        try:
            yield reader[utt_id]
        except PosteriorsError as exc:
            failures.append({"id": utt_id, "error": str(exc)})


def _open_posteriors(args: argparse.Namespace) -> tuple[PosteriorsReader, TokenTable]:
    """The posteriors reader of ``args`` and its token table (from the file or --tokens)."""
    table = TokenTable.load(args.tokens) if args.tokens else None
    reader = PosteriorsReader(args.posteriors, kind=args.kind, frame_shift=args.frame_shift,
                              token_table=table)
    if reader.token_table is None:
        raise TokenTableError(f"{args.posteriors} carries no token table: pass --tokens")
    return reader, reader.token_table


def _decode_inputs(args: argparse.Namespace) -> dict[str, Path | None]:
    """Every file ``fusion decode`` reads, by its flag (config files' paths included)."""
    inputs: dict[str, Path | None] = {"posteriors": args.posteriors, "--tokens": args.tokens,
                                      "--config": args.config}
    if args.decoder != "greedy":
        config = decode_config(args)
        inputs.update({"--lm": config.lm, "--lm-vocab": config.lm_vocab,
                       "--lexicon": config.lexicon, "--hotwords": config.hotwords})
    return inputs


def _write(fh: Any, path: Path, text: str) -> None:
    """``fh.write(text)``; a failure is an :class:`OutputError` naming ``path``."""
    try:
        fh.write(text)
    except OSError as exc:
        raise output_error(path, exc) from None


def cmd_decode(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.workers < 1:
        raise SystemExit("fusion decode: error: --batch-size and --workers must be at least 1")
    if args.out_dir is not None:
        return _decode_batch(args)
    if args.output is None:
        raise SystemExit("fusion decode: error: -o/--output or --out-dir is required")
    errors_path = args.errors or args.output.with_suffix(".errors.jsonl")
    check_outputs({"-o": args.output, "--ctm": args.ctm, "--errors": errors_path},
                  _decode_inputs(args))
    reader, table = _open_posteriors(args)
    failures: list[dict] = []
    stream = _readable(reader, failures)
    decoder = GreedyDecoder(table) if args.decoder == "greedy" else build_decoder(decode_config(args), table)
    results: Iterator[DecodeResult] = decode_backend(args).decode(decoder, stream)
    done = 0
    with ExitStack() as stack:
        stack.enter_context(reader)
        out = stack.enter_context(atomic_write(args.output))
        ctm = stack.enter_context(atomic_write(args.ctm)) if args.ctm else None
        bar = stack.enter_context(tqdm(total=len(reader), unit="utt", desc="decode", disable=None))
        for result in results:
            _write(out, args.output, json.dumps(result.to_dict(table), ensure_ascii=False) + "\n")
            if ctm:
                _write(ctm, args.ctm, "".join(ctm_lines(result.utt_id, result.best.words)))
            done += 1
            bar.update(1)
    print(f"decoded {done} utterances -> {args.output}", file=sys.stderr)
    return write_failures(errors_path, failures, total=len(reader), command="fusion decode")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """The default pipeline, then the config file (if any), then the command line's flags."""
    config = DecodeConfig.load(args.config) if args.config else DecodeConfig.default()
    return config.with_overrides(
        decoder=args.decoder if args.decoder != "greedy" else None,
        search={"beam_size": args.beam_size, "nbest": args.nbest},
        weights={"lm": args.lm_weight, "word_bonus": args.word_bonus,
                 OOV: args.oov_penalty, "hotwords": args.hotword_weight},
        lm=args.lm, lm_vocab=args.lm_vocab, hotwords=args.hotwords, lexicon=args.lexicon)


# -- batch runs (--out-dir) -------------------------------------------------------------
def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch flags of ``fusion decode`` (``--out-dir``, ``--shard-size``, ``--resume``, ...)."""
    group = parser.add_argument_group(
        "batch decoding (--out-dir)",
        "Shard the input, write each finished shard atomically under OUT_DIR/shards, merge "
        "them into OUT_DIR/hyps.jsonl; rerun with --resume after a crash. The posteriors "
        "argument may also be a list file (one .npz path a line, or JSONL with 'posteriors').")
    group.add_argument("--out-dir", type=Path,
                       help="batch output folder (instead of -o): shards, hyps.jsonl, errors.jsonl")
    group.add_argument("--shard-size", type=int, default=1000,
                       help="utterances per shard (default: %(default)s)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out-dir, skipping what is finished")
    # an utterance with no frames is an empty hypothesis (with -o too); the flag that
    # asked for this is kept so that scripts which pass it still run
    group.add_argument("--allow-empty", action="store_true", help=argparse.SUPPRESS)
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def _decode_batch(args: argparse.Namespace) -> int:
    """``fusion decode ... --out-dir``: :func:`fusion.run.batch.decode_batch` with the decoder of
    the flags; the plan records the whole decoding config, so a resumed run decodes as the
    first did. Exit status (:mod:`fusion.core.manifest`'s): 0 all decoded, 1 some utterances
    failed, 2 the run failed on its input or settings, 74 an output file cannot be written."""
    try:
        table = TokenTable.load(args.tokens) if args.tokens else None
        options = batch.BatchOptions(shard_size=args.shard_size, workers=args.workers,
                                     kind=args.kind, frame_shift=args.frame_shift,
                                     progress=False if args.no_progress else None)
        if table is None:
            table = batch.stored_token_table(args.posteriors, options)
        if args.decoder == "greedy":
            decoder: Decoder = GreedyDecoder(table)
            settings: dict[str, Any] = {"decoder": "greedy"}
        else:
            config = decode_config(args)
            decoder = build_decoder(config, table)
            settings = config.to_dict()
        summary = batch.decode_batch([args.posteriors], args.out_dir, decoder, table=table,
                                     options=options, resume=args.resume,
                                     decoder_id=json.dumps(settings, sort_keys=True),
                                     backend=batch_backend(args, options))
    except OutputError as exc:  # BatchOutputError included
        print(f"fusion decode: error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except (batch.BatchError, PosteriorsError, TokenTableError, LMError, ValueError, OSError,
            ImportError) as exc:
        print(f"fusion decode: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"decoded {summary.decoded} of {summary.utterances} utterances in {summary.shards} "
          f"shards ({summary.shards_skipped} already finished) -> {summary.hyps}", file=sys.stderr)
    if summary.failed:
        print(f"fusion decode: {summary.failed} utterances failed; see {summary.errors}",
              file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


# -- align ------------------------------------------------------------------------------


def _embedded_align_file(name: str) -> Path:
    path = EMBEDDED_ALIGN / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the embedded model has no {name} (run benchmarks/bench_align.py "
                                f"--export {EMBEDDED_ALIGN})")
    return path


def cmd_align(args: argparse.Namespace) -> int:
    from hmm.align import AlignerConfig, align
    from hmm.model import TiedDurationHMM
    from hmm.timing import BoundaryCalibration
    from hmm.topology import AlignmentError

    errors_path = args.errors or args.output.with_suffix(".errors.jsonl")
    check_outputs({"-o": args.output, "--ctm": args.ctm, "--srt": args.srt, "--errors": errors_path},
                  {"posteriors": args.posteriors, "--text": args.text, "--tokens": args.tokens,
                   **{flag: value for flag, value in (("--hmm", args.hmm),
                                                      ("--calibration", args.calibration))
                      if value not in (None, "default")}})
    reader, table = _open_posteriors(args)
    texts = {u.id: u.text for u in read_manifest(args.text, require=("text",))}
    config = AlignerConfig(method=args.method)
    model = None
    if args.hmm is not None:
        model = TiedDurationHMM.load(_embedded_align_file("duration-hmm.json") if args.hmm == "default"
                                     else args.hmm)
        if model.table != table:
            raise ValueError(f"{args.hmm}: the duration HMM's token table is not the posteriors' "
                             f"({len(model.table)} and {len(table)} tokens)")
        if args.method == "ctc" and not model.config.topology.is_ctc:
            raise ValueError(f"{args.hmm}: --method ctc needs CTC's topology; this HMM has "
                             f"{model.config.topology}")
    method = args.method if args.method != "auto" else ("hmm" if model is not None else "ctc")
    calibration = None
    if args.calibration is not None:
        calibration = BoundaryCalibration.load(
            _embedded_align_file(f"boundary-calibration-{method}.json") if args.calibration == "default"
            else args.calibration)
    failures: list[dict] = []
    offset, cues = 0.0, []
    with ExitStack() as stack:
        stack.enter_context(reader)
        out = stack.enter_context(atomic_write(args.output))
        ctm = stack.enter_context(atomic_write(args.ctm)) if args.ctm else None
        for utt_id in tqdm(list(texts), unit="utt", desc="align", disable=None):
            try:
                if utt_id not in reader:
                    raise PosteriorsError(f"{args.posteriors}: no posteriors for {utt_id!r}")
                post = reader[utt_id]
                if calibration is not None and not math.isclose(post.frame_shift, calibration.frame_shift):
                    raise AlignmentError(f"utterance {utt_id!r}: {post.frame_shift:g} s frames, but the "
                                         f"calibration {args.calibration} is for "
                                         f"{calibration.frame_shift:g} s frames")
                result = align(post, normalize_text(texts[utt_id]), table, model=model, config=config)
            except (PosteriorsError, AlignmentError, TokenTableError) as exc:
                failures.append({"id": utt_id, "error": str(exc)})
                continue
            words = result.words if calibration is None else calibration.apply(result.words, post.duration)
            _write(out, args.output, json.dumps({
                "id": utt_id, "method": result.method, "log_likelihood": result.log_likelihood,
                "calibrated": calibration is not None,
                "words": [w.to_dict() for w in words],
                "tokens": [{"token": table.tokens[t.token_id],
                            "start": round(t.start_frame * post.frame_shift, 4),
                            "end": round(t.end_frame * post.frame_shift, 4),
                            "confidence": round(c, 4)}
                           for t, c in zip(result.tokens, result.token_confidences)],
            }, ensure_ascii=False) + "\n")
            if ctm:
                _write(ctm, args.ctm, "".join(ctm_lines(utt_id, words)))
            cues += [(a + offset, b + offset, text) for a, b, text in srt_cues(words)]
            offset += post.duration
    if args.srt:
        with atomic_write(args.srt) as fh:
            _write(fh, args.srt, srt_text(cues))
    return write_failures(errors_path, failures, total=len(texts), command="fusion align")


# -- score ------------------------------------------------------------------------------
def _read_hypotheses(path: Path) -> dict[str, str]:
    hyps: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        utt_id, text = obj.get("id"), obj.get("text")
        if not isinstance(utt_id, str) or not isinstance(text, str):
            raise ManifestError(f"{path}:{lineno}: a hypothesis needs string 'id' and 'text'")
        if utt_id in hyps:
            raise ManifestError(f"{path}:{lineno}: duplicate hypothesis for {utt_id!r}")
        hyps[utt_id] = text
    return hyps


def format_score(score: CorpusScore) -> str:
    w, c = score.words, score.chars
    lines = [
        f"utterances {len(score.utterances)}",
        f"WER {100 * score.wer:6.2f}%  ({w.substitutions} sub, {w.deletions} del, "
        f"{w.insertions} ins of {w.ref_len} words)",
        f"CER {100 * score.cer:6.2f}%  ({c.substitutions} sub, {c.deletions} del, "
        f"{c.insertions} ins of {c.ref_len} characters)",
    ]
    if score.missing:
        lines.append(f"missing hypotheses (scored as empty): {len(score.missing)}")
    if score.extra:
        lines.append(f"hypotheses without reference (ignored): {len(score.extra)}")
    return "\n".join(lines)


def format_word_errors(errors: list[WordErrors], heard: int = 5) -> str:
    """One line per word: ``the  40/42 (95.2%)  de 31, da 4, <deleted> 2``."""
    width = max((len(e.word) for e in errors), default=0)
    lines = ["words misrecognised most (errors/occurrences, then what they were heard as):"]
    for e in errors:
        said = ", ".join(f"{h or '<deleted>'} {n}" for h, n in e.heard_as[:heard])
        more = f", ... ({len(e.heard_as) - heard} more)" if len(e.heard_as) > heard else ""
        lines.append(f"  {e.word:<{width}}  {e.errors}/{e.count} ({100 * e.rate:.1f}%)  {said}{more}")
    return "\n".join(lines)


def format_comparison(c: Comparison) -> str:
    """``WER  A 5.41%  B 5.31%  B - A -0.10 points [95%: -0.42, +0.21]  P(B better) 0.710
    P(B worse) 0.250``, on one line."""
    name = "WER" if c.unit == "words" else "CER"
    return (f"{name}  A {c.rate_a:.2f}%  B {c.rate_b:.2f}%  B - A {c.delta:+.2f} points "
            f"[{100 * c.level:g}%: {c.interval[0]:+.2f}, {c.interval[1]:+.2f}]  "
            f"P(B better) {c.p_better:.3f}  P(B worse) {c.p_worse:.3f}")


def cmd_score(args: argparse.Namespace) -> int:
    if args.word_errors < 0:
        raise SystemExit(f"fusion score: error: --word-errors must be at least 0, got {args.word_errors}")
    if args.resamples < 1:
        raise SystemExit(f"fusion score: error: --resamples must be at least 1, got {args.resamples}")
    refs = {u.id: u.text for u in read_manifest(args.ref, require=("text",))}
    hyps = _read_hypotheses(args.hyp)
    result = score_corpus(refs, hyps, normalize=not args.no_normalize)
    errors = word_errors(result, top=args.word_errors) if args.word_errors else []
    other = comparisons = None
    if args.compare:
        other = score_corpus(refs, _read_hypotheses(args.compare), normalize=not args.no_normalize)
        try:
            comparisons = [compare(result, other, unit=unit, resamples=args.resamples, seed=args.seed)
                           for unit in ("words", "chars")]
        except ValueError as exc:
            raise SystemExit(f"fusion score: error: --compare {args.compare}: {exc}") from exc
    if args.json:
        out = result.to_dict()
        if args.word_errors:
            out["word_errors"] = [e.to_dict() for e in errors]
        if other is not None:
            out["compare"] = {"hyp": str(args.compare), **other.to_dict(per_utterance=False),
                              "words": comparisons[0].to_dict(), "chars": comparisons[1].to_dict()}
        print(json.dumps(out, indent=1))
    else:
        print(format_score(result))
        if args.word_errors:
            print(format_word_errors(errors))
        if other is not None:
            print(f"\nB = {args.compare}\n{format_score(other)}\n"
                  f"paired bootstrap over {len(refs)} utterances, {args.resamples} resamples:")
            print("\n".join(format_comparison(c) for c in comparisons))
    return 0


# -- demo -------------------------------------------------------------------------------
def add_demo_parser(sub: Any) -> None:
    """Register ``demo`` (it takes the acoustic model's adaptation flags: the am extra)."""
    from fusion.cli import am as am_cli

    p = sub.add_parser(
        "demo",
        help="transcribe a manifest's audio end to end and print WER/CER",
        description="Audio in, transcripts out: the embedded acoustic model (or --model) "
        "computes posteriors, greedy decoding and, with --lm, beam search with shallow fusion "
        "turn them into text. With --simulate, simulated posteriors of the transcripts "
        "stand in for the model's (and the output says so).",
    )
    p.add_argument("--manifest", type=Path, required=True, help="manifest JSONL with audio, text")
    p.add_argument("--model", type=Path,
                   help="acoustic model checkpoint (default: the embedded one); one that "
                   "does not exist is an error")
    p.add_argument("--simulate", action="store_true",
                   help="score simulated posteriors of the transcripts instead of an acoustic "
                   "model's (a check of the decoders without a model)")
    p.add_argument("--lm", type=Path, default=DEFAULT_LM,
                   help="word n-gram for beam search with shallow fusion (default: the embedded "
                   "3-gram; 'none' for greedy only)")
    p.add_argument("--lm-vocab", type=Path,
                   help="the LM's words (default: vocab.txt beside the LM, or the ARPA itself)")
    p.add_argument("--confusion", type=float, default=0.06,
                   help="simulated model's unit confusion rate (--simulate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=5, help="transcripts to print (default: %(default)s)")
    am_cli.add_adapt_arguments(p)
    p.set_defaults(func=cmd_demo)


def _demo_posteriors(args: argparse.Namespace, refs: dict[str, str]
                     ) -> tuple[list[Posteriors], TokenTable, str]:
    """Posteriors of the demo manifest: from the acoustic model, or simulated (--simulate)."""
    if args.simulate and args.model is not None:
        raise ValueError("--simulate replaces the acoustic model: not with --model")
    if not args.simulate:
        checkpoint = args.model or DEFAULT_AM
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"{checkpoint}: no such acoustic model"
                + (" (the embedded model's file is missing)" if args.model is None else "")
                + "; give an existing --model, or --simulate to score simulated posteriors")
        from fusion.am.infer import compute_posteriors
        from fusion.am.model import load_model
        from fusion.cli import am as am_cli

        model = load_model(checkpoint)
        utterances = read_manifest(args.manifest, require=("audio", "text"))
        adapt = am_cli.adapt_config_from_args(args, checkpoint)
        posteriors = []
        for item in compute_posteriors(utterances, model, progress=True, adapt=adapt):
            if isinstance(item, Posteriors):
                posteriors.append(item)
            else:
                print(f"fusion demo: skipped: {item}", file=sys.stderr)
        source = f"acoustic model {checkpoint}"
        if adapt is not None:
            source += (f", adapted to each utterance ({adapt.steps} steps of test-time "
                       f"adaptation at lr {adapt.lr:g})")
        return posteriors, model.token_table, source
    if args.adapt or args.adapt_steps:
        raise ValueError("--adapt/--adapt-steps adapts an acoustic model: not with --simulate")
    table = character_table()
    rng = np.random.default_rng(args.seed)
    config = SimulationConfig(confusion=args.confusion)
    posteriors = [simulate_posteriors(u, refs[u], table, rng, config)[0]
                  for u in tqdm(refs, desc="simulate", unit="utt", disable=None)]
    return posteriors, table, (f"SIMULATED posteriors (--simulate; no acoustic model; "
                               f"unit confusion {args.confusion})")


def cmd_demo(args: argparse.Namespace) -> int:
    utterances = read_manifest(args.manifest, require=("text",))
    refs = {u.id: normalize_text(u.text or "") for u in utterances}
    posteriors, table, source = _demo_posteriors(args, refs)
    print(f"{len(utterances)} utterances from {args.manifest}\nposteriors: {source}\n")
    runs = {"greedy": greedy_decode(posteriors, table)}
    config = DecodeConfig.default().with_overrides(lm=args.lm, lm_vocab=args.lm_vocab)
    if config.lm is not None:
        decoder = build_decoder(config, table)
        runs["beam + LM"] = [decoder.decode(p) for p in tqdm(posteriors, desc="beam", disable=None)]
    for r in runs["greedy"][: args.show]:
        print(f"{r.utt_id}\n  ref: {refs[r.utt_id]}")
        for name, results in runs.items():
            hyp = next(x for x in results if x.utt_id == r.utt_id)
            print(f"  {name}: {hyp.best.text}")
    for name, results in runs.items():
        print(f"\n[{name}]")
        print(format_score(score_corpus(refs, {x.utt_id: x.best.text for x in results})))
    return 0


# -- report -----------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from fusion.rescoring.report import write_report  # matplotlib: loaded only for this command

    print(write_report(args.tune_dir, args.out_dir, fusion_json=args.fusion_json,
                       decoder_json=args.decoder_json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``fusion lm ...``: build the LM text, estimate n-gram models, measure perplexity."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lm.base import LanguageModel, LMError, perplexity
from lm.ngram import KenLM, build_arpa, build_binary, char_units, units_text

LEVELS = ("word", "char")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    lm = subparsers.add_parser("lm", help="language models: text corpus, n-gram build, perplexity")
    sub = lm.add_subparsers(dest="lm_command", metavar="LM_COMMAND", required=True)

    p = sub.add_parser("text", help="build the LM text corpus (train/dev/test) from Debian texts")
    p.add_argument("--out", type=Path, help="output folder (default: $ASRFUSE_HOME/lm/text)")
    p.add_argument("--exclude", type=Path, action="append", default=[],
                   help="text file of sentences never to train on (repeatable)")
    p.add_argument("--heldout-fraction", type=float, default=0.04,
                   help="the speech corpus's held-out share (default: %(default)s)")
    p.set_defaults(func=run_text)

    p = sub.add_parser("build", help="estimate a modified Kneser-Ney n-gram with KenLM's lmplz")
    p.add_argument("text", type=Path, help="training text, one normalised sentence a line")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="ARPA to write (.arpa or .arpa.gz); with --binary also OUTPUT.bin")
    p.add_argument("--order", type=int, default=4, choices=range(2, 7), metavar="{2..6}",
                   help="n-gram order (default: %(default)s)")
    p.add_argument("--prune", type=int, nargs="+", default=[], metavar="N",
                   help="lmplz count thresholds per order, e.g. 0 0 1 (default: none)")
    p.add_argument("--level", choices=LEVELS, default="word",
                   help="word n-gram, or character n-gram with '|' between words")
    p.add_argument("--binary", action="store_true", help="also write a KenLM trie binary")
    p.add_argument("--memory", default="20%", help="lmplz memory budget (default: %(default)s)")
    p.set_defaults(func=run_build)

    p = sub.add_parser("ppl", help="perplexity of an LM on text (</s> counted, like KenLM)")
    p.add_argument("model", type=Path, help="ARPA, ARPA.gz or KenLM binary")
    p.add_argument("text", type=Path, help="one normalised sentence a line")
    p.add_argument("--level", choices=LEVELS, default="word")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_ppl)


def run_text(args: argparse.Namespace) -> int:
    # the text is built from the speech corpus's sources: a command runs above every layer
    from fusion.corpus.lmtext import build_lm_text, default_lm_text_dir

    out = args.out or default_lm_text_dir()
    summary = build_lm_text(out, exclude_files=args.exclude,
                            heldout_fraction=args.heldout_fraction)
    for split, info in summary["splits"].items():
        print(f"{split:5s} {info['sentences']:8d} sentences {info['words']:9d} words "
              f"-> {out / (split + '.txt')}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    text = args.text
    if args.level == "char":
        text = args.output.with_name(args.output.name.split(".")[0] + ".chars.txt")
        with open(args.text, encoding="utf-8") as fh:
            units_text((line for line in fh), text)
    start = time.perf_counter()
    arpa = build_arpa(text, args.output, order=args.order, prune=args.prune, memory=args.memory)
    print(f"wrote {arpa} ({arpa.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    if args.binary:
        binary = build_binary(arpa, args.output.with_name(args.output.name.split(".")[0] + ".bin"))
        print(f"wrote {binary} ({binary.stat().st_size / 1e6:.1f} MB)")
    return 0


def sentences_of(path: Path, level: str) -> list[list[str]]:
    """Read text as unit sequences: words, or characters with ``|`` between words."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip()]
    except UnicodeDecodeError as exc:
        raise LMError(f"{path}: not UTF-8 ({exc.reason})") from None
    return [char_units(line) if level == "char" else line.split() for line in lines]


def run_ppl(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model: LanguageModel = KenLM(args.model, level="token" if args.level == "char" else "word")
    load_s = time.perf_counter() - start
    sentences = sentences_of(args.text, args.level)
    ppl, units = perplexity(model, sentences)
    oov = sum(1 for s in sentences for u in s if not model.contains(u))
    result = {"model": str(args.model), "text": str(args.text), "level": args.level,
              "perplexity": ppl, "units": units, "sentences": len(sentences),
              "oov": oov, "load_seconds": load_s}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"perplexity {ppl:.2f} over {units} units ({len(sentences)} sentences, "
              f"{oov} OOV); loaded in {load_s:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - used via fusion.cli
    parser = argparse.ArgumentParser(prog="fusion")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

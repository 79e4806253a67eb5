"""``fusion lm ...``: build the LM text, estimate n-gram models, mix them, measure perplexity."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lm.base import LanguageModel, LMError, perplexity
from lm.ngram import KenLM, build_arpa, build_binary, sentences_of, units_text

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
    add_binary_arguments(p)
    p.add_argument("--memory", default="20%", help="lmplz memory budget (default: %(default)s)")
    p.set_defaults(func=run_build)

    p = sub.add_parser("ppl", help="perplexity of an LM on text (</s> counted, like KenLM)")
    p.add_argument("model", type=Path, help="ARPA, ARPA.gz or KenLM binary")
    p.add_argument("text", type=Path, help="one normalised sentence a line")
    p.add_argument("--level", choices=LEVELS, default="word")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_ppl)

    p = sub.add_parser("mix", help="linear interpolation of ARPA n-gram models into one ARPA "
                       "(SRILM -mix-lm semantics), weights given or fitted by EM on dev text")
    p.add_argument("models", type=Path, nargs="+", help="ARPA models (.arpa or .arpa.gz)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", type=float, nargs="+", metavar="W",
                         help="one weight per model, summing to 1")
    weights.add_argument("--fit-weights", type=Path, metavar="DEV_TEXT",
                         help="fit the weights by EM on this dev text (never the test text)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="ARPA to write (.arpa or .arpa.gz); with --binary also OUTPUT.bin")
    p.add_argument("--drop-unk", action="store_true",
                   help="leave <unk> out (a closed-vocabulary mixture, unigrams renormalised): "
                   "the decoder then scores unknown words with its own penalty, as for a model "
                   "without <unk>; for decoding LMs (an input's <unk> probability is far too "
                   "generous for any one unknown spelling)")
    add_binary_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_mix)


def add_binary_arguments(p: argparse.ArgumentParser) -> None:
    """--binary and --quantize: the KenLM binary written beside an ARPA."""
    p.add_argument("--binary", action="store_true", help="also write a KenLM trie binary")
    p.add_argument("--quantize", type=int, metavar="BITS",
                   help="with --binary: quantise its probabilities and back-offs to BITS (8: "
                   "as the default 3-gram's)")


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
        binary = build_binary(arpa, args.output.with_name(args.output.name.split(".")[0] + ".bin"),
                              quantize=args.quantize)
        print(f"wrote {binary} ({binary.stat().st_size / 1e6:.1f} MB)")
    return 0


def run_ppl(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model: LanguageModel = KenLM(args.model, level="token" if args.level == "char" else "word")
    load_s = time.perf_counter() - start
    sentences = sentences_of(args.text, args.level)
    ppl, units = perplexity(model, sentences)
    oov = sum(1 for s in sentences for u in s if not model.contains(u))
    result = {"model": str(args.model), "text": str(args.text), "level": args.level,
              "perplexity": ppl, "units": units, "sentences": len(sentences),
              "oov_words": oov, "load_seconds": load_s}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"perplexity {ppl:.2f} over {units} units ({len(sentences)} sentences, "
              f"{oov} OOV); loaded in {load_s:.2f} s")
    return 0


def run_mix(args: argparse.Namespace) -> int:
    import resource

    from lm.interpolate import (check_output, check_weights, common_perplexities, dev_probabilities,
                                fit_weights, load_models, mix, write_arpa)

    binary = args.output.with_name(args.output.name.split(".")[0] + ".bin")
    check_output(args.models, args.output)
    if args.binary:
        check_output(args.models, binary)
    if args.weights is not None:
        check_weights(args.weights, len(args.models))
    elif not args.fit_weights.is_file():
        raise LMError(f"{args.fit_weights}: no such dev text")
    start = time.perf_counter()
    index, tables = load_models(args.models, drop_words=("<unk>",) if args.drop_unk else ())
    result: dict = {"models": [str(m) for m in args.models], "output": str(args.output)}
    weights = args.weights
    if args.fit_weights is not None:
        sentences = sentences_of(args.fit_weights, "word")
        probs, skipped = dev_probabilities(index, tables, sentences)
        weights, _, iterations = fit_weights(probs)
        result["fit"] = {"dev": str(args.fit_weights), "oov_skipped": skipped,
                         "iterations": iterations, **common_perplexities(probs, weights)}
    mixture = mix(index, tables, weights, renormalise=args.drop_unk)
    write_arpa(mixture, args.output)
    result.update(weights=list(mixture.weights), drop_unk=args.drop_unk, ngrams=list(mixture.stats.counts),
                  full_contexts=mixture.stats.full_contexts,
                  lost_mass_contexts=mixture.stats.lost_mass_contexts,
                  arpa_mb=args.output.stat().st_size / 1e6,
                  seconds=time.perf_counter() - start,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.binary:
        result["binary"] = str(build_binary(args.output, binary, quantize=args.quantize))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    if "fit" in result:
        fit = result["fit"]
        alone = ", ".join(f"{p:.2f}" for p in fit["common_models"])
        print(f"EM on {fit['dev']}: {fit['iterations']} iterations; mixture perplexity "
              f"{fit['mixture']:.2f} over {fit['tokens']} tokens ({fit['oov_skipped']} OOV "
              f"left out); over the {fit['common_tokens']} every model knows: mixture "
              f"{fit['common_mixture']:.2f}, each model alone {alone}")
    print("weights " + " ".join(f"{w:.4f}" for w in result["weights"]))
    print(f"wrote {args.output} ({result['arpa_mb']:.1f} MB; n-grams "
          f"{' '.join(map(str, result['ngrams']))}) in {result['seconds']:.1f} s, "
          f"peak memory {result['peak_rss_mb']:.0f} MB")
    if mixture.stats.lost_mass_contexts:
        print(f"note: {mixture.stats.lost_mass_contexts} context(s) list every word the shorter "
              f"one does: their listed words were scaled up to take the mass left (up to "
              f"{mixture.stats.lost_mass_max:.2g})")
    if args.binary:
        print(f"wrote {result['binary']} ({Path(result['binary']).stat().st_size / 1e6:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - used via fusion.cli.main
    parser = argparse.ArgumentParser(prog="fusion")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

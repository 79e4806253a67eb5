"""Command-line hooks for the neural LM: ``add_parsers(subparsers)`` registers

* ``lm-train-neural --train TEXT --dev TEXT --out DIR [--config TOML]``: train or resume
  (same ``--out``) a neural LM, then print the dev perplexity of the best model;
* ``lm-export-neural CHECKPOINT --out DIR [--fp32]``: write a model-only ``model.pt``;
* ``lm-eval-neural MODEL TEXT...``: word-normalised perplexity of text files.

Each subcommand's ``func`` is a ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lm.base import LMError

__all__ = ["add_parsers", "run", "run_eval", "run_export"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lm-train-neural", help="train (or resume) the neural Transformer LM",
        description="Train a sentencepiece tokenizer and a Transformer LM on one sentence per "
        "line; running it again with the same --out resumes from DIR/checkpoint.pt.",
    )
    p.add_argument("--train", type=Path, required=True, help="training text, one sentence a line")
    p.add_argument("--dev", type=Path, help="held-out text for perplexity and model selection")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, log.jsonl)")
    p.add_argument("--config", type=Path, help="TOML file of TrainConfig keys (unknown keys: error)")
    p.add_argument("--max-steps", type=int, help="override max_steps (e.g. to extend a run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    p = subparsers.add_parser("lm-export-neural", help="write a small model-only neural LM file")
    p.add_argument("checkpoint", type=Path, help="a checkpoint (e.g. RUN/best.pt)")
    p.add_argument("--out", type=Path, required=True, help="directory to write model.pt into")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser("lm-eval-neural", help="word-normalised perplexity of texts")
    p.add_argument("model", type=Path, help="model.pt, a checkpoint, or a directory with model.pt")
    p.add_argument("texts", type=Path, nargs="+", help="text files, one sentence a line")
    p.set_defaults(func=run_eval)


def _fail(cmd: str, exc: Exception) -> int:
    print(f"{cmd}: error: {exc}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lm.neural_train import TrainConfig, load_train_config, train_neural_lm

    try:
        cfg = load_train_config(args.config) if args.config else TrainConfig()
        if args.max_steps is not None:
            cfg = replace(cfg, max_steps=args.max_steps)
        res = train_neural_lm(args.train, args.dev, args.out, cfg,
                              progress=False if args.no_progress else None)
    except (LMError, FileNotFoundError) as exc:
        return _fail("lm-train-neural", exc)
    print(json.dumps({"out": str(res.out_dir), "steps": res.steps, "best_dev_ppl": res.best_dev_ppl,
                      "elapsed_s": round(res.elapsed_s, 1), "interrupted": res.interrupted}))
    return 130 if res.interrupted else 0


def run_export(args: argparse.Namespace) -> int:
    from lm.neural_train import export_neural_lm

    try:
        path = export_neural_lm(args.checkpoint, args.out, half=not args.fp32)
    except (LMError, FileNotFoundError) as exc:
        return _fail("lm-export-neural", exc)
    print(path)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from lm.neural import NeuralLM
    from lm.neural_train import evaluate_text

    try:
        lm = NeuralLM.load(args.model)
        for text in args.texts:
            print(json.dumps({"text": str(text), **evaluate_text(lm, text)}))
    except (LMError, FileNotFoundError) as exc:
        return _fail("lm-eval-neural", exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m fusion.cli.nlm ...``) until the main CLI wires these in."""
    parser = argparse.ArgumentParser(prog="python -m fusion.cli.nlm")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""``fusion tune``: tune fusion weights on a dev set, write the best as a decode config.

Steps (each resumable; a rerun with the same arguments skips what is logged):

1. first-pass weights (``lm``, ``word_bonus``) by grid, random and TPE studies;
2. a sweep of the pruning threshold at the best weights (the lowest dev WER is kept:
   an LM whose unknown-word cost times its weight exceeds the threshold drops every
   hypothesis that starts an unknown word, so the best threshold depends on the LM),
   with ``--oov-penalties`` a sweep of the unknown-word penalty (weight ``oov``: see
   ``fusion.pipeline.build.lm_scorers``) at those (a penalty is kept only where a paired bootstrap
   says it beats no penalty with ``--oov-confidence``), then a beam sweep at the best
   weights, threshold and penalty (WER and throughput per beam);
3. the dev N-best lists at the best weights, with the rescoring scores (neural LM
   sentence log-probability, HMM alignment log-likelihood under a duration model fitted
   on dev) cached as an N-best table; its oracle WER;
4. rescoring weights by grid, random and TPE studies on that table;
5. ``best.toml`` (read by ``fusion decode --config``) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fusion.cli.backend import add_backend_arguments, tune_backend
from fusion.core.defaults import BEAM_SIZE, OOV
from fusion.core.manifest import atomic_write, read_manifest
from fusion.core.metrics import compare
from fusion.core.posteriors import PosteriorsReader
from fusion.decoder.options import SearchOptions
from fusion.pipeline.build import build_decoder, lm_scorers
from fusion.pipeline.config import DecodeConfig
from fusion.rescoring.rescore import LMRescorer, NbestTable, add_scores
from fusion.rescoring.tune import (FirstPassObjective, Param, TrialLog, best_trial, rescore_objective,
                                   rescore_param, run_study)

__all__ = ["add_parser", "cmd_tune"]

#: the pruning thresholds swept by default (natural log): SearchOptions' default first
BEAM_THRESHOLDS = (10.0, 15.0, 20.0, 25.0)
#: inputs.json keys added after the first version, with what a directory without them ran
_INPUTS_BEFORE = {"beam_thresholds": [10.0], "oov_penalties": [0.0], "oov_confidence": 0.0}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _range(text: str) -> tuple[float, float, int]:
    """``LOW:HIGH:NUM`` (a grid of NUM values from LOW to HIGH)."""
    try:
        low, high, num = text.split(":")
        return float(low), float(high), int(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH:NUM, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune", help="tune fusion weights on a dev set (grid, random, TPE; rescoring)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("posteriors", type=Path, help="dev posteriors .npz (fusion posteriors)")
    p.add_argument("--dev", type=Path, required=True, help="dev manifest JSONL with 'id' and 'text'")
    p.add_argument("--lm", type=Path, required=True, help="word n-gram (ARPA or KenLM binary)")
    p.add_argument("--lm-vocab", type=Path, help="the LM's words (default: vocab.txt beside it)")
    p.add_argument("-o", "--out-dir", type=Path, required=True, help="tuning directory")
    p.add_argument("--beam-size", type=int, default=BEAM_SIZE,
                   help="beam while tuning (default: %(default)s)")
    p.add_argument("--lm-grid", type=_range, default=(0.0, 2.0, 7), metavar="LOW:HIGH:NUM",
                   help="LM weight range and grid (default: 0:2:7)")
    p.add_argument("--bonus-grid", type=_range, default=(-2.0, 6.0, 7), metavar="LOW:HIGH:NUM",
                   help="word bonus range and grid (default: -2:6:7)")
    p.add_argument("--random-trials", type=int, help="default: a quarter of the grid")
    p.add_argument("--tpe-trials", type=int, help="default: a quarter of the grid")
    p.add_argument("--beams", type=_floats, default=(8, 16, 32, 64, 128),
                   help="beam sweep at the best weights (default: 8,16,32,64,128)")
    p.add_argument("--beam-thresholds", type=_floats, default=BEAM_THRESHOLDS,
                   help="pruning thresholds swept at the best weights; the best on dev goes "
                   "into the config (default: %(default)s; the weight studies run at the "
                   "first)")
    p.add_argument("--oov-penalties", type=_floats, default=(0.0,),
                   help="unknown-word penalties swept at the best weights and threshold; the "
                   "best on dev goes into the config as weight 'oov' (default: 0, no penalty; "
                   "e.g. 0,2.5,5,10). Needs the LM's words (an ARPA LM or --lm-vocab)")
    p.add_argument("--oov-confidence", type=float, default=0.95,
                   help="where the sweep holds 0, a penalty is kept only if a paired bootstrap "
                   "over the dev utterances gives it at least this probability of a lower WER "
                   "than no penalty (0: keep the lowest dev WER whatever the margin; default: "
                   "%(default)s)")
    p.add_argument("--pick-beam", action="store_true",
                   help="take the beam of the sweep with the lowest dev WER for the N-best lists "
                   "and the config (default: keep --beam-size)")
    p.add_argument("--nbest", type=int, default=16, help="N-best list size for rescoring")
    p.add_argument("--nlm", default="default",
                   help="neural LM checkpoint for rescoring ('default': the embedded one; 'none')")
    p.add_argument("--hmm", choices=("yes", "no"), default="yes",
                   help="add the HMM alignment score (duration model fitted on dev)")
    p.add_argument("--hmm-fit-utterances", type=int, default=100,
                   help="dev utterances the duration model is fitted on (default: %(default)s)")
    p.add_argument("--rescore-trials", type=int, default=64,
                   help="random and TPE trials of the rescoring studies (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="decoding processes, or Ray tasks per trial (default: %(default)s)")
    add_backend_arguments(p, "decode first-pass trials")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tune)
    return p


def _load_dev(args: argparse.Namespace) -> tuple[Any, list, dict[str, str]]:
    with PosteriorsReader(args.posteriors) as reader:
        table = reader.token_table
        if table is None:
            raise ValueError(f"{args.posteriors} carries no token table")
        posteriors = [reader[u] for u in reader.ids]
    refs = {u.id: u.text or "" for u in read_manifest(args.dev, require=("text",))}
    missing = [p.utt_id for p in posteriors if p.utt_id not in refs]
    if missing:
        raise ValueError(f"{args.dev}: no reference for {len(missing)} utterances, e.g. {missing[0]!r}")
    return table, posteriors, refs


def _report(stage: str, bar: tqdm, best: list[float]) -> Any:
    def progress(trial: dict) -> None:
        if trial.get("state") == "complete":
            best[0] = min(best[0], trial["wer"])
        bar.set_postfix_str(f"{stage} best WER {best[0]:.2f}")
        bar.update(1)
    return progress


def _studies(log: TrialLog, stage: str, prefix: str, params: list[Param], evaluate: Any,
             random_trials: int, tpe_trials: int, seed: int) -> dict[str, dict]:
    grid_size = int(np.prod([len(p.grid) for p in params]))
    total = grid_size + random_trials + tpe_trials
    best = [math.inf]
    results = {}
    with tqdm(total=total, initial=sum(1 for t in log.trials if t["stage"] == stage),
              desc=f"tune {stage}", unit="trial", disable=None) as bar:
        progress = _report(stage, bar, best)
        for sampler, n in (("grid", None), ("random", random_trials), ("tpe", tpe_trials)):
            study = f"{prefix}{sampler}"
            results[study] = run_study(study, sampler, params, evaluate, log, stage=stage, trials=n,
                                       seed=seed, progress=progress)
    return {name: {"trials": len(log.of(name)), "best": b} for name, b in results.items()}


def _summary_of(studies: dict[str, dict]) -> dict[str, Any]:
    best = best_trial([s["best"] for s in studies.values() if s["best"]])
    return {"best": best, "studies": {k: {"trials": v["trials"],
                                          "best_wer": v["best"]["wer"] if v["best"] else None,
                                          "best_params": v["best"]["params"] if v["best"] else None}
                                      for k, v in studies.items()}}


def _bayes_gap(studies: dict[str, dict], prefix: str) -> dict[str, float | None]:
    grid, tpe = studies.get(f"{prefix}grid"), studies.get(f"{prefix}tpe")
    if not (grid and tpe and grid["best"] and tpe["best"]):
        return {"bayes_gap_to_grid": None, "bayes_trial_fraction": None}
    return {"bayes_gap_to_grid": 100.0 * (tpe["best"]["wer"] - grid["best"]["wer"]) / grid["best"]["wer"],
            "bayes_trial_fraction": tpe["trials"] / grid["trials"]}


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value)) if isinstance(value, float) else str(value)


def toml_text(tables: dict[str, dict[str, Any]], header: str = "") -> str:
    """A TOML document of flat tables (dotted names for sub-tables)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


INPUTS = "inputs.json"


def _file_id(path: Path | None) -> dict[str, Any] | None:
    """A file as its resolved path, size and content hash (None stays None)."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"path": str(Path(path).resolve()), "bytes": Path(path).stat().st_size,
            "sha256": h.hexdigest()}


def check_inputs(out: Path, args: argparse.Namespace) -> None:
    """Record what the trials in ``out`` depend on; refuse to resume from other inputs.

    A rerun may add trials (``--random-trials``, ``--tpe-trials``) or change
    ``--workers``; other posteriors, references, LM, grids, beam, N-best or rescorers
    would mix trials of two different questions in one log."""
    nlm = str(args.nlm)
    mine = {"posteriors": _file_id(args.posteriors), "dev": _file_id(args.dev),
            "lm": _file_id(args.lm), "lm_vocab": _file_id(args.lm_vocab),
            "lm_grid": list(args.lm_grid), "bonus_grid": list(args.bonus_grid),
            "beam_size": args.beam_size, "beams": [float(b) for b in args.beams],
            "beam_thresholds": [float(t) for t in args.beam_thresholds],
            "oov_penalties": [float(v) for v in args.oov_penalties],
            "oov_confidence": float(args.oov_confidence),
            "pick_beam": bool(args.pick_beam), "nbest": args.nbest,
            "nlm": _file_id(Path(nlm)) if Path(nlm).is_file() else nlm, "hmm": args.hmm,
            "hmm_fit_utterances": args.hmm_fit_utterances, "seed": args.seed}
    path = out / INPUTS
    if path.exists():
        saved = {**_INPUTS_BEFORE, **json.loads(path.read_text(encoding="utf-8"))}
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if diff:
            raise ValueError(f"{out}: its trials were run on other inputs ({', '.join(diff)} "
                             f"differ); use another --out-dir, or the same inputs to resume")
    elif (out / "trials.jsonl").exists():
        raise ValueError(f"{out}: holds trials but no {INPUTS} (written by an older version): "
                         f"use another --out-dir")
    else:
        with atomic_write(path) as fh:
            fh.write(json.dumps(mine, indent=1) + "\n")


def _sweep_oov(objective: FirstPassObjective, params: dict[str, float], penalties: Sequence[float],
               confidence: float, seed: int) -> tuple[float, list[dict[str, Any]]]:
    """The unknown-word penalty to keep, and each penalty's dev rates.

    The lowest dev WER (then CER, then the smaller penalty) wins; where the sweep holds 0,
    each other penalty is also compared with it by paired bootstrap over the dev utterances
    (``p_better``, ``interval`` of its WER minus no penalty's), and the winner is kept only
    with ``p_better`` of at least ``confidence``: a few words either way on a few hundred
    utterances is chance, and chasing it flips the choice from one model to the next."""
    scores, rows = {}, []
    for value in tqdm(penalties, desc="unknown-word penalty sweep", disable=None):
        scores[value], _ = objective.score({**params, OOV: value})
        rows.append({OOV: value, "wer": 100 * scores[value].wer, "cer": 100 * scores[value].cer})
    if 0 in scores:
        for row in rows:
            if row[OOV]:
                c = compare(scores[0], scores[row[OOV]], seed=seed)
                row.update(p_better=c.p_better, interval=list(c.interval))
    best = min(rows, key=lambda r: (r["wer"], r["cer"], r[OOV]))
    if 0 in scores and best[OOV] and best["p_better"] < confidence:
        best["not_kept"] = (f"P(lower WER than no penalty) {best['p_better']:.3f} "
                            f"< --oov-confidence {confidence:g}")
        return 0.0, rows
    return best[OOV], rows


def cmd_tune(args: argparse.Namespace) -> int:
    out: Path = args.out_dir
    if not args.beam_thresholds or any(not t > 0 for t in args.beam_thresholds):
        raise ValueError(f"--beam-thresholds must be positive, got {args.beam_thresholds}")
    if not args.oov_penalties or any(not v >= 0 for v in args.oov_penalties):
        raise ValueError(f"--oov-penalties must be 0 or more, got {args.oov_penalties}")
    if not 0 <= args.oov_confidence < 1:
        raise ValueError(f"--oov-confidence must lie in [0, 1), got {args.oov_confidence}")
    out.mkdir(parents=True, exist_ok=True)
    check_inputs(out, args)
    log = TrialLog(out / "trials.jsonl")
    table, posteriors, refs = _load_dev(args)
    sweep_oov = any(v > 0 for v in args.oov_penalties)
    # the weight studies and the threshold sweep run without the penalty (weight 0)
    scorers = lm_scorers(args.lm, args.lm_vocab, oov=sweep_oov)
    no_penalty = {OOV: 0.0} if sweep_oov else {}
    params = [Param.linspace("lm", *args.lm_grid), Param.linspace("word_bonus", *args.bonus_grid)]
    grid_size = len(params[0].grid) * len(params[1].grid)
    quarter = max(1, grid_size // 4)
    options = SearchOptions(beam_size=args.beam_size, beam_threshold=args.beam_thresholds[0])
    summary: dict[str, Any] = {"dev": str(args.dev), "posteriors": str(args.posteriors),
                               "lm": str(args.lm), "utterances": len(posteriors),
                               "audio_seconds": sum(p.duration for p in posteriors)}
    with FirstPassObjective(table, scorers, posteriors, refs, options, no_penalty,
                            backend=tune_backend(args)) as objective:
        studies = _studies(log, "first_pass", "", params, objective, args.random_trials or quarter,
                           args.tpe_trials or quarter, args.seed)
        summary["first_pass"] = {**_summary_of(studies), **_bayes_gap(studies, "")}
        best_params = summary["first_pass"]["best"]["params"]
        thresholds = []
        for value in tqdm(args.beam_thresholds, desc="threshold sweep", disable=None):
            (trial,) = objective([{**best_params, "beam_threshold": value}])
            thresholds.append({"beam_threshold": value, "wer": trial["wer"], "cer": trial["cer"],
                               "throughput": trial["audio_seconds"] / trial["decode_seconds"]})
        summary["threshold_sweep"] = thresholds
        threshold = min(thresholds, key=lambda r: (r["wer"], r["cer"], r["beam_threshold"]))["beam_threshold"]
        best_params = {**best_params, **no_penalty}
        if sweep_oov:
            best_params[OOV], summary["oov_sweep"] = _sweep_oov(
                objective, {**best_params, "beam_threshold": threshold}, args.oov_penalties,
                args.oov_confidence, args.seed)
        sweep = []
        for beam in tqdm(args.beams, desc="beam sweep", disable=None):
            (trial,) = objective([{**best_params, "beam_size": int(beam), "beam_threshold": threshold}])
            sweep.append({"beam_size": int(beam), "wer": trial["wer"], "cer": trial["cer"],
                          "throughput": trial["audio_seconds"] / trial["decode_seconds"]})
        summary["beam_sweep"] = sweep
    beam = args.beam_size
    if args.pick_beam and sweep:
        beam = min(sweep, key=lambda r: (r["wer"], r["beam_size"]))["beam_size"]
    summary["search"] = {"beam_size": beam, "nbest": min(args.nbest, beam),
                         "beam_threshold": threshold,
                         "picked_from_sweep": bool(args.pick_beam and sweep)}
    weights = {"lm": best_params["lm"], "word_bonus": best_params["word_bonus"]}
    if best_params.get(OOV):
        weights[OOV] = best_params[OOV]
    else:  # no penalty: no scorer, so neither the N-best table nor the config has one
        scorers = [s for s in scorers if s.name != OOV]
    penalty = ""
    if sweep_oov:
        kept = next(r for r in summary["oov_sweep"] if r[OOV] == best_params[OOV])
        lowest = min(summary["oov_sweep"], key=lambda r: (r["wer"], r["cer"], r[OOV]))
        penalty = (f"; unknown-word penalty {best_params[OOV]:g} (dev WER {kept['wer']:.2f}"
                   + (f"; {lowest[OOV]:g} had {lowest['wer']:.2f}, {lowest['not_kept']}"
                      if "not_kept" in lowest else "") + ")")
    print(f"first pass: best WER {summary['first_pass']['best']['wer']:.2f} at {weights}; "
          f"pruning threshold {threshold:g}{penalty}", file=sys.stderr)

    nbest_path = out / "nbest.npz"
    if nbest_path.exists():  # a resumed run: the scorers are not even loaded
        nbest = NbestTable.load(nbest_path)
    else:
        rescorers = _rescorers(args, table, posteriors, refs, out)
        config = DecodeConfig(lm=args.lm, lm_vocab=args.lm_vocab, weights=weights,
                              search=SearchOptions(beam_size=beam, nbest=min(args.nbest, beam),
                                                   beam_threshold=threshold))
        decoder = build_decoder(config, table, scorers=scorers)  # the scorers loaded above
        results = []
        for p in tqdm(posteriors, desc="N-best + rescoring scores", unit="utt", disable=None):
            results.append(add_scores(decoder.decode(p), p, rescorers))
        nbest = NbestTable.build(results, refs)
        nbest.save(nbest_path)
    oracle_wer, oracle_cer = nbest.oracle_rates()
    summary["oracle_wer"], summary["oracle_cer"] = oracle_wer, oracle_cer
    rescore_params = [rescore_param(name) for name in nbest.names if name != "acoustic"]
    fixed = {"acoustic": 1.0}
    first_pass_rescored = nbest.error_rates({**fixed, **weights, **{n: 0.0 for n in nbest.names
                                                                    if n not in {*weights, *fixed}}})
    rescore = _studies(log, "rescore", "rescore-", rescore_params, rescore_objective(nbest, fixed),
                       args.rescore_trials, args.rescore_trials, args.seed)
    summary["rescore"] = {**_summary_of(rescore), **_bayes_gap(rescore, "rescore-"),
                          "first_pass_nbest_wer": first_pass_rescored[0]}
    rescore_weights = {**fixed, **summary["rescore"]["best"]["params"]}
    _write_config(args, out, weights, rescore_weights, summary)
    with atomic_write(out / "summary.json") as fh:
        json.dump(summary, fh, indent=1)
    print(f"rescoring: best WER {summary['rescore']['best']['wer']:.2f} (oracle {oracle_wer:.2f}); "
          f"config -> {out / 'best.toml'}", file=sys.stderr)
    return 0


def _rescorers(args: argparse.Namespace, table: Any, posteriors: list, refs: dict[str, str],
               out: Path) -> list:
    """The sentence scorers of the rescoring stage (the HMM duration model is fitted on dev
    and saved as ``hmm.json``)."""
    scorers: list = []
    if args.nlm != "none":
        from lm.neural import NeuralLM

        nlm = NeuralLM.default() if args.nlm == "default" else NeuralLM.load(args.nlm)
        scorers.append(LMRescorer(nlm, "nlm"))
    if args.hmm == "yes":
        from fusion.core.text import normalize_text
        from hmm.model import TiedDurationHMM
        from hmm.scorer import AlignmentScorer

        path = out / "hmm.json"
        if path.exists():
            model = TiedDurationHMM.load(path)
        else:
            fit = [p for p in posteriors if normalize_text(refs[p.utt_id]).split()][: args.hmm_fit_utterances]
            start = time.perf_counter()
            model = TiedDurationHMM(table).fit(fit, [normalize_text(refs[p.utt_id]) for p in fit])
            print(f"duration model: EM on {len(fit)} dev utterances, {model.n_iter_} iterations, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
            model.save(path)
        scorers.append(AlignmentScorer(model, "hmm"))
    return scorers


def _write_config(args: argparse.Namespace, out: Path, weights: dict[str, float],
                  rescore_weights: dict[str, float], summary: dict[str, Any]) -> None:
    lm_table = {"path": str(args.lm.resolve())}
    if args.lm_vocab:
        lm_table["vocab"] = str(args.lm_vocab.resolve())
    rescore: dict[str, Any] = {}
    if args.nlm != "none":
        rescore["nlm"] = args.nlm if args.nlm == "default" else str(Path(args.nlm).resolve())
    if args.hmm == "yes":
        rescore["hmm"] = "hmm.json"
    beam = summary["search"]["beam_size"]
    search = {"beam_size": beam, "nbest": min(args.nbest, beam),
              "beam_threshold": summary["search"]["beam_threshold"]}
    tables = {"search": search, "weights": weights,
              "lm": lm_table, "rescore": rescore, "rescore.weights": rescore_weights}
    fp, rs = summary["first_pass"]["best"], summary["rescore"]["best"]
    header = (f"tuned by fusion tune on {args.dev} ({summary['utterances']} utterances)\n"
              f"first pass: WER {fp['wer']:.2f} ({fp['study']} study); "
              f"after rescoring: WER {rs['wer']:.2f} ({rs['study']} study)")
    with atomic_write(out / "best.toml") as fh:
        fh.write(toml_text(tables, header))

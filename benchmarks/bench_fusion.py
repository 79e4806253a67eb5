"""The ablation table of the hybrid decoder: what each knowledge source buys.

Stages, each on top of the one before:

1. greedy CTC;
2. + word n-gram shallow fusion (LM weight and word bonus tuned by ``fusion tune``);
3. + neural LM shallow fusion (the neural LM as a third word scorer in the beam; its
   weight and the n-gram's tuned on dev by a grid that holds stage 2's weights, so on dev
   the stage is never worse than stage 2; the word bonus kept);
4. + N-best rescoring with the neural LM (stage 3's N-best re-ranked with the sentence
   log-probability of the neural LM and every first-pass score, weights tuned on dev N-best
   lists by grid, random and TPE studies);
5. + the HMM alignment score (a duration model fitted on dev) as one more rescoring feature.

Everything is tuned on ``dev`` only; WER is reported on ``test``, ``test-unseen-voices``
and the real-speech dev set, each with a bootstrap 95% interval over utterances.

    python benchmarks/bench_fusion.py --model MODEL.pt --lm word-4gram.bin --lm-vocab word-4gram.arpa
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import header, table, write_results  # noqa: E402

from fusion.core.defaults import BEAM_SIZE  # noqa: E402
from fusion.core.manifest import read_manifest  # noqa: E402
from fusion.core.metrics import CorpusScore, compare, score_corpus  # noqa: E402
from fusion.core.posteriors import Posteriors, PosteriorsReader, PosteriorsWriter  # noqa: E402
from fusion.decoder.greedy import greedy_decode  # noqa: E402
from fusion.decoder.options import SearchOptions  # noqa: E402
from fusion.decoder.scorers import LMScorer  # noqa: E402
from fusion.pipeline.build import build_decoder, lm_scorers  # noqa: E402
from fusion.pipeline.config import DecodeConfig  # noqa: E402
from fusion.rescoring.rescore import LMRescorer, NbestTable, add_scores  # noqa: E402
from fusion.rescoring.tune import (FirstPassObjective, Param, TrialLog, rescore_objective,  # noqa: E402
                                   rescore_param, run_study)
from fusion.run.parallel import LocalBackend, decode_parallel  # noqa: E402

HOME = Path(os.environ.get("ASRFUSE_HOME", Path.home() / ".cache" / "asrfuse"))
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-speech" / "manifest.jsonl"
SPLITS = {"dev": HOME / "corpus" / "dev.jsonl", "test": HOME / "corpus" / "test.jsonl",
          "test-unseen-voices": HOME / "corpus" / "test-unseen-voices.jsonl", "real-speech": REAL}
STAGES = ("greedy", "+ n-gram fusion", "+ neural LM fusion", "+ neural LM rescoring", "+ HMM score")
#: the other full hybrid: fusion tune's config (n-gram fusion, then the N-best rescored with
#: the neural LM and the HMM score); the summary takes whichever full system is better on dev
TUNED = "n-gram fusion + rescoring (neural LM, HMM): fusion tune's config"


def posteriors_for(split: str, model_path: Path, work: Path) -> Path:
    """The split's posteriors under the model, computed once (cached by model hash)."""
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:12]
    path = work / f"posteriors-{digest}" / f"{split}.npz"
    if path.exists():
        return path
    from fusion.am.infer import compute_posteriors
    from fusion.am.model import load_model

    model = load_model(model_path)
    utts = read_manifest(SPLITS[split], require=("audio", "text"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with PosteriorsWriter(path, token_table=model.token_table) as w:
        for item in compute_posteriors(utts, model, progress=True):
            if isinstance(item, Posteriors):
                w.write(item)
            else:
                print(f"skipped: {item}", file=sys.stderr)
    return path


def load(path: Path) -> list[Posteriors]:
    with PosteriorsReader(path) as r:
        return [r[u] for u in r.ids]


def bootstrap(score: CorpusScore, *, n: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of corpus WER (percent) over utterances resampled."""
    from scipy import stats

    errors = np.array([u.words.errors for u in score.utterances])
    lengths = np.array([u.words.ref_len for u in score.utterances])

    def wer(e: np.ndarray, w: np.ndarray, axis: int = -1) -> np.ndarray:
        return 100 * e.sum(axis) / np.maximum(1, w.sum(axis))

    ci = stats.bootstrap((errors, lengths), wer, paired=True, vectorized=True, n_resamples=n,
                         method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
    return [float(ci.low), float(ci.high)]


def row(split: str, stage: str, refs: dict[str, str], hyps: dict[str, str], seconds: float,
        audio: float, scores: dict[tuple[str, str], CorpusScore], against: str | None = None) -> dict:
    """One system's results on one split; ``scores`` keeps each system's per-utterance
    scores, so that ``against`` (a system already scored on this split) is compared with it
    by paired bootstrap: the WER change and the probability that this system is better."""
    score = scores[split, stage] = score_corpus(refs, hyps)
    out = {"split": split, "system": stage, "wer": 100 * score.wer, "wer_ci": bootstrap(score),
           "cer": 100 * score.cer, "utterances": len(refs),
           "throughput": audio / seconds if seconds else None}
    if against is not None:
        c = compare(scores[split, against], score, resamples=2000)
        out["vs"] = {"system": against, "delta": c.delta, "interval": list(c.interval),
                     "p_better": c.p_better}
    print(f"{split:>20} {stage:<24} WER {out['wer']:6.2f} [{out['wer_ci'][0]:.2f}, {out['wer_ci'][1]:.2f}]"
          + (f", P(better than {against}) {out['vs']['p_better']:.3f}" if against else ""),
          file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="acoustic model checkpoint")
    parser.add_argument("--lm", type=Path, required=True, help="word n-gram (KenLM binary or ARPA)")
    parser.add_argument("--lm-vocab", type=Path, help="its words, for partial-word scoring")
    parser.add_argument("--work", type=Path, default=HOME / "bench-fusion")
    parser.add_argument("--beam-size", type=int, default=BEAM_SIZE)
    parser.add_argument("--nbest", type=int, default=16)
    parser.add_argument("--nlm-weights", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.35, 0.5],
                        help="neural LM weights tried (with the n-gram's weight scaled by 0.5, 0.75, "
                             "1); with 0 the grid holds the n-gram first pass itself, so the stack "
                             "is never worse than it on the dev utterances tuned on")
    parser.add_argument("--nlm-dev-utterances", type=int, default=None,
                        help="dev utterances the neural LM's fusion weights are tuned on "
                             "(default: all of dev)")
    parser.add_argument("--rescore-trials", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tune-args", default="", help="extra arguments for fusion tune")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    post = {s: posteriors_for(s, args.model, args.work) for s in SPLITS}
    refs = {s: {u.id: u.text or "" for u in read_manifest(SPLITS[s], require=("text",))} for s in SPLITS}

    # -- tuning on dev ---------------------------------------------------------------
    # everything tuned or cached below belongs to this acoustic model: one folder per model
    run_dir = args.work / f"run-{post['dev'].parent.name.removeprefix('posteriors-')}"
    tune_dir = run_dir / "tune"
    tune_argv = [sys.executable, "-m", "fusion.cli", "tune", str(post["dev"]), "--dev", str(SPLITS["dev"]),
                 "--lm", str(args.lm),
                 "-o", str(tune_dir), "--beam-size", str(args.beam_size), "--nbest", str(args.nbest),
                 "--workers", str(args.workers), "--rescore-trials", str(args.rescore_trials), "--pick-beam",
                 *([f"--lm-vocab={args.lm_vocab}"] if args.lm_vocab else []), *args.tune_args.split()]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    if subprocess.run(tune_argv, env=env).returncode != 0:  # the command, as a user runs it
        raise SystemExit("fusion tune failed")
    summary = json.loads((tune_dir / "summary.json").read_text())
    ngram_w = summary["first_pass"]["best"]["params"]
    from lm.neural import NeuralLM

    nlm = NeuralLM.default()
    ngram_scorers = lm_scorers(args.lm, args.lm_vocab)
    scorers = [*ngram_scorers, LMScorer(nlm, "nlm")]
    dev = load(post["dev"])
    log = TrialLog(run_dir / "ablation-trials.jsonl")  # the ablation's own studies
    subset = dev[: args.nlm_dev_utterances]
    # first-pass weights are tuned at --beam-size; the beam itself is the dev sweep's best
    beam = summary["search"]["beam_size"]
    options = SearchOptions(beam_size=beam, nbest=min(args.nbest, beam))
    table_ = _table(post["dev"])

    def decoder(weights: dict[str, float], scorers: list) -> Any:
        """The first pass at ``weights``, built as ``fusion decode`` builds it, over scorers
        loaded once (the neural LM's among them)."""
        config = DecodeConfig(lm=args.lm, lm_vocab=args.lm_vocab, weights=weights, search=options)
        return build_decoder(config, table_, scorers=scorers)
    # the neural LM takes part of the n-gram's weight (a log-linear interpolation) or adds
    # to it; the word bonus stays as tuned (a 3-D TPE in 16 trials found nothing better)
    params = [Param("lm", 0.0, 2.0, tuple(round(f * ngram_w["lm"], 4) for f in (0.5, 0.75, 1.0))),
              Param("nlm", 0.0, 1.0, tuple(args.nlm_weights)),
              Param("word_bonus", -2.0, 6.0, (ngram_w["word_bonus"],))]
    tuning = SearchOptions(beam_size=args.beam_size, nbest=min(args.nbest, args.beam_size))
    with FirstPassObjective(table_, scorers, subset, refs["dev"], tuning,
                            backend=LocalBackend(workers=args.workers)) as objective:
        (start,) = objective([{**ngram_w, "nlm": 0.0}])
        # trials on another number of dev utterances are another study
        best_nlm = run_study(f"nlm-grid-{len(subset)}", "grid", params, objective, log,
                             stage="first_pass_nlm")
    nlm_w = dict(best_nlm["params"])
    # what depends on the neural-fusion weights (stage 3's dev N-best, the rescoring studies on
    # it) is cached and logged under them
    nlm_tag = hashlib.sha256(json.dumps(nlm_w, sort_keys=True).encode()).hexdigest()[:8]
    print(f"neural LM fusion weights: {nlm_w} (dev WER {best_nlm['wer']:.2f} on {len(subset)} "
          f"utterances; without the neural LM {start['wer']:.2f})", file=sys.stderr)
    summary["neural_fusion_dev_subset"] = {"utterances": len(subset), "beam_size": args.beam_size,
                                           "without_nlm_wer": start["wer"],
                                           "best_wer": best_nlm["wer"], "weights": nlm_w,
                                           "grid": {p.name: p.grid for p in params}}

    from hmm.model import TiedDurationHMM
    from hmm.scorer import AlignmentScorer

    hmm = TiedDurationHMM.load(tune_dir / "hmm.json")

    rescorers = [LMRescorer(nlm, "nlm_sentence"), AlignmentScorer(hmm, "hmm")]
    nlm_decoder = decoder(nlm_w, scorers)

    def stage3(posteriors: list[Posteriors]) -> tuple[list, dict[str, float]]:
        """Stage 3's N-best lists with the rescoring scores added, and wall seconds of the
        first pass and of each rescoring score."""
        start = time.perf_counter()
        results = list(decode_parallel(nlm_decoder, posteriors, workers=args.workers))
        seconds = {"first_pass": time.perf_counter() - start}
        by_id = {p.utt_id: p for p in posteriors}
        for scorer in rescorers:
            start = time.perf_counter()
            results = [add_scores(r, by_id[r.utt_id], [scorer]) for r in results]
            seconds[scorer.name] = time.perf_counter() - start
        return results, seconds

    # dev N-best of stage 3, for the rescoring weights of stages 4 and 5
    dev_cache = run_dir / f"dev-nbest-{beam}-{args.nbest}-{nlm_tag}.npz"
    if dev_cache.exists():
        dev_table = NbestTable.load(dev_cache)
    else:
        dev_table = NbestTable.build(stage3(dev)[0], refs["dev"])
        dev_table.save(dev_cache)
    first_pass_names = {"acoustic", "lm", "word_bonus", "nlm"}
    rescore_w = {}
    for stage, on in (("nlm", first_pass_names | {"nlm_sentence"}), ("hmm", set(dev_table.names))):
        fixed = {"acoustic": 1.0, **{n: 0.0 for n in dev_table.names if n not in on}}
        params = [rescore_param(n) for n in dev_table.names if n in on and n != "acoustic"]
        best = None
        for sampler in ("grid", "random", "tpe"):
            b = run_study(f"ablation-{stage}-{sampler}-{nlm_tag}", sampler, params,
                          rescore_objective(dev_table, fixed), log, stage=f"rescore_{stage}",
                          trials=args.rescore_trials)
            best = b if best is None or b["wer"] < best["wer"] else best
        rescore_w[stage] = {**fixed, **best["params"]}
        print(f"rescoring weights ({stage}): {rescore_w[stage]} dev WER {best['wer']:.2f}", file=sys.stderr)

    # -- the ablation ------------------------------------------------------------------
    ngram_nbest = decoder(ngram_w, ngram_scorers)
    tuned_rescorers = [LMRescorer(nlm, "nlm"), AlignmentScorer(hmm, "hmm")]
    tuned_w = {"acoustic": 1.0, **summary["rescore"]["best"]["params"]}
    dev_wer = {STAGES[-1]: best["wer"], TUNED: summary["rescore"]["best"]["wer"]}
    full = min(dev_wer, key=dev_wer.get)
    rows = []
    scores: dict[tuple[str, str], CorpusScore] = {}
    for split in ("test", "test-unseen-voices", "real-speech"):
        posteriors = load(post[split])
        audio = sum(p.duration for p in posteriors)
        r = refs[split]
        start = time.perf_counter()
        greedy = greedy_decode(posteriors, table_)
        rows.append(row(split, STAGES[0], r, {x.utt_id: x.best.text for x in greedy},
                        time.perf_counter() - start, audio, scores))
        start = time.perf_counter()
        ngram = decoder(ngram_w, ngram_scorers)
        out = list(decode_parallel(ngram, posteriors, workers=args.workers))
        rows.append(row(split, STAGES[1], r, {x.utt_id: x.best.text for x in out},
                        time.perf_counter() - start, audio, scores, STAGES[0]))
        results, seconds = stage3(posteriors)
        split_table = NbestTable.build(results, r)
        elapsed = seconds["first_pass"]
        rows.append(row(split, STAGES[2], r, {x.utt_id: x.best.text for x in results}, elapsed, audio,
                        scores, STAGES[1]))
        for stage, name, scorer, before in (("nlm", STAGES[3], "nlm_sentence", STAGES[2]),
                                            ("hmm", STAGES[4], "hmm", STAGES[3])):
            elapsed += seconds[scorer]
            rows.append(row(split, name, r, split_table.chosen_texts(rescore_w[stage]), elapsed, audio,
                            scores, before))
        rows[-1]["oracle_wer"] = split_table.oracle_rates()[0]
        # fusion tune's config: stage 2's decoder with N-best lists, rescored
        start = time.perf_counter()
        by_id = {p.utt_id: p for p in posteriors}
        tuned = [add_scores(x, by_id[x.utt_id], tuned_rescorers)
                 for x in decode_parallel(ngram_nbest, posteriors, workers=args.workers)]
        rows.append(row(split, TUNED, r, NbestTable.build(tuned, r).chosen_texts(tuned_w),
                        time.perf_counter() - start, audio, scores, STAGES[1]))

    def wer(split: str, stage: str) -> float:
        return next(x["wer"] for x in rows if x["split"] == split and x["system"] == stage)

    unseen = "test-unseen-voices"
    fp = summary["first_pass"]
    result_summary = {
        "full_hybrid": full,
        "full_hybrid_dev_wer": dev_wer,
        "relative_wer_reduction_unseen_voices": 100 * (1 - wer(unseen, full) / wer(unseen, STAGES[0])),
        "bayes_gap_to_grid": fp.get("bayes_gap_to_grid"),
        "bayes_trial_fraction": fp.get("bayes_trial_fraction"),
        "relative_wer_reduction_test": 100 * (1 - wer("test", full) / wer("test", STAGES[0])),
        "relative_wer_reduction_real_speech": 100 * (1 - wer("real-speech", full)
                                                     / wer("real-speech", STAGES[0])),
        "stage_gains_unseen_voices": {STAGES[i]: wer(unseen, STAGES[i - 1]) - wer(unseen, STAGES[i])
                                      for i in range(1, len(STAGES))},
    }
    data = {**header(), "model": str(args.model), "lm": str(args.lm), "beam_size": beam,
            "tuning_beam_size": args.beam_size,
            "nbest": args.nbest, "weights": {"ngram": ngram_w, "neural": nlm_w, "rescore": rescore_w},
            "tuning": {"first_pass": fp, "rescore": summary.get("rescore"),
                       "beam_sweep": summary.get("beam_sweep"), "dev_oracle_wer": summary.get("oracle_wer"),
                       "neural_fusion": summary["neural_fusion_dev_subset"]},
            "rows": rows, "summary": result_summary}
    cols = [("split", "split"), ("system", "system"), ("wer", "WER %"), ("wer_ci", "95% CI"),
            ("vs", "WER change (95% CI), P(better)"), ("cer", "CER %"), ("throughput", "x real time")]
    shown = [{**x, "wer_ci": f"{x['wer_ci'][0]:.1f}-{x['wer_ci'][1]:.1f}", "vs": _versus(x.get("vs"))}
             for x in rows]
    md = (f"# Fusion ablation\n\n{data['date']}, `{data['command']}`  \n"
          f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores. Acoustic model "
          f"`{args.model.name}`, word n-gram `{args.lm.name}`, beam {beam} (the dev beam sweep's best; "
          f"weights "
          f"tuned at beam {args.beam_size}), N-best {args.nbest}. "
          "Tuned on dev only; 95% intervals by bootstrap over utterances. The WER change is "
          "against the system before (the rescored configs: against the n-gram first pass), "
          "by paired bootstrap over the same utterances, with the share of resamples in which "
          "the system is better (`fusion score --compare`).\n\n" + table(shown, cols)
          + "\n## Tuned weights\n\n```json\n" + json.dumps(data["weights"], indent=1) + "\n```\n"
          + "\n## Summary\n\n" + "\n".join(f"- {k}: {v}" for k, v in result_summary.items()) + "\n")
    write_results("fusion", data, md)
    from fusion.rescoring.report import write_report

    write_report(tune_dir, Path(__file__).resolve().parent / "results" / "fusion-report",
                 fusion_json=Path(__file__).resolve().parent / "results" / "fusion.json",
                 decoder_json=Path(__file__).resolve().parent / "results" / "decoder.json")
    return 0


def _versus(vs: dict | None) -> str:
    """``-1.23 (-1.9, -0.6), 1.000``: a row's paired comparison, or nothing."""
    if not vs:
        return ""
    lo, hi = vs["interval"]
    return f"{vs['delta']:+.2f} ({lo:+.1f}, {hi:+.1f}), {vs['p_better']:.3f}"


def _table(path: Path):
    with PosteriorsReader(path) as r:
        return r.token_table


if __name__ == "__main__":
    raise SystemExit(main())

"""Neural-LM shallow fusion throughput: this search against the search before the redesign.

Issue 45 moved the neural LM from the Python beam search into the compiled one (called back
once a frame for the words the beams complete) and asked that neural-LM fusion get faster,
not slower. This benchmark decodes the same posteriors with the same scorers and weights
(the word 4-gram, the neural LM, the word bonus) two ways, side by side in one run:

* ``current``: this checkout's compiled search (``fusion.decoder``);
* ``pre-redesign``: the library as it was at ``--baseline-rev`` (the last commit with the
  Python search, ``SearchOptions(engine="python")``), exported from this repository's own
  history with ``git archive`` into a temporary folder.

Each decode runs in a fresh process (one torch thread), the two sides alternating,
``--repeats`` times; the first utterance is decoded once untimed (model loading). Both
sides must give the same N-best lists: the table reports the share of identical best
transcripts and the largest difference of a best hypothesis's score.

    python benchmarks/bench_nlm_fusion.py --lm word-4gram.bin --lm-vocab word-4gram.arpa

Writes benchmarks/results/nlm_fusion.json and nlm_fusion.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, header, table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: the last commit whose library held the Python search (41dcfdc removed it)
BASELINE_REV = "41dcfdc^"
SIDES = ("current", "pre-redesign")


def _decode(spec: dict[str, Any]) -> dict[str, Any]:
    """Decode ``spec``'s utterances with the neural LM fused in; runs in a child process
    whose ``fusion`` is either this checkout or the exported baseline tree."""
    import torch

    torch.set_num_threads(1)
    if spec["side"] == "current":
        from fusion.core.posteriors import PosteriorsReader
        from fusion.decoder.options import SearchOptions
        from fusion.decoder.scorers import LMScorer
        from fusion.pipeline.build import build_decoder, lm_scorers
        from fusion.pipeline.config import DecodeConfig
        options = SearchOptions(beam_size=spec["beam"], nbest=spec["nbest"])
    else:  # the module layout before the redesign
        from fusion.config import DecodeConfig
        from fusion.decoder import SearchOptions
        from fusion.pipeline import build_decoder, lm_scorers
        from fusion.posteriors import PosteriorsReader
        from fusion.scorers import LMScorer
        options = SearchOptions(beam_size=spec["beam"], nbest=spec["nbest"], engine="python")
    from lm.neural import NeuralLM

    nlm = NeuralLM.default()
    counts = {"words_scored": 0, "forwards": 0}
    score_many, extend = nlm._score_many, nlm._extend

    def counted_score_many(states: Any, units: Any, cache: Any) -> Any:
        counts["words_scored"] += len(units)
        return score_many(states, units, cache)

    def counted_extend(*args: Any) -> Any:
        counts["forwards"] += 1
        return extend(*args)

    nlm._score_many, nlm._extend = counted_score_many, counted_extend
    scorers = [*lm_scorers(Path(spec["lm"]), Path(spec["lm_vocab"])), LMScorer(nlm, "nlm")]
    with PosteriorsReader(spec["posteriors"]) as reader:
        posteriors = [reader[u] for u in list(reader.ids)[: spec["utterances"]]]
        table_ = reader.token_table
    config = DecodeConfig(lm=Path(spec["lm"]), lm_vocab=Path(spec["lm_vocab"]), weights=spec["weights"],
                          search=options)
    decoder = build_decoder(config, table_, scorers=scorers)
    decoder.decode(posteriors[0])  # untimed: first calls load and warm up
    counts = dict.fromkeys(counts, 0)
    start = time.perf_counter()
    best = [decoder.decode(p).best for p in posteriors]
    seconds = time.perf_counter() - start
    audio = sum(p.log_probs.shape[0] for p in posteriors) * posteriors[0].frame_shift
    return {"seconds": seconds, "audio_seconds": audio, **counts,
            "best": [[b.text, b.score] for b in best]}


def run_side(side: str, spec: dict[str, Any], baseline_tree: Path) -> dict[str, Any]:
    """One decode in a fresh process on ``side``'s library."""
    root = REPO if side == "current" else baseline_tree
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({**spec, "side": side}, fh)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", fh.name], env=env, cwd=root,
                             capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if out.returncode != 0:
        raise SystemExit(f"{side} decode failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_baseline(rev: str, into: Path) -> Path:
    """The library (fusion, lm, hmm) at ``rev``, from this repository's history."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "fusion", "lm", "hmm"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compare_sides(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians, the throughput ratio and the agreement of the two sides' best hypotheses."""
    row: dict[str, Any] = {}
    for side in SIDES:
        runs = results[side]
        median = statistics.median(r["seconds"] for r in runs)
        row[side] = {"seconds": [round(r["seconds"], 3) for r in runs], "median_seconds": median,
                     "x_real_time": runs[0]["audio_seconds"] / median,
                     "words_scored": runs[0]["words_scored"], "forwards": runs[0]["forwards"]}
    ours, theirs = (results[s][0]["best"] for s in SIDES)
    row["speedup"] = row["pre-redesign"]["median_seconds"] / row["current"]["median_seconds"]
    row["identical_best"] = sum(a[0] == b[0] for a, b in zip(ours, theirs)) / len(ours)
    row["max_score_difference"] = max(abs(a[1] - b[1]) for a, b in zip(ours, theirs))
    return row


def markdown(data: dict[str, Any]) -> str:
    """The results table, from the benchmark's JSON."""
    def timing(side: dict[str, Any]) -> str:
        return f"{side['median_seconds']:.2f} s ({side['x_real_time']:.1f}x)"

    rows = [{"split": r["split"], "beam": r["beam"],
             "current": timing(r["current"]), "pre": timing(r["pre-redesign"]),
             "speedup": f"{r['speedup']:.2f}x",
             "words": f"{r['current']['words_scored']:,} / {r['pre-redesign']['words_scored']:,}",
             "forwards": f"{r['current']['forwards']:,} / {r['pre-redesign']['forwards']:,}",
             "same": f"{100 * r['identical_best']:.0f}% ({r['max_score_difference']:.1e})"}
            for r in data["rows"]]
    m = data["machine"]
    return (f"# Neural-LM fusion throughput\n\n{data['date']}, `{data['command']}`  \n"
            f"Machine: {m['cpu']}, {m['cores']} cores, one torch thread per decode. The first "
            f"{data['utterances']} utterances of each split (embedded acoustic model's posteriors), the "
            f"word 4-gram and the neural LM fused at {data['weights']} (N-best {data['nbest']}); median "
            f"of {data['repeats']} runs per side, each in a fresh process, the sides alternating. "
            f"`pre-redesign`: the library at `{data['baseline_rev']}` (the Python search). Words "
            f"scored: the neural LM's word queries; forwards: its batched forward passes. Same: "
            f"identical best transcripts (largest best-score difference).\n\n"
            + table(rows, [("split", "split"), ("beam", "beam"), ("current", "this search"),
                           ("pre", "pre-redesign"), ("speedup", "speed-up"),
                           ("words", "words scored (this / pre)"),
                           ("forwards", "forwards (this / pre)"), ("same", "same best")])
            + "\nThis search asks the neural LM about every word a frame's beams could complete "
            "(the Python search deferred those whose score bound could not reach the beam, so it "
            "asked fewer) in about as many forwards; each forward costs less: a word's last piece is "
            "read off the distribution after the others (a one-piece word after a known history "
            "costs nothing), the pieces several words share run once (tree attention in one packed "
            "row, no padding), and an utterance's end-of-sentence scores come in one call.\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, default=REPO / "fusion" / "models" / "am-default" / "model.pt")
    parser.add_argument("--lm", type=Path, help="word n-gram (KenLM binary)")
    parser.add_argument("--lm-vocab", type=Path, help="its ARPA file (the unigrams)")
    parser.add_argument("--splits", nargs="+", default=["dev", "real-speech"])
    parser.add_argument("--utterances", type=int, default=100, help="first N utterances of each split")
    parser.add_argument("--beams", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--nbest", type=int, default=16, help="N-best list length (as for rescoring)")
    parser.add_argument("--nlm-weight", type=float, default=0.35,
                        help="the neural LM's weight; the n-gram keeps 0.75 of its tuned weight "
                             "(a point of bench_fusion's neural-fusion grid)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "asrfuse" / "bench-fusion")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_decode(json.loads(Path(args.child).read_text()))))
        return
    if args.lm is None or args.lm_vocab is None:
        parser.error("--lm and --lm-vocab are required")
    from bench_fusion import posteriors_for

    tuned = json.loads((RESULTS / "fusion.json").read_text())["weights"]["ngram"]
    weights = {"lm": round(0.75 * tuned["lm"], 4), "nlm": args.nlm_weight, "word_bonus": tuned["word_bonus"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = export_baseline(args.baseline_rev, Path(tmp))
        for split in args.splits:
            post = posteriors_for(split, args.model, args.work)
            for beam in args.beams:
                spec = {"posteriors": str(post), "utterances": args.utterances, "beam": beam,
                        "nbest": min(args.nbest, beam), "weights": weights, "lm": str(args.lm),
                        "lm_vocab": str(args.lm_vocab)}
                results: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
                for r in range(args.repeats):  # alternating, each first in turn
                    for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                        results[side].append(run_side(side, spec, baseline))
                row = {"split": split, "beam": beam, **compare_sides(results)}
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
    data = {**header(), "baseline_rev": args.baseline_rev, "weights": weights, "nbest": args.nbest,
            "utterances": args.utterances, "repeats": args.repeats, "rows": rows}
    js, mdp = write_results("nlm_fusion", data, markdown(data))
    print(f"wrote {js} and {mdp}", file=sys.stderr)


if __name__ == "__main__":
    main()

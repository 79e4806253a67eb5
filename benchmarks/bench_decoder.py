"""Decoder benchmark: ours against pyctcdecode and flashlight (torchaudio) side by side.

On the posteriors of the test splits (``fusion posteriors``), with the same word n-gram
and weights for ours and pyctcdecode: greedy; ours (the C++ search) and pyctcdecode at
beams 8/32/128;
flashlight's ``ctc_decoder`` with a lexicon and the word LM, and lexicon-free with a
character n-gram (its lexicon-free search queries the LM per token). Columns: WER, CER,
throughput (audio seconds per wall second, decoding only, one process; the fastest of
``PASSES`` passes over the split, as ``timeit`` takes the best of its repeats: a pass of
the C++ search lasts under 0.1 s, where one pass alone varied 2x between runs) and the
peak memory growth of the process that decoded. Every decoder runs in a fresh process.

    python benchmarks/bench_decoder.py --split test=POST.npz --split test-unseen-voices=POST.npz \\
        --manifests CORPUS_DIR --lm WORD.arpa --char-lm CHAR.arpa [--cmusphinx] \\
        [--tuned ours-4gram=TUNE/best.toml --tuned cmusphinx-3gram=TUNE2/best.toml]

Each LM's weights (and our pruning threshold) come from ``fusion tune``'s ``best.toml``
for that LM where ``--tuned`` names one, else from ``--alpha``/``--beta``; pyctcdecode and
flashlight get the same weights. ``--tuned`` may name several files for one LM, each tuned
at its own beam (``fusion tune --beam-size``, recorded in the file): every beam then gets
the weights tuned at the nearest beam (the best word bonus grows as the beam narrows).

Writes benchmarks/results/decoder.json, decoder.md and decoder.png (``--render`` only
rewrites the last two from the first).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# imported here, not in the functions, so that each spawned child has them loaded before
# its peak memory is reset: "peak MiB" is what decoding costs, not what importing does
import kenlm  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, header, in_child, table, write_results  # noqa: E402
from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel  # noqa: E402
from torchaudio.models.decoder import ctc_decoder  # noqa: E402

from fusion.core.defaults import OOV  # noqa: E402
from fusion.core.manifest import read_manifest  # noqa: E402
from fusion.core.metrics import CorpusScore, compare, score_corpus  # noqa: E402
from fusion.core.posteriors import PosteriorsReader  # noqa: E402
from fusion.decoder.greedy import greedy_decode  # noqa: E402
from fusion.decoder.options import SearchOptions, lexicon_pruning  # noqa: E402
from fusion.decoder.pyctc import pyctcdecode_labels  # noqa: E402
from fusion.pipeline.build import build_decoder  # noqa: E402
from fusion.pipeline.config import DecodeConfig  # noqa: E402
from lm.ngram import read_unigrams  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEERS = ("pyctcdecode", "flashlight-lexicon")  # the peers with the same word LM
CMUSPHINX = REPO.parent / "shared" / "data" / "lm" / "cmusphinx-en-us.arpa.gz"
BEAMS = (8, 32, 128)
PASSES = 3  # timed passes over a split per decoder; the fastest counts


def timed(decode_all) -> tuple[dict[str, str], float]:
    """``decode_all()`` (one pass: utterance id -> text) run ``PASSES`` times: its
    hypotheses (checked the same every pass) and the fastest pass's seconds."""
    best, hyps = math.inf, None
    for _ in range(PASSES):
        start = time.perf_counter()
        out = decode_all()
        best = min(best, time.perf_counter() - start)
        if hyps is not None and out != hyps:
            raise RuntimeError("a decoder gave different hypotheses on a second pass")
        hyps = out
    return hyps, best


def _load(path: str):
    with PosteriorsReader(path) as reader:
        return list(reader), reader.token_table


def run_greedy(path: str) -> tuple[dict[str, str], float, float]:
    posteriors, table = _load(path)
    hyps, seconds = timed(lambda: {r.utt_id: r.best.text for i in range(0, len(posteriors), 32)
                                   for r in greedy_decode(posteriors[i:i + 32], table)})
    return hyps, seconds, sum(p.duration for p in posteriors)


def run_ours(path: str, beam: int, lm: str, vocab: str, alpha: float, beta: float,
             threshold: float, oov: float = 0.0, lexicon: str | None = None):
    posteriors, table = _load(path)
    # what fusion decode builds; a lexicon (flashlight's: the output only ever has its
    # words) comes with lexicon_pruning's wide candidates
    config = DecodeConfig(lm=Path(lm), lm_vocab=Path(vocab),
                          weights={"lm": alpha, "word_bonus": beta, **({OOV: oov} if oov > 0 else {})},
                          search=SearchOptions(beam_size=beam, beam_threshold=threshold),
                          lexicon=None if lexicon is None else Path(lexicon))
    decoder = build_decoder(config, table)
    hyps, seconds = timed(lambda: {p.utt_id: decoder.decode(p).best.text for p in posteriors})
    return hyps, seconds, sum(p.duration for p in posteriors)


def run_pyctcdecode(path: str, beam: int, lm: str, vocab: str, alpha: float, beta: float):
    posteriors, table = _load(path)
    decoder = BeamSearchDecoderCTC(
        Alphabet(pyctcdecode_labels(table), is_bpe=False),
        LanguageModel(kenlm.Model(lm), unigrams=read_unigrams(vocab), alpha=alpha, beta=beta))
    hyps, seconds = timed(lambda: {
        p.utt_id: " ".join(decoder.decode(np.asarray(p.log_probs), beam_width=beam).split())
        for p in posteriors})
    return hyps, seconds, sum(p.duration for p in posteriors)


def run_flashlight(path: str, beam: int, lm: str, lexicon: str | None, alpha: float, beta: float):
    posteriors, table = _load(path)
    # flashlight adds lm_weight * (KenLM's log10 score): the same fusion as ours in nats
    decoder = ctc_decoder(lexicon=lexicon, tokens=list(table.tokens), lm=lm, beam_size=beam,
                          lm_weight=alpha * math.log(10), word_score=beta,
                          blank_token=table.blank, sil_token=table.word_boundary,
                          unk_word="<unk>", beam_threshold=25.0)

    def decode_all() -> dict[str, str]:
        hyps = {}
        for p in posteriors:
            emissions = torch.from_numpy(p.log_probs.copy()).unsqueeze(0)  # (1, T, V)
            best = decoder(emissions)[0][0]
            hyps[p.utt_id] = " ".join(w for w in best.words if w != "<unk>") if lexicon else \
                " ".join("".join(table.tokens[i] for i in best.tokens.tolist()
                                 if i != table.blank_id).replace("|", " ").split())
        return hyps

    hyps, seconds = timed(decode_all)
    return hyps, seconds, sum(p.duration for p in posteriors)


def write_lexicon(words: list[str], path: Path) -> Path:
    with path.open("w") as fh:
        for w in words:
            if w and all(c.isascii() and (c.islower() or c == "'") for c in w):
                fh.write(f"{w} {' '.join(w)} |\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", action="append", metavar="NAME=POSTERIORS")
    parser.add_argument("--manifests", type=Path, help="folder of NAME.jsonl")
    parser.add_argument("--lm", type=Path, help="word n-gram ARPA")
    parser.add_argument("--char-lm", type=Path, help="character n-gram ARPA")
    parser.add_argument("--alpha", type=float, default=0.5, help="LM weight (nats)")
    parser.add_argument("--beta", type=float, default=1.0, help="word bonus")
    parser.add_argument("--lexfree-alpha", type=float, default=0.5,
                        help="character LM weight of flashlight's lexicon-free search (nats)")
    parser.add_argument("--lexfree-beta", type=float, default=0.0,
                        help="flashlight's word score in its lexicon-free search")
    parser.add_argument("--tune-lexfree", type=Path, metavar="DEV_POSTERIORS",
                        help="choose the lexicon-free weights by a grid on these dev posteriors "
                        "(beam 32) instead of --lexfree-alpha/--lexfree-beta")
    parser.add_argument("--cmusphinx", action="store_true", help="also the cmusphinx 3-gram")
    parser.add_argument("--tuned", action="append", default=[], metavar="LM=BEST_TOML",
                        help="the weights and pruning threshold of LM (ours-4gram, "
                        "cmusphinx-3gram) from fusion tune's best.toml; repeat with files "
                        "tuned at other beams for per-beam weights")
    parser.add_argument("--beams", type=int, nargs="+", default=list(BEAMS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/asrfuse-bench"))
    parser.add_argument("--render", action="store_true",
                        help="only rewrite decoder.md and decoder.png from decoder.json")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads((RESULTS / "decoder.json").read_text())
        (RESULTS / "decoder.md").write_text(markdown(data))
        plot(data["rows"], RESULTS / "decoder.png")
        return 0
    missing = [f for f in ("split", "manifests", "lm", "char_lm") if not getattr(args, f)]
    if missing:
        parser.error("needed: " + ", ".join("--" + f.replace("_", "-") for f in missing))
    args.work.mkdir(parents=True, exist_ok=True)
    lexfree_grid = []
    if args.tune_lexfree:
        dev_refs = {u.id: u.text for u in read_manifest(args.manifests / "dev.jsonl")}
        for alpha in (0.05, 0.1, 0.2, 0.35, 0.5):
            for beta in (-1.0, 0.0, 1.0, 2.0):
                hyps, _, _ = run_flashlight(str(args.tune_lexfree), 32, str(args.char_lm), None, alpha, beta)
                wer = 100 * score_corpus({k: dev_refs[k] for k in hyps}, hyps).wer
                lexfree_grid.append({"alpha": alpha, "beta": beta, "dev_wer": wer})
                print(f"lexfree alpha={alpha} beta={beta}: dev WER {wer:.2f}", file=sys.stderr)
        best = min(lexfree_grid, key=lambda r: r["dev_wer"])
        args.lexfree_alpha, args.lexfree_beta = best["alpha"], best["beta"]
    lms = {"ours-4gram": args.lm}
    if args.cmusphinx:
        lms["cmusphinx-3gram"] = CMUSPHINX
    weights = lm_weights(args, lms)
    rows = []
    scores: dict[tuple, CorpusScore] = {}  # (split, decoder, LM, beam) -> per-utterance scores
    for spec in args.split:
        split, post = spec.split("=", 1)
        refs = {u.id: u.text for u in read_manifest(args.manifests / f"{split}.jsonl")}

        def measure(name: str, lm_name: str | None, beam: int | None, fn, *fargs) -> None:
            (hyps, seconds, audio), mem, _ = in_child(fn, *fargs)
            score = scores[split, name, lm_name, beam] = score_corpus({k: refs[k] for k in hyps}, hyps)
            rows.append({"split": split, "decoder": name, "lm": lm_name, "beam": beam,
                         "wer": 100 * score.wer, "cer": 100 * score.cer,
                         "throughput": audio / seconds, "peak_mib": mem,
                         "utterances": len(hyps)})
            print(f"{split} {name} {lm_name} beam={beam}: WER {100 * score.wer:.2f} "
                  f"x{audio / seconds:.0f}", file=sys.stderr)

        measure("greedy", None, None, run_greedy, post)
        for lm_name, lm_path in lms.items():
            vocab = str(lm_path)
            lexicon = write_lexicon(read_unigrams(lm_path), args.work / f"{lm_name}.lexicon")
            for beam in args.beams:
                w = weights_at(weights[lm_name], beam)
                ours = (str(lm_path), vocab, w["alpha"], w["beta"], w["beam_threshold"],
                        w.get("oov", 0.0))
                measure("ours", lm_name, beam, run_ours, post, beam, *ours)
                measure("ours-lexicon", lm_name, beam, run_ours, post, beam, *ours, str(lexicon))
                measure("pyctcdecode", lm_name, beam, run_pyctcdecode, post, beam, str(lm_path),
                        vocab, w["alpha"], w["beta"])
                measure("flashlight-lexicon", lm_name, beam, run_flashlight, post, beam,
                        str(lm_path), str(lexicon), w["alpha"], w["beta"])
        for beam in args.beams:
            measure("flashlight-lexfree", "char-ngram", beam, run_flashlight, post, beam,
                    str(args.char_lm), None, args.lexfree_alpha, args.lexfree_beta)

    summary = summarise(rows, scores)
    data = {**header(), "weights": weights, "lexfree_alpha": args.lexfree_alpha,
            "lexfree_beta": args.lexfree_beta, "lexfree_dev_grid": lexfree_grid, "rows": rows,
            "summary": summary}
    plot(rows, write_results("decoder", data, markdown(data))[0].with_suffix(".png"))
    return 0


def lm_weights(args: argparse.Namespace, lms: dict[str, Path]) -> dict[str, dict]:
    """Each LM's weights and our pruning threshold: from ``--tuned`` or the defaults.

    An LM's entry holds the weights of its first ``--tuned`` file; where several files were
    tuned at different beams, ``per_beam`` maps each tuning beam to its weights too."""
    out = {name: {"alpha": args.alpha, "beta": args.beta,
                  "beam_threshold": SearchOptions().beam_threshold, "source": "given"}
           for name in lms}
    tuned: dict[str, dict[int, dict]] = {}
    for spec in args.tuned:
        name, _, path = spec.partition("=")
        if name not in lms:
            raise SystemExit(f"--tuned {spec}: no LM {name!r} in this run (have {sorted(lms)})")
        config = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        beam = int(config["search"]["beam_size"])
        if beam in tuned.get(name, {}):
            raise SystemExit(f"--tuned {spec}: a second file tuned at beam {beam} for {name}")
        tuned.setdefault(name, {})[beam] = {
            "alpha": config["weights"]["lm"], "beta": config["weights"]["word_bonus"],
            "beam_threshold": config["search"].get("beam_threshold", SearchOptions().beam_threshold),
            "oov": config["weights"].get(OOV, 0.0),
            "source": f"fusion tune: {path}", "tuned_beam": beam}
    for name, by_beam in tuned.items():
        out[name] = dict(next(iter(by_beam.values())))
        if len(by_beam) > 1:
            out[name]["per_beam"] = {str(b): w for b, w in sorted(by_beam.items())}
    return out


def weights_at(w: dict, beam: int) -> dict:
    """The weights an LM's entry gives at ``beam``: those tuned at the nearest beam (on a log
    scale; the narrower of two equally near) where it has per-beam weights."""
    per_beam = w.get("per_beam")
    if not per_beam:
        return w
    nearest = min(per_beam, key=lambda b: (abs(math.log(int(b) / beam)), int(b)))
    return per_beam[nearest]


def _weights_text(data: dict) -> str:
    if "weights" not in data:  # results of a version with one set of weights for every LM
        return (f"LM weight {data['alpha']} (nats), word bonus {data['beta']} "
                "(tuned on dev with `fusion tune`)")

    def one(w: dict) -> str:
        return (f"LM weight {w['alpha']:.3f} (nats), word bonus {w['beta']:.3f}, "
                + (f"our unknown-word penalty {w['oov']:g}, " if w.get("oov") else "")
                + f"our pruning threshold {w['beam_threshold']:g}")

    parts = []
    for name, w in data["weights"].items():
        if w.get("per_beam"):
            parts.append(f"{name}, tuned on dev with `fusion tune` at each beam: " + ", ".join(
                f"beam {b}: {one(wb)}" for b, wb in w["per_beam"].items()))
        else:
            parts.append(f"{name}: {one(w)}"
                         + (" (tuned on dev with `fusion tune`)" if w["source"] != "given" else ""))
    return "; ".join(parts)


def markdown(data: dict) -> str:
    wide = lexicon_pruning(2)
    cols = [("split", "split"), ("decoder", "decoder"), ("lm", "LM"), ("beam", "beam"),
            ("wer", "WER %"), ("cer", "CER %"), ("throughput", "x real time"),
            ("peak_mib", "peak MiB")]
    return (f"# Decoders\n\n{data['date']}, `{data['command']}`  \n"
            f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores. "
            f"{_weights_text(data)}; pyctcdecode and flashlight get the same LM weight and "
            "word bonus (and their own unknown-word offsets: pyctcdecode's default -10, "
            "flashlight's -inf on the lexicon); "
            f"flashlight lexicon-free: character LM weight {data['lexfree_alpha']}, "
            f"word score {data['lexfree_beta']} ("
            + ("the best of a dev grid" if data["lexfree_dev_grid"] else
               "given: the best of the dev grid of an earlier `--tune-lexfree` run")
            + ").\n\n"
            "`ours` is our beam search in C++ (`fusion.decoder._ctcsearch`)"
            + (", `ours-python` the same search in Python (since then the tests' oracle only): both "
               "give the same hypotheses. " if any(r["decoder"] == "ours-python" for r in data["rows"])
               else ". ")
            + "`ours-lexicon` is ours with flashlight's lexicon as a constraint (`LexiconScorer`, "
            "`constraint=True`: only the LM's words) and `fusion decode --lexicon`'s pruning "
            f"(`lexicon_pruning`: every unit a candidate down to log-prob {wide['token_min_logprob']:g}, "
            f"beam threshold {wide['beam_threshold']:g}). "
            "The C++ search loads its own copy of the n-gram and releases the Python `KenLM`'s "
            "(which the scorer loaded first), so the model is in memory once. Throughput is one "
            f"process, one thread of Python, the fastest of {PASSES} passes over the split; "
            "ours includes the forced alignment that gives every "
            "word its times and confidence, which pyctcdecode's `decode` does not compute.\n\n"
            + table(data["rows"], cols) + "\n## Summary\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in data["summary"].items()
                        if k != "paired_vs_best_peer") + "\n"
            + _paired_table(data["summary"].get("paired_vs_best_peer")))


def _paired_table(versus: list[dict] | None) -> str:
    """Every point's paired comparison of our best configuration with the best peer."""
    if not versus:
        return ""
    shown = [{**v, "change": f"{v['delta']:+.2f} ({v['interval'][0]:+.2f}, {v['interval'][1]:+.2f})"}
             for v in versus]
    cols = [("split", "split"), ("lm", "LM"), ("beam", "beam"), ("ours", "ours"), ("wer_ours", "WER %"),
            ("peer", "best peer"), ("wer_peer", "WER %"), ("change", "ours - peer (95% CI)"),
            ("p_ours_better", "P(ours better)"), ("p_peer_better", "P(peer better)")]
    return ("\n## Ours against the best peer, paired\n\nAt each point, our better configuration "
            "against the better peer, by paired bootstrap over the same utterances (2,000 "
            "resamples; `fusion score --compare`): a difference whose interval spans 0 is "
            "within what another draw of test sentences could reverse.\n\n" + table(shown, cols))


def paired(ours: CorpusScore, peer: CorpusScore) -> dict:
    """Ours against a peer on the utterances both decoded, by paired bootstrap: the WER
    change (ours minus the peer's), its 95% interval, and how often each is better."""
    common = {u.utt_id for u in ours.utterances} & {u.utt_id for u in peer.utterances}
    c = compare(peer.subset(common), ours.subset(common), resamples=2000)
    return {"delta": c.delta, "interval": list(c.interval), "p_ours_better": c.p_better,
            "p_peer_better": c.p_worse, "utterances": len(common)}


def summarise(rows: list[dict], scores: dict[tuple, CorpusScore] | None = None) -> dict:
    """The headline numbers; with each row's per-utterance scores (``scores``, by split,
    decoder, LM and beam), also every point's paired comparison of our best configuration
    with the best peer, and where either is ahead beyond chance."""
    def find(split, decoder, lm, beam):
        return next((r for r in rows if (r["split"], r["decoder"], r["lm"], r["beam"])
                     == (split, decoder, lm, beam)), None)

    split = "test" if any(r["split"] == "test" for r in rows) else rows[0]["split"]
    beam = 32 if any(r["beam"] == 32 for r in rows) else max(r["beam"] or 0 for r in rows)
    mine = ("ours", "ours-lexicon")  # our configurations (an old run's ours-python is ours, slower)
    ours = min((r for r in (find(split, d, "ours-4gram", beam) for d in mine) if r),
               key=lambda r: r["wer"])
    peers = [r for r in (find(split, "pyctcdecode", "ours-4gram", beam),
                         find(split, "flashlight-lexicon", "ours-4gram", beam)) if r]
    best_peer = min(peers, key=lambda r: r["wer"])

    chosen: dict[str, str] = {}

    def speedup(peer: str) -> float | None:
        # the fastest of our rows with WER at most the peer's, over the peer's throughput
        p = find(split, peer, "ours-4gram", beam)
        ok = [r for r in rows if r["split"] == split and r["decoder"] in mine
              and r["lm"] == "ours-4gram" and r["wer"] <= p["wer"]]
        if not ok:
            return None
        best = max(ok, key=lambda r: r["throughput"])
        chosen[peer] = f"{best['decoder']} beam {best['beam']}"
        return best["throughput"] / p["throughput"]

    # every (split, LM, beam) point: does our best configuration match the best peer's WER?
    losses, versus = [], []
    points = sorted({(r["split"], r["lm"], r["beam"]) for r in rows if r["decoder"] in mine})
    for point in points:
        wers = {r["decoder"]: r["wer"] for r in rows if (r["split"], r["lm"], r["beam"]) == point}
        ours_d = min((d for d in mine if d in wers), key=wers.get)
        peer_d = min((d for d in PEERS if d in wers), key=wers.get, default=None)
        ours_wer, peer_wer = wers[ours_d], wers[peer_d] if peer_d else math.inf
        if ours_wer > peer_wer:
            losses.append(f"{point[0]} / {point[1]} / beam {point[2]}: {ours_wer:.2f} "
                          f"against {peer_wer:.2f}")
        if scores and peer_d:
            at_split, at_lm, at_beam = point
            versus.append({"split": at_split, "lm": at_lm, "beam": at_beam, "ours": ours_d,
                           "peer": peer_d, "wer_ours": ours_wer, "wer_peer": peer_wer,
                           **paired(scores[at_split, ours_d, at_lm, at_beam],
                                    scores[at_split, peer_d, at_lm, at_beam])})
    sure = 0.95
    significance = {} if not versus else {
        "paired_vs_best_peer": versus,
        "ours_ahead_beyond_chance": f"{sum(v['p_ours_better'] >= sure for v in versus)} of "
                                    f"{len(versus)} points (paired bootstrap, P >= {sure})",
        "ours_behind_beyond_chance": [
            f"{v['split']} / {v['lm']} / beam {v['beam']}: {v['wer_ours']:.2f} against "
            f"{v['wer_peer']:.2f} (P(peer better) {v['p_peer_better']:.3f})"
            for v in versus if v["p_peer_better"] >= sure]}

    unseen = [r for r in rows if r["split"] == "test-unseen-voices"]
    reduction = None
    if unseen:
        greedy = find("test-unseen-voices", "greedy", None, None)
        fused = find("test-unseen-voices", "ours", "ours-4gram", beam)
        reduction = 100 * (greedy["wer"] - fused["wer"]) / greedy["wer"]
    return {"split": split, "beam": beam, "wer_ours": ours["wer"], "ours": ours["decoder"],
            "wer_best_peer": best_peer["wer"], "best_peer": best_peer["decoder"],
            "speedup_vs_pyctcdecode": speedup("pyctcdecode"),
            "speedup_vs_flashlight": speedup("flashlight-lexicon"),
            "speedup_rows": chosen,
            "fusion_relative_wer_reduction": reduction,
            "ours_at_most_best_peer": f"{len(points) - len(losses)} of {len(points)} "
                                      "(split, LM, beam) points",
            "ours_behind_best_peer": losses, **significance}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len({r["split"] for r in rows}), figsize=(12, 4.5), squeeze=False)
    for ax, split in zip(axes[0], sorted({r["split"] for r in rows})):
        for name in sorted({(r["decoder"], r["lm"]) for r in rows if r["split"] == split},
                           key=str):
            pts = sorted((r["throughput"], r["wer"]) for r in rows
                         if r["split"] == split and (r["decoder"], r["lm"]) == name)
            ax.plot(*zip(*pts), marker="o", label=" / ".join(n for n in name if n))
        ax.set_xscale("log")
        ax.set_xlabel("throughput (audio s per wall s)")
        ax.set_ylabel("WER %")
        ax.set_title(split)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

"""Drop-in benchmark: our pyctcdecode, Hugging Face and torchaudio look-alikes against the
originals, on the same posteriors, LM and weights, at one beam (default 32).

    python benchmarks/bench_dropin.py --posteriors POST.npz --manifest REFS.jsonl \\
        --lm WORD_LM [--vocab WORDS] [--weights 0.5,1.5 --weights 0.95,4.22] [--beam 32]

Each ``--weights ALPHA,BETA`` is one run of every pair (default: pyctcdecode's defaults,
alpha 0.5 and beta 1.5), reported side by side.

Pairs, each decoder in a fresh process (``common.in_child``), the fastest of
``bench_decoder.PASSES`` passes counting (bench_decoder's rule), hypotheses checked equal
across passes:

* ``fusion.compat.pyctcdecode.build_ctcdecoder`` against ``pyctcdecode.build_ctcdecoder``
  (``decode``, same labels, LM, unigrams, alpha, beta and pyctcdecode's other defaults);
* ``fusion.compat.torchaudio.ctc_decoder`` against torchaudio's flashlight ``ctc_decoder``,
  with a lexicon of the LM's words (``lm_weight = alpha * ln 10``, ``word_score = beta``);
* ``fusion.compat.hf.Wav2Vec2ProcessorWithLM.decode`` (transformers' own class is not run:
  in transformers 5.25 its ``from_pretrained`` fails, and its ``decode`` is pyctcdecode's).

The decoder benchmark's posteriors (``benchmarks/rerun_decoding.sh`` step 3: the synthetic
test split's, under ``~/.cache/asrfuse``) are used where given; else the embedded acoustic
model's posteriors of ``../shared/data/real-speech`` (``fusion posteriors``).

:func:`run` is the entry point for other scripts (``bench_install.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_decoder import PASSES, timed, write_lexicon  # noqa: E402
from common import header, in_child, table, write_results  # noqa: E402

from fusion.core.manifest import read_manifest  # noqa: E402
from fusion.core.metrics import score_corpus  # noqa: E402
from fusion.core.posteriors import PosteriorsReader  # noqa: E402
from lm.ngram import read_unigrams  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _load(path: str) -> tuple[list, Any]:
    with PosteriorsReader(path) as reader:
        return list(reader), reader.token_table


def _labels(table: Any) -> list[str]:
    return ["" if i == table.blank_id else " " if i == table.boundary_id else t
            for i, t in enumerate(table.tokens)]


def _pyctc(which: str, path: str, lm: str, vocab: str, alpha: float, beta: float, beam: int
           ) -> tuple[dict[str, str], float, float]:
    posteriors, tab = _load(path)
    if which == "ours":
        from fusion.compat.pyctcdecode import build_ctcdecoder
    else:
        from pyctcdecode import build_ctcdecoder
    decoder = build_ctcdecoder(_labels(tab), lm, read_unigrams(vocab), alpha=alpha, beta=beta)
    arrays = [(p.utt_id, np.asarray(p.log_probs)) for p in posteriors]
    decoder.decode(arrays[0][1], beam_width=beam)  # builds the search: not timed
    hyps, seconds = timed(lambda: {u: " ".join(decoder.decode(x, beam_width=beam).split())
                                   for u, x in arrays})
    return hyps, seconds, sum(p.duration for p in posteriors)


def _hf(path: str, lm: str, vocab: str, alpha: float, beta: float, beam: int
        ) -> tuple[dict[str, str], float, float]:
    from fusion.compat.hf import Wav2Vec2ProcessorWithLM
    from fusion.compat.pyctcdecode import build_ctcdecoder

    posteriors, tab = _load(path)
    decoder = build_ctcdecoder(_labels(tab), lm, read_unigrams(vocab), alpha=alpha, beta=beta)
    processor = Wav2Vec2ProcessorWithLM.__new__(Wav2Vec2ProcessorWithLM)  # decoding only:
    processor.decoder = decoder  # no feature extractor or tokenizer is needed for it
    arrays = [(p.utt_id, np.asarray(p.log_probs)) for p in posteriors]
    processor.decode(arrays[0][1], beam_width=beam)
    hyps, seconds = timed(lambda: {u: processor.decode(x, beam_width=beam).text
                                   for u, x in arrays})
    return hyps, seconds, sum(p.duration for p in posteriors)


def _torchaudio(which: str, path: str, lm: str, lexicon: str, alpha: float, beta: float,
                beam: int) -> tuple[dict[str, str], float, float]:
    import torch

    if which == "ours":
        from fusion.compat.torchaudio import ctc_decoder
    else:
        from torchaudio.models.decoder import ctc_decoder
    posteriors, tab = _load(path)
    decoder = ctc_decoder(lexicon=lexicon, tokens=list(tab.tokens), lm=lm, beam_size=beam,
                          lm_weight=alpha * math.log(10), word_score=beta,
                          blank_token=tab.blank, sil_token=tab.word_boundary, unk_word="<unk>",
                          beam_threshold=25.0)
    tensors = [(p.utt_id, torch.from_numpy(p.log_probs.copy()).unsqueeze(0)) for p in posteriors]
    decoder(tensors[0][1])

    def decode_all() -> dict[str, str]:
        return {u: " ".join(w for w in decoder(e)[0][0].words if w != "<unk>")
                for u, e in tensors}

    hyps, seconds = timed(decode_all)
    return hyps, seconds, sum(p.duration for p in posteriors)


def run(posteriors: str | Path, manifest: str | Path, lm: str | Path,
        vocab: str | Path | None = None, alpha: float = 0.5, beta: float = 1.5,
        beam: int = 32, work: str | Path = "/tmp/asrfuse-bench-dropin") -> dict[str, Any]:
    """Measure every available pair; returns ``{"rows": [...], "pairs": {...}}``.

    Args:
        posteriors: a posteriors ``.npz`` written by asrfuse (it carries its token table).
        manifest: references (JSONL with ``id`` and ``text``).
        lm: the word n-gram (ARPA or KenLM binary) every decoder gets.
        vocab: the LM's words (default: the ARPA itself, or ``vocab.txt`` beside a binary).
        alpha: LM weight in nats per natural-log LM probability (pyctcdecode's alpha).
        beta: word bonus (pyctcdecode's beta, flashlight's word_score).
        beam: beam width for every decoder.
        work: scratch folder (the lexicon file).

    A pair whose original is not installed is left out and listed under ``"skipped"``.
    Each row: ``pair``, ``decoder``, ``wer``, ``cer`` (percent), ``throughput`` (audio
    seconds per wall second, one process), ``peak_mib`` and ``utterances``; ``pairs`` gives
    each pair's speedup and WER difference (ours minus the original's).
    """
    lm = Path(lm)
    if vocab is None:
        vocab = lm if lm.suffix in (".arpa", ".gz") else lm.with_name("vocab.txt")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    refs = {u.id: u.text for u in read_manifest(manifest, require=("text",))}
    lexicon = str(write_lexicon(read_unigrams(vocab), work / "lexicon.txt"))
    args = (str(posteriors), str(lm))
    jobs = [
        ("pyctcdecode", "ours", _pyctc, ("ours", *args, str(vocab), alpha, beta, beam), None),
        ("pyctcdecode", "pyctcdecode", _pyctc, ("theirs", *args, str(vocab), alpha, beta, beam),
         "pyctcdecode"),
        ("torchaudio", "ours", _torchaudio, ("ours", *args, lexicon, alpha, beta, beam), "torch"),
        ("torchaudio", "flashlight", _torchaudio, ("theirs", *args, lexicon, alpha, beta, beam),
         "flashlight.lib.text.decoder"),
        ("hf", "ours", _hf, (*args, str(vocab), alpha, beta, beam), None),
    ]
    rows, skipped = [], []
    for pair, name, fn, fargs, needs in jobs:
        if needs is not None:
            try:
                __import__(needs)
            except ImportError as exc:
                skipped.append(f"{pair}/{name}: {exc}")
                continue
        (hyps, seconds, audio), mem, _ = in_child(fn, *fargs)
        score = score_corpus({k: refs[k] for k in hyps}, hyps)
        rows.append({"pair": pair, "decoder": name, "wer": 100 * score.wer,
                     "cer": 100 * score.cer, "throughput": audio / seconds, "peak_mib": mem,
                     "utterances": len(hyps)})
        print(f"{pair} {name}: WER {100 * score.wer:.2f} x{audio / seconds:.0f}", file=sys.stderr)
    pairs = {}
    for pair in ("pyctcdecode", "torchaudio"):
        got = {r["decoder"]: r for r in rows if r["pair"] == pair}
        if "ours" in got and len(got) == 2:
            other = next(r for n, r in got.items() if n != "ours")
            pairs[pair] = {"speedup": got["ours"]["throughput"] / other["throughput"],
                           "wer_delta": got["ours"]["wer"] - other["wer"]}
    return {"beam": beam, "alpha": alpha, "beta": beta, "lm": str(lm), "vocab": str(vocab),
            "posteriors": str(posteriors), "passes": PASSES, "rows": rows, "pairs": pairs,
            "skipped": skipped}


def markdown(data: dict[str, Any], source: str) -> str:
    cols = [("pair", "API"), ("decoder", "decoder"), ("wer", "WER %"), ("cer", "CER %"),
            ("throughput", "x real time"), ("peak_mib", "peak MiB"), ("utterances", "utts")]
    runs = data["runs"]
    lines = [f"# Drop-in decoders\n\n{data['date']}, `{data['command']}`  \n"
             f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores"
             f"{data.get('load', '')}. Posteriors: {source}. LM `{runs[0]['lm']}`, beam "
             f"{runs[0]['beam']}; alpha in nats; throughput is one process, the fastest of "
             f"{runs[0]['passes']} passes.\n"]
    for run in runs:
        lines += [f"\n## alpha {run['alpha']}, beta {run['beta']}\n", table(run["rows"], cols)]
        target = run["pairs"].get("pyctcdecode")
        if target:
            met = target["speedup"] >= 10 and target["wer_delta"] <= 0
            lines.append(f"\nbuild_ctcdecoder drop-in: {target['speedup']:.1f}x pyctcdecode's "
                         f"throughput, WER {target['wer_delta']:+.2f} points: target (>= 10x at "
                         f"WER <= pyctcdecode's) {'met' if met else 'MISSED'}.\n")
        if "torchaudio" in run["pairs"]:
            t = run["pairs"]["torchaudio"]
            lines.append(f"ctc_decoder shim: {t['speedup']:.1f}x flashlight's throughput, WER "
                         f"{t['wer_delta']:+.2f} points.\n")
        for skipped in run["skipped"]:
            lines.append(f"\nskipped: {skipped}")
    return "\n".join(lines) + "\n"


def _weights(text: str) -> tuple[float, float]:
    try:
        alpha, beta = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--weights takes ALPHA,BETA, got {text!r}") from None
    return alpha, beta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posteriors", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--lm", type=Path, default=REPO / "lm" / "models" / "word-3gram" / "model.bin")
    parser.add_argument("--vocab", type=Path)
    parser.add_argument("--weights", type=_weights, action="append", metavar="ALPHA,BETA",
                        help="alpha and beta of one run (repeat for several; default 0.5,1.5: "
                             "pyctcdecode's defaults)")
    parser.add_argument("--beam", type=int, default=32)
    parser.add_argument("--source", default="given posteriors",
                        help="what the posteriors are, for the report")
    args = parser.parse_args(argv)
    data = {**header(), "load": f", load average {os.getloadavg()[0]:.1f} at the start",
            "runs": [run(args.posteriors, args.manifest, args.lm, args.vocab, alpha, beta,
                         args.beam) for alpha, beta in args.weights or [(0.5, 1.5)]]}
    data["source"] = args.source
    write_results("dropin", data, markdown(data, args.source))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Long recordings: memory, speed and WER of ``fusion transcribe``; streaming against offline.

    nice -n 10 .venv/bin/python benchmarks/bench_long.py            # 1, 10, 30, 120 minutes
    nice -n 10 .venv/bin/python benchmarks/bench_long.py --minutes 1 10 --chunkings 2

Writes benchmarks/results/long.json and long.md.

* Recordings of 1, 10, 30 and 120 minutes of real speech: the real-speech set's 75
  utterances in manifest order, with 0.3-1.0 s of silence between them (seeded), repeated
  as needed, written to a temporary folder (16 kHz, 16-bit).
* Each is transcribed by ``fusion transcribe FILE -o OUT`` (the default pipeline) in a
  process of its own: peak memory is its ``ru_maxrss`` (``os.wait4``), speed the audio's
  duration over the wall-clock time, start-up and model loading included.
* WER of the long recording's transcript against the utterances' references in order,
  beside per-utterance decoding of the same audio: ``fusion transcribe`` over the 75
  files, each utterance's transcript counted as often as the recording repeats it.
* Streaming (``benchmarks/stream_example.py``'s evaluation): WER at several look-aheads
  against the references and the offline transcripts, and the partial-result lag.
* Streaming identity: the default decoder's ``stream().finish()`` against ``decode()`` on
  the acoustic model's posteriors of the 75 utterances, each cut into ``--chunkings``
  seeded random chunkings (chunks of 1 to 60 frames): the fraction identical (N-best,
  scores, word times and confidences).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, in_child, table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_SPEECH = ROOT.parent / "shared" / "data" / "real-speech"
RATE = 16_000


def make_recording(minutes: float, out: Path, manifest: Path, seed: int = 0) -> list[str]:
    """Write ``minutes`` of the manifest's utterances (in order, repeated, silences
    between) to ``out``; returns the utterance ids in the order spoken."""
    import numpy as np
    import soundfile as sf

    from fusion.core.manifest import read_manifest

    utts = read_manifest(manifest, require=("audio",))
    rng = np.random.default_rng(seed)
    order: list[str] = []
    total = 0
    with sf.SoundFile(out, "w", samplerate=RATE, channels=1, subtype="PCM_16") as fh:
        while total < minutes * 60 * RATE:
            for u in utts:
                x, rate = sf.read(u.audio, dtype="float32")
                if rate != RATE or x.ndim != 1:
                    raise ValueError(f"{u.audio}: expected 16 kHz mono")
                gap = np.zeros(int(rng.uniform(0.3, 1.0) * RATE), dtype=np.float32)
                fh.write(np.concatenate([x, gap]))
                order.append(u.id)
                total += len(x) + len(gap)
                if total >= minutes * 60 * RATE:
                    break
    return order


def run_measured(argv: list[str]) -> dict[str, float]:
    """Run a command in a process of its own: wall seconds and peak RSS (MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {err[-2000:]}")
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024.0,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def stream_identity(manifest: Path, chunkings: int, seed: int = 0) -> dict[str, Any]:
    """Fraction of (utterance, random chunking) cases where stream().finish() == decode()."""
    import numpy as np

    from fusion.am.infer import compute_posteriors
    from fusion.core.manifest import read_manifest
    from fusion.core.posteriors import Posteriors
    from fusion.pipeline.transcribe import Transcriber

    transcriber = Transcriber()
    decoder, table_ = transcriber.decoder, transcriber.table
    rng = np.random.default_rng(seed)
    cases = same = 0
    differing: list[str] = []
    for post in compute_posteriors(read_manifest(manifest, require=("audio",)), transcriber.adapter):
        if not isinstance(post, Posteriors):
            raise RuntimeError(str(post))
        offline = decoder.decode(post).to_dict(table_)
        lp = post.log_probs
        for _ in range(chunkings):
            stream = decoder.stream(post.frame_shift, post.utt_id)
            t = 0
            while t < len(lp):
                n = int(rng.integers(1, 61))
                stream.accept(lp[t: t + n])
                t += n
            cases += 1
            if stream.finish().to_dict(table_) == offline:
                same += 1
            else:
                differing.append(post.utt_id)
    return {"cases": cases, "identical": same, "fraction": same / cases if cases else None,
            "differing": sorted(set(differing))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 30, 120])
    p.add_argument("--manifest", type=Path, default=REAL_SPEECH / "manifest.jsonl")
    p.add_argument("--chunkings", type=int, default=4, help="random chunkings per utterance")
    p.add_argument("--lookaheads", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--workdir", type=Path, help="where the recordings go (default: a temporary folder)")
    args = p.parse_args(argv)
    # This process stays light (no torch): a child's ru_maxrss starts from its parent's RSS.
    # The in-process parts run in spawned children too; results are written after each part.
    data: dict[str, Any] = {**header(), "runs": [], "per_utterance_run": None,
                            "streaming": None, "stream_identity": None}
    fusion = [sys.executable, "-m", "fusion.cli", "transcribe"]
    data["stream_identity"] = in_child(stream_identity, args.manifest, args.chunkings)[0]
    save(data)
    refs = in_child(references, args.manifest)[0]
    with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        per_utt_out = fresh(work / "per-utterance.jsonl")
        data["per_utterance_run"] = run_measured([*fusion, str(args.manifest), "-o", str(per_utt_out)])
        hyps = {r["id"]: r["text"] for r in read_jsonl(per_utt_out)}
        for minutes in sorted(args.minutes)[:2]:
            data["runs"].append(long_run(minutes, work, fusion, args.manifest, refs, hyps))
            save(data)
        data["streaming"] = in_child(stream_evaluation, args.manifest, tuple(args.lookaheads))[0]
        save(data)
        for minutes in sorted(args.minutes)[2:]:
            data["runs"].append(long_run(minutes, work, fusion, args.manifest, refs, hyps))
            save(data)
    print(json.dumps(data["summary"], indent=1))
    return 0


def references(manifest: Path) -> dict[str, str]:
    from fusion.core.manifest import read_manifest
    from fusion.core.text import normalize_text

    return {u.id: normalize_text(u.text or "") for u in read_manifest(manifest, require=("text",))}


def stream_evaluation(manifest: Path, lookaheads: tuple[float, ...]) -> dict[str, Any]:
    from stream_example import evaluate

    return evaluate(manifest, lookaheads)


def wer(refs: dict[str, str], hyps: dict[str, str]) -> float:
    """Corpus WER in percent, as ``fusion score`` gives it."""
    from fusion.core.metrics import score_corpus

    return 100.0 * score_corpus(refs, hyps).wer


def fresh(out: Path) -> Path:
    """``out`` with no earlier run's results beside it: ``fusion transcribe`` resumes from
    them, and a timed run must do all its work."""
    out.unlink(missing_ok=True)
    shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
    return out


def long_run(minutes: float, work: Path, fusion: list[str], manifest: Path,
             refs: dict[str, str], hyps: dict[str, str]) -> dict[str, Any]:
    """One long recording: made, transcribed in a child, scored against per-utterance."""
    audio = work / f"long-{minutes:g}min.wav"
    order = in_child(make_recording, minutes, audio, manifest)[0]
    out = fresh(work / f"long-{minutes:g}min.jsonl")
    load = os.getloadavg()[0]
    m = run_measured([*fusion, str(audio), "-o", str(out)])
    (result,) = read_jsonl(out)
    audio.unlink()
    run = {"minutes": minutes, "audio_s": result["duration"], **m,
           "rtfx": result["duration"] / m["wall_s"], "rtfx_cpu": result["duration"] / m["cpu_s"],
           "load_before": load, "segments": len(result["segments"])}
    run["wer_long"] = wer({"rec": " ".join(refs[i] for i in order)}, {"rec": result["text"]})
    run["wer_per_utterance"] = wer({f"{k}": refs[i] for k, i in enumerate(order)},
                                   {f"{k}": hyps.get(i, "") for k, i in enumerate(order)})
    run["wer_gap"] = run["wer_long"] - run["wer_per_utterance"]
    print(f"{minutes:g} min: {run['wall_s']:.1f} s, {run['rtfx']:.1f}x, {run['peak_mib']:.0f} MiB, "
          f"WER {run['wer_long']:.2f} vs {run['wer_per_utterance']:.2f}", file=sys.stderr)
    return run


def save(data: dict[str, Any]) -> None:
    """The summary and targets of what has run so far, written to long.json/md."""
    by_min = {r["minutes"]: r for r in data["runs"]}
    longest = max(data["runs"], key=lambda r: r["minutes"]) if data["runs"] else None
    identity = data["stream_identity"] or {}
    ratio = (by_min[120.0]["peak_mib"] / by_min[10.0]["peak_mib"]
             if 120.0 in by_min and 10.0 in by_min else None)
    peak = by_min[120.0]["peak_mib"] if 120.0 in by_min else None
    summary = {
        "peak_ratio_120_10": ratio, "peak_mib_120": peak,
        "rtfx": longest["rtfx"] if longest else None,
        "rtfx_minutes": longest["minutes"] if longest else None,
        "wer_gap": longest["wer_gap"] if longest else None,
        "stream_identical_fraction": identity.get("fraction"),
    }
    data["summary"] = summary
    data["targets_met"] = {
        "peak_ratio_120_10 <= 1.5": None if ratio is None else ratio <= 1.5,
        "peak_mib_120 < 3072": None if peak is None else peak < 3072,
        "rtfx >= 100": None if longest is None else longest["rtfx"] >= 100,
        "|wer_gap| <= 1": None if longest is None else abs(longest["wer_gap"]) <= 1.0,
        "stream_identical_fraction == 1": (None if identity.get("fraction") is None
                                           else identity["fraction"] == 1.0),
    }
    write_results("long", data, markdown(data))


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Long recordings and streaming (`fusion transcribe`)", "",
        f"{data['date']}, `{data['command']}`  ",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']} "
        f"({m['torch_threads']} threads). The machine is shared with other jobs: the load "
        "average before each run is listed, and wall-clock speeds are as slow as that load "
        "made them; CPU time (x real time per CPU-second) is steadier.", "",
        "Each recording is the real-speech set's utterances in order with 0.3-1.0 s silences, "
        "repeated; `fusion transcribe FILE -o OUT` (embedded acoustic model, Silero VAD, beam "
        "search with the default LM) in a process of its own; speed includes start-up and "
        "model loading; peak memory is the process's ru_maxrss.", "",
        table(data["runs"], [("minutes", "minutes"), ("audio_s", "audio s"), ("wall_s", "wall s"),
                             ("cpu_s", "CPU s"), ("rtfx", "x real time"),
                             ("rtfx_cpu", "x real time per CPU s"), ("peak_mib", "peak MiB"),
                             ("segments", "segments"), ("wer_long", "WER long"),
                             ("wer_per_utterance", "WER per utterance"), ("wer_gap", "gap (points)"),
                             ("load_before", "load avg")]),
    ]
    st = data.get("streaming")
    if st:
        lines += [
            "## Streaming", "",
            f"{st['utterances']} real-speech utterances ({st['audio_seconds']} s); chunks of "
            f"{st['chunk_s']} s with {st['left_context_s']} s of left context; lag: per final "
            "word, seconds of audio from its end until the partial hypotheses held it for good "
            "(algorithmic, not compute).", "",
            table(st["rows"], [("mode", "mode"), ("lookahead_s", "look-ahead s"), ("wer", "WER"),
                               ("wer_vs_offline", "WER vs offline"), ("mean_lag_s", "mean lag s"),
                               ("rtfx", "x real time")]),
        ]
    ident = data.get("stream_identity")
    if ident:
        lines += [f"Stream against offline decoding (the default decoder's `stream().finish()` "
                  f"against `decode()`, seeded random chunkings of 1-60 frames over the acoustic "
                  f"model's posteriors): {ident['identical']} of {ident['cases']} identical.", ""]
    lines += ["## Summary and targets", "", "```json", json.dumps(data["summary"], indent=1), "```", ""]
    lines += [f"- {k}: {'not run' if v is None else 'met' if v else '**missed**'}"
              for k, v in data["targets_met"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

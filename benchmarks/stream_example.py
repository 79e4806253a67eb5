"""Streaming recognition of a file, chunk by chunk, without a microphone; and what
look-ahead costs.

    python benchmarks/stream_example.py                       # one file, partial results
    python benchmarks/stream_example.py --file X.wav --lookahead 0.25
    python benchmarks/stream_example.py --evaluate            # look-ahead sweep, real speech

The file is read as a microphone would give it; Silero VAD cuts it at pauses; each speech
segment goes to the acoustic model one ``--chunk`` at a time, with ``--left-context``
seconds before the chunk and ``--lookahead`` seconds after it (the chunk's own frames are
kept), and the frames go to the beam search's stream (``BeamSearchDecoder.stream``),
which prints the best hypothesis after every chunk. ``finish()`` gives the final result.

``--evaluate`` transcribes the 75 real-speech utterances offline (whole segments) and
streaming at each look-ahead, and reports WER against the references and against the
offline transcripts, and the partial-result lag: per final word, the seconds from the
word's end in the audio until the partial hypotheses held it for good, counting audio
time (the algorithmic latency: the look-ahead plus the wait for the chunk to fill), not
compute time. ``benchmarks/bench_long.py`` runs the same evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REAL_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-speech"
LOOKAHEADS = (0.25, 0.5, 1.0, 2.0)


def show_file(path: Path, chunk: float, left: float, lookahead: float) -> None:
    from fusion.pipeline.transcribe import StreamOptions, Transcriber

    transcriber = Transcriber(stream=StreamOptions(chunk, left, lookahead))

    def partial(when: float, text: str) -> None:
        print(f"{when:7.2f} s  {text}")

    segments, duration = transcriber.transcribe(path, on_partial=partial)
    print(f"\nfinal ({duration:.1f} s of audio, {len(segments)} segments):")
    for s in segments:
        print(f"  [{s.start:7.2f} - {s.end:7.2f}] {s.text}")


def evaluate(manifest: Path, lookaheads: tuple[float, ...] = LOOKAHEADS, chunk: float = 1.0,
             left: float = 4.0) -> dict[str, Any]:
    """Offline and streaming WER of a manifest's utterances, and the partial-result lag."""
    import numpy as np

    from fusion.core.manifest import read_manifest
    from fusion.core.metrics import score_corpus
    from fusion.core.text import normalize_text
    from fusion.pipeline.transcribe import StreamOptions, Transcriber, partial_lag

    utts = read_manifest(manifest, require=("audio", "text"))
    refs = {u.id: normalize_text(u.text or "") for u in utts}
    transcriber = Transcriber()
    audio_seconds = 0.0
    t0 = time.perf_counter()
    offline: dict[str, str] = {}
    for u in utts:
        segments, duration = transcriber.transcribe(u.audio)
        offline[u.id] = " ".join(s.text for s in segments if s.text)
        audio_seconds += duration
    rows = [{"mode": "offline", "lookahead_s": None,
             "wer": round(100 * score_corpus(refs, offline).wer, 2), "wer_vs_offline": 0.0,
             "mean_lag_s": None, "rtfx": round(audio_seconds / (time.perf_counter() - t0), 1)}]
    for r in lookaheads:
        transcriber.stream = StreamOptions(chunk, left, r)
        hyps: dict[str, str] = {}
        lags: list[float] = []
        t0 = time.perf_counter()
        for u in utts:
            segments, _ = transcriber.transcribe(u.audio)
            hyps[u.id] = " ".join(s.text for s in segments if s.text)
            for s in segments:
                lags += partial_lag(s.partials, s.words)
        rows.append({"mode": "stream", "lookahead_s": r,
                     "wer": round(100 * score_corpus(refs, hyps).wer, 2),
                     "wer_vs_offline": round(100 * score_corpus(offline, hyps).wer, 2),
                     "mean_lag_s": round(float(np.mean(lags)), 3) if lags else None,
                     "rtfx": round(audio_seconds / (time.perf_counter() - t0), 1)})
        print(rows[-1], file=sys.stderr)
    return {"utterances": len(utts), "audio_seconds": round(audio_seconds, 1), "chunk_s": chunk,
            "left_context_s": left, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", type=Path,
                   default=REAL_SPEECH / "audio" / "librispeech-2412-153948-0000.wav")
    p.add_argument("--chunk", type=float, default=1.0)
    p.add_argument("--left-context", type=float, default=4.0)
    p.add_argument("--lookahead", type=float, default=0.5)
    p.add_argument("--evaluate", action="store_true",
                   help="WER and lag of each look-ahead on the real-speech set")
    p.add_argument("--manifest", type=Path, default=REAL_SPEECH / "manifest.jsonl")
    args = p.parse_args(argv)
    if args.evaluate:
        import json

        print(json.dumps(evaluate(args.manifest, chunk=args.chunk, left=args.left_context), indent=1))
    else:
        show_file(args.file, args.chunk, args.left_context, args.lookahead)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

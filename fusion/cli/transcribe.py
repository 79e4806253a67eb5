"""``fusion transcribe``: the command over :class:`fusion.pipeline.transcribe.Transcriber`.

Batches are resumable: with an output file, every finished recording is kept (atomically)
in ``OUTPUT.parts/`` with a fingerprint of its audio's content and of the settings, and a
rerun reuses it only when both still match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fusion.am.vad import SegmenterConfig
from fusion.core.manifest import atomic_write
from fusion.core.types import WordSpan
from fusion.pipeline.transcribe import (Recording, StreamOptions, Transcriber, TranscriptionError,
                                        collect_inputs, readable_cues, result_dict)

__all__ = ["add_parser", "run"]


def _subtitle_targets(dest: Path | None, suffix: str, recordings: Sequence[Recording]
                      ) -> dict[str, Path]:
    """Where each recording's subtitles go: ``dest`` itself when it ends in ``suffix``
    (one recording only), else ``dest/ID.suffix``."""
    if dest is None:
        return {}
    if dest.is_file() and dest.suffix.lower() != suffix:
        raise ValueError(f"{dest}: not a folder nor a {suffix} file")
    if dest.suffix.lower() == suffix:
        if len(recordings) != 1:
            raise ValueError(f"{dest}: one {suffix} file holds one recording's subtitles; "
                             f"give a folder for {len(recordings)} recordings")
        return {recordings[0].id: dest}
    return {r.id: dest / f"{r.id}{suffix}" for r in recordings}


def _refuse_overwriting(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    taken = {p.resolve() for p in inputs}
    for out in outputs:
        if out.resolve() in taken:
            raise ValueError(f"{out}: an output would overwrite an input; choose another path")


# -- resuming ---------------------------------------------------------------------------
def _part_path(parts: Path, rec: Recording) -> Path:
    digest = hashlib.sha1(rec.id.encode("utf-8")).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rec.id)[-60:]
    return parts / f"{safe}.{digest}.json"


def _load_part(path: Path, fingerprint: str, settings: str) -> dict[str, Any] | None:
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if part.get("fingerprint") != fingerprint or part.get("settings") != settings:
        return None
    return part.get("result")


# -- the command ------------------------------------------------------------------------
def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "transcribe", help="transcribe audio files of any length (VAD segments, beam search)",
        description="Audio in, transcripts out: files, folders (searched recursively) or "
        "manifests; any length, sample rate and channel count. Silero VAD cuts each recording "
        "at pauses (segments of at most --max-segment seconds), the acoustic model and beam "
        "search with the default LM transcribe each segment, word times are in recording "
        "time. With -o, finished recordings are kept in OUTPUT.parts/ and a rerun skips "
        "those whose audio and settings are unchanged.")
    p.add_argument("audio", nargs="+", type=Path, help="audio files, folders or manifests (.jsonl)")
    p.add_argument("-o", "--output", type=Path,
                   help="transcripts JSONL, one line per recording (default: printed)")
    p.add_argument("--srt", type=Path, help="SubRip subtitles: a .srt file (one recording) or a folder")
    p.add_argument("--vtt", type=Path, help="WebVTT subtitles: a .vtt file (one recording) or a folder")
    p.add_argument("--ctm", type=Path, help="every recording's words as CTM")
    p.add_argument("--errors", type=Path,
                   help="failed recordings (default: OUTPUT with .errors.jsonl)")
    p.add_argument("--model", type=Path, help="acoustic model (default: the embedded one)")
    p.add_argument("--lm", default="default",
                   help="word n-gram for beam search (default: fusion demo's; 'none': no LM)")
    p.add_argument("--beam-size", type=int)
    p.add_argument("--max-segment", type=float, default=SegmenterConfig.max_segment,
                   help="longest segment in seconds (default: %(default)s)")
    p.add_argument("--vad-threshold", type=float, default=SegmenterConfig.threshold)
    p.add_argument("--min-silence", type=float, default=SegmenterConfig.min_silence,
                   help="pause in seconds that ends a segment (default: %(default)s)")
    p.add_argument("--pad", type=float, default=SegmenterConfig.pad,
                   help="seconds added on each side of a segment (default: %(default)s)")
    s = p.add_argument_group("streaming")
    s.add_argument("--stream", action="store_true",
                   help="chunked acoustic model and streaming decoding, partial results on stderr")
    s.add_argument("--chunk", type=float, default=StreamOptions.chunk, help="seconds per chunk")
    s.add_argument("--left-context", type=float, default=StreamOptions.left,
                   help="seconds of audio before a chunk the model sees")
    s.add_argument("--lookahead", type=float, default=StreamOptions.lookahead,
                   help="seconds of audio after a chunk the model sees (the latency)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    recordings = collect_inputs(args.audio)
    inputs = [r.path for r in recordings] + [a for a in args.audio if a.is_file()]
    errors_path = args.errors or (args.output.with_suffix(".errors.jsonl") if args.output else None)
    outputs = [p for p in (args.output, args.ctm, errors_path) if p is not None]
    _refuse_overwriting([*outputs, *(p for p in (args.srt, args.vtt) if p is not None)], inputs)
    srt = _subtitle_targets(args.srt, ".srt", recordings)
    vtt = _subtitle_targets(args.vtt, ".vtt", recordings)
    _refuse_overwriting([*srt.values(), *vtt.values()], inputs)
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise ValueError("-o, --ctm and --errors must be different files")
    vad = SegmenterConfig(threshold=args.vad_threshold, min_silence=args.min_silence,
                          pad=args.pad, max_segment=args.max_segment)
    stream = (StreamOptions(args.chunk, args.left_context, args.lookahead) if args.stream else None)
    lm = None if str(args.lm) == "none" else ("default" if args.lm == "default" else Path(args.lm))
    transcriber = Transcriber(args.model, lm, args.beam_size, vad, stream)
    settings = json.dumps(transcriber.settings(), sort_keys=True)
    parts = args.output.with_name(args.output.name + ".parts") if args.output else None

    import soundfile as sf

    def seconds(r: Recording) -> float:
        try:
            return sf.info(str(r.path)).duration
        except (sf.LibsndfileError, RuntimeError, OSError):
            return 0.0

    bar = tqdm(total=round(sum(seconds(r) for r in recordings), 1), unit="s", desc="transcribe",
               disable=None, unit_scale=False, mininterval=1)
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    reused = 0
    for rec in recordings:
        try:
            fingerprint = _fingerprint(rec.path)
            part = _part_path(parts, rec) if parts else None
            result = _load_part(part, fingerprint, settings) if part and part.exists() else None
            if result is not None:
                reused += 1
                bar.update(round(result["duration"], 1))
            else:
                segments, duration = transcriber.transcribe(
                    rec.path, progress=lambda s: bar.update(round(s, 1)),
                    on_partial=(lambda t, text, rid=rec.id: _show_partial(bar, rid, t, text))
                    if stream else None)
                result = result_dict(rec, duration, segments)
                if part is not None:
                    with atomic_write(part) as fh:
                        json.dump({"fingerprint": fingerprint, "settings": settings,
                                   "result": result}, fh, ensure_ascii=False)
            results.append(result)
            if args.output is None:
                bar.write(json.dumps(result, ensure_ascii=False), file=sys.stdout)
        except (TranscriptionError, OSError) as exc:
            msg = str(exc) if isinstance(exc, TranscriptionError) else f"{rec.path}: {exc}"
            failures.append({"id": rec.id, "path": str(rec.path), "error": msg})
            bar.write(f"fusion transcribe: error: {msg}", file=sys.stderr)
    bar.close()
    _write_outputs(args, results, srt, vtt)
    if errors_path is not None:
        if failures:
            with atomic_write(errors_path) as fh:
                fh.writelines(json.dumps(f, ensure_ascii=False) + "\n" for f in failures)
        elif errors_path.exists():
            errors_path.unlink()  # a stale list from an earlier run
    done = f"transcribed {len(results)} of {len(recordings)} recordings"
    if reused:
        done += f" ({reused} unchanged, reused from {parts})"
    print(done + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
    if failures:
        where = f"; see {errors_path}" if errors_path else ""
        print(f"fusion transcribe: {len(failures)} recordings failed{where}", file=sys.stderr)
    return 1 if failures else 0


def _fingerprint(path: Path) -> str:
    from fusion.core.npzindex import content_fingerprint

    if not path.is_file():
        raise TranscriptionError(f"{path}: no such audio file")
    return content_fingerprint(path)


def _show_partial(bar: Any, rec_id: str, when: float, text: str) -> None:
    bar.write(f"[partial {rec_id} {when:8.2f} s] {text}", file=sys.stderr)


def _write_outputs(args: argparse.Namespace, results: Sequence[dict[str, Any]],
                   srt: dict[str, Path], vtt: dict[str, Path]) -> None:
    from fusion.core.formats import ctm_lines, srt_text, vtt_text

    if args.output is not None:
        with atomic_write(args.output) as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if args.ctm is not None:
        with atomic_write(args.ctm) as fh:
            for r in results:
                for seg in r["segments"]:
                    fh.writelines(ctm_lines(r["id"], (
                        WordSpan(w["word"], w["start"], w["end"], w.get("confidence"))
                        for w in seg["words"])))
    for r in results:
        cues = readable_cues(r["segments"])
        if r["id"] in srt:
            with atomic_write(srt[r["id"]]) as fh:
                fh.write(srt_text(cues))
        if r["id"] in vtt:
            with atomic_write(vtt[r["id"]]) as fh:
                fh.write(vtt_text(cues))

"""Word-timing output formats: NIST CTM, SubRip (SRT) and WebVTT subtitles."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from fusion.core.types import WordSpan

__all__ = ["ctm_lines", "srt_cues", "srt_text", "vtt_text"]


def ctm_lines(utt_id: str, words: Iterable[WordSpan]) -> Iterator[str]:
    """CTM lines ``utterance 1 start duration word [confidence]``, one per word."""
    for w in words:
        conf = "" if w.confidence is None else f" {w.confidence:.3f}"
        yield f"{utt_id} 1 {w.start:.3f} {w.end - w.start:.3f} {w.word}{conf}\n"


def srt_cues(words: Sequence[WordSpan], *, max_words: int = 10, max_seconds: float = 5.0,
             max_gap: float = 1.0) -> list[tuple[float, float, str]]:
    """Group words into subtitle cues ``(start, end, text)``.

    A cue ends before a word that would make it longer than ``max_words`` or
    ``max_seconds``, or that follows a pause longer than ``max_gap`` seconds.
    """
    cues: list[tuple[float, float, str]] = []
    current: list[WordSpan] = []
    for w in words:
        if current and (len(current) >= max_words or w.end - current[0].start > max_seconds
                        or w.start - current[-1].end > max_gap):
            cues.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
            current = []
        current.append(w)
    if current:
        cues.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
    return cues


def _timestamp(seconds: float, comma: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SubRip); ``comma="."`` gives WebVTT's ``HH:MM:SS.mmm``."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{comma}{ms:03d}"


def srt_text(cues: Iterable[tuple[float, float, str]]) -> str:
    """SubRip text of numbered cues."""
    return "".join(f"{i}\n{_timestamp(a)} --> {_timestamp(b)}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(cues, start=1))


def vtt_text(cues: Iterable[tuple[float, float, str]]) -> str:
    """WebVTT text of the cues."""
    return "WEBVTT\n\n" + "".join(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n\n"
                                  for a, b, text in cues)

"""Word-time calibration: context-dependent shifts of aligned word boundaries.

A CTC model fires a unit's spike at a fairly constant distance from the unit's true
onset, but that distance depends on the context: a word that directly follows another
starts well before its first spike (the boundary sits somewhere in the previous
frames), a word after a pause starts close to it. The aligner sees that context as the
*gap*: the frames between one word's last unit and the next word's first (the word
boundary unit and blanks).

:class:`BoundaryCalibration` holds one shift per boundary kind (``start`` / ``end``) and
context (``first`` word, ``last`` word, gap of ``1 .. max_gap`` frames, larger gaps
counted as ``max_gap``), each the median signed error ``aligned - reference`` of that
context on a calibration set with reference timings (:meth:`BoundaryCalibration.fit`).
A context seen fewer than ``min_count`` times takes the kind's pooled median.

The distance also depends on the letter: a final silent ``e`` fires its spike within the
previous sound, a word-initial stop only at its release. On top of the context shift,
an optional second layer holds one shift per word-initial letter (for starts) and per
word-final letter (for ends): the median of what the context shift leaves of the
errors, for letters seen at least ``letter_min_count`` times. In the alignment
benchmark (fitted on its dev set, scored on its test set; the stage-4 model, HMM path)
it took the median error from 39.2 to 37.4 ms and the 90th percentile from 102 to 97.

:meth:`BoundaryCalibration.apply` subtracts the shifts; words stay within the audio,
in order and non-overlapping. Fit it on data that is not scored, for the model (and
frame shift) it will be used with. Times are in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusion.core.types import WordSpan

__all__ = ["BoundaryCalibration", "CalibrationError", "contexts"]

FORMAT = "asrfuse-boundary-calibration-1"
#: the pooled shift of a boundary kind, used for contexts too rare to estimate
POOLED = "all"


class CalibrationError(ValueError):
    """Calibration data or files that are malformed or do not fit the words given."""


def contexts(words: Sequence[WordSpan], frame_shift: float, max_gap: int) -> list[tuple[str, str]]:
    """``(start context, end context)`` of each word: ``first`` / ``last`` at the ends
    of the utterance, else ``gap<n>`` with ``n`` the frames to the neighbouring word,
    clipped to ``0 .. max_gap``."""
    def gap(a: float, b: float) -> str:
        return f"gap{min(max(round((b - a) / frame_shift), 0), max_gap)}"

    out = []
    for i, w in enumerate(words):
        start = "first" if i == 0 else gap(words[i - 1].end, w.start)
        end = "last" if i == len(words) - 1 else gap(w.end, words[i + 1].start)
        out.append((start, end))
    return out


@dataclass(frozen=True)
class BoundaryCalibration:
    """Shifts (seconds) subtracted from aligned word starts and ends, by context.

    Attributes:
        frame_shift: the posteriors' frame shift the gaps were counted in.
        max_gap: gaps of more frames share the context ``gap<max_gap>``.
        start_shift, end_shift: context -> shift; :data:`POOLED` (``"all"``) is required
            and serves every context not listed.
        counts: how many calibration boundaries each ``"start:<context>"`` /
            ``"end:<context>"`` shift (``"start-letter:<letter>"`` / ``"end-letter:<letter>"``
            for letter shifts) was estimated from (informative only).
        start_letter, end_letter: word-initial / word-final letter -> shift added to the
            context's (empty: no letter layer); letters not listed add nothing.
    """

    frame_shift: float
    max_gap: int = 4
    start_shift: dict[str, float] = field(default_factory=lambda: {POOLED: 0.0})
    end_shift: dict[str, float] = field(default_factory=lambda: {POOLED: 0.0})
    counts: dict[str, int] = field(default_factory=dict)
    start_letter: dict[str, float] = field(default_factory=dict)
    end_letter: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.frame_shift) and self.frame_shift > 0):
            raise CalibrationError(f"frame_shift must be > 0 seconds, got {self.frame_shift!r}")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, int) or self.max_gap < 1:
            raise CalibrationError(f"max_gap must be an int >= 1, got {self.max_gap!r}")
        for name in ("start_shift", "end_shift"):
            shifts = getattr(self, name)
            if POOLED not in shifts:
                raise CalibrationError(f"{name} needs the pooled shift {POOLED!r}")
            if not all(np.isfinite(v) for v in shifts.values()):
                raise CalibrationError(f"{name} must hold finite numbers")
        for name in ("start_letter", "end_letter"):
            shifts = getattr(self, name)
            if not all(isinstance(k, str) and len(k) == 1 for k in shifts):
                raise CalibrationError(f"{name} keys must be single letters, got {sorted(shifts)!r}")
            if not all(np.isfinite(v) for v in shifts.values()):
                raise CalibrationError(f"{name} must hold finite numbers")

    @classmethod
    def fit(cls, aligned: Sequence[Sequence[WordSpan]], reference: Sequence[Sequence[tuple[float, float]]],
            frame_shift: float, *, max_gap: int = 4, min_count: int = 20,
            letter_min_count: int | None = 10) -> BoundaryCalibration:
        """Median signed errors per context, then per letter of what those leave.

        Args:
            aligned: each utterance's aligned words.
            reference: each utterance's true ``(start, end)`` per word, same words.
            frame_shift: the posteriors' frame shift (seconds).
            max_gap: see the class.
            min_count: contexts with fewer boundaries take the pooled shift.
            letter_min_count: letters seen fewer times get no letter shift; ``None``
                fits no letter layer.
        """
        if len(aligned) != len(reference):
            raise CalibrationError(f"{len(aligned)} aligned utterances but {len(reference)} references")
        if letter_min_count is not None and letter_min_count < 1:
            raise CalibrationError(f"letter_min_count must be >= 1 or None, got {letter_min_count!r}")
        # (kind, context, letter, error) of every boundary
        boundaries: list[tuple[str, str, str, float]] = []
        for n, (words, ref) in enumerate(zip(aligned, reference)):
            if len(words) != len(ref):
                raise CalibrationError(f"utterance {n}: {len(words)} aligned words but {len(ref)} "
                                       "reference spans")
            for w, (ref_start, ref_end), (c_start, c_end) in zip(words, ref,
                                                                 contexts(words, frame_shift, max_gap)):
                boundaries += [("start", c_start, w.word[:1], w.start - ref_start),
                               ("end", c_end, w.word[-1:], w.end - ref_end)]
        if not boundaries:
            raise CalibrationError("no words to calibrate on")
        errors: dict[str, dict[str, list[float]]] = {"start": {}, "end": {}}
        for kind, context, _, err in boundaries:
            errors[kind].setdefault(context, []).append(err)
        shifts: dict[str, dict[str, float]] = {}
        counts: dict[str, int] = {}
        for kind, by_context in errors.items():
            pooled = [e for v in by_context.values() for e in v]
            shifts[kind] = {POOLED: float(np.median(pooled))}
            counts[f"{kind}:{POOLED}"] = len(pooled)
            for context, errs in sorted(by_context.items()):
                counts[f"{kind}:{context}"] = len(errs)
                if len(errs) >= min_count:
                    shifts[kind][context] = float(np.median(errs))
        letters: dict[str, dict[str, float]] = {"start": {}, "end": {}}
        if letter_min_count is not None:
            residuals: dict[tuple[str, str], list[float]] = {}
            for kind, context, letter, err in boundaries:
                if letter:
                    shift = shifts[kind].get(context, shifts[kind][POOLED])
                    residuals.setdefault((kind, letter), []).append(err - shift)
            for (kind, letter), res in sorted(residuals.items()):
                counts[f"{kind}-letter:{letter}"] = len(res)
                if len(res) >= letter_min_count:
                    letters[kind][letter] = float(np.median(res))
        return cls(frame_shift, max_gap, shifts["start"], shifts["end"], counts,
                   letters["start"], letters["end"])

    @classmethod
    def constant(cls, frame_shift: float, start: float, end: float) -> BoundaryCalibration:
        """One shift for every start and one for every end."""
        return cls(frame_shift, 1, {POOLED: float(start)}, {POOLED: float(end)})

    def apply(self, words: Sequence[WordSpan], duration: float | None = None) -> tuple[WordSpan, ...]:
        """The words with calibrated times: shifts subtracted, then clipped to
        ``[0, duration]``; a word is never shorter than 0 and never overlaps the next
        (where shifted spans would, both meet half way)."""
        ctx = contexts(words, self.frame_shift, self.max_gap)
        starts = np.array([w.start - self.start_shift.get(c, self.start_shift[POOLED])
                           - self.start_letter.get(w.word[:1], 0.0) for w, (c, _) in zip(words, ctx)])
        ends = np.array([w.end - self.end_shift.get(c, self.end_shift[POOLED])
                         - self.end_letter.get(w.word[-1:], 0.0) for w, (_, c) in zip(words, ctx)])
        hi = np.inf if duration is None else float(duration)
        starts, ends = np.clip(starts, 0.0, hi), np.clip(ends, 0.0, hi)
        for i in range(len(words)):
            if ends[i] < starts[i]:
                starts[i] = ends[i] = (starts[i] + ends[i]) / 2
            if i and starts[i] < ends[i - 1]:
                mid = (starts[i] + ends[i - 1]) / 2
                mid = min(max(mid, starts[i - 1]), ends[i])
                ends[i - 1] = starts[i] = mid
        return tuple(w._replace(start=float(s), end=float(e)) for w, s, e in zip(words, starts, ends))

    # -- files ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "frame_shift": self.frame_shift, "max_gap": self.max_gap,
                "start_shift": dict(self.start_shift), "end_shift": dict(self.end_shift),
                "counts": dict(self.counts), "start_letter": dict(self.start_letter),
                "end_letter": dict(self.end_letter)}

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "calibration") -> BoundaryCalibration:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{source}: not a boundary calibration (format {FORMAT!r})")
        try:
            return cls(float(data["frame_shift"]), int(data["max_gap"]),
                       {str(k): float(v) for k, v in data["start_shift"].items()},
                       {str(k): float(v) for k, v in data["end_shift"].items()},
                       {str(k): int(v) for k, v in data.get("counts", {}).items()},
                       {str(k): float(v) for k, v in data.get("start_letter", {}).items()},
                       {str(k): float(v) for k, v in data.get("end_letter", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, CalibrationError):
                raise CalibrationError(f"{source}: {exc}") from None
            raise CalibrationError(f"{source}: malformed boundary calibration: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BoundaryCalibration:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: cannot read boundary calibration: {exc}") from None
        return cls.from_dict(data, source=str(path))

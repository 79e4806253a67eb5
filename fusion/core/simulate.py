"""Simulated CTC posteriors: a controllable stand-in for an acoustic model.

Given a transcript, lay its units out on frames the way a CTC model does (each unit a
short run of frames, blanks between, a blank between repeated units), then draw noisy
frame distributions peaked on the aligned unit, with some frames confused with another
unit. Used by tests, load benchmarks and the demo before an acoustic model is given.
The known alignment comes back too, so tests can check timings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable

__all__ = ["SimulationConfig", "simulate_posteriors"]


@dataclass(frozen=True)
class SimulationConfig:
    """How a simulated model behaves.

    Attributes:
        frames_per_unit: inclusive range of frames each unit's run lasts.
        blank_frames: inclusive range of blank frames after each unit.
        peak: logit margin of the aligned unit over the rest (higher = more confident).
        noise: standard deviation of Gaussian logit noise.
        confusion: probability that a unit's run peaks on a random other unit instead.
        frame_shift: seconds per frame.
    """

    frames_per_unit: tuple[int, int] = (1, 3)
    blank_frames: tuple[int, int] = (0, 3)
    peak: float = 8.0
    noise: float = 1.0
    confusion: float = 0.0
    frame_shift: float = 0.04

    def __post_init__(self) -> None:
        for name in ("frames_per_unit", "blank_frames"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range 0 <= low <= high, got {(lo, hi)}")
        if self.frames_per_unit[0] < 1:
            raise ValueError("frames_per_unit must start at 1 or more")
        if not 0.0 <= self.confusion <= 1.0:
            raise ValueError(f"confusion must be a probability, got {self.confusion}")
        if self.noise < 0 or self.frame_shift <= 0:
            raise ValueError("noise must be >= 0 and frame_shift > 0")


def simulate_posteriors(
    utt_id: str,
    text: str,
    table: TokenTable,
    rng: np.random.Generator,
    config: SimulationConfig = SimulationConfig(),
) -> tuple[Posteriors, np.ndarray]:
    """Simulate posteriors for ``text`` spelled with ``table`` (a character table).

    Returns the posteriors and the frame alignment (the unit id each frame was drawn
    around, blank included).
    """
    units = table.ids_from_text(text)
    vocab = len(table)
    blank = table.blank_id
    others = np.array([i for i in range(vocab) if i != blank])
    align: list[int] = [blank] * int(rng.integers(config.blank_frames[0], config.blank_frames[1] + 1))
    for k, unit in enumerate(units):
        if k and units[k - 1] == unit and align and align[-1] != blank:
            align.append(blank)  # CTC needs a blank between repeats
        emitted = unit
        if config.confusion and rng.random() < config.confusion:
            emitted = int(rng.choice(others[others != unit]))
        align += [emitted] * int(rng.integers(config.frames_per_unit[0], config.frames_per_unit[1] + 1))
        align += [blank] * int(rng.integers(config.blank_frames[0], config.blank_frames[1] + 1))
    alignment = np.array(align, dtype=np.int64)
    logits = rng.normal(0.0, config.noise, size=(len(alignment), vocab))  # (T, V)
    logits[np.arange(len(alignment)), alignment] += config.peak
    posteriors = Posteriors.from_array(
        utt_id, logits, kind="logits", frame_shift=config.frame_shift, token_table=table
    )
    return posteriors, alignment

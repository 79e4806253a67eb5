"""Hybrid emissions: CTC frame posteriors turned into scaled likelihoods.

A CTC model gives posteriors ``p(s | o_t)``. A hybrid HMM needs likelihoods
``p(o_t | s)``, which Bayes' rule gives up to a per-frame constant as
``p(s | o_t) / p(s)``. The prior ``p(s)`` is estimated from the model's own outputs
over a data set (the mean frame posterior), and divided out with a fusion weight
``kappa``::

    log_likelihood[t, s] = log p(s | o_t) - kappa * log p(s)

``kappa = 0`` gives the plain posteriors back exactly; ``kappa = 1`` is the classic
hybrid scaled likelihood. Natural log throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.core.posteriors import Posteriors

__all__ = ["EmissionError", "ScaledLikelihoods", "TokenPriors", "estimate_priors"]

FORMAT = "asrfuse-token-priors"


class EmissionError(ValueError):
    """Priors or emissions that are malformed, or that do not fit the posteriors."""


@dataclass(frozen=True, eq=False)
class TokenPriors:
    """Token prior probabilities ``p(s)``, stored as natural-log values.

    Attributes:
        log_priors: ``(V,)`` float64, ``logsumexp == 0``, all finite.
        num_frames: how many frames the estimate was drawn from (0 when unknown).
        exclude_blank_frames: whether frames whose best unit is the blank were left out.

    Equality is identity (the array is not compared).
    """

    log_priors: np.ndarray
    num_frames: int = 0
    exclude_blank_frames: bool = False

    def __post_init__(self) -> None:
        arr = np.asarray(self.log_priors, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise EmissionError(f"log_priors must be a non-empty 1-D array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise EmissionError("log_priors must be finite (smooth the estimate)")
        total = np.logaddexp.reduce(arr)
        if abs(total) > 1e-6:
            raise EmissionError(f"priors must sum to 1 (logsumexp {total:.6g}, expected 0)")
        arr = arr.copy()
        arr.flags.writeable = False
        object.__setattr__(self, "log_priors", arr)

    @property
    def num_tokens(self) -> int:
        return int(self.log_priors.size)

    @property
    def priors(self) -> np.ndarray:
        return np.exp(self.log_priors)

    # -- files ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "priors": [float(p) for p in self.priors],
                "num_frames": int(self.num_frames),
                "exclude_blank_frames": bool(self.exclude_blank_frames)}

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "priors") -> TokenPriors:
        if not isinstance(data, dict) or data.get("format") != FORMAT or "priors" not in data:
            raise EmissionError(f"{source}: not a token-priors object (format {FORMAT!r})")
        priors = np.asarray(data["priors"], dtype=np.float64)
        if priors.ndim != 1 or (priors <= 0).any():
            raise EmissionError(f"{source}: priors must be a list of positive numbers")
        return cls(np.log(priors / priors.sum()), int(data.get("num_frames", 0)),
                   bool(data.get("exclude_blank_frames", False)))

    def save(self, path: str | Path) -> None:
        """Write to ``.json`` (human-readable) or ``.npz`` (by the file's suffix)."""
        path = Path(path)
        if path.suffix == ".npz":
            np.savez(path, log_priors=self.log_priors, num_frames=np.int64(self.num_frames),
                     exclude_blank_frames=np.bool_(self.exclude_blank_frames))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TokenPriors:
        """Read a file written by :meth:`save` (``.npz`` or JSON)."""
        path = Path(path)
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as npz:
                    return cls(npz["log_priors"], int(npz["num_frames"]),
                               bool(npz["exclude_blank_frames"]))
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, EmissionError):
                raise
            raise EmissionError(f"{path}: cannot read token priors: {exc}") from None
        return cls.from_dict(data, source=str(path))


def estimate_priors(
    posteriors: Iterable[Posteriors],
    *,
    blank_id: int | None = None,
    exclude_blank_frames: bool = False,
    smoothing: float = 1e-5,
) -> TokenPriors:
    """Estimate token priors as the mean frame posterior over a data set.

    Args:
        posteriors: the utterances (streamed: one at a time is held).
        blank_id: the blank's id; required when ``exclude_blank_frames``.
        exclude_blank_frames: average only over frames whose most probable unit is not
            the blank (CTC models spend most frames on the blank, which would
            otherwise dominate the prior).
        smoothing: additive smoothing: ``p = (mean + smoothing) / (1 + V * smoothing)``,
            so no prior is zero.
    """
    if exclude_blank_frames and blank_id is None:
        raise EmissionError("exclude_blank_frames=True needs blank_id")
    if not smoothing >= 0:
        raise EmissionError(f"smoothing must be >= 0, got {smoothing}")
    total: np.ndarray | None = None
    frames = 0
    for post in posteriors:
        lp = post.log_probs
        if exclude_blank_frames:
            lp = lp[np.argmax(lp, axis=1) != blank_id]
        if total is None:
            total = np.zeros(post.num_tokens, dtype=np.float64)
        elif post.num_tokens != total.size:
            raise EmissionError(
                f"utterance {post.utt_id!r}: {post.num_tokens} tokens, earlier utterances had {total.size}"
            )
        total += np.exp(lp.astype(np.float64)).sum(axis=0)
        frames += lp.shape[0]
    if total is None or frames == 0:
        raise EmissionError("no frames to estimate priors from")
    mean = total / frames
    priors = (mean + smoothing) / (mean.sum() + total.size * smoothing)
    if (priors <= 0).any():
        raise EmissionError("some token never occurs: use smoothing > 0")
    return TokenPriors(np.log(priors), frames, exclude_blank_frames)


@dataclass(frozen=True)
class ScaledLikelihoods:
    """The emission model of the hybrid HMM: ``log p(s|o) - kappa * log p(s)``.

    Args:
        priors: token priors; ``None`` is allowed only with ``kappa == 0``.
        kappa: prior scale (a fusion weight), >= 0. ``0`` returns the posteriors.

    :meth:`log_likelihoods` maps a ``(T, V)`` log-posterior array to ``(T, V)``
    float64 scaled log-likelihoods; the aligner, the HMM and the decoder all use it.
    """

    priors: TokenPriors | None = None
    kappa: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.kappa) and self.kappa >= 0):
            raise EmissionError(f"kappa must be a finite number >= 0, got {self.kappa!r}")
        if self.kappa != 0 and self.priors is None:
            raise EmissionError("kappa != 0 needs token priors")

    def log_likelihoods(self, log_probs: np.ndarray, *, utt_id: str = "<utterance>") -> np.ndarray:
        """Scaled log-likelihoods of every frame and unit, ``(T, V)`` float64."""
        lp = np.asarray(log_probs)
        if lp.ndim != 2:
            raise EmissionError(f"utterance {utt_id!r}: log_probs must be (T, V), got shape {lp.shape}")
        out = lp.astype(np.float64)  # a copy: never the caller's array
        if self.kappa == 0:
            return out
        assert self.priors is not None  # checked in __post_init__
        if lp.shape[1] != self.priors.num_tokens:
            raise EmissionError(
                f"utterance {utt_id!r}: posteriors have {lp.shape[1]} tokens, "
                f"the priors {self.priors.num_tokens}"
            )
        out -= self.kappa * self.priors.log_priors[None, :]
        return out

"""Fusion-weight tuning on a dev set.

Two stages, both logged trial by trial to one JSONL file and resumable:

* **First pass**: the beam search's weights (LM weight, word bonus; optionally the beam
  and its pruning threshold) over cached dev posteriors, by grid, random and Bayesian
  (Optuna TPE) search. Each trial decodes the whole dev set in a pool of workers (local
  processes or Ray: :class:`fusion.run.parallel.Backend`) that hold the posteriors and the
  scorers for the whole run (one trial ships only its weights).
* **Rescoring**: the weights of every score of the dev N-best lists (first-pass scores
  plus sentence scorers such as the neural LM and the HMM alignment score), over a cached
  :class:`fusion.rescoring.rescore.NbestTable`: no re-decoding, a trial costs milliseconds.

A study is a sampler with a name (``grid``, ``random``, ``tpe`` or ``rescore-...``);
its trials are lines of ``trials.jsonl``. A resumed run replays each study's logged
trials (Optuna studies get them as finished trials) and runs only what is missing.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from fusion.core.defaults import OOV
from fusion.core.metrics import CorpusScore, score_corpus
from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import WordScorer
from fusion.decoder.search import BeamSearchDecoder
from fusion.rescoring.rescore import NbestTable
from fusion.run.parallel import Backend, LocalBackend, WorkerPool

__all__ = ["RESCORE_RANGES", "FirstPassObjective", "Param", "TrialLog", "grid_points", "rescore_objective",
           "rescore_param", "run_study"]

SAMPLERS = ("grid", "random", "tpe")

#: parameters of a first-pass trial that set the search, not a scorer's weight
SEARCH_PARAMS = ("beam_size", "beam_threshold")


@dataclass(frozen=True)
class Param:
    """One tuned weight: its range (random and TPE sample in it) and its grid values."""

    name: str
    low: float
    high: float
    grid: tuple[float, ...]
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"parameter {self.name!r}: low must be below high")
        if not self.grid or any(not self.low <= g <= self.high for g in self.grid):
            raise ValueError(f"parameter {self.name!r}: grid values must lie in [{self.low}, {self.high}]")

    @classmethod
    def linspace(cls, name: str, low: float, high: float, num: int) -> Param:
        return cls(name, low, high, tuple(round(float(v), 6) for v in np.linspace(low, high, num)))

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.FloatDistribution(self.low, self.high)


def grid_points(params: Sequence[Param]) -> list[dict[str, float]]:
    """Every combination of the parameters' grid values."""
    return [dict(zip((p.name for p in params), values))
            for values in itertools.product(*(p.grid for p in params))]


# -- the trial log ---------------------------------------------------------------------
class TrialLog:
    """Trials as JSONL lines, appended and synced one at a time; a cut-off last line
    (a killed run) is ignored and overwritten on resume."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.trials: list[dict[str, Any]] = []
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as fh:
                for raw in fh:
                    try:
                        trial = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        break
                    if not raw.endswith(b"\n"):
                        break
                    self.trials.append(trial)
                    good += len(raw)
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

    def of(self, study: str) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["study"] == study]

    def append(self, trial: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(trial) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.trials.append(trial)


def best_trial(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    done = [t for t in trials if t.get("state") == "complete"]
    return dict(min(done, key=lambda t: (t["wer"], t["cer"]))) if done else None


# -- studies ----------------------------------------------------------------------------
Evaluate = Callable[[Sequence[dict[str, float]]], list[dict[str, Any]]]


def _key(params: Mapping[str, float]) -> tuple:
    return tuple(sorted((k, round(float(v), 6)) for k, v in params.items()))


def run_study(study: str, sampler: str, params: Sequence[Param], evaluate: Evaluate,
              log: TrialLog, *, stage: str, trials: int | None = None, seed: int = 0,
              startup_trials: int = 4, progress: Callable[[dict], None] | None = None
              ) -> dict[str, Any] | None:
    """Run (or finish) one study; returns its best logged trial.

    Args:
        study: the study's name in the log.
        sampler: ``grid`` (every grid point; ``trials`` ignored), ``random`` or ``tpe``.
        evaluate: scores a list of parameter sets: one dict per set with ``wer``, ``cer``
            and any detail; the grid is evaluated in batches, TPE one trial at a time.
        trials: trials of a random or TPE study.
        startup_trials: random trials before TPE starts modelling.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    done = log.of(study)

    def record(batch: Sequence[dict[str, float]]) -> list[dict[str, Any]]:
        out = []
        for p, result in zip(batch, evaluate(batch)):
            trial = {"study": study, "stage": stage, "number": len(log.of(study)),
                     "params": dict(p), **result}
            log.append(trial)
            out.append(trial)
            if progress:
                progress(trial)
        return out

    if sampler == "grid":
        seen = {_key(t["params"]) for t in done}
        todo = [p for p in grid_points(params) if _key(p) not in seen]
        record(todo)
        return best_trial(log.of(study))
    if trials is None or trials < 1:
        raise ValueError(f"study {study!r}: a {sampler} study needs trials >= 1")
    # each study draws its own numbers: a TPE study must not replay a random study's points
    study_seed = (seed * 1_000_003 + zlib.crc32(study.encode())) % 2**32
    opt_sampler = (optuna.samplers.RandomSampler(seed=study_seed) if sampler == "random" else
                   optuna.samplers.TPESampler(seed=study_seed, n_startup_trials=startup_trials,
                                              multivariate=True))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt = optuna.create_study(direction="minimize", sampler=opt_sampler)
    dists = {p.name: p.distribution() for p in params}
    for t in done:  # replay: the sampler learns from logged trials, they are not rerun
        if t.get("state") == "complete" and set(t["params"]) == set(dists):
            opt.add_trial(optuna.trial.create_trial(params=t["params"], distributions=dists,
                                                    value=t["wer"]))
    for _ in range(trials - len(done)):
        trial = opt.ask(dists)
        (result,) = record([trial.params])
        if result.get("state") == "complete":
            opt.tell(trial, result["wer"])
        else:
            opt.tell(trial, state=optuna.trial.TrialState.FAIL)
    return best_trial(log.of(study))


# -- the first pass ---------------------------------------------------------------------
@dataclass
class _DevSet:
    """What every trial decodes with: held by each worker of the pool for the whole run."""

    table: TokenTable
    scorers: tuple[WordScorer, ...]
    posteriors: tuple[Posteriors, ...]
    decoder: BeamSearchDecoder | None = None  # this worker's last trial's, never shipped

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "decoder": None}


def _decode_slice(dev: _DevSet, task: tuple[dict[str, float], SearchOptions, int, int]
                  ) -> list[tuple[str, str]]:
    weights, options, start, stop = task
    # made while the previous trial's decoder still holds the n-gram, which the compiled
    # search then shares instead of loading the file again
    dev.decoder = BeamSearchDecoder(dev.table, dev.scorers, weights, options)
    return [(p.utt_id, dev.decoder.decode(p).best.text) for p in dev.posteriors[start:stop]]


@dataclass
class FirstPassObjective:
    """Decodes cached dev posteriors with given first-pass weights and scores them.

    Args:
        table: the posteriors' token table.
        scorers: the word scorers (loaded once; workers get them once).
        posteriors: the dev set, in memory.
        refs: reference texts by utterance (those of ``posteriors`` are scored).
        options: search options; ``beam_size`` and ``beam_threshold`` parameters override
            them.
        fixed: weights not tuned (e.g. ``{"hotwords": 2.0}``).
        backend: where trials decode (:class:`fusion.run.parallel.LocalBackend`: this
            machine's processes; :class:`fusion.run.distributed.RayBackend`: Ray); its
            workers hold the dev set and the scorers for the whole run, a trial ships only
            its weights.
    """

    table: TokenTable
    scorers: Sequence[WordScorer]
    posteriors: Sequence[Posteriors]
    refs: Mapping[str, str]
    options: SearchOptions = SearchOptions()
    fixed: Mapping[str, float] = field(default_factory=dict)
    backend: Backend = LocalBackend()
    _pool: WorkerPool | None = field(default=None, init=False, repr=False)
    _stack: ExitStack | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> FirstPassObjective:
        self._stack = ExitStack()
        dev = _DevSet(self.table, tuple(self.scorers), tuple(self.posteriors))
        self._pool = self._stack.enter_context(self.backend.pool(dev))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()  # a worker's last decoder holds the n-gram
            self._stack = self._pool = None

    @property
    def audio_seconds(self) -> float:
        return float(sum(p.duration for p in self.posteriors))

    def split(self, params: Mapping[str, float]) -> tuple[dict[str, float], SearchOptions]:
        """The decoder weights and search options of one parameter set."""
        weights = {**self.fixed, **{k: float(v) for k, v in params.items() if k not in SEARCH_PARAMS}}
        search = dict(self.options.__dict__)
        if "beam_size" in params:
            search["beam_size"] = int(params["beam_size"])
            search["nbest"] = min(search["nbest"], search["beam_size"])
        if "beam_threshold" in params:
            search["beam_threshold"] = float(params["beam_threshold"])
        return weights, SearchOptions(**search)

    def decode(self, params: Mapping[str, float]) -> tuple[dict[str, str], float]:
        """``({utt_id: text}, wall seconds)`` of the dev set under ``params``."""
        if self._pool is None:
            raise RuntimeError("a FirstPassObjective decodes inside its with-block")
        weights, options = self.split(params)
        n = len(self.posteriors)
        start = time.perf_counter()
        step = max(1, math.ceil(n / (4 * self._pool.size)))
        tasks = [(weights, options, a, min(n, a + step)) for a in range(0, n, step)]
        pairs = [pair for part in self._pool.map(_decode_slice, tasks) for pair in part]
        return dict(pairs), time.perf_counter() - start

    def score(self, params: Mapping[str, float]) -> tuple[CorpusScore, float]:
        """The dev set's scores under ``params``, and the wall seconds of its decoding."""
        hyps, seconds = self.decode(params)
        return score_corpus({p.utt_id: self.refs[p.utt_id] for p in self.posteriors}, hyps), seconds

    def __call__(self, batch: Sequence[Mapping[str, float]]) -> list[dict[str, Any]]:
        out = []
        for params in batch:
            try:
                score, seconds = self.score(params)
            except (ValueError, RuntimeError) as exc:
                out.append({"state": "failed", "error": str(exc), "wer": math.inf, "cer": math.inf})
                continue
            out.append({"state": "complete", "wer": 100 * score.wer, "cer": 100 * score.cer,
                        "audio_seconds": self.audio_seconds, "decode_seconds": seconds})
        return out


#: search ranges of rescoring weights, by score name (others: 0 to 2); acoustic stays 1
RESCORE_RANGES = {"lm": (0.0, 2.0), "word_bonus": (-2.0, 6.0), "length": (-2.0, 6.0),
                  "nlm": (0.0, 2.0), "hmm": (0.0, 3.0), "hotwords": (0.0, 4.0), OOV: (0.0, 20.0)}


def rescore_param(name: str, num: int = 5) -> Param:
    """The tuned rescoring weight of score ``name``: its range and a ``num``-point grid."""
    low, high = RESCORE_RANGES.get(name, (0.0, 2.0))
    return Param.linspace(name, low, high, num)


def rescore_objective(table: NbestTable, fixed: Mapping[str, float]) -> Evaluate:
    """An ``evaluate`` over a cached N-best table; ``fixed`` weights complete each set."""
    def evaluate(batch: Sequence[Mapping[str, float]]) -> list[dict[str, Any]]:
        out = []
        for params in batch:
            start = time.perf_counter()
            wer, cer = table.error_rates({**fixed, **params})
            out.append({"state": "complete", "wer": wer, "cer": cer,
                        "decode_seconds": time.perf_counter() - start})
        return out
    return evaluate

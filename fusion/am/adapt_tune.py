"""Test-time adaptation settings chosen for one model on its dev sets (``fusion adapt-tune``).

How far and how fast SUTA (:mod:`fusion.am.adapt`) should move depends on the model: the
rate chosen for one embedded model cost the next one 0.16 CER on the seen voices. So a
checkpoint may carry its own settings in a file beside it, ``NAME.adapt.json``
(:func:`settings_path`), which ``--adapt`` reads (:func:`load_settings`) and
:func:`tune_adaptation` writes.

The rule, the one the embedded model's settings were chosen by: over rates x step counts
and two dev sets, a *guard* (``dev``: conditions the model knows, where adaptation may cost
only a little) and a *target* (the conditions adaptation is for, such as real speech), take
the setting with the lowest greedy CER on the target among those whose CER on the guard is
at most ``max_cost`` points above the plain model's. Without a target, the lowest CER on
``dev`` itself. Not adapting (0 steps) is always a candidate, so a model that adaptation
does not help gets 0 steps. Ties go to fewer steps, then the lower rate.

Each rate costs one pass over each set: the adapter keeps the posteriors after every step
(``keep_history``), so every step count up to ``max_steps`` is scored from that pass.
Utterances are adapted whole (``fusion posteriors`` adapts each chunk of audio longer than
its ``--chunk-seconds`` on its own); audio that cannot be read is recorded and skipped.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fusion.am.adapt import AdaptConfig, TestTimeAdapter
from fusion.am.features import SAMPLE_RATE, AudioError, LogMel, load_audio
from fusion.am.infer import min_samples
from fusion.am.model import CTCModel
from fusion.core.manifest import Utterance, atomic_write
from fusion.core.posteriors import Posteriors

__all__ = [
    "SETTINGS_VERSION",
    "AdaptedPasses",
    "StepScores",
    "adapt_each_step",
    "choose_setting",
    "load_settings",
    "model_settings",
    "score_steps",
    "settings_path",
    "tune_adaptation",
]

SETTINGS_VERSION = 1


def settings_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's own adaptation settings live: ``model.pt`` -> ``model.adapt.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.adapt.json")


def load_settings(checkpoint: str | Path) -> AdaptConfig | None:
    """The :class:`AdaptConfig` stored beside ``checkpoint``, or None when there is none.

    Raises:
        ValueError: naming the file, for bad JSON, a missing ``config`` table or bad settings.
    """
    path = settings_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{path}: no 'config' object (an adaptation settings file is "
                         "written by fusion adapt-tune)")
    try:
        return AdaptConfig.from_dict(data["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def model_settings(checkpoint: str | Path | None, **overrides: Any) -> AdaptConfig:
    """The settings to adapt ``checkpoint``'s model with: its own (:func:`load_settings`),
    else :class:`AdaptConfig`'s defaults, with ``overrides`` (``AdaptConfig`` fields) on top."""
    own = load_settings(checkpoint) if checkpoint is not None else None
    return replace(own or AdaptConfig(), **overrides)


@dataclass(frozen=True)
class StepScores:
    """Greedy scores of one manifest after each number of adaptation steps (index = steps)."""

    cer: tuple[float, ...]  # percent, from exact counts
    wer: tuple[float, ...]
    char_errors: tuple[int, ...]
    chars: int
    utterances: int
    adapted: int  # utterances long enough to be adapted (``min_seconds``)
    failed: tuple[tuple[str, str], ...]  # (utterance id, reason)


@dataclass(frozen=True)
class AdaptedPasses:
    """Every utterance's posteriors after each step count: ``by_step[k]`` lists the
    utterances read, in order, after ``k`` steps (``by_step[0]``: the plain model)."""

    by_step: tuple[tuple[Posteriors, ...], ...]
    adapted: int  # utterances long enough to be adapted (``min_seconds``)
    failed: tuple[tuple[str, str], ...]  # (utterance id, reason): audio that cannot be read
    audio_seconds: float


def adapt_each_step(model: CTCModel, utterances: Sequence[Utterance], config: AdaptConfig, *,
                    progress: bool = True, desc: str = "adapt") -> AdaptedPasses:
    """Adapt each utterance alone for ``config.steps`` steps, keeping its posteriors after
    every step count ``0..config.steps`` (one pass)."""
    adapter = TestTimeAdapter(model, config, keep_history=True)
    logmel = LogMel(model.config.n_mels)
    shortest = min_samples(model)
    by_step: list[list[Posteriors]] = [[] for _ in range(config.steps + 1)]
    failed: list[tuple[str, str]] = []
    adapted, audio = 0, 0.0
    for u in tqdm(utterances, desc=desc, disable=not progress, mininterval=2):
        try:
            if u.audio is None:
                raise AudioError(u.id, "manifest line has no audio path")
            wav = load_audio(u.audio, utt_id=u.id)
        except AudioError as exc:
            failed.append((u.id, str(exc)))
            continue
        audio += len(wav) / SAMPLE_RATE
        if len(wav) < shortest:  # as fusion posteriors does: pad with silence
            wav = np.pad(wav, (0, shortest - len(wav)))
        result = adapter(logmel(torch.from_numpy(wav)))
        adapted += result.adapted
        history = result.history + (result.log_probs,) * (config.steps + 1 - len(result.history))
        for k, log_probs in enumerate(history):  # one left alone is the same at every k
            by_step[k].append(Posteriors.from_array(
                u.id, log_probs.numpy(), kind="log_probs", frame_shift=model.frame_shift,
                token_table=model.token_table))
    return AdaptedPasses(tuple(map(tuple, by_step)), adapted, tuple(failed), audio)


def score_steps(model: CTCModel, utterances: Sequence[Utterance], config: AdaptConfig, *,
                progress: bool = True, desc: str = "adapt") -> StepScores:
    """Greedy scores of ``utterances`` after each step count ``0..config.steps``
    (:func:`adapt_each_step`); the utterances whose audio cannot be read are left out."""
    from fusion.core.metrics import score_corpus
    from fusion.decoder.greedy import greedy_decode

    passes = adapt_each_step(model, utterances, config, progress=progress, desc=desc)
    if not passes.by_step[0]:
        raise ValueError(f"{desc}: none of the {len(utterances)} utterances could be read"
                         + (f" (first: {passes.failed[0][1]})" if passes.failed else ""))
    read = {p.utt_id for p in passes.by_step[0]}
    refs = {u.id: u.text or "" for u in utterances if u.id in read}
    scores = [score_corpus(refs, {r.utt_id: r.best.text
                                  for r in greedy_decode(list(posts), model.token_table)})
              for posts in passes.by_step]
    return StepScores(
        cer=tuple(100 * s.cer for s in scores), wer=tuple(100 * s.wer for s in scores),
        char_errors=tuple(s.chars.errors for s in scores), chars=scores[0].chars.ref_len,
        utterances=len(refs), adapted=passes.adapted, failed=passes.failed)


def choose_setting(grid: Sequence[dict[str, Any]], *, max_cost: float,
                   has_target: bool) -> dict[str, Any]:
    """The row of ``grid`` the rule picks (see the module). Each row has ``lr``, ``steps``
    and ``dev_cer`` (and ``target_cer`` with a target); the ``steps == 0`` row is the
    plain model and must be there."""
    plain = [r for r in grid if r["steps"] == 0]
    if not plain:
        raise ValueError("the grid needs the plain model's row (steps 0)")
    limit = plain[0]["dev_cer"] + max_cost
    if has_target:
        allowed = [r for r in grid if r["steps"] == 0 or r["dev_cer"] <= limit + 1e-9]
        return min(allowed, key=lambda r: (r["target_cer"], r["steps"], r["lr"]))
    return min(grid, key=lambda r: (r["dev_cer"], r["steps"], r["lr"]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tune_adaptation(model: CTCModel, dev: Sequence[Utterance], target: Sequence[Utterance] | None,
                    *, lrs: Sequence[float], max_steps: int, max_cost: float = 0.1,
                    base: AdaptConfig | None = None, progress: bool = True,
                    names: dict[str, str] | None = None, checkpoint: Path | None = None,
                    out: Path | None = None) -> dict[str, Any]:
    """Score every rate in ``lrs`` at 0..``max_steps`` steps on ``dev`` (and ``target``),
    pick a setting by the rule and return the record (written to ``out`` when given):
    ``config`` (the chosen :class:`AdaptConfig`, ``base``'s other settings), ``grid``,
    the sets, the rule and, with ``checkpoint``, the model file's sha256."""
    if not lrs:
        raise ValueError("give at least one rate")
    if any(not lr > 0 for lr in lrs):
        raise ValueError(f"rates must be > 0, got {list(lrs)}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a whole number >= 1, got {max_steps!r}")
    if not max_cost >= 0:
        raise ValueError(f"max_cost must be >= 0, got {max_cost!r}")
    base = base or AdaptConfig()
    names = names or {}
    sets = {"dev": dev, **({"target": target} if target is not None else {})}
    for name, utts in sets.items():
        if not utts:
            raise ValueError(f"{names.get(name, name)}: no utterances")
        missing = [u.id for u in utts if u.text is None]
        if missing:
            raise ValueError(f"{names.get(name, name)}: utterance {missing[0]!r} has no text "
                             f"(and {len(missing) - 1} more); tuning needs transcripts")
    rates = sorted(set(lrs))
    scored: dict[tuple[str, float], StepScores] = {}
    for lr in rates:
        config = replace(base, steps=max_steps, lr=lr)
        for name, utts in sets.items():
            scored[name, lr] = score_steps(model, utts, config, progress=progress,
                                           desc=f"{name} lr {lr:g}")
    first = rates[0]  # step 0, the plain model, is the same in every rate's pass
    grid: list[dict[str, Any]] = [{"lr": 0.0, "steps": 0, **{
        f"{name}_cer": scored[name, first].cer[0] for name in sets}}]
    for lr in rates:
        for k in range(1, max_steps + 1):
            grid.append({"lr": lr, "steps": k,
                         **{f"{name}_cer": scored[name, lr].cer[k] for name in sets}})
    best = choose_setting(grid, max_cost=max_cost, has_target=target is not None)
    chosen = replace(base, steps=best["steps"], lr=best["lr"] or base.lr)
    shown = [{k: (round(v, 4) if k.endswith("_cer") else v) for k, v in r.items()} for r in grid]
    record: dict[str, Any] = {
        "version": SETTINGS_VERSION,
        "config": chosen.to_dict(),
        "chosen": shown[grid.index(best)],
        "rule": ("lowest target CER with dev CER at most max_cost above the plain model's"
                 if target is not None else "lowest dev CER"),
        "max_cost": max_cost,
        "sets": {name: {"manifest": names.get(name), "utterances": scored[name, first].utterances,
                        "adapted": scored[name, first].adapted, "chars": scored[name, first].chars,
                        "failed": [list(f) for f in scored[name, first].failed]}
                 for name in sets},
        "grid": shown,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if checkpoint is not None:
        record["model"] = {"path": str(checkpoint), "sha256": _sha256(Path(checkpoint))}
    if out is not None:
        with atomic_write(out) as fh:
            fh.write(json.dumps(record, indent=1) + "\n")
    return record

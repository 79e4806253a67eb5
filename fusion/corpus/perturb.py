"""Augment a real-speech manifest: speed-perturbed copies in simulated rooms and noise.

:func:`augment_manifest` writes, for every utterance of a manifest, ``copies`` augmented
copies at each speed factor of :attr:`PerturbConfig.speeds` (Kaldi's 0.9 / 1.1 by
default), each placed in a simulated room with probability ``p_room`` and mixed with
noise with probability ``p_noise`` (white, pink, brown, or babble made of other speakers'
utterances of the same manifest). The original is never copied as it is: a copy at speed
1.0 always gets a room or noise. The operations are :mod:`fusion.corpus.augment`'s,
recorded in each row's ``augment`` field as the corpus builder records them.

Layout of ``out_dir``::

    audio/<xx>/<id>.wav   16 kHz mono 16-bit; <xx>: two hex digits of a hash of the id
    <stem>.jsonl          the manifest (``<stem>`` of the input): new id
                          ``<id>~sp0.9-rir-babble``, the input's text, speaker and other
                          fields, ``orig_id``, the new duration, ``augment``
    problems.jsonl        utterances whose audio could not be used (skipped)
    augment.json          the settings (seed, config, input), checked when resuming
    rooms.npz             the room bank's impulse responses (simulated again if stale)

Rooms. The image-source method costs about half a second a room, so ``rooms`` rooms are
simulated once per seed (:func:`simulate_room_bank`; kept only if the RT60 measured on the
response is in range too) and every copy picks one of them.

Determinism and resuming. Every choice for a copy comes from a generator seeded by
``(seed, utterance id, speed, copy)``, and the audio from a torch generator seeded from
it: the same seed and manifest give the same files. Audio is written atomically; a rerun
with the same settings keeps every file already there and writes only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fusion.am.features import SAMPLE_RATE, AudioError, load_audio
from fusion.core.manifest import Utterance, atomic_write, read_manifest, write_jsonl
from fusion.corpus.augment import (NOISE_KINDS, RoomConfig, apply_augmentation, draw_room, measured_rt60,
                                   room_rir)
from fusion.corpus.synth import audio_ok, write_audio
from fusion.run.parallel import exit_with_parent

__all__ = [
    "DEFAULT_JOBS",
    "FORMAT_VERSION",
    "CopyPlan",
    "PerturbConfig",
    "PerturbError",
    "PerturbSummary",
    "RoomBank",
    "UtteranceTask",
    "augment_manifest",
    "plan_copies",
    "run_task",
    "simulate_room_bank",
]

DEFAULT_JOBS = 2
#: Raised whenever the same settings would make other audio (an output folder made by
#: another version is then refused instead of being finished with mixed copies).
FORMAT_VERSION = 1
PROBLEMS_FILE = "problems.jsonl"
SETTINGS_FILE = "augment.json"
ROOMS_FILE = "rooms.npz"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._+~-]+$")


class PerturbError(ValueError):
    """Settings or folders that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class PerturbConfig:
    """The augmentation recipe; every default of ``fusion data augment`` is here.

    Attributes:
        speeds: speed factors; each gives ``copies`` copies of every utterance.
        copies: copies per speed factor.
        p_room: probability that a copy is placed in a simulated room.
        p_noise: probability that noise is added to a copy (after the room).
        noise_kinds: kinds drawn uniformly (``white``, ``pink``, ``brown``, ``babble``).
        snr_db: SNR range of white, pink and brown noise.
        babble_snr_db: SNR range of babble (Kaldi's MUSAN recipe uses 13-20 dB).
        babble_talkers: how many other speakers' utterances a babble mixes.
        rooms: size of the room bank drawn per seed.
        room: the rooms drawn (:class:`fusion.corpus.augment.RoomConfig`).
    """

    speeds: tuple[float, ...] = (0.9, 1.1)
    copies: int = 1
    p_room: float = 0.5
    p_noise: float = 0.5
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    snr_db: tuple[float, float] = (5.0, 20.0)
    babble_snr_db: tuple[float, float] = (13.0, 20.0)
    babble_talkers: tuple[int, int] = (3, 6)
    rooms: int = 200
    room: RoomConfig = field(default_factory=RoomConfig)

    def __post_init__(self) -> None:
        if not self.speeds or any(not 0.5 <= s <= 2.0 for s in self.speeds):
            raise PerturbError(f"speeds must be one or more factors in [0.5, 2], got {self.speeds}")
        if len(set(self.speeds)) != len(self.speeds):
            raise PerturbError(f"speeds must differ, got {self.speeds}")
        if self.copies < 1 or self.rooms < 1:
            raise PerturbError(f"copies and rooms must be >= 1, got {self.copies}, {self.rooms}")
        for name in ("p_room", "p_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PerturbError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.noise_kinds or set(self.noise_kinds) - set(NOISE_KINDS):
            raise PerturbError(f"noise_kinds must be among {NOISE_KINDS}, got {self.noise_kinds}")
        for name in ("snr_db", "babble_snr_db", "babble_talkers"):
            low, high = getattr(self, name)
            if low > high:
                raise PerturbError(f"{name}: low {low} > high {high}")
        if self.babble_talkers[0] < 1:
            raise PerturbError(f"babble_talkers must be >= 1, got {self.babble_talkers}")
        if 1.0 in self.speeds and self.p_room == 0 and self.p_noise == 0:
            raise PerturbError("speed 1.0 with p_room = p_noise = 0 would copy the originals")


@dataclass(frozen=True)
class CopyPlan:
    """One augmented copy: its id, audio path (relative to the output folder), the
    operations, the seed of their random draws, and the babble talkers' (id, audio)."""

    id: str
    audio: str
    ops: tuple[dict[str, Any], ...]
    seed: int
    babble: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class UtteranceTask:
    """An input utterance and the copies to make of it (its audio is read once)."""

    utterance: Utterance
    copies: tuple[CopyPlan, ...]


@dataclass(frozen=True)
class PerturbSummary:
    """What a run made: copies written now or kept from an earlier run, and problems."""

    out_dir: Path
    manifest: Path
    utterances: int
    copies: int
    written: int
    reused: int
    hours_in: float
    hours_out: float
    problems: tuple[dict[str, Any], ...]
    problems_path: Path
    seconds: float


def _hash(*parts: object) -> str:
    return hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()


def _room_key(op: Mapping[str, Any]) -> str:
    return json.dumps(op, sort_keys=True)


class RoomBank:
    """Rooms drawn once per seed, with their impulse responses; ``rir`` is the
    ``rirs`` callback of :func:`fusion.corpus.augment.apply_augmentation`."""

    def __init__(self, ops: Sequence[dict[str, Any]], rirs: Sequence[torch.Tensor]) -> None:
        if len(ops) != len(rirs):
            raise ValueError(f"RoomBank: {len(ops)} rooms but {len(rirs)} impulse responses")
        self.ops = tuple(ops)
        self._rirs = {_room_key(op): rir for op, rir in zip(ops, rirs)}

    def rir(self, op: Mapping[str, Any], rate: int) -> torch.Tensor:
        """The impulse response of one of the bank's rooms (others are simulated)."""
        found = self._rirs.get(_room_key(op)) if rate == SAMPLE_RATE else None
        return found if found is not None else room_rir(op, rate)

    def save(self, path: Path, key: Mapping[str, Any]) -> None:
        """Write the bank to ``path`` (``.npz``) atomically, with the settings ``key`` that
        made it."""
        rirs = [self._rirs[_room_key(op)].numpy() for op in self.ops]
        offsets = np.cumsum([0] + [r.size for r in rirs])
        with atomic_write(path, "wb") as fh:
            np.savez(fh, key=np.array(json.dumps(key, sort_keys=True)),
                     ops=np.array(json.dumps(self.ops)), rirs=np.concatenate(rirs),
                     offsets=offsets)  # fmt: skip

    @classmethod
    def load(cls, path: Path, key: Mapping[str, Any]) -> RoomBank | None:
        """The bank saved at ``path`` if the settings ``key`` made it, else ``None``."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != json.dumps(key, sort_keys=True):
                    return None
                ops = json.loads(str(data["ops"]))
                flat, offsets = data["rirs"], data["offsets"]
        except (OSError, ValueError, KeyError):
            return None
        rirs = [torch.from_numpy(flat[a:b].copy()) for a, b in zip(offsets[:-1], offsets[1:])]
        return cls(ops, rirs)


def _simulate(op: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """A room's impulse response, and the room with its measured RT60 added."""
    rir = room_rir(op, SAMPLE_RATE)
    return {**op, "rt60_measured": round(measured_rt60(rir, SAMPLE_RATE), 3)}, rir


def simulate_room_bank(
    seed: int, config: PerturbConfig, *, jobs: int = 1, progress: bool = False
) -> RoomBank:
    """Draw and simulate the ``config.rooms`` rooms of a seed.

    Sabine's formula is a design value: the image-source response of a flat or long room
    can decay more slowly or quickly. A room is kept only if the RT60 measured on its
    response (T30) also lies in ``config.room.rt60``; candidates come in a seeded order
    and the first that pass are kept, so the bank does not depend on ``jobs``.

    Raises:
        PerturbError: fewer than one candidate in 20 passes.
    """
    rng = random.Random(_hash(seed, "rooms"))
    low, high = config.room.rt60
    kept: list[tuple[dict[str, Any], torch.Tensor]] = []
    drawn = 0
    bar = tqdm(total=config.rooms, unit="room", desc="rooms", disable=not progress)
    with bar, (_one_thread() if jobs == 1 else _pool(jobs)) as pool:
        while len(kept) < config.rooms:
            if drawn >= 20 * config.rooms:
                raise PerturbError(f"only {len(kept)} of {drawn} simulated rooms have a measured "
                                   f"RT60 in [{low}, {high}] s; widen the RT60 range")  # fmt: skip
            need = config.rooms - len(kept)
            batch = [draw_room(rng, config.room) for _ in range(need + need // 4 + 2 * jobs)]
            drawn += len(batch)
            simulated = map(_simulate, batch) if pool is None else pool.map(_simulate, batch)
            for op, rir in simulated:
                if len(kept) < config.rooms and low <= op["rt60_measured"] <= high:
                    kept.append((op, rir))
                    bar.update()
    return RoomBank([op for op, _ in kept], [rir for _, rir in kept])


def _copy_tag(factor: float, ops: Sequence[dict[str, Any]], copy: int, copies: int) -> str:
    parts = [f"sp{factor:g}"]
    for op in ops:
        if op["type"] == "room":
            parts.append("rir")
        elif op["type"] == "noise":
            parts.append(op["kind"])
    if copies > 1:
        parts.append(f"c{copy}")
    return "-".join(parts)


def _audio_name(utt_id: str) -> str:
    digest = _hash(utt_id)
    name = utt_id if _SAFE_ID.match(utt_id) else f"{re.sub(r'[^A-Za-z0-9._+~-]', '_', utt_id)}.{digest[:8]}"
    return f"audio/{digest[:2]}/{name}.wav"


def _speaker(utt: Utterance) -> object:
    return utt.extra.get("speaker", utt.id)


def _babble_talkers(
    rng: random.Random, utt: Utterance, pool: Sequence[Utterance], count: int
) -> list[Utterance]:
    """Up to ``count`` distinct utterances of other speakers (of other utterances if the
    manifest names no speakers), drawn by rejection."""
    chosen: dict[str, Utterance] = {}
    for _ in range(20 * count):
        if len(chosen) == count:
            break
        other = pool[rng.randrange(len(pool))]
        if other.id != utt.id and _speaker(other) != _speaker(utt) and other.audio is not None:
            chosen[other.id] = other
    return list(chosen.values())


def _noise_op(
    rng: random.Random, utt: Utterance, pool: Sequence[Utterance], config: PerturbConfig
) -> tuple[dict[str, Any], list[Utterance]]:
    kind = rng.choice(config.noise_kinds)
    if kind == "babble":
        talkers = _babble_talkers(rng, utt, pool, rng.randint(*config.babble_talkers))
        if talkers:
            op = {"type": "noise", "kind": "babble",
                  "snr_db": round(rng.uniform(*config.babble_snr_db), 1),
                  "talkers": len(talkers), "talker_ids": [t.id for t in talkers]}  # fmt: skip
            return op, talkers
        kind = "pink"  # nobody else speaks in this manifest
    return {"type": "noise", "kind": kind, "snr_db": round(rng.uniform(*config.snr_db), 1)}, []


def plan_copies(
    utt: Utterance,
    *,
    seed: int,
    config: PerturbConfig,
    rooms: Sequence[dict[str, Any]],
    pool: Sequence[Utterance],
) -> UtteranceTask:
    """Decide the copies of one utterance (nothing is read): per speed and copy, a
    generator seeded by ``(seed, id, speed, copy)`` draws room, noise and talkers.

    ``rooms`` is the room bank; ``pool`` the manifest (babble talkers come from it).
    """
    plans = []
    for factor in config.speeds:
        for copy in range(config.copies):
            rng = random.Random(_hash(seed, utt.id, repr(float(factor)), copy))
            ops: list[dict[str, Any]] = []
            if factor != 1.0:
                ops.append({"type": "speed", "factor": factor})
            room = rng.random() < config.p_room
            noise = rng.random() < config.p_noise
            if not (ops or room or noise):  # never the original again
                room = config.p_noise == 0 or (config.p_room > 0 and rng.random() < 0.5)
                noise = not room
            if room:
                ops.append(dict(rooms[rng.randrange(len(rooms))]))
            talkers: list[Utterance] = []
            if noise:
                op, talkers = _noise_op(rng, utt, pool, config)
                ops.append(op)
            new_id = f"{utt.id}~{_copy_tag(factor, ops, copy, config.copies)}"
            plans.append(CopyPlan(
                id=new_id, audio=_audio_name(new_id), ops=tuple(ops), seed=rng.getrandbits(63),
                babble=tuple((t.id, str(t.audio)) for t in talkers),
            ))  # fmt: skip
    return UtteranceTask(utterance=utt, copies=tuple(plans))


def _row(utt: Utterance, plan: CopyPlan, duration: float) -> dict[str, Any]:
    row: dict[str, Any] = {"id": plan.id, "audio": plan.audio}
    if utt.text is not None:
        row["text"] = utt.text
    row["duration"] = round(duration, 3)
    row.update({k: v for k, v in utt.extra.items() if k != "augment"})
    row["orig_id"] = utt.id
    row["augment"] = [*utt.extra.get("augment", []), *plan.ops]
    return row


def _load_talkers(plan: CopyPlan) -> list[torch.Tensor]:
    """The babble talkers' audio.

    Raises:
        AudioError: a talker's audio cannot be read (the copy is then skipped, so that
            every row's ``augment`` says exactly what was mixed).
    """
    talkers = []
    for talker_id, path in plan.babble:
        try:
            talkers.append(torch.from_numpy(load_audio(path, utt_id=talker_id)))
        except AudioError as exc:
            raise AudioError(plan.id, f"babble talker {talker_id!r}: {exc.reason}", path) from None
    return talkers


def run_task(task: UtteranceTask, out_dir: Path, bank: RoomBank | None) -> dict[str, Any]:
    """Make the missing copies of one utterance; never raises.

    Returns ``{"rows": [...], "written": n, "reused": n, "problems": [...]}``; a
    problem is ``{"id", "audio", "error"}`` (the input utterance, or one copy).
    """
    utt = task.utterance
    out: dict[str, Any] = {"rows": [], "written": 0, "reused": 0, "problems": []}
    missing = []
    for plan in task.copies:
        duration = audio_ok(out_dir / plan.audio)
        if duration is None:
            missing.append(plan)
        else:
            out["rows"].append(_row(utt, plan, duration))
            out["reused"] += 1
    if not missing:
        return out
    try:
        if utt.audio is None:
            raise AudioError(utt.id, "no 'audio' in the manifest")
        samples = torch.from_numpy(load_audio(utt.audio, utt_id=utt.id))
    except Exception as exc:  # noqa: BLE001 (recorded per utterance; the run goes on)
        out["problems"].append(_problem(utt.id, utt.audio, exc))
        return out
    rirs = bank.rir if bank is not None else room_rir
    for plan in missing:
        try:
            audio = apply_augmentation(samples, SAMPLE_RATE, plan.ops, seed=plan.seed,
                                       babble=_load_talkers(plan), rirs=rirs)  # fmt: skip
            write_audio(out_dir / plan.audio, audio, SAMPLE_RATE)
        except Exception as exc:  # noqa: BLE001
            out["problems"].append(_problem(plan.id, utt.audio, exc))
            continue
        out["rows"].append(_row(utt, plan, audio.numel() / SAMPLE_RATE))
        out["written"] += 1
    order = {plan.id: i for i, plan in enumerate(task.copies)}
    out["rows"].sort(key=lambda row: order[row["id"]])
    return out


def _problem(utt_id: str, audio: str | None, exc: Exception) -> dict[str, Any]:
    message = str(exc) if isinstance(exc, AudioError) else (
        f"utterance {utt_id!r}: {type(exc).__name__}: {exc}")  # fmt: skip
    return {"id": utt_id, "audio": audio, "error": message}


_WORKER_BANK: RoomBank | None = None


def _init_worker(parent: int, bank: RoomBank | None) -> None:
    global _WORKER_BANK
    exit_with_parent(parent)  # a killed run leaves no workers behind
    torch.set_num_threads(1)
    _WORKER_BANK = bank


def _run_in_worker(task: UtteranceTask, out_dir: Path) -> dict[str, Any]:
    return run_task(task, out_dir, _WORKER_BANK)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread in this process, like a worker (the same bits, one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pool(jobs: int, bank: RoomBank | None = None) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                               initargs=(os.getpid(), bank))  # fmt: skip


def _room_bank(out: Path, seed: int, config: PerturbConfig, jobs: int, progress: bool) -> RoomBank:
    """The seed's room bank: from ``rooms.npz`` when these settings made it, else
    simulated (in ``jobs`` processes) and saved there."""
    key = {"seed": seed, "rooms": config.rooms, "room": asdict(config.room)}
    cached = RoomBank.load(out / ROOMS_FILE, key)
    if cached is not None:
        return cached
    bank = simulate_room_bank(seed, config, jobs=jobs, progress=progress)
    bank.save(out / ROOMS_FILE, key)
    return bank


def _check_out_dir(manifest: Path, out: Path) -> None:
    if out.resolve() == manifest.resolve().parent:
        raise PerturbError(
            f"--out {out} is the folder of {manifest}: its manifest would overwrite the input; "
            "choose another folder"
        )


def _check_copies(manifest: Path, out: Path, tasks: Sequence[UtteranceTask]) -> None:
    """Refuse copies that would overwrite an input's audio, or share an id."""
    inputs = {str(Path(t.utterance.audio).resolve()) for t in tasks if t.utterance.audio}
    ids: set[str] = set()
    for task in tasks:
        for plan in task.copies:
            if str((out / plan.audio).resolve()) in inputs:
                raise PerturbError(f"copy {plan.id!r} would overwrite the input audio "
                                   f"{out / plan.audio}; choose another --out")  # fmt: skip
            if plan.id in ids:
                raise PerturbError(f"{manifest}: two copies would have the id {plan.id!r} (an "
                                   "input id that ends like a copy's, '~sp...')")  # fmt: skip
            ids.add(plan.id)


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse a folder made with other settings; record these settings otherwise."""
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError, AttributeError) as exc:
            raise PerturbError(f"{path}: unreadable ({exc}); remove it or choose another --out") from None
        if earlier != settings:
            changed = sorted(k for k in settings if (earlier or {}).get(k) != settings[k])
            raise PerturbError(
                f"{out} holds copies made with other settings (changed: {', '.join(changed)}); "
                "rerun with the same settings to finish it, or choose another --out"
            )
    with atomic_write(path) as fh:
        json.dump({"settings": settings}, fh, indent=2)
        fh.write("\n")


def augment_manifest(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    config: PerturbConfig = PerturbConfig(),
    seed: int = 0,
    jobs: int = DEFAULT_JOBS,
    progress: bool = True,
) -> PerturbSummary:
    """Write augmented copies of every utterance of ``manifest`` into ``out_dir`` (see the
    module's docstring), or finish an interrupted run with the same settings.

    Raises:
        PerturbError: bad settings, ``out_dir`` is the manifest's folder, or ``out_dir``
            was made with other settings.
        fusion.core.manifest.ManifestError: the manifest cannot be read.
    """
    if jobs < 1:
        raise PerturbError(f"jobs must be >= 1, got {jobs}")
    started = time.monotonic()
    manifest, out = Path(manifest), Path(out_dir)
    utterances = read_manifest(manifest)
    if not utterances:
        raise PerturbError(f"{manifest}: no utterances")
    settings = {"version": FORMAT_VERSION, "manifest": str(manifest.resolve()), "seed": seed,
                "config": json.loads(json.dumps(asdict(config)))}  # fmt: skip
    _check_out_dir(manifest, out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    bank = _room_bank(out, seed, config, jobs, progress) if config.p_room > 0 else None
    rooms = bank.ops if bank is not None else ()
    tasks = [plan_copies(u, seed=seed, config=config, rooms=rooms, pool=utterances)
             for u in utterances]  # fmt: skip
    _check_copies(manifest, out, tasks)

    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    written = reused = 0
    bar = tqdm(total=len(tasks), unit="utt", desc="augment", disable=not progress,
               mininterval=0.5 if sys.stderr.isatty() else 30)  # fmt: skip
    hours = 0.0
    with bar:
        for result in _run_all(tasks, out, bank, jobs):
            rows.extend(result["rows"])
            problems.extend(result["problems"])
            written += result["written"]
            reused += result["reused"]
            hours += sum(r["duration"] for r in result["rows"]) / 3600
            bar.set_postfix(hours=f"{hours:.2f}", problems=len(problems), refresh=False)
            bar.update()
    out_manifest = out / f"{manifest.stem}.jsonl"
    write_jsonl(out_manifest, rows)
    write_jsonl(out / PROBLEMS_FILE, problems)
    hours_in = sum((u.duration or 0.0) for u in utterances) / 3600
    return PerturbSummary(
        out_dir=out, manifest=out_manifest, utterances=len(utterances), copies=len(rows),
        written=written, reused=reused, hours_in=round(hours_in, 3), hours_out=round(hours, 3),
        problems=tuple(problems), problems_path=out / PROBLEMS_FILE,
        seconds=round(time.monotonic() - started, 1),
    )  # fmt: skip


def _run_all(
    tasks: Sequence[UtteranceTask], out: Path, bank: RoomBank | None, jobs: int
) -> Iterator[dict[str, Any]]:
    if jobs == 1:
        with _one_thread():
            yield from (run_task(t, out, bank) for t in tasks)
        return
    with _pool(jobs, bank) as pool:
        yield from pool.map(_run_in_worker, tasks, [out] * len(tasks), chunksize=4)

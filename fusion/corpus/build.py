"""Build the synthetic speech corpus: deterministic splits, parallel, resumable.

Layout of ``out_dir``::

    audio/<split>/<id>.flac      16 kHz mono 16-bit
    <split>.jsonl                manifests: id, audio, text, duration, voice, engine,
                                 source, rate, pitch, augment
    text/train.txt               the training sentences, one a line
    text/heldout.txt             every dev/test sentence (the whole held-out pool)
    errors.jsonl                 utterances that failed in the last run (not in manifests)
    build.json                   the options and per-split totals

Splits. A sentence's split depends only on a hash of its text (:func:`sentence_split`),
so dev and test sentences never reach ``train`` whatever the seed, size or sources. Each
split takes sentences in a seeded hash order until its estimated duration reaches the
target (so a larger ``hours`` extends the same list). ``test-unseen-voices`` speaks the
``test`` sentences with held-out voices only; no held-out voice speaks in other splits.

Determinism and resuming. Voice, prosody and augmentation of an utterance are drawn from a
random generator seeded by (seed, split, sentence); the utterance id is a hash of all of
them, so an audio file that exists and reads back is the audio this build would make and
is not synthesised again. Audio files and manifests are written atomically: after a kill
at any moment, a rerun finishes the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from fusion.core.manifest import atomic_write, write_jsonl
from fusion.corpus.augment import AugmentConfig, apply_augmentation, plan_augmentation
from fusion.corpus.sources import (ALL_SOURCES, SOURCES, LeakageFilter, SentenceFilter, asrfuse_home,
                                   corpus_sentences, load_forbidden_sentences)
from fusion.corpus.synth import SAMPLE_RATE, SynthesisError, audio_ok, synthesize, write_audio
from fusion.corpus.voices import (HELDOUT_VOICES, Prosody, Voice, available_voices, catalogue, draw_prosody,
                                  is_heldout, select_voices, train_only_catalogue)

if TYPE_CHECKING:
    import torch

__all__ = [
    "SPLITS",
    "BuildSummary",
    "CorpusOptions",
    "Task",
    "build_corpus",
    "default_corpus_dir",
    "estimate_duration",
    "plan_corpus",
    "run_task",
    "sentence_split",
]

SPLITS: tuple[str, ...] = ("train", "dev", "test", "test-unseen-voices")
_BUILD_ORDER = ("dev", "test", "test-unseen-voices", "train")  # small splits first
# Fast engines speak the babble: other utterances mixed as noise.
_BABBLE_ENGINES = ("espeak-ng", "flite")


def default_corpus_dir() -> Path:
    """``$ASRFUSE_HOME/corpus`` (``~/.cache/asrfuse/corpus`` by default)."""
    return asrfuse_home() / "corpus"


@dataclass(frozen=True)
class CorpusOptions:
    """Everything but the output folder, size, parallelism and seed.

    Attributes:
        dev_minutes, test_minutes, unseen_minutes: estimated audio per evaluation split.
        heldout_fraction: share of all sentences held out of training (half dev, half
            test), chosen by a hash of the text.
        sources: text sources (see :mod:`fusion.corpus.sources`).
        voices: fnmatch patterns over the core voices' names to use (held-out ones
            included; :func:`fusion.corpus.voices.catalogue`).
        train_voices: fnmatch patterns over the names of the voices that speak ``train``,
            the core ones and the train-only ones
            (:func:`fusion.corpus.voices.train_only_catalogue`: DECtalk's and RHVoice's);
            ``None``: the core voices of ``voices``. Dev, test and test-unseen-voices never
            depend on it.
        heldout_voices: fnmatch patterns of voices used only for ``test-unseen-voices``.
        augment: augmentation of training utterances.
        sentence_filter: sentence length bounds.
        real_speech: manifest whose sentences must not be spoken (default: the project's
            real-speech set, see :func:`fusion.corpus.sources.find_real_speech_manifest`).
        audio_format: ``flac`` or ``wav``.
    """

    dev_minutes: float = 18.0
    test_minutes: float = 18.0
    unseen_minutes: float = 18.0
    heldout_fraction: float = 0.04
    sources: tuple[str, ...] = SOURCES
    voices: tuple[str, ...] = ("*",)
    train_voices: tuple[str, ...] | None = None
    heldout_voices: tuple[str, ...] = HELDOUT_VOICES
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sentence_filter: SentenceFilter = field(default_factory=SentenceFilter)
    real_speech: Path | None = None
    audio_format: str = "flac"

    def __post_init__(self) -> None:
        for name in ("dev_minutes", "test_minutes", "unseen_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"CorpusOptions.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(
                f"CorpusOptions.heldout_fraction must be in (0, 1), got {self.heldout_fraction}"
            )
        if unknown := set(self.sources) - set(ALL_SOURCES):
            raise ValueError(
                f"CorpusOptions.sources: unknown {sorted(unknown)}; known {ALL_SOURCES}"
            )
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(
                f"CorpusOptions.audio_format must be flac or wav, got {self.audio_format!r}"
            )


@dataclass(frozen=True)
class Task:
    """One utterance to make: everything a worker needs, nothing it must look up."""

    id: str
    split: str
    text: str
    source: str
    voice: Voice
    prosody: Prosody
    augment: tuple[dict[str, Any], ...]
    babble: tuple[tuple[str, Voice, Prosody], ...]
    seed: int
    audio: str  # relative to the corpus folder

    def row(self, duration: float) -> dict[str, Any]:
        """The manifest line of this utterance."""
        return {
            "id": self.id,
            "audio": self.audio,
            "text": self.text,
            "duration": round(duration, 3),
            "voice": self.voice.name,
            "engine": self.voice.engine,
            "source": self.source,
            "rate": self.prosody.rate,
            "pitch": self.prosody.pitch,
            "augment": list(self.augment),
        }


@dataclass(frozen=True)
class BuildSummary:
    """What a build made: utterances and hours per split, and the failures."""

    out_dir: Path
    utterances: dict[str, int]
    hours: dict[str, float]
    errors: int
    synthesised: int
    reused: int
    seconds: float


def _hash(*parts: object) -> str:
    return hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()


def sentence_split(sentence: str, heldout_fraction: float = 0.04) -> str:
    """``train``, ``dev`` or ``test`` for a sentence, from a hash of its text only."""
    u = int(_hash("split", sentence)[:13], 16) / 16**13
    if u < heldout_fraction / 2:
        return "dev"
    return "test" if u < heldout_fraction else "train"


def estimate_duration(sentence: str) -> float:
    """Expected seconds of speech for a normalised sentence (about 21 characters a second
    at an average voice's rate, plus the kept silences)."""
    return 0.45 + 0.048 * len(sentence)


def _take(
    pool: Sequence[tuple[str, str]], seconds: float, skip: float = 0.0
) -> list[tuple[str, str]]:
    """The items of ``pool`` whose estimated start (the duration of all items before them)
    lies in ``[skip, seconds)``: so ``_take(p, a)`` followed by ``_take(p, b, skip=a)`` is
    ``_take(p, b)``."""
    taken: list[tuple[str, str]] = []
    total = 0.0
    for item in pool:
        if total >= seconds:
            break
        if total >= skip:
            taken.append(item)
        total += estimate_duration(item[1])
    return taken


def _weighted(rng: random.Random, voices: Sequence[Voice]) -> Voice:
    return rng.choices(voices, weights=[v.weight for v in voices])[0]


def _make_task(
    split: str,
    source: str,
    text: str,
    voices: Sequence[Voice],
    *,
    seed: int,
    options: CorpusOptions,
    babble_pool: Sequence[str],
    babble_voices: Sequence[Voice],
) -> Task:
    rng = random.Random(_hash(seed, split, text))
    voice = _weighted(rng, voices)
    prosody = draw_prosody(rng)
    augment: list[dict[str, Any]] = []
    babble: list[tuple[str, Voice, Prosody]] = []
    if split == "train":
        augment = plan_augmentation(rng, options.augment)
        for op in augment:
            if op.get("kind") == "babble":
                if not babble_voices:  # no fast voice: fall back to pink noise
                    op["kind"] = "pink"
                    del op["talkers"]
                    continue
                for _ in range(op["talkers"]):
                    talker = _weighted(rng, babble_voices)
                    babble.append((rng.choice(babble_pool), talker, draw_prosody(rng)))
    utt_seed = rng.getrandbits(63)
    spec = json.dumps(
        [text, voice.name, asdict(prosody), augment,
         [(t, v.name, asdict(p)) for t, v, p in babble], utt_seed, SAMPLE_RATE],
        sort_keys=True,
    )  # fmt: skip
    utt_id = f"{split}-{_hash(spec)[:12]}"
    return Task(
        id=utt_id,
        split=split,
        text=text,
        source=source,
        voice=voice,
        prosody=prosody,
        augment=tuple(augment),
        babble=tuple(babble),
        seed=utt_seed,
        audio=f"audio/{split}/{utt_id}.{options.audio_format}",
    )


def plan_corpus(
    sentences: Sequence[tuple[str, str]],
    *,
    hours: float,
    seed: int,
    options: CorpusOptions,
    voices: Sequence[Voice],
    from_hours: float = 0.0,
    train_voices: Sequence[Voice] | None = None,
) -> tuple[dict[str, list[Task]], list[str]]:
    """Decide every utterance of every split, without synthesising anything.

    Args:
        sentences: ``(source, normalised sentence)`` pairs, already free of leaks.
        voices: the voices that may be used; those matching ``options.heldout_voices``
            speak only ``test-unseen-voices``.
        from_hours: ``train`` holds only the part of the ``hours`` list that starts after
            this many estimated hours: a shard of new sentences, exactly the utterances a
            build of ``hours`` adds to one of ``from_hours`` (dev and test do not change).
        train_voices: the voices that speak ``train`` (held-out ones dropped), if not
            those of ``voices``; the other splits, and the babble, come from ``voices``.

    Returns:
        The tasks per split, and the held-out sentence pool (all dev and test sentences).
    """
    if hours < 0:
        raise ValueError(f"hours must be >= 0, got {hours}")
    if from_hours != 0 and not 0 < from_hours < hours:
        raise ValueError(f"from_hours must be 0 or in (0, hours={hours}), got {from_hours}")
    pools: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    for source, text in sentences:
        pools[sentence_split(text, options.heldout_fraction)].append((source, text))
    heldout = sorted(t for split in ("dev", "test") for _, t in pools[split])
    for split, pool in pools.items():
        pool.sort(key=lambda item, s=split: _hash(seed, "order", s, item[1]))

    seen_voices = [v for v in voices if not is_heldout(v, options.heldout_voices)]
    unseen_voices = [v for v in voices if is_heldout(v, options.heldout_voices)]
    if not seen_voices:
        raise ValueError("no training voice available: every selected voice is held out")
    train_speakers = seen_voices
    if train_voices is not None:
        train_speakers = [v for v in train_voices if not is_heldout(v, options.heldout_voices)]
        if not train_speakers:
            raise ValueError("no training voice available: every train voice is held out")
    babble_voices = [v for v in seen_voices if v.engine in _BABBLE_ENGINES]
    babble_pool = [t for _, t in pools["train"][:5000]]

    targets = {
        "train": hours * 3600,
        "dev": options.dev_minutes * 60,
        "test": options.test_minutes * 60,
    }
    make = partial(
        _make_task, seed=seed, options=options, babble_pool=babble_pool, babble_voices=babble_voices
    )
    skips = {"train": from_hours * 3600, "dev": 0.0, "test": 0.0}
    plan = {
        split: [
            make(split, src, text, train_speakers if split == "train" else seen_voices)
            for src, text in _take(pools[split], target, skips[split])
        ]
        for split, target in targets.items()
    }
    test = [(t.source, t.text) for t in plan["test"]]
    plan["test-unseen-voices"] = [
        make("test-unseen-voices", src, text, unseen_voices)
        for src, text in (_take(test, options.unseen_minutes * 60) if unseen_voices else [])
    ]
    return plan, heldout


def _babble_talker(text: str, voice: Voice, prosody: Prosody, seed: int) -> torch.Tensor:
    """One background talker of babble noise; a failure says it was one, not the utterance's voice."""
    try:
        return synthesize(text, voice, prosody=prosody, seed=seed)
    except SynthesisError as exc:
        raise SynthesisError(f"babble talker: {exc}") from None


def run_task(task: Task, out_dir: Path) -> dict[str, Any]:
    """Make one utterance's audio unless a valid file is there; never raises.

    Returns the manifest row plus ``"reused": bool``, or ``{"id", "split", "voice",
    "text", "error"}`` when synthesis failed.
    """
    path = out_dir / task.audio
    duration = audio_ok(path)
    if duration is not None:
        return {**task.row(duration), "reused": True}
    try:
        audio = synthesize(task.text, task.voice, prosody=task.prosody, seed=task.seed)
        if task.augment:
            talkers = [
                _babble_talker(text, voice, prosody, task.seed + i)
                for i, (text, voice, prosody) in enumerate(task.babble)
            ]
            audio = apply_augmentation(
                audio, SAMPLE_RATE, task.augment, seed=task.seed, babble=talkers
            )
        write_audio(path, audio)
    except Exception as exc:  # noqa: BLE001 (recorded per utterance; the build goes on)
        return {
            "id": task.id,
            "split": task.split,
            "voice": task.voice.name,
            "text": task.text,
            "error": f"{type(exc).__name__}: {exc}",
        }
    return {**task.row(audio.numel() / SAMPLE_RATE), "reused": False}


def _init_worker(parent: int) -> None:
    import torch

    from fusion.run.parallel import exit_with_parent

    exit_with_parent(parent)  # a killed build leaves no synthesis workers behind
    torch.set_num_threads(1)


def _run_all(tasks: Sequence[Task], out_dir: Path, jobs: int) -> Iterator[dict[str, Any]]:
    if jobs == 1:  # in this process, on one thread like a worker (same bits, one core)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from (run_task(t, out_dir) for t in tasks)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        yield from pool.map(run_task, tasks, [out_dir] * len(tasks), chunksize=4)


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with atomic_write(path) as fh:
        fh.writelines(line + "\n" for line in lines)


def _installed_voices(patterns: Sequence[str], pool: Sequence[Voice], role: str) -> tuple[Voice, ...]:
    """The voices of ``pool`` matching ``patterns`` that are installed, the missing ones
    reported on stderr. ``role`` (``""``, ``"train "``) names them in messages.

    Raises:
        ValueError: none is installed.
    """
    wanted = select_voices(patterns, pool)
    voices = available_voices(wanted)
    if missing := sorted(v.name for v in wanted if v not in voices):
        print(f"corpus: {len(missing)} {role}voices not installed, skipped: {', '.join(missing)}",
              file=sys.stderr)  # fmt: skip
    if not voices:
        raise ValueError(f"no installed voice matches {role and role + 'voices '}{list(patterns)}")
    return voices


def build_corpus(
    out_dir: str | Path | None = None,
    hours: float = 10.0,
    jobs: int = 2,
    seed: int = 0,
    *,
    options: CorpusOptions = CorpusOptions(),
    sentences: Sequence[tuple[str, str]] | None = None,
    progress: bool = True,
    from_hours: float = 0.0,
) -> BuildSummary:
    """Build (or finish building) the corpus in ``out_dir``.

    Args:
        out_dir: output folder (default :func:`default_corpus_dir`).
        hours: estimated hours of training audio.
        jobs: worker processes (1: synthesise in this process).
        seed: drives sentence order, voices, prosody and augmentation.
        options: everything else (:class:`CorpusOptions`).
        sentences: ``(source, sentence)`` pairs to use instead of ``options.sources``
            (normalised; leaking ones are still removed).
        progress: show a tqdm progress bar on stderr.
        from_hours: build only the training utterances that a build of ``hours`` adds
            to one of ``from_hours`` (new sentences for continuing a model, without
            synthesising the earlier ones again); dev, test and unseen voices as always.

    Raises:
        ValueError: bad arguments, or no usable voice.
        FileNotFoundError: the real-speech manifest (sentences to exclude) is missing.
        fusion.corpus.sources.SourceUnavailableError: a text source is not installed.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    started = time.monotonic()
    out = Path(out_dir) if out_dir is not None else default_corpus_dir()
    out.mkdir(parents=True, exist_ok=True)

    leakage = LeakageFilter(load_forbidden_sentences(options.real_speech))
    if sentences is None:
        pairs = corpus_sentences(
            options.sources, leakage=leakage, sentence_filter=options.sentence_filter
        )
    else:
        first: dict[str, str] = {}
        for source, text in sentences:
            first.setdefault(text, source)
        pairs = [(source, text) for text, source in first.items() if not leakage(text)]

    voices = _installed_voices(options.voices, catalogue(), "")
    train_voices = None
    if options.train_voices is not None:
        train_voices = _installed_voices(
            options.train_voices, catalogue() + train_only_catalogue(), "train "
        )
    plan, heldout = plan_corpus(
        pairs, hours=hours, seed=seed, options=options, voices=voices, from_hours=from_hours,
        train_voices=train_voices,
    )  # fmt: skip
    _write_lines(out / "text" / "heldout.txt", heldout)

    tasks = [t for split in _BUILD_ORDER for t in plan[split]]
    remaining = {split: len(plan[split]) for split in _BUILD_ORDER}
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    errors: list[dict[str, Any]] = []
    synthesised = reused = 0
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(tasks), unit="utt", disable=not progress, mininterval=0.5 if interactive else 30,
               desc="corpus")  # fmt: skip
    audio_s = 0.0
    with bar:
        for split in _BUILD_ORDER:  # manifests of empty splits are written up front
            if not remaining[split]:
                write_jsonl(out / f"{split}.jsonl", [])
        for task, result in zip(tasks, _run_all(tasks, out, jobs)):
            if "error" in result:
                errors.append(result)
            else:
                if result.pop("reused"):
                    reused += 1
                else:
                    synthesised += 1
                rows[task.split].append(result)
                audio_s += result["duration"]
            remaining[task.split] -= 1
            if remaining[task.split] == 0:
                write_jsonl(out / f"{task.split}.jsonl", rows[task.split])
            bar.set_postfix(audio_h=f"{audio_s / 3600:.2f}", errors=len(errors), refresh=False)
            bar.update()

    write_jsonl(out / "errors.jsonl", errors)
    _write_lines(out / "text" / "train.txt", (r["text"] for r in rows["train"]))
    summary = BuildSummary(
        out_dir=out,
        utterances={s: len(rows[s]) for s in SPLITS},
        hours={s: round(sum(r["duration"] for r in rows[s]) / 3600, 3) for s in SPLITS},
        errors=len(errors),
        synthesised=synthesised,
        reused=reused,
        seconds=round(time.monotonic() - started, 1),
    )
    info = {
        "seed": seed,
        "hours_requested": hours,
        "from_hours": from_hours,
        "options": json.loads(json.dumps(asdict(options), default=str)),
        "voices": {
            "train": sorted(
                v.name
                for v in (voices if train_voices is None else train_voices)
                if not is_heldout(v, options.heldout_voices)
            ),
            "heldout": sorted(v.name for v in voices if is_heldout(v, options.heldout_voices)),
        },
        "sentences": {"available": len(pairs), "heldout_pool": len(heldout)},
        "utterances": summary.utterances,
        "hours": summary.hours,
        "errors": summary.errors,
    }
    with atomic_write(out / "build.json") as fh:
        json.dump(info, fh, indent=2)
        fh.write("\n")
    return summary

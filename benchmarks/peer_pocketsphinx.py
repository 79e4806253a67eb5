"""CMU pocketsphinx as a peer in the acoustic benchmark: its WER beside ours, same audio,
same scoring.

pocketsphinx is Debian's ``pocketsphinx`` 0.8 (``pocketsphinx_batch``) with the
``pocketsphinx-en-us`` model: a phonetically tied-mixture HMM-GMM acoustic model (``en-us/``),
its own 3-gram LM (``en-us.lm.bin``) and the CMU dictionary, at the decoder's default
settings (the model's ``feat.params`` supply the front end, cepstral mean normalisation
over each whole utterance among them). That is pocketsphinx at its best on recorded audio:
on the real-speech dev set it scores 26.2% WER, where ``pocketsphinx_continuous -infile``
(live CMN from a fixed start, its own voice-activity segmentation) scores 42.8%, the
figure ``../shared/data/README.md`` quotes.

Every manifest utterance is read with the project's one audio loader
(:func:`fusion.am.features.load_audio`: any format soundfile reads, downmixed to mono,
resampled to 16 kHz) and written as a 16-bit 16-kHz WAV with a 44-byte header (a 16-kHz
16-bit source passes through bit-exact); ``pocketsphinx_batch`` decodes them from a
control file, split into ``jobs`` parts of about equal audio run as parallel processes.
Its output words lose fillers (``<sil>``, ``[NOISE]``, ``++NOISE++``) and alternate
pronunciation marks (``read(2)``), then pass through :func:`fusion.core.text.normalize_text`
like every hypothesis of ours; :func:`pocketsphinx_scores` scores them with
:func:`fusion.core.metrics.score_corpus`, the function that scores our model. An utterance
whose audio cannot be read, or for which pocketsphinx writes no hypothesis, counts as an
empty hypothesis and is listed under ``failed``.

Raw hypotheses are cached in ``cache_dir`` under a key made of the manifest's bytes, each
audio file's size and modification time, the pocketsphinx version, the model files and
the decoder arguments, so a rerun costs nothing; each utterance's words are also kept by
its audio file, so a manifest sharing audio with one decoded before decodes only the rest.

    python -m benchmarks.peer_pocketsphinx MANIFEST... [--jobs 2] [--out FILE.json]

prints WER per manifest and writes ``FILE.json`` and ``FILE.md`` (machine, date, command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fusion.core.manifest import Utterance, atomic_write, read_manifest, write_manifest  # noqa: E402
from fusion.core.text import normalize_text  # noqa: E402

__all__ = [
    "CHILD_AGE",
    "PocketsphinxError",
    "PocketsphinxModel",
    "PocketsphinxRun",
    "PreparedAudio",
    "clean_hypothesis",
    "group_ids",
    "main",
    "parse_hyp_lines",
    "pocketsphinx_hypotheses",
    "pocketsphinx_scores",
    "pocketsphinx_version",
    "run_pocketsphinx",
    "split_control",
    "write_audio",
]

BATCH = "pocketsphinx_batch"
DEBIAN_MODEL = Path("/usr/share/pocketsphinx/model/en-us")
SAMPLE_RATE = 16_000
WAV_HEADER_BYTES = 44  # what the ``wave`` module writes for PCM, and ``-adchdr`` skips
CHILD_AGE = 18  # speakers younger than this are children in the per-age-group scores
CACHE_FORMAT = 1  # bump when the cached record changes shape
CHUNK_UTTERANCES = 50  # per job and pocketsphinx process: a model load per ~4 min of audio
#: a ``-hyp`` line: ``words (utterance score)``; words may be empty
_HYP_LINE = re.compile(r"^(?P<words>.*?)\s*\((?P<name>[^\s()]+)\s+(?P<score>-?\d+)\)\s*$")
#: fillers of the en-us noise dictionary and sentence marks: never words
_FILLER = re.compile(r"^(?:<[^>]*>|\[[^\]]*\]|\+\+[^+]*\+\+|\+[^+]*\+)$")
_ALTERNATE = re.compile(r"\(\d+\)$")  # read(2): the second pronunciation of "read"


class PocketsphinxError(RuntimeError):
    """pocketsphinx is missing, its model is incomplete, or its output cannot be read."""


@dataclass(frozen=True)
class PocketsphinxModel:
    """The acoustic model folder, the LM and the dictionary pocketsphinx decodes with."""

    hmm: Path
    lm: Path
    dictionary: Path

    @classmethod
    def debian(cls, root: Path = DEBIAN_MODEL) -> PocketsphinxModel:
        """Debian's ``pocketsphinx-en-us``: ``en-us/``, ``en-us.lm.bin``, ``cmudict-en-us.dict``."""
        return cls(root / "en-us", root / "en-us.lm.bin", root / "cmudict-en-us.dict")

    def check(self) -> None:
        """Raise :class:`PocketsphinxError` naming the first model file that is missing."""
        for what, path in (("acoustic model folder", self.hmm), ("LM", self.lm),
                           ("dictionary", self.dictionary)):
            if not path.exists():
                raise PocketsphinxError(
                    f"pocketsphinx {what} not found: {path} (install Debian's pocketsphinx-en-us)")

    def args(self) -> list[str]:
        return ["-hmm", str(self.hmm), "-lm", str(self.lm), "-dict", str(self.dictionary)]

    def fingerprint(self) -> list[Any]:
        """Path, size and modification time of every model file (the cache key's share)."""
        files = sorted(p for p in self.hmm.iterdir() if p.is_file()) + [self.lm, self.dictionary]
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def batch_binary() -> str:
    """The path of ``pocketsphinx_batch``; :class:`PocketsphinxError` if it is not installed."""
    path = shutil.which(BATCH)
    if path is None:
        raise PocketsphinxError(f"{BATCH} not found on PATH (install Debian's pocketsphinx)")
    return path


def pocketsphinx_version() -> str:
    """Debian's package version of pocketsphinx, else a digest of the binary."""
    binary = batch_binary()
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "pocketsphinx"],
                             capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except OSError:
        pass
    return "sha256:" + hashlib.sha256(Path(binary).read_bytes()).hexdigest()[:16]


# --- output --------------------------------------------------------------------------


def clean_hypothesis(words: str) -> str:
    """pocketsphinx's words in our transcript form: fillers and sentence marks dropped,
    alternate-pronunciation marks stripped (``read(2)`` -> ``read``), then
    :func:`fusion.core.text.normalize_text`."""
    kept = [_ALTERNATE.sub("", w) for w in words.split() if not _FILLER.match(w)]
    return normalize_text(" ".join(kept))


def parse_hyp_lines(lines: Iterable[str], where: str = "<hyp>") -> dict[str, str]:
    """Control-file name -> raw words of each ``-hyp`` line ``words (name score)``.

    Raises:
        PocketsphinxError: a line of another shape (naming ``where`` and the line number).
    """
    out: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        m = _HYP_LINE.match(line.rstrip("\n"))
        if m is None:
            raise PocketsphinxError(f"{where}:{lineno}: not a pocketsphinx hypothesis line: {line!r}")
        out[m.group("name")] = m.group("words").strip()
    return out


# --- input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedAudio:
    """WAVs written for pocketsphinx: control-file name -> utterance id and seconds, and
    the utterances whose audio could not be read (id -> reason)."""

    ids: dict[str, str]
    seconds: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    """Float samples in [-1, 1] as 16-bit 16-kHz mono PCM (int16 sources round-trip exactly)."""
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(SAMPLE_RATE)
        fh.writeframes(pcm.tobytes())


def write_audio(utts: Sequence[Utterance], folder: Path) -> PreparedAudio:
    """Each utterance's audio as ``folder/uNNNNNN.wav`` (16 kHz, 16 bit, mono).

    Names are positions, not ids, so no id can make an awkward file name. Audio the
    project's loader refuses is recorded in ``failed`` and the batch goes on.
    """
    from fusion.am.features import UtteranceError, load_audio

    folder.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    for i, utt in enumerate(utts):
        if utt.audio is None:
            failed[utt.id] = "no audio in the manifest"
            continue
        try:
            samples = load_audio(utt.audio, utt_id=utt.id, target_rate=SAMPLE_RATE)
        except UtteranceError as exc:
            failed[utt.id] = str(exc)
            continue
        name = f"u{i:06d}"
        _write_wav(folder / f"{name}.wav", samples)
        ids[name] = utt.id
        seconds[name] = samples.size / SAMPLE_RATE
    return PreparedAudio(ids, seconds, failed)


def split_control(seconds: Mapping[str, float], jobs: int) -> list[list[str]]:
    """Names split into at most ``jobs`` non-empty parts of about equal audio (longest
    first onto the lightest part); each part keeps the input order."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    order = {name: i for i, name in enumerate(seconds)}
    parts: list[list[str]] = [[] for _ in range(min(jobs, len(seconds)))]
    load = [0.0] * len(parts)
    for name in sorted(seconds, key=lambda n: (-seconds[n], order[n])):
        k = min(range(len(parts)), key=lambda j: (load[j], j))
        parts[k].append(name)
        load[k] += seconds[name]
    return [sorted(p, key=order.__getitem__) for p in parts]


# --- decoding ------------------------------------------------------------------------


def decoder_args(model: PocketsphinxModel, wav_dir: Path) -> list[str]:
    """``pocketsphinx_batch`` arguments, less ``-ctl``, ``-hyp`` and ``-logfn``."""
    return ["-adcin", "yes", "-adchdr", str(WAV_HEADER_BYTES), "-samprate", str(SAMPLE_RATE),
            "-cepdir", str(wav_dir), "-cepext", ".wav", *model.args()]


def _log_errors(log: Path, limit: int = 5) -> list[str]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.startswith(("ERROR", "FATAL"))][:limit]


def _decode_parts(parts: list[list[str]], wav_dir: Path, work: Path,
                  model: PocketsphinxModel) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Run one ``pocketsphinx_batch`` per part at once; returns raw words by name, the
    reason for each name with no hypothesis, and the first error lines of the logs."""
    binary = batch_binary()
    procs = []
    for k, names in enumerate(parts):
        ctl, hyp, log = work / f"part{k}.ctl", work / f"part{k}.hyp", work / f"part{k}.log"
        ctl.write_text("".join(f"{n}\n" for n in names))
        cmd = [binary, *decoder_args(model, wav_dir), "-ctl", str(ctl), "-hyp", str(hyp),
               "-logfn", str(log)]
        with (work / f"part{k}.stderr").open("wb") as err:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err))
    words: dict[str, str] = {}
    missing: dict[str, str] = {}
    errors: list[str] = []
    try:
        for proc in procs:
            proc.wait()
    finally:  # interrupted: no pocketsphinx outlives its caller
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for k, (names, proc) in enumerate(zip(parts, procs)):
        hyp, log = work / f"part{k}.hyp", work / f"part{k}.log"
        got = parse_hyp_lines(hyp.read_text().splitlines(), str(hyp)) if hyp.exists() else {}
        stderr = (work / f"part{k}.stderr").read_text(errors="replace").strip().splitlines()
        errors += _log_errors(log) or stderr[-3:]
        reason = ("pocketsphinx wrote no hypothesis" if proc.returncode == 0 else
                  f"{BATCH} exited with status {proc.returncode}")
        for n in names:
            if n in got:
                words[n] = got[n]
            else:
                missing[n] = reason
    return words, missing, errors


@dataclass(frozen=True)
class PocketsphinxRun:
    """One manifest decoded: raw words by utterance id (``""`` for a failed one), failures
    (id -> reason), the manifest's audio seconds, and the decoding's wall and CPU seconds
    over the ``decoded_seconds`` of audio this run decoded (the other ``reused``
    utterances' words came from the per-utterance store of another run)."""

    words: dict[str, str]
    failed: dict[str, str]
    audio_seconds: float
    wall_seconds: float
    cpu_seconds: float
    jobs: int
    version: str
    errors: list[str] = field(default_factory=list)
    reused: int = 0
    decoded_seconds: float | None = None
    cached: bool = False

    @property
    def hypotheses(self) -> dict[str, str]:
        """Utterance id -> hypothesis in our transcript form (see :func:`clean_hypothesis`)."""
        return {u: clean_hypothesis(w) for u, w in self.words.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "words": self.words, "failed": self.failed,
                "audio_seconds": self.audio_seconds, "wall_seconds": self.wall_seconds,
                "cpu_seconds": self.cpu_seconds, "jobs": self.jobs, "version": self.version,
                "errors": self.errors, "reused": self.reused, "decoded_seconds": self.decoded_seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, cached: bool = False) -> PocketsphinxRun:
        return cls(dict(data["words"]), dict(data["failed"]), float(data["audio_seconds"]),
                   float(data["wall_seconds"]), float(data["cpu_seconds"]), int(data["jobs"]),
                   str(data["version"]), list(data.get("errors", [])), int(data.get("reused", 0)),
                   data.get("decoded_seconds", data["audio_seconds"]), cached)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def decoder_key(model: PocketsphinxModel, version: str) -> str:
    """A digest of the decoder: pocketsphinx's version, the model files and the arguments."""
    return _digest({"format": CACHE_FORMAT, "version": version, "model": model.fingerprint(),
                    "args": decoder_args(model, Path("."))})


def audio_key(utt: Utterance) -> list[Any]:
    """An utterance's audio file as path, size and modification time (``None``s if absent)."""
    p = Path(utt.audio) if utt.audio else None
    st = p.stat() if p is not None and p.is_file() else None
    return [utt.audio, st.st_size if st else None, st.st_mtime_ns if st else None]


def cache_key(manifest: Path, utts: Sequence[Utterance], decoder: str) -> str:
    """A digest of everything a manifest's run depends on (the job count is not among them)."""
    return _digest({"manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                    "audio": [audio_key(u) for u in utts], "decoder": decoder})


class UtteranceStore:
    """Raw words and seconds of every utterance decoded so far with one decoder, keyed by
    its audio file (:func:`audio_key`), in ``cache_dir/utterances-DECODER.jsonl``: a
    manifest that shares audio with one decoded before (speechocean762-test-adult inside
    speechocean762-test) decodes only the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, tuple[str, float]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    e = json.loads(line)
                    self.entries[e["audio"]] = (str(e["words"]), float(e["seconds"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a killed run: decoded again

    def get(self, utt: Utterance) -> tuple[str, float] | None:
        return self.entries.get(_digest(audio_key(utt)))

    def add(self, items: Iterable[tuple[Utterance, str, float]]) -> None:
        lines = []
        for utt, words, seconds in items:
            key = _digest(audio_key(utt))
            self.entries[key] = (words, seconds)
            lines.append(json.dumps({"audio": key, "words": words, "seconds": seconds}) + "\n")
        if lines:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write("".join(lines))


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def run_pocketsphinx(manifest: Path, *, jobs: int = 2, cache_dir: Path | None = None,
                     model: PocketsphinxModel | None = None, progress: bool = False) -> PocketsphinxRun:
    """Decode every utterance of ``manifest`` with pocketsphinx (or read the cached run;
    utterances another run decoded are taken from ``cache_dir``'s :class:`UtteranceStore`).

    Utterances go to pocketsphinx in chunks of :data:`CHUNK_UTTERANCES` per job, each
    kept in the store as it ends, so a killed run resumes where it stopped; ``progress``
    says on stderr how far it is.

    Raises:
        PocketsphinxError: pocketsphinx or its model is not installed.
        fusion.core.manifest.ManifestError: an unreadable manifest.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    manifest = Path(manifest)
    model = model or PocketsphinxModel.debian()
    model.check()
    version = pocketsphinx_version()
    utts = read_manifest(manifest, require=("audio", "text"))
    decoder = decoder_key(model, version)
    cache = store = None
    reused: dict[str, tuple[str, float]] = {}
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{manifest.stem}-{cache_key(manifest, utts, decoder)}.json"
        if cache.is_file():
            return PocketsphinxRun.from_dict(json.loads(cache.read_text()), cached=True)
        store = UtteranceStore(Path(cache_dir) / f"utterances-{decoder}.jsonl")
        reused = {u.id: hit for u in utts if (hit := store.get(u)) is not None}
    todo = [u for u in utts if u.id not in reused]
    words: dict[str, str] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    errors: list[str] = []
    wall = cpu = 0.0
    step = CHUNK_UTTERANCES * jobs
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        with tempfile.TemporaryDirectory(prefix="pocketsphinx-") as tmp:
            work = Path(tmp)
            prepared = write_audio(chunk, work / "wav")
            parts = split_control(prepared.seconds, jobs)
            t0, cpu0 = time.perf_counter(), _children_cpu()
            got, missing, chunk_errors = (_decode_parts(parts, work / "wav", work, model)
                                          if parts else ({}, {}, []))
            wall, cpu = wall + time.perf_counter() - t0, cpu + _children_cpu() - cpu0
        failed.update(prepared.failed)
        failed.update({prepared.ids[n]: why for n, why in missing.items()})
        words.update({prepared.ids[n]: w for n, w in got.items()})
        seconds.update({prepared.ids[n]: sec for n, sec in prepared.seconds.items()})
        errors += chunk_errors
        if store is not None:  # kept as each chunk ends: a killed run resumes here
            by_id = {u.id: u for u in chunk}
            store.add((by_id[u], words[u], seconds[u]) for u in by_id if u in words)
        if progress:
            print(f"{manifest}: {min(start + step, len(todo))}/{len(todo)} utterances decoded "
                  f"({len(reused)} reused, {len(failed)} failed)", file=sys.stderr, flush=True)
    words.update({u: w for u, (w, _) in reused.items()})
    decoded = sum(seconds.values())
    run = PocketsphinxRun(
        words={u.id: words.get(u.id, "") for u in utts},
        failed={u.id: failed[u.id] for u in utts if u.id in failed},
        audio_seconds=round(decoded + sum(sec for _, sec in reused.values()), 3),
        wall_seconds=round(wall, 3), cpu_seconds=round(cpu, 3), jobs=min(jobs, max(len(todo), 1)),
        version=version, errors=errors, reused=len(reused), decoded_seconds=round(decoded, 3))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as fh:
            json.dump(run.to_dict(), fh)
    return run


def pocketsphinx_hypotheses(manifest: Path, *, jobs: int = 2, cache_dir: Path | None = None,
                            model: PocketsphinxModel | None = None) -> dict[str, str]:
    """Utterance id -> pocketsphinx's hypothesis, normalised as ours are; ``""`` for an
    utterance it failed on (see :func:`run_pocketsphinx`)."""
    return run_pocketsphinx(manifest, jobs=jobs, cache_dir=cache_dir, model=model).hypotheses


# --- scoring -------------------------------------------------------------------------


def group_ids(utts: Sequence[Utterance]) -> dict[str, dict[str, list[str]]]:
    """Utterance ids by age group (``child`` under :data:`CHILD_AGE`, else ``adult``) and by
    gender, from the manifest's ``age`` and ``gender`` fields; utterances without a field
    are in none of its groups, and a field nobody has gives no entry."""
    groups: dict[str, dict[str, list[str]]] = {}
    for u in utts:
        age = u.extra.get("age")
        if isinstance(age, (int, float)) and not isinstance(age, bool):
            band = "child" if age < CHILD_AGE else "adult"
            groups.setdefault("age", {}).setdefault(band, []).append(u.id)
        gender = u.extra.get("gender")
        if isinstance(gender, str) and gender:
            groups.setdefault("gender", {}).setdefault(gender, []).append(u.id)
    return {k: dict(sorted(v.items())) for k, v in groups.items()}


def _score_dict(score: Any) -> dict[str, Any]:
    return {"utterances": len(score.utterances), "wer": score.wer, "cer": score.cer,
            "errors": score.words.errors, "words": score.words.ref_len,
            "char_errors": score.chars.errors, "chars": score.chars.ref_len}


def pocketsphinx_scores(manifest: Path, *, jobs: int = 2, cache_dir: Path | None = None,
                        model: PocketsphinxModel | None = None, progress: bool = False) -> dict[str, Any]:
    """pocketsphinx's WER and CER on ``manifest`` by :func:`fusion.core.metrics.score_corpus`
    (the same scoring as our model's), with its word and character error counts, the
    failures, the speed (``rtf``: decoding wall seconds per audio second with ``jobs``
    processes; ``cpu_rtf``: CPU seconds per audio second; both over the audio this run
    decoded, ``decoded_seconds``, not the ``reused`` utterances) and, where the manifest has
    ``age`` / ``gender``, the same per age group and gender (``groups``)."""
    from fusion.core.metrics import score_corpus

    manifest = Path(manifest)
    run = run_pocketsphinx(manifest, jobs=jobs, cache_dir=cache_dir, model=model, progress=progress)
    utts = read_manifest(manifest, require=("audio", "text"))
    refs = {u.id: u.text or "" for u in utts}
    hyps = run.hypotheses
    score = score_corpus(refs, hyps)
    decoded = run.decoded_seconds if run.decoded_seconds is not None else run.audio_seconds
    out: dict[str, Any] = {
        "manifest": str(manifest), **_score_dict(score),
        "failed": len(run.failed), "failed_utterances": run.failed,
        "empty": sum(1 for h in hyps.values() if not h),
        "audio_seconds": run.audio_seconds, "decoded_seconds": decoded, "reused": run.reused,
        "wall_seconds": run.wall_seconds, "cpu_seconds": run.cpu_seconds,
        "rtf": round(run.wall_seconds / decoded, 4) if decoded else None,
        "cpu_rtf": round(run.cpu_seconds / decoded, 4) if decoded else None,
        "jobs": run.jobs, "pocketsphinx": run.version, "cached": run.cached,
        "log_errors": run.errors,
    }
    groups = group_ids(utts)
    if groups:
        out["groups"] = {field_: {name: _score_dict(score.subset(ids)) for name, ids in by.items()}
                         for field_, by in groups.items()}
    return out


# --- command line --------------------------------------------------------------------


def _default_cache() -> Path:
    from fusion.corpus.sources import asrfuse_home

    return asrfuse_home() / "pocketsphinx"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_pocketsphinx",
                                description="pocketsphinx's WER per manifest, scored as ours.")
    p.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST")
    p.add_argument("--jobs", type=int, default=2, help="parallel pocketsphinx processes (default 2)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="hypothesis cache (default $ASRFUSE_HOME/pocketsphinx)")
    p.add_argument("--no-cache", action="store_true", help="decode again and keep nothing")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="score every K-th utterance of each manifest (1st, K+1-th, ...), a "
                   "systematic sample named SPLIT-everyK; its decodes serve the whole split later")
    p.add_argument("--out", type=Path, default=None,
                   help="write the results as this JSON file and a .md beside it")
    return p


def _markdown(results: dict[str, Any]) -> str:
    from common import table

    rows = []
    for name, r in results["splits"].items():
        rows.append({"split": name, "utts": r["utterances"], "wer": 100 * r["wer"],
                     "cer": 100 * r["cer"], "failed": r["failed"],
                     "audio_min": r["audio_seconds"] / 60, "rtf": r["rtf"], "cpu_rtf": r["cpu_rtf"]})
        for field_, by in r.get("groups", {}).items():
            for g, s in by.items():
                rows.append({"split": f"{name} ({field_} {g})", "utts": s["utterances"],
                             "wer": 100 * s["wer"], "cer": 100 * s["cer"]})
    cols = [("split", "split"), ("utts", "utterances"), ("wer", "WER %"), ("cer", "CER %"),
            ("failed", "failed"), ("audio_min", "audio min"), ("rtf", "RTF (wall)"),
            ("cpu_rtf", "RTF (CPU)")]
    h = results["header"]
    return (f"# pocketsphinx {results['pocketsphinx']} (Debian en-us model, its own 3-gram)\n\n"
            f"{h['date']}, `{h['command']}`, {h['machine']['cpu']}, {results['jobs']} jobs\n\n"
            f"{table(rows, cols)}\n"
            "RTF: decoding seconds per second of the audio a run decoded (utterances reused from "
            "an earlier run's store excluded; a cached run repeats the timing of the run that "
            "made it). A split named -everyK is its every K-th utterance.\n")


def _score_one(manifest: Path, name: str, args: argparse.Namespace, cache: Path | None,
               tmp: Path) -> dict[str, Any]:
    """One manifest's scores (of its every ``args.every``-th utterance, written to ``tmp``)."""
    r: dict[str, Any] = {"name": name}
    if args.every > 1:
        r = {"name": f"{name}-every{args.every}", "sample_of": str(manifest), "every": args.every}
        sample = tmp / f"{r['name']}.jsonl"
        write_manifest(sample, read_manifest(manifest)[::args.every])
        manifest = sample
    return {**r, **pocketsphinx_scores(manifest, jobs=args.jobs, cache_dir=cache, progress=True)}


def _summary(r: Mapping[str, Any]) -> str:
    groups = "; ".join(f"{f} {g} {100 * s['wer']:.1f}" for f, by in r.get("groups", {}).items()
                       for g, s in by.items())
    return (f"{r['name']}: WER {100 * r['wer']:.2f}% CER {100 * r['cer']:.2f}% over {r['utterances']} "
            f"utterances ({r['failed']} failed), {r['audio_seconds'] / 60:.1f} min audio, "
            f"RTF {r['rtf']} wall / {r['cpu_rtf']} CPU"
            + (" (cached)" if r["cached"] else f" ({r['reused']} reused)" if r["reused"] else "")
            + (f"; {groups}" if groups else ""))


def _write_results(out: Path, splits: Mapping[str, Any], jobs: int) -> None:
    from common import header

    first = next(iter(splits.values()))
    results = {"header": header(), "pocketsphinx": first["pocketsphinx"], "jobs": jobs,
               "splits": dict(splits)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as fh:
        fh.write(json.dumps(results, indent=1) + "\n")
    with atomic_write(out.with_suffix(".md")) as fh:
        fh.write(_markdown(results))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # so temporary WAVs are removed and decoders stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    if args.jobs < 1 or args.every < 1:
        print(f"error: --jobs and --every must be >= 1, got {args.jobs} and {args.every}",
              file=sys.stderr)
        return 2
    if args.out is not None and args.out.resolve() in {m.resolve() for m in args.manifests}:
        print(f"error: --out {args.out} is an input manifest", file=sys.stderr)
        return 2
    cache = None if args.no_cache else (args.cache_dir or _default_cache())
    splits: dict[str, Any] = {}
    status = 0
    with tempfile.TemporaryDirectory(prefix="pocketsphinx-sample-") as tmp:
        for m in args.manifests:
            name = m.stem if m.stem != "manifest" else m.resolve().parent.name
            try:
                r = _score_one(m, name, args, cache, Path(tmp))
            except (PocketsphinxError, ValueError, OSError) as exc:
                print(f"error: {m}: {exc}", file=sys.stderr)
                status = 1
                continue
            splits[r["name"]] = r
            print(_summary(r), flush=True)
    if args.out is not None and splits:
        _write_results(args.out, splits, args.jobs)
    return status


if __name__ == "__main__":
    raise SystemExit(main())

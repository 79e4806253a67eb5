"""Importers: speech corpora already on disk (LibriSpeech, Google Speech Commands, Kaldi
data directories) to manifests.

No importer decodes whole-file audio: each manifest line points at the original file, and
its duration comes from the audio header (:func:`soundfile.info`). Transcripts go through
:func:`fusion.core.text.normalize_text`, like every transcript of this project. (The one
exception: a Kaldi ``segments`` file, whose utterances are cut into clip files, see below.)

LibriSpeech (``LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
beside ``<speaker>-<chapter>.trans.txt``, lines ``ID TRANSCRIPT``) gives one manifest per
subset, ``<subset>.jsonl``, with ``speaker``, ``chapter``, ``subset`` and, where the root
holds ``SPEAKERS.TXT``, ``gender``.

Speech Commands v0.01/v0.02 (``<root>/<label>/<speaker>_nohash_<n>.wav`` plus
``validation_list.txt`` and ``testing_list.txt``) gives ``train.jsonl``,
``validation.jsonl`` and ``test.jsonl`` (every clip in neither list is ``train``; the text is
the label word; ``speaker`` and ``label`` are kept) and ``background-noise.jsonl``, the
long noise recordings of ``_background_noise_`` without text.

A Kaldi data directory (``wav.scp``, ``text``, and optionally ``utt2spk``, ``segments``,
``spk2gender``, ``spk2age``) gives one manifest, ``<name>.jsonl`` (``name`` defaults to the
directory's name), with ``speaker``, ``gender`` (``"F"``/``"M"``) and ``age`` where the
files give them. ``wav.scp`` must hold plain file paths (relative ones resolve against the
corpus root, by default the data directory's parent, where Kaldi recipes run); piped
commands, stdin and archive offsets are refused per entry. Manifests have no time spans
(every loader reads a whole file), so with ``segments`` each utterance's span of its
recording is cut into ``<name>-clips/<utt>.flac`` beside the manifest, which keeps
``recording`` and ``segment`` (``[start, end]`` seconds) to say where the clip came from.

Bad entries never stop an import: each is recorded as a :class:`Problem` naming the file
(and line), skipped, and written to ``problems.jsonl`` beside the manifests (empty when all
is well). Only a root that is not such a corpus at all raises :class:`CorpusImportError`.
Manifests are written atomically, after the whole tree has been read.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import soundfile as sf
from tqdm import tqdm

from fusion.core.manifest import Utterance, atomic_write, write_jsonl, write_manifest
from fusion.core.text import normalize_text

__all__ = [
    "KALDI_OPTIONAL",
    "KALDI_REQUIRED",
    "LIBRISPEECH_SUBSETS",
    "PROBLEM_KINDS",
    "SEGMENT_OVERSHOOT",
    "SPEECH_COMMANDS_SPLITS",
    "CorpusImportError",
    "ImportSummary",
    "Problem",
    "find_librispeech_subsets",
    "import_kaldi",
    "import_librispeech",
    "import_speech_commands",
    "read_kaldi_dir",
    "read_librispeech_speakers",
    "scan_librispeech_subset",
    "scan_speech_commands",
]

LIBRISPEECH_SUBSETS: tuple[str, ...] = (
    "dev-clean", "dev-other", "test-clean", "test-other",
    "train-clean-100", "train-clean-360", "train-other-500",
)  # fmt: skip
SPEECH_COMMANDS_SPLITS: tuple[str, ...] = ("train", "validation", "test")
NOISE_FOLDER = "_background_noise_"
NOISE_MANIFEST = "background-noise"
PROBLEMS_FILE = "problems.jsonl"
_SC_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}

#: What a :class:`Problem` can be. Every kind but ``duplicate-entry``, ``listed-twice`` and
#: ``no-speaker`` (the clip is still imported) drops the entry it names.
PROBLEM_KINDS: dict[str, str] = {
    "malformed-line": "a transcript or list line that does not have the expected form",
    "malformed-name": "a transcript or audio file whose name does not have the expected form",
    "missing-audio": "a transcript or list line whose audio file is not there",
    "no-transcript": "an audio file that no transcript line names",
    "unreadable-audio": "an audio file whose header soundfile cannot read",
    "empty-audio": "an audio file with no samples",
    "unreadable-file": "a transcript (or SPEAKERS.TXT) file that cannot be read",
    "empty-text": "a transcript that is empty after normalisation",
    "duplicate-id": "an utterance id on a second transcript line (the first is kept)",
    "duplicate-audio": "a second audio file of one utterance (e.g. .flac and .wav)",
    "duplicate-entry": "a list line repeated in the same list (harmless, reported)",
    "listed-twice": "a clip in both validation and testing lists (it goes to test)",
    "unsupported-audio": "a wav.scp entry that is a piped command, stdin or an archive "
    "offset, not a plain file path",
    "bad-segment": "a segments line whose span is not 0 <= start < end within its recording",
    "no-speaker": "an utterance that utt2spk, when given, does not name (imported without "
    "a speaker)",
}

_LS_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_LS_CHAPTER = re.compile(r"^(\d+)-(\d+)$")
_LS_AUDIO_EXTS = (".flac", ".wav")
_SC_NAME = re.compile(r"^([^_/]+)_nohash_(\d+)$")
_SC_ENTRY = re.compile(r"^([^/\\]+)/([^/\\]+\.wav)$")


class CorpusImportError(ValueError):
    """The folder given is not a corpus of the expected layout; the message says why."""


@dataclass(frozen=True)
class Problem:
    """One bad entry of a corpus: its kind (see :data:`PROBLEM_KINDS`), where, and what."""

    kind: str
    where: str  # "path:line" or "path"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "where": self.where, "message": self.message}


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote: utterances and hours per manifest, and the problems found."""

    out_dir: Path
    manifests: dict[str, Path]
    utterances: dict[str, int]
    hours: dict[str, float]
    problems: tuple[Problem, ...]
    problems_path: Path


# --- shared helpers ----------------------------------------------------------------------


def _probe(path: Path) -> float | Problem:
    """Duration in seconds from the audio header (nothing is decoded), or the problem."""
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        return Problem("unreadable-audio", str(path), f"cannot read the audio header: {exc}")
    if info.frames <= 0 or info.samplerate <= 0:
        return Problem("empty-audio", str(path), "audio file has no samples")
    return round(info.frames / info.samplerate, 3)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of a text file's non-blank lines; undecodable bytes are
    replaced (U+FFFD), so the line is reported as malformed rather than the file lost."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _bar(items: Sequence[Any], desc: str, progress: bool) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(items, desc=desc, unit="utt", disable=not progress,
                mininterval=0.5 if interactive else 30)  # fmt: skip


def _write(
    out_dir: Path, manifests: Mapping[str, list[Utterance]], problems: Sequence[Problem]
) -> ImportSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.jsonl" for name in manifests}
    for name, utterances in manifests.items():
        write_manifest(paths[name], utterances)
    problems_path = out_dir / PROBLEMS_FILE
    write_jsonl(problems_path, (p.to_dict() for p in problems))
    return ImportSummary(
        out_dir=out_dir,
        manifests=paths,
        utterances={name: len(utts) for name, utts in manifests.items()},
        hours={
            name: round(sum(u.duration or 0.0 for u in utts) / 3600, 3)
            for name, utts in manifests.items()
        },
        problems=tuple(problems),
        problems_path=problems_path,
    )


def _existing_dir(root: str | Path, what: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise CorpusImportError(f"{path}: no such folder (expected {what})")
    return path.resolve()


# --- LibriSpeech -------------------------------------------------------------------------


def _is_librispeech_subset(folder: Path) -> bool:
    return any(folder.glob("*/*/*.trans.txt"))


def find_librispeech_subsets(root: str | Path) -> dict[str, Path]:
    """The subset folders under ``root``, by name.

    ``root`` may be the ``LibriSpeech`` folder, the folder it was unpacked into, or one
    subset folder itself. A subset is a folder with ``<speaker>/<chapter>/*.trans.txt``.

    Raises:
        CorpusImportError: ``root`` is missing or holds no subset.
    """
    path = _existing_dir(root, "a LibriSpeech folder or one of its subsets")
    if (path / "LibriSpeech").is_dir():
        path = path / "LibriSpeech"
    if _is_librispeech_subset(path):
        return {path.name: path}
    found = {d.name: d for d in sorted(path.iterdir()) if d.is_dir() and _is_librispeech_subset(d)}
    if not found:
        raise CorpusImportError(
            f"{path}: no LibriSpeech subset here (a subset such as train-clean-100/ holds "
            "<speaker>/<chapter>/<speaker>-<chapter>.trans.txt)"
        )
    return found


def read_librispeech_speakers(path: str | Path) -> dict[str, str]:
    """Speaker id -> ``"F"``/``"M"`` from LibriSpeech's ``SPEAKERS.TXT``
    (``ID | SEX | SUBSET | MINUTES | NAME``, ``;`` comments). Lines of another form are
    ignored: the file only adds the optional ``gender`` field."""
    genders: dict[str, str] = {}
    for _, line in _read_lines(Path(path)):
        if line.startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) >= 2 and fields[0].isdigit() and fields[1] in ("F", "M"):
            genders[fields[0]] = fields[1]
    return genders


@dataclass(frozen=True)
class _Line:
    id: str
    speaker: str
    chapter: str
    text: str
    where: str
    folder: Path


def _parse_transcripts(
    subset_dir: Path, problems: list[Problem]
) -> tuple[list[_Line], set[Path]]:
    """Every well-formed transcript line of a subset, and the audio paths (without
    extension) that bad lines name, so their audio is not reported a second time."""
    lines: list[_Line] = []
    named: set[Path] = set()
    seen: dict[str, str] = {}
    for trans in sorted(subset_dir.rglob("*.trans.txt")):
        stem = trans.name[: -len(".trans.txt")]
        if not _LS_CHAPTER.match(stem):
            problems.append(Problem(
                "malformed-name", str(trans),
                "transcript file name must be <speaker>-<chapter>.trans.txt; file skipped",
            ))  # fmt: skip
            continue
        try:
            numbered = _read_lines(trans)
        except OSError as exc:
            problems.append(Problem("unreadable-file", str(trans), f"cannot read: {exc.strerror}"))
            continue
        for lineno, line in numbered:
            where = f"{trans}:{lineno}"
            utt_id, transcript = (line.split(None, 1) + [""])[:2]
            match = _LS_ID.match(utt_id)
            if match is None or not utt_id.startswith(stem + "-"):
                problems.append(Problem(
                    "malformed-line", where,
                    f"expected '{stem}-<utterance> TRANSCRIPT', got {line[:60]!r}",
                ))  # fmt: skip
                if match is not None:
                    named.add(trans.parent / utt_id)
                continue
            named.add(trans.parent / utt_id)
            if not transcript.strip():
                problems.append(Problem("malformed-line", where, f"{utt_id}: no transcript after the id"))
                continue
            if utt_id in seen:
                problems.append(Problem(
                    "duplicate-id", where, f"{utt_id} already has a transcript at {seen[utt_id]}"
                ))  # fmt: skip
                continue
            seen[utt_id] = where
            text = normalize_text(transcript)
            if not text:
                problems.append(Problem(
                    "empty-text", where, f"{utt_id}: transcript {transcript!r} is empty once normalised"
                ))  # fmt: skip
                continue
            lines.append(_Line(utt_id, match[1], match[2], text, where, trans.parent))
    return lines, named


def scan_librispeech_subset(
    subset_dir: str | Path,
    *,
    genders: Mapping[str, str] | None = None,
    progress: bool = False,
) -> tuple[list[Utterance], list[Problem]]:
    """Read one LibriSpeech subset folder; writes nothing.

    Each transcript line ``<speaker>-<chapter>-<utt> TEXT`` of
    ``<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` becomes one utterance whose audio
    is ``<speaker>-<chapter>-<utt>.flac`` (or ``.wav``) in the same folder.

    Args:
        subset_dir: e.g. ``LibriSpeech/dev-clean``.
        genders: speaker id -> gender, see :func:`read_librispeech_speakers`.
        progress: show a progress bar on stderr.

    Returns:
        The utterances (ordered by speaker, chapter and utterance number; fields ``id``,
        ``audio``, ``text``, ``duration``, ``speaker``, ``chapter``, ``subset`` and maybe
        ``gender``) and the problems found (see :data:`PROBLEM_KINDS`).
    """
    subset_dir = Path(subset_dir).resolve()
    problems: list[Problem] = []
    lines, named = _parse_transcripts(subset_dir, problems)
    audio_files = sorted(p for p in subset_dir.rglob("*") if p.suffix in _LS_AUDIO_EXTS and p.is_file())
    by_stem: dict[Path, list[Path]] = {}
    for path in audio_files:
        by_stem.setdefault(path.with_suffix(""), []).append(path)

    utterances: list[Utterance] = []
    used: set[Path] = set()
    for line in _bar(lines, subset_dir.name, progress):
        candidates = by_stem.get(line.folder / line.id, [])
        if not candidates:
            problems.append(Problem(
                "missing-audio", line.where,
                f"{line.id}: no audio file {line.folder / line.id}.flac (or .wav)",
            ))  # fmt: skip
            continue
        audio = min(candidates, key=lambda p: _LS_AUDIO_EXTS.index(p.suffix))
        used.add(audio)
        duration = _probe(audio)
        if isinstance(duration, Problem):
            problems.append(duration)
            continue
        extra: dict[str, Any] = {"speaker": line.speaker, "chapter": line.chapter,
                                 "subset": subset_dir.name}  # fmt: skip
        if genders and line.speaker in genders:
            extra["gender"] = genders[line.speaker]
        utterances.append(Utterance(line.id, str(audio), line.text, duration, extra))

    for path in audio_files:
        if path in used:
            continue
        stem = path.with_suffix("")
        if any(p in used for p in by_stem[stem]):
            problems.append(Problem(
                "duplicate-audio", str(path), f"another file of {stem.name} is imported; this one is not"
            ))  # fmt: skip
        elif stem not in named:
            problems.append(Problem(
                "no-transcript", str(path),
                f"no transcript line for {stem.name} in {path.parent}/*.trans.txt; file skipped",
            ))  # fmt: skip
    utterances.sort(key=lambda u: tuple(int(x) for x in u.id.split("-")))
    return utterances, problems


def import_librispeech(
    root: str | Path,
    out_dir: str | Path,
    *,
    subsets: Iterable[str] | None = None,
    progress: bool = True,
) -> ImportSummary:
    """Write ``<subset>.jsonl`` for LibriSpeech subsets, and ``problems.jsonl``.

    Args:
        root: the ``LibriSpeech`` folder (or the folder holding it, or one subset folder).
        out_dir: where the manifests go (created); audio paths under it are stored
            relative, others absolute.
        subsets: subset folder names to import (default: every subset found).
        progress: show a progress bar per subset on stderr.

    Raises:
        CorpusImportError: ``root`` is not LibriSpeech, or a named subset is missing.
    """
    found = find_librispeech_subsets(root)
    wanted = list(found) if subsets is None else list(dict.fromkeys(subsets))
    missing = [s for s in wanted if s not in found]
    if missing:
        raise CorpusImportError(
            f"subset(s) {', '.join(missing)} not found under {Path(root)}; found: {', '.join(found)}"
        )
    genders: dict[str, str] = {}
    problems: list[Problem] = []
    for speakers in sorted({found[s].parent / "SPEAKERS.TXT" for s in wanted}):
        if speakers.is_file():
            try:
                genders.update(read_librispeech_speakers(speakers))
            except OSError as exc:
                problems.append(Problem("unreadable-file", str(speakers), f"cannot read: {exc.strerror}"))
    manifests: dict[str, list[Utterance]] = {}
    for subset in wanted:
        utterances, subset_problems = scan_librispeech_subset(
            found[subset], genders=genders, progress=progress
        )
        manifests[subset] = utterances
        problems.extend(subset_problems)
    return _write(Path(out_dir), manifests, problems)


# --- Google Speech Commands --------------------------------------------------------------


def _read_split_list(
    path: Path, problems: list[Problem]
) -> dict[str, str]:
    """``label/file.wav`` -> ``"path:line"`` of a validation or testing list."""
    entries: dict[str, str] = {}
    for lineno, line in _read_lines(path):
        where = f"{path}:{lineno}"
        if not _SC_ENTRY.match(line):
            problems.append(Problem(
                "malformed-line", where, f"expected '<label>/<speaker>_nohash_<n>.wav', got {line[:60]!r}"
            ))  # fmt: skip
        elif line in entries:
            problems.append(Problem(
                "duplicate-entry", where, f"{line} is listed already at {entries[line]}"
            ))  # fmt: skip
        else:
            entries[line] = where
    return entries


def scan_speech_commands(
    root: str | Path, *, progress: bool = False
) -> tuple[dict[str, list[Utterance]], list[Problem]]:
    """Read a Google Speech Commands folder (v0.01 or v0.02); writes nothing.

    Every ``<label>/<speaker>_nohash_<n>.wav`` becomes an utterance with id
    ``<label>-<speaker>_nohash_<n>``, text ``normalize_text(label)`` and the fields
    ``speaker`` and ``label``; it goes to ``test`` or ``validation`` if ``testing_list.txt``
    or ``validation_list.txt`` names it, to ``train`` otherwise. The clips of
    ``_background_noise_`` go, without text, to ``background-noise``.

    Returns:
        Utterances per manifest name (``train``, ``validation``, ``test``,
        ``background-noise``) and the problems found (see :data:`PROBLEM_KINDS`).

    Raises:
        CorpusImportError: ``root`` is missing, lacks a split list, or has no label folder.
    """
    path = _existing_dir(root, "a Speech Commands folder")
    for name in _SC_LISTS.values():
        if not (path / name).is_file():
            raise CorpusImportError(
                f"{path}: no {name} (ROOT must be the Speech Commands folder that holds the "
                "label folders and validation_list.txt and testing_list.txt)"
            )
    labels = sorted(d for d in path.iterdir() if d.is_dir() and d.name != NOISE_FOLDER
                    and not d.name.startswith("."))  # fmt: skip
    if not labels:
        raise CorpusImportError(f"{path}: no label folder (e.g. yes/, no/) found")

    problems: list[Problem] = []
    lists = {split: _read_split_list(path / name, problems) for split, name in _SC_LISTS.items()}
    for entry, where in lists["validation"].items():
        if entry in lists["test"]:
            problems.append(Problem(
                "listed-twice", where, f"{entry} is also in the testing list "
                f"({lists['test'][entry]}); it goes to test",
            ))  # fmt: skip

    clips = sorted((label.name, wav) for label in labels for wav in label.glob("*.wav") if wav.is_file())
    on_disk = {f"{label}/{wav.name}" for label, wav in clips}
    for split in ("validation", "test"):
        for entry, where in lists[split].items():
            if entry not in on_disk:
                problems.append(Problem("missing-audio", where, f"{entry}: no such file under {path}"))

    manifests: dict[str, list[Utterance]] = {s: [] for s in (*SPEECH_COMMANDS_SPLITS, NOISE_MANIFEST)}
    texts: dict[str, str] = {}
    for label in labels:
        texts[label.name] = normalize_text(label.name.replace("_", " "))
        if not texts[label.name]:
            problems.append(Problem(
                "empty-text", str(label), f"label {label.name!r} is empty once normalised; folder skipped"
            ))  # fmt: skip
    for label, wav in _bar(clips, "speech commands", progress):
        if not texts[label]:
            continue
        name = _SC_NAME.match(wav.stem)
        if name is None:
            problems.append(Problem(
                "malformed-name", str(wav), "expected <speaker>_nohash_<n>.wav; file skipped"
            ))  # fmt: skip
            continue
        duration = _probe(wav)
        if isinstance(duration, Problem):
            problems.append(duration)
            continue
        entry = f"{label}/{wav.name}"
        split = next((s for s in ("test", "validation") if entry in lists[s]), "train")
        manifests[split].append(Utterance(
            f"{label}-{wav.stem}", str(wav), texts[label], duration,
            {"speaker": name[1], "label": label},
        ))  # fmt: skip

    for wav in sorted((path / NOISE_FOLDER).glob("*.wav")):
        duration = _probe(wav)
        if isinstance(duration, Problem):
            problems.append(duration)
            continue
        manifests[NOISE_MANIFEST].append(Utterance(f"noise-{wav.stem}", str(wav), None, duration))
    return manifests, problems


def import_speech_commands(
    root: str | Path, out_dir: str | Path, *, progress: bool = True
) -> ImportSummary:
    """Write ``train.jsonl``, ``validation.jsonl``, ``test.jsonl``,
    ``background-noise.jsonl`` and ``problems.jsonl`` for a Speech Commands folder
    (see :func:`scan_speech_commands`).

    Raises:
        CorpusImportError: ``root`` is not a Speech Commands folder.
    """
    manifests, problems = scan_speech_commands(root, progress=progress)
    return _write(Path(out_dir), manifests, problems)


# --- Kaldi data directories --------------------------------------------------------------

KALDI_REQUIRED: tuple[str, ...] = ("wav.scp", "text")
KALDI_OPTIONAL: tuple[str, ...] = ("utt2spk", "segments", "spk2gender", "spk2age")
#: How far (seconds) a segment may end past its recording's end and be clamped to it
#: (Kaldi's ``extract-segments --max-overshoot``); farther is a ``bad-segment``.
SEGMENT_OVERSHOOT = 0.5
_KALDI_GENDERS = {"m": "M", "f": "F"}
_ARCHIVE_OFFSET = re.compile(r"\.ark:\d+(\[[^\]]*\])?$|:\d+\[[^\]]*\]$")


@dataclass(frozen=True)
class _Entry:
    """One line of a Kaldi table file: its key, the fields after it, and where it is."""

    key: str
    fields: list[str]
    where: str


def _kaldi_table(
    path: Path,
    problems: list[Problem],
    *,
    fields: int | None,
    what: str,
    malformed: set[str] | None = None,
) -> dict[str, _Entry]:
    """Key -> entry of a Kaldi table file (``KEY VALUE...`` a line), first line of a key kept.

    ``fields`` is the number of whitespace-separated values after the key, or ``None`` for
    the rest of the line as one value (``text``, ``wav.scp``). Lines of another form are
    ``malformed-line`` problems (their keys go into ``malformed``, so that what they lack
    is not reported a second time); a repeated key is a ``duplicate-id``.
    """
    try:
        numbered = _read_lines(path)
    except OSError as exc:
        problems.append(Problem("unreadable-file", str(path), f"cannot read: {exc.strerror}"))
        return {}
    table: dict[str, _Entry] = {}
    for lineno, line in numbered:
        where = f"{path}:{lineno}"
        key, *values = line.split(None, 1) if fields is None else line.split()
        if len(values) != (1 if fields is None else fields):
            problems.append(Problem(
                "malformed-line", where, f"expected '{what}', got {line[:60]!r}"
            ))  # fmt: skip
            if malformed is not None:
                malformed.add(key)
            continue
        if key in table:
            problems.append(Problem(
                "duplicate-id", where, f"{key} is already given at {table[key].where}"
            ))  # fmt: skip
            continue
        table[key] = _Entry(key, values, where)
    return table


def _wav_scp_path(rxfilename: str, root: Path) -> Path | str:
    """The file a ``wav.scp`` entry names (relative paths resolve against ``root``), or why
    the entry is refused."""
    if rxfilename.endswith("|"):
        return ("is a piped command ('... |'), which is not run; write its output to audio "
                "files (e.g. with sox or Kaldi's wav-copy) and list their paths")  # fmt: skip
    if rxfilename == "-" or rxfilename.startswith(("ark:", "scp:")):
        return "reads standard input or a Kaldi table, not a file; list audio file paths"
    if _ARCHIVE_OFFSET.search(rxfilename):
        return "is an offset into a Kaldi archive (file.ark:N); list audio file paths"
    path = Path(rxfilename).expanduser()
    return path if path.is_absolute() else root / path


def _speaker_info(
    data_dir: Path, problems: list[Problem], malformed: set[str]
) -> tuple[dict[str, str] | None, dict[str, str], dict[str, int]]:
    """utt2spk (``None`` when the file is absent; the utterances of its malformed lines go
    into ``malformed``), speaker -> gender, speaker -> age."""
    utt2spk = None
    if (data_dir / "utt2spk").is_file():
        table = _kaldi_table(data_dir / "utt2spk", problems, fields=1, what="UTT SPEAKER",
                             malformed=malformed)  # fmt: skip
        utt2spk = {k: e.fields[0] for k, e in table.items()}
    genders: dict[str, str] = {}
    if (data_dir / "spk2gender").is_file():
        for spk, e in _kaldi_table(data_dir / "spk2gender", problems, fields=1,
                                   what="SPEAKER m|f").items():  # fmt: skip
            gender = _KALDI_GENDERS.get(e.fields[0].lower())
            if gender is None:
                problems.append(Problem(
                    "malformed-line", e.where, f"{spk}: gender must be m or f, got {e.fields[0]!r}"
                ))  # fmt: skip
            else:
                genders[spk] = gender
    ages: dict[str, int] = {}
    if (data_dir / "spk2age").is_file():
        for spk, e in _kaldi_table(data_dir / "spk2age", problems, fields=1,
                                   what="SPEAKER AGE").items():  # fmt: skip
            if not e.fields[0].isdigit():
                problems.append(Problem(
                    "malformed-line", e.where, f"{spk}: age must be a whole number of years, "
                    f"got {e.fields[0]!r}",
                ))  # fmt: skip
            else:
                ages[spk] = int(e.fields[0])
    return utt2spk, genders, ages


def _segment_span(
    e: _Entry, recording_seconds: float, problems: list[Problem]
) -> tuple[float, float] | None:
    """``(start, end)`` seconds of a segments line ``UTT REC START END`` (``END`` -1: to the
    recording's end; up to :data:`SEGMENT_OVERSHOOT` past it is clamped), or ``None``."""
    try:
        start, end = float(e.fields[1]), float(e.fields[2])
    except ValueError:
        problems.append(Problem(
            "malformed-line", e.where, f"{e.key}: start and end must be numbers of seconds, "
            f"got {e.fields[1]!r} {e.fields[2]!r}",
        ))  # fmt: skip
        return None
    if end == -1:
        end = recording_seconds
    elif recording_seconds < end <= recording_seconds + SEGMENT_OVERSHOOT:
        end = recording_seconds
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end <= recording_seconds):
        problems.append(Problem(
            "bad-segment", e.where, f"{e.key}: span {e.fields[1]}-{e.fields[2]} s is not "
            f"0 <= start < end <= {recording_seconds} s (the length of {e.fields[0]})",
        ))  # fmt: skip
        return None
    return start, end


def read_kaldi_dir(
    data_dir: str | Path, *, root: str | Path | None = None, progress: bool = False
) -> tuple[list[Utterance], list[Problem]]:
    """Read a Kaldi data directory; writes nothing.

    Each ``text`` line ``UTT TRANSCRIPT`` becomes an utterance whose audio is the
    ``wav.scp`` entry of ``UTT`` or, with a ``segments`` file, the span
    ``segments`` gives of a ``wav.scp`` recording. Such an utterance points at its whole
    recording, with ``duration`` the span's length and the fields ``recording`` and
    ``segment`` (``[start, end]`` seconds): :func:`import_kaldi` cuts it into a clip, as no
    loader reads spans.

    Args:
        data_dir: the folder holding ``wav.scp`` and ``text``.
        root: the folder relative ``wav.scp`` paths start from (default: ``data_dir``'s
            parent, the corpus root where Kaldi recipes run).
        progress: show a progress bar on stderr.

    Returns:
        The utterances, ordered by id (fields ``id``, ``audio``, ``text``, ``duration``
        and, where the files give them, ``speaker``, ``gender`` (``"F"``/``"M"``) and
        ``age``), and the problems found (see :data:`PROBLEM_KINDS`).

    Raises:
        CorpusImportError: ``data_dir`` (or ``root``) is missing or lacks ``wav.scp`` or
            ``text``.
    """
    data_dir = _existing_dir(data_dir, "a Kaldi data directory with wav.scp and text")
    for name in KALDI_REQUIRED:
        if not (data_dir / name).is_file():
            raise CorpusImportError(f"{data_dir}: no {name} (a Kaldi data directory holds "
                                    "wav.scp and text, and maybe utt2spk, segments, spk2gender, "
                                    "spk2age)")  # fmt: skip
    base = data_dir.parent if root is None else _existing_dir(root, "the corpus root")
    problems: list[Problem] = []
    # keys of malformed lines, per file: what such a line lacks is reported once, by it
    bad: dict[str, set[str]] = {name: set() for name in (*KALDI_REQUIRED, *KALDI_OPTIONAL)}
    wav_scp = _kaldi_table(data_dir / "wav.scp", problems, fields=None, what="RECORDING PATH",
                           malformed=bad["wav.scp"])  # fmt: skip
    texts = _kaldi_table(data_dir / "text", problems, fields=None, what="UTT TRANSCRIPT",
                         malformed=bad["text"])  # fmt: skip
    segments = (_kaldi_table(data_dir / "segments", problems, fields=3,
                             what="UTT RECORDING START END", malformed=bad["segments"])
                if (data_dir / "segments").is_file() else None)  # fmt: skip
    utt2spk, genders, ages = _speaker_info(data_dir, problems, bad["utt2spk"])

    recordings: dict[str, Path] = {}
    for rec, e in wav_scp.items():
        path = _wav_scp_path(e.fields[0], base)
        if isinstance(path, str):
            problems.append(Problem("unsupported-audio", e.where, f"{rec}: {e.fields[0][:60]!r} {path}"))
        elif not path.is_file():
            problems.append(Problem("missing-audio", e.where, f"{rec}: no audio file {path}"))
        else:
            recordings[rec] = path
    # utterance -> (recording, its line); unlisted recordings were reported above
    spans = segments if segments is not None else {k: _Entry(k, [k], e.where) for k, e in wav_scp.items()}
    listing = "segments" if segments is not None else "wav.scp"
    for utt, e in spans.items():
        if utt not in texts and utt not in bad["text"]:
            problems.append(Problem("no-transcript", e.where, f"{utt}: no line in {data_dir / 'text'}"))
    for utt, e in texts.items():
        if utt not in spans and utt not in bad[listing]:
            problems.append(Problem("missing-audio", e.where, f"{utt}: no {listing} entry in {data_dir}"))

    seconds: dict[str, float | None] = {}
    utterances: list[Utterance] = []
    for utt in _bar(sorted(u for u in texts if u in spans), data_dir.name, progress):
        e, span = texts[utt], spans[utt]
        rec = span.fields[0]
        if rec not in recordings:
            if segments is not None and rec not in wav_scp:
                problems.append(Problem(
                    "missing-audio", span.where, f"{utt}: recording {rec} is not in wav.scp"
                ))  # fmt: skip
            continue
        if rec not in seconds:
            probed = _probe(recordings[rec])
            if isinstance(probed, Problem):
                problems.append(probed)
            seconds[rec] = None if isinstance(probed, Problem) else probed
        duration = seconds[rec]
        if duration is None:
            continue
        text = normalize_text(e.fields[0])
        if not text:
            problems.append(Problem(
                "empty-text", e.where, f"{utt}: transcript {e.fields[0]!r} is empty once normalised"
            ))  # fmt: skip
            continue
        extra: dict[str, Any] = {}
        if segments is not None:
            got = _segment_span(span, duration, problems)
            if got is None:
                continue
            duration = round(got[1] - got[0], 3)
            extra.update(recording=rec, segment=[got[0], got[1]])
        if utt2spk is not None and utt not in utt2spk and utt not in bad["utt2spk"]:
            problems.append(Problem("no-speaker", e.where, f"{utt}: not in {data_dir / 'utt2spk'}; "
                                    "imported without a speaker"))  # fmt: skip
        speaker = utt2spk.get(utt) if utt2spk is not None else None
        if speaker is not None:
            extra["speaker"] = speaker
            extra.update({k: v[speaker] for k, v in (("gender", genders), ("age", ages)) if speaker in v})
        utterances.append(Utterance(utt, str(recordings[rec]), text, duration, extra))
    return utterances, problems


def _cut_clip(utt: Utterance, clips_dir: Path) -> Utterance | Problem:
    """Write ``utt``'s ``segment`` of its recording to ``clips_dir/<utt>.flac``; the
    utterance now pointing at the clip, or the problem."""
    start, end = utt.extra["segment"]
    clip = clips_dir / (quote(utt.id, safe="") + ".flac")
    try:
        with sf.SoundFile(str(utt.audio)) as src:
            first = round(start * src.samplerate)
            last = min(round(end * src.samplerate), src.frames)
            src.seek(first)
            samples = src.read(last - first, dtype="float32", always_2d=True)  # (N, C)
            rate = src.samplerate
            subtype = "PCM_16" if src.subtype in ("PCM_S8", "PCM_U8", "PCM_16") else "PCM_24"
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        return Problem("unreadable-audio", str(utt.audio), f"{utt.id}: cannot read its segment: {exc}")
    if len(samples) == 0:
        return Problem("empty-audio", str(utt.audio), f"{utt.id}: segment {start}-{end} s has no samples")
    with atomic_write(clip, "wb") as fh:
        sf.write(fh, samples, rate, format="FLAC", subtype=subtype)
    return Utterance(utt.id, str(clip), utt.text, round(len(samples) / rate, 3), utt.extra)


def import_kaldi(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    root: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
) -> ImportSummary:
    """Write ``<name>.jsonl`` and ``problems.jsonl`` for a Kaldi data directory (see
    :func:`read_kaldi_dir`).

    With a ``segments`` file, each utterance's span is cut into
    ``out_dir/<name>-clips/<utt>.flac`` (the manifest keeps ``recording`` and ``segment``).

    Args:
        data_dir: the folder holding ``wav.scp`` and ``text``.
        out_dir: where the manifest goes (created).
        root: the folder relative ``wav.scp`` paths start from (default: ``data_dir``'s
            parent).
        name: the manifest's name (default: ``data_dir``'s folder name).
        progress: show a progress bar on stderr.

    Raises:
        CorpusImportError: not a Kaldi data directory, a name that is not a plain file
            name, or clips that would overwrite a recording.
    """
    name = Path(data_dir).resolve().name if name is None else name
    if not name or name != Path(name).name or name in (".", ".."):
        raise CorpusImportError(f"manifest name {name!r} must be a plain file name")
    utterances, problems = read_kaldi_dir(data_dir, root=root, progress=progress)
    out = Path(out_dir)
    segmented = [u for u in utterances if "segment" in u.extra]
    if segmented:
        clips_dir = (out / f"{name}-clips").resolve()
        inside = [u.audio for u in segmented if Path(str(u.audio)).resolve().parent == clips_dir]
        if inside:
            raise CorpusImportError(f"{clips_dir} holds recordings of {data_dir} (e.g. {inside[0]}); "
                                    "clips must not overwrite their input: choose another output folder")
        clips_dir.mkdir(parents=True, exist_ok=True)
        cut: list[Utterance] = []
        for utt in _bar(utterances, f"{name} clips", progress):
            done = _cut_clip(utt, clips_dir) if "segment" in utt.extra else utt
            if isinstance(done, Problem):
                problems.append(done)
            else:
                cut.append(done)
        utterances = cut
    return _write(out, {name: utterances}, problems)

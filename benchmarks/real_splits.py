"""The real-speech splits of issue 42, by speaker, written as code.

From the manifests of ``fusion data import-librispeech`` / ``import-kaldi``:

* ``train-real``: mini LibriSpeech ``train-clean-5`` and speechocean762 ``train/`` (one
  manifest; each row's ``corpus`` says which). The synthetic corpus joins it in training.
* ``librispeech-dev``: ``dev-clean-2``'s speakers at even positions (0, 2, ...) of the list
  sorted by speaker number (84, 251, 1272, ...). With ``../shared/data/real-speech``, as
  it is, it makes the dev sets.
* ``librispeech-test``: ``dev-clean-2``'s speakers at odd positions (174, 777, 1462, ...),
  less every utterance of the real-speech dev set (2412-153948-0000).
* ``speechocean762-test``: speechocean762 ``test/``; ``speechocean762-test-adult``: its
  speakers aged :data:`ADULT_AGE` or more.

Speakers never cross from train to a dev or test split (checked: :class:`SplitError`).
:func:`text_overlap` counts the dev and test sentences that also occur, verbatim, in
training or in the real-speech dev set (a sentence heard in training makes WER look
better than it is on new text); :func:`text_file_overlap` the same against the lines of
text files given with ``--text`` (an LM corpus, the synthetic corpus's sentence pools).

Rebuild the split manifests, ``README.txt`` and ``overlap.json`` from the imported
manifests (the import commands are in :data:`IMPORT_COMMANDS`)::

    .venv/bin/python benchmarks/real_splits.py \\
        --manifests ../data/manifests --out ../data/splits

(paths relative to the repository; these are the defaults).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fusion.core.manifest import Utterance, atomic_write, read_manifest, write_manifest
from fusion.core.text import normalize_text

__all__ = [
    "ADULT_AGE",
    "SOURCES",
    "SPLITS",
    "SplitError",
    "alternate_speakers",
    "load_sources",
    "make_splits",
    "real_speech_ids",
    "text_file_overlap",
    "text_overlap",
    "write_splits",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFESTS = REPO.parent / "data" / "manifests"
DEFAULT_OUT = REPO.parent / "data" / "splits"
REAL_SPEECH = REPO.parent / "shared" / "data" / "real-speech" / "manifest.jsonl"
ADULT_AGE = 18

#: imported manifest -> (its path under the manifests folder, corpus name)
SOURCES: dict[str, tuple[str, str]] = {
    "train-clean-5": ("train-clean-5/train-clean-5.jsonl", "librispeech"),
    "dev-clean-2": ("dev-clean-2/dev-clean-2.jsonl", "librispeech"),
    "speechocean762-train": ("speechocean762-train/speechocean762-train.jsonl", "speechocean762"),
    "speechocean762-test": ("speechocean762-test/speechocean762-test.jsonl", "speechocean762"),
}
#: how the manifests of :data:`SOURCES` were made (MANIFESTS: the manifests folder)
IMPORT_COMMANDS: dict[str, str] = {
    "train-clean-5": ".venv/bin/fusion data import-librispeech /work/data/ls-train/LibriSpeech "
    "-o MANIFESTS/train-clean-5",
    "dev-clean-2": ".venv/bin/fusion data import-librispeech /work/data/ls-dev/LibriSpeech "
    "-o MANIFESTS/dev-clean-2",
    "speechocean762-train": ".venv/bin/fusion data import-kaldi /work/data/so762/train "
    "--name speechocean762-train -o MANIFESTS/speechocean762-train",
    "speechocean762-test": ".venv/bin/fusion data import-kaldi /work/data/so762/test "
    "--name speechocean762-test -o MANIFESTS/speechocean762-test",
}
#: done before the imports: the mini dev-clean-2 download has no SPEAKERS.TXT, the
#: train-clean-5 one has LibriSpeech's whole list, which gives dev-clean-2's genders
PREPARE_COMMAND = "cp /work/data/ls-train/LibriSpeech/SPEAKERS.TXT /work/data/ls-dev/LibriSpeech/"
#: split name -> what it is (the README's words)
SPLITS: dict[str, str] = {
    "train-real": "train: mini LibriSpeech train-clean-5 + speechocean762 train/ "
    "(field 'corpus' says which)",
    "librispeech-dev": "dev: dev-clean-2's speakers at even positions of the list sorted by "
    "speaker number (84, 251, 1272, ...)",
    "librispeech-test": "test: dev-clean-2's speakers at odd positions (174, 777, 1462, ...), "
    "less the utterances of the real-speech dev set (2412-153948-0000)",
    "speechocean762-test": "test: speechocean762 test/ (Mandarin-L1 speakers, children included)",
    "speechocean762-test-adult": f"test: speechocean762-test's speakers aged {ADULT_AGE} or more",
}
TEST_SPLITS = ("librispeech-dev", "librispeech-test", "speechocean762-test",
               "speechocean762-test-adult")  # fmt: skip


class SplitError(ValueError):
    """The imported manifests cannot make the splits as defined; the message says why."""


def alternate_speakers(speakers: Iterable[str]) -> tuple[list[str], list[str]]:
    """The distinct speakers sorted by number, split into even and odd positions.

    >>> alternate_speakers(["251", "84", "1272", "174", "777", "84"])
    (['84', '251', '1272'], ['174', '777'])

    Raises:
        SplitError: a speaker id that is not a number.
    """
    distinct = set(speakers)
    bad = sorted(s for s in distinct if not s.isdigit())
    if bad:
        raise SplitError(f"speaker ids must be numbers to sort by number, got {bad[:3]}")
    ordered = sorted(distinct, key=int)
    return ordered[0::2], ordered[1::2]


def real_speech_ids(real_speech: Iterable[Utterance]) -> set[str]:
    """The corpus ids of the real-speech dev set's utterances: its ids are
    ``<source>-<corpus id>`` (``librispeech-2412-153948-0000``)."""
    ids = set()
    for utt in real_speech:
        source = utt.extra.get("source")
        prefix = f"{source}-"
        ids.add(utt.id[len(prefix):] if source and utt.id.startswith(prefix) else utt.id)
    return ids


def _speaker(utt: Utterance, source: str) -> str:
    speaker = utt.extra.get("speaker")
    if not isinstance(speaker, str) or not speaker:
        raise SplitError(f"{source}: utterance {utt.id} has no speaker; splits are by speaker")
    return speaker


def _tagged(utts: Iterable[Utterance], corpus: str) -> list[Utterance]:
    return [Utterance(u.id, u.audio, u.text, u.duration, {**u.extra, "corpus": corpus})
            for u in utts]  # fmt: skip


def make_splits(
    sources: Mapping[str, Sequence[Utterance]], real_speech: Iterable[Utterance]
) -> dict[str, list[Utterance]]:
    """The splits of :data:`SPLITS` from the imported manifests of :data:`SOURCES`.

    Raises:
        SplitError: a source missing, an utterance without speaker (or, in
            speechocean762-test, without age), an id in two sources, or a speaker in
            both train and a dev or test split.
    """
    missing = [name for name in SOURCES if name not in sources]
    if missing:
        raise SplitError(f"missing imported manifest(s): {', '.join(missing)}")
    corpus = {name: c for name, (_, c) in SOURCES.items()}
    dev_clean = sources["dev-clean-2"]
    even, odd = alternate_speakers(_speaker(u, "dev-clean-2") for u in dev_clean)
    even_set, odd_set = set(even), set(odd)
    held_out = real_speech_ids(real_speech)
    so_test = sources["speechocean762-test"]
    no_age = [u.id for u in so_test if not isinstance(u.extra.get("age"), int)]
    if no_age:
        raise SplitError(f"speechocean762-test: {len(no_age)} utterance(s) without an age, "
                         f"e.g. {no_age[0]}: the adult split needs spk2age")  # fmt: skip
    splits = {
        "train-real": [*_tagged(sources["train-clean-5"], "librispeech"),
                       *_tagged(sources["speechocean762-train"], "speechocean762")],
        "librispeech-dev": _tagged([u for u in dev_clean if _speaker(u, "") in even_set],
                                   corpus["dev-clean-2"]),
        "librispeech-test": _tagged([u for u in dev_clean if _speaker(u, "") in odd_set
                                     and u.id not in held_out], corpus["dev-clean-2"]),
        "speechocean762-test": _tagged(so_test, corpus["speechocean762-test"]),
        "speechocean762-test-adult": _tagged([u for u in so_test if u.extra["age"] >= ADULT_AGE],
                                             corpus["speechocean762-test"]),
    }  # fmt: skip
    _check(splits)
    return splits


def _check(splits: Mapping[str, Sequence[Utterance]]) -> None:
    """Ids unique within each split; no (corpus, speaker) of train in a dev or test split,
    and none of librispeech-dev in librispeech-test."""

    def speakers(name: str) -> set[tuple[str, str]]:
        return {(u.extra["corpus"], _speaker(u, name)) for u in splits[name]}

    for name, utts in splits.items():
        ids = [u.id for u in utts]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise SplitError(f"{name}: utterance id {dup} occurs twice")
    train = speakers("train-real")
    for name in TEST_SPLITS:
        shared = train & speakers(name)
        if shared:
            raise SplitError(f"speaker(s) {sorted(shared)[:3]} in both train-real and {name}")
    shared = speakers("librispeech-dev") & speakers("librispeech-test")
    if shared:
        raise SplitError(f"speaker(s) {sorted(shared)[:3]} in both librispeech-dev and -test")


@dataclass(frozen=True)
class Overlap:
    """How many of a split's utterances (and distinct sentences) occur verbatim elsewhere."""

    utterances: int
    sentences: int
    utterances_in_train: int
    sentences_in_train: int
    utterances_in_real_speech: int
    sentences_in_real_speech: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def text_overlap(
    splits: Mapping[str, Sequence[Utterance]], real_speech: Sequence[Utterance]
) -> dict[str, Overlap]:
    """For each dev/test split, its utterances and distinct sentences whose (normalised)
    text occurs verbatim in ``train-real`` and in the real-speech dev set."""
    train = {u.text for u in splits["train-real"]}
    real = {u.text for u in real_speech}
    out = {}
    for name in TEST_SPLITS:
        texts = [u.text for u in splits[name]]
        distinct = set(texts)
        out[name] = Overlap(
            utterances=len(texts), sentences=len(distinct),
            utterances_in_train=sum(t in train for t in texts),
            sentences_in_train=len(distinct & train),
            utterances_in_real_speech=sum(t in real for t in texts),
            sentences_in_real_speech=len(distinct & real),
        )  # fmt: skip
    return out


def text_file_overlap(
    splits: Mapping[str, Sequence[Utterance]], paths: Sequence[Path]
) -> dict[str, dict[str, dict[str, int]]]:
    """For each text file and dev/test split: ``{"utterances": n, "sentences": m}`` whose
    text is, once normalised, a whole line of the file (not a part of a longer line).

    Raises:
        OSError: a file cannot be read.
    """
    out: dict[str, dict[str, dict[str, int]]] = {}
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as fh:
            lines = {normalize_text(line) for line in fh}
        out[str(path)] = {
            name: {"utterances": sum(u.text in lines for u in splits[name]),
                   "sentences": len({u.text for u in splits[name]} & lines)}
            for name in TEST_SPLITS
        }  # fmt: skip
    return out


def load_sources(manifests: Path) -> dict[str, list[Utterance]]:
    """The imported manifests of :data:`SOURCES` under ``manifests``.

    Raises:
        SplitError: one is missing (the message gives the command that makes it).
    """
    out = {}
    for name, (rel, _) in SOURCES.items():
        path, command = manifests / rel, IMPORT_COMMANDS[name]
        if not path.is_file():
            raise SplitError(f"{path}: no such manifest; make it with "
                             f"{command.replace('MANIFESTS', str(manifests))}")  # fmt: skip
        out[name] = read_manifest(path, require=("audio", "text", "duration"))
    return out


def _hours(utts: Sequence[Utterance]) -> float:
    return round(sum(u.duration or 0.0 for u in utts) / 3600, 3)


def _readme(splits: Mapping[str, Sequence[Utterance]], overlap: Mapping[str, Overlap],
            in_files: Mapping[str, Mapping[str, Mapping[str, int]]], manifests: Path,
            real: Path, command: str) -> str:  # fmt: skip
    lines = [
        "Real-speech splits of issue 42 (by speaker). Made by benchmarks/real_splits.py on "
        f"{dt.date.today().isoformat()}:", "", f"    {command}", "",
        f"from the imported manifests in {manifests}, made with:", "",
        f"    {PREPARE_COMMAND}  # dev-clean-2's genders",
        *(f"    {c.replace('MANIFESTS', str(manifests))}" for c in IMPORT_COMMANDS.values()), "",
        f"and the real-speech dev set {real} (the other dev set, used as it is).",
        "Audio paths are absolute: the audio stays where it was unpacked. Never commit these.",
        "", "file                              utts  speakers   hours  what",
    ]  # fmt: skip
    for name, what in SPLITS.items():
        utts = splits[name]
        n_spk = len({(u.extra["corpus"], u.extra["speaker"]) for u in utts})
        lines.append(f"{name + '.jsonl':32s} {len(utts):5d} {n_spk:9d} {_hours(utts):7.3f}  {what}")
    lines += ["", "Text overlap (normalised transcripts occurring verbatim elsewhere): "
              "utterances / distinct sentences", "",
              "split                        utts  sentences  in train-real (utts/sents)  "
              "in real-speech (utts/sents)"]  # fmt: skip
    for name, o in overlap.items():
        lines.append(f"{name:27s} {o.utterances:5d} {o.sentences:10d}  "
                     f"{o.utterances_in_train:12d} / {o.sentences_in_train:<10d} "
                     f"{o.utterances_in_real_speech:12d} / {o.sentences_in_real_speech}")  # fmt: skip
    for path, counts in in_files.items():
        lines.append(f"whole lines of {path} (utts/sents): " + ", ".join(
            f"{name} {c['utterances']}/{c['sentences']}" for name, c in counts.items()))
    so = overlap["speechocean762-test"]
    lines += ["", f"overlap.json holds the same counts. {so.sentences_in_train} of "
              f"speechocean762-test's {so.sentences} distinct sentences "
              f"({100 * so.sentences_in_train / max(so.sentences, 1):.1f}%) are also spoken in "
              "train-real: its WER is mostly on sentences the acoustic model never heard, by "
              "speakers it never heard. The LM text is a separate question (check test "
              "sentences against the LM corpus)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_splits(
    manifests: Path,
    out: Path,
    real: Path = REAL_SPEECH,
    *,
    texts: Sequence[Path] = (),
    command: str = "",
) -> tuple[dict[str, list[Utterance]], dict[str, Overlap]]:
    """Make the splits from the imported manifests and write ``out/<split>.jsonl``,
    ``out/overlap.json`` (with the overlap with each of ``texts``, see
    :func:`text_file_overlap`) and ``out/README.txt``.

    Raises:
        SplitError: see :func:`load_sources` and :func:`make_splits`.
    """
    manifests, out = manifests.resolve(), out.resolve()
    if out in {(manifests / rel).parent for rel, _ in SOURCES.values()}:
        raise SplitError(f"{out} holds imported manifests: write the splits elsewhere")
    real_speech = read_manifest(real, require=("text",))
    splits = make_splits(load_sources(manifests), real_speech)
    overlap = text_overlap(splits, real_speech)
    in_files = text_file_overlap(splits, texts)
    for name, utts in splits.items():
        write_manifest(out / f"{name}.jsonl", utts)
    with atomic_write(out / "overlap.json") as fh:
        json.dump({**{k: o.to_dict() for k, o in overlap.items()}, "text_files": in_files}, fh,
                  indent=1)  # fmt: skip
        fh.write("\n")
    with atomic_write(out / "README.txt") as fh:
        fh.write(_readme(splits, overlap, in_files, manifests, real, command))
    return splits, overlap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS,
                   help=f"folder of the imported manifests (default: {DEFAULT_MANIFESTS})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for the split manifests (default: {DEFAULT_OUT})")
    p.add_argument("--real-speech", type=Path, default=REAL_SPEECH,
                   help=f"the real-speech dev set's manifest (default: {REAL_SPEECH})")
    p.add_argument("--text", type=Path, nargs="+", default=[], metavar="FILE",
                   help="text files (one sentence a line, e.g. an LM corpus) to count the "
                        "dev/test sentences that are whole lines of")
    args = p.parse_args(argv)  # fmt: skip
    command = " ".join(shlex.quote(str(a)) for a in (
        ".venv/bin/python", "benchmarks/real_splits.py", "--manifests", args.manifests,
        "--out", args.out, "--real-speech", args.real_speech,
        *(["--text", *args.text] if args.text else [])))  # fmt: skip
    try:
        splits, overlap = write_splits(args.manifests, args.out, args.real_speech,
                                       texts=args.text, command=command)  # fmt: skip
    except (SplitError, OSError, ValueError) as exc:
        print(f"real_splits: error: {exc}", file=sys.stderr)
        return 2
    for name, utts in splits.items():
        print(f"{name:28s} {len(utts):6d} utterances {_hours(utts):7.3f} h")
    for name, o in overlap.items():
        print(f"{name:28s} sentences in train-real {o.sentences_in_train}/{o.sentences} "
              f"(utterances {o.utterances_in_train}/{o.utterances}), in real-speech "
              f"{o.sentences_in_real_speech}")  # fmt: skip
    print(f"{args.out}: split manifests, overlap.json, README.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

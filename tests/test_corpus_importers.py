"""Importers of corpora on disk: tiny LibriSpeech, Speech Commands and Kaldi (speechocean762)
trees laid out like the real ones, every bad entry reported by file and line, and the CLI
end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from fusion.cli.main import main as fusion_main
from fusion.core.manifest import read_manifest
from fusion.corpus import importers
from fusion.corpus.importers import (PROBLEM_KINDS, CorpusImportError, Problem, find_librispeech_subsets,
                                     import_kaldi, import_librispeech, import_speech_commands, read_kaldi_dir,
                                     scan_librispeech_subset, scan_speech_commands)

SR = 16000


def _audio(path: Path, seconds: float, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * sr)) / sr
    sf.write(str(path), 0.1 * np.sin(2 * np.pi * 220 * t), sr, subtype="PCM_16")
    return path


def _text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _problems(problems: list[Problem] | tuple[Problem, ...]) -> dict[str, list[Problem]]:
    out: dict[str, list[Problem]] = {}
    for p in problems:
        assert p.kind in PROBLEM_KINDS
        out.setdefault(p.kind, []).append(p)
    return out


# --- LibriSpeech -------------------------------------------------------------------------

# subset -> speaker -> chapter -> [(utterance, transcript, seconds)]
LIBRI: dict[str, dict[str, dict[str, list[tuple[str, str, float]]]]] = {
    "dev-clean": {
        "103": {"1240": [("0000", "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED", 1.25),
                         ("0001", "HE'S 21 YEARS OLD", 0.5)]},
        "19": {"198": [("0000", "NORTHANGER ABBEY", 0.75), ("0001", "THIS LITTLE WORK", 1.0)],
               "227": [("0000", "PERSUASION BY JANE AUSTEN", 0.6)]},
    },
    "test-clean": {"121": {"121726": [("0000", "ALSO A POPULAR CONTRIVANCE", 0.8)]}},
}  # fmt: skip
SPEAKERS = """\
; Some comment
;ID  |SEX| SUBSET           |MINUTES| NAME
19   | F | train-clean-100  | 25.19 | Kara Shallenberg
103  | F | train-clean-100  | 25.06 | Karen Savage
60   | M | train-clean-100  | 20.18 | |CBW|Simon
"""


def _librispeech(base: Path, ext: str = "flac") -> Path:
    """``base/LibriSpeech`` with ``SPEAKERS.TXT`` and the subsets of :data:`LIBRI`."""
    root = base / "LibriSpeech"
    for subset, speakers in LIBRI.items():
        for speaker, chapters in speakers.items():
            for chapter, utts in chapters.items():
                folder = root / subset / speaker / chapter
                lines = []
                for utt, text, seconds in utts:
                    utt_id = f"{speaker}-{chapter}-{utt}"
                    _audio(folder / f"{utt_id}.{ext}", seconds)
                    lines.append(f"{utt_id} {text}")
                _text(folder / f"{speaker}-{chapter}.trans.txt", lines)
    (root / "SPEAKERS.TXT").write_text(SPEAKERS, encoding="utf-8")
    return root


def test_librispeech_import_writes_one_manifest_per_subset(tmp_path: Path) -> None:
    root = _librispeech(tmp_path)
    summary = import_librispeech(root, tmp_path / "out", progress=False)
    assert summary.problems == ()
    assert (tmp_path / "out" / "problems.jsonl").read_text() == ""
    assert summary.utterances == {"dev-clean": 5, "test-clean": 1}
    assert summary.hours["dev-clean"] == pytest.approx(4.1 / 3600, abs=1e-3)

    dev = read_manifest(tmp_path / "out" / "dev-clean.jsonl", require=("audio", "text", "duration"))
    # numeric order: speaker 19 before 103, chapter 198 before 227
    assert [u.id for u in dev] == ["19-198-0000", "19-198-0001", "19-227-0000", "103-1240-0000",
                                   "103-1240-0001"]  # fmt: skip
    by_id = {u.id: u for u in dev}
    assert by_id["103-1240-0000"].text == "chapter one missus rachel lynde is surprised"
    assert by_id["103-1240-0001"].text == "he's twenty one years old"
    assert by_id["19-198-0000"].duration == pytest.approx(0.75)
    assert by_id["103-1240-0000"].duration == pytest.approx(1.25)
    assert by_id["19-227-0000"].audio == str(root / "dev-clean/19/227/19-227-0000.flac")
    assert by_id["19-227-0000"].extra == {
        "speaker": "19", "chapter": "227", "subset": "dev-clean", "gender": "F"
    }  # fmt: skip
    [test] = read_manifest(tmp_path / "out" / "test-clean.jsonl")
    assert test.id == "121-121726-0000" and test.text == "also a popular contrivance"
    assert "gender" not in test.extra  # speaker 121 is not in SPEAKERS.TXT
    assert Path(test.audio).is_file()


def test_librispeech_durations_come_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _librispeech(tmp_path)

    def no_decoding(*args: Any, **kw: Any) -> Any:
        raise AssertionError("audio was decoded")

    monkeypatch.setattr(sf, "read", no_decoding)
    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    utterances, problems = scan_librispeech_subset(root / "test-clean")
    assert problems == []
    assert utterances[0].duration == pytest.approx(0.8)


def test_librispeech_subsets_and_roots(tmp_path: Path) -> None:
    root = _librispeech(tmp_path)
    assert list(find_librispeech_subsets(root)) == ["dev-clean", "test-clean"]
    assert list(find_librispeech_subsets(tmp_path)) == ["dev-clean", "test-clean"]  # unpack dir
    assert find_librispeech_subsets(root / "test-clean") == {"test-clean": root / "test-clean"}

    summary = import_librispeech(tmp_path, tmp_path / "a", subsets=["test-clean"], progress=False)
    assert summary.utterances == {"test-clean": 1}
    assert not (tmp_path / "a" / "dev-clean.jsonl").exists()
    summary = import_librispeech(root / "dev-clean", tmp_path / "b", progress=False)
    assert summary.utterances == {"dev-clean": 5}
    assert read_manifest(tmp_path / "b" / "dev-clean.jsonl")[0].extra["gender"] == "F"


def test_librispeech_audio_under_out_dir_is_stored_relative(tmp_path: Path) -> None:
    root = _librispeech(tmp_path)
    import_librispeech(root, root, subsets=["test-clean"], progress=False)
    [row] = _rows(root / "test-clean.jsonl")
    assert row["audio"] == "test-clean/121/121726/121-121726-0000.flac"
    assert Path(read_manifest(root / "test-clean.jsonl")[0].audio).is_file()


def test_librispeech_wav_copies_are_found(tmp_path: Path) -> None:
    root = _librispeech(tmp_path, ext="wav")
    utterances, problems = scan_librispeech_subset(root / "dev-clean")
    assert problems == []
    assert len(utterances) == 5 and all(u.audio.endswith(".wav") for u in utterances)


def test_librispeech_bad_entries_are_reported_and_skipped(tmp_path: Path) -> None:
    root = _librispeech(tmp_path)
    chapter = root / "dev-clean" / "19" / "198"
    trans = chapter / "19-198.trans.txt"
    _text(trans, [
        "19-198-0000 NORTHANGER ABBEY",   # 1: good
        "19-198-0001 THIS LITTLE WORK",   # 2: good
        "19-198-0002 AUDIO IS MISSING",   # 3: no 19-198-0002.flac
        "19-198-0003",                    # 4: no transcript
        "NOT-AN-ID SOME WORDS",           # 5: malformed id
        "",                               # 6: blank, ignored
        "19-198-0000 SAID TWICE",         # 7: duplicate id
        "19-198-0005 ...",                # 8: empty once normalised
        "19-198-0006 BROKEN AUDIO",       # 9: unreadable audio
        "20-198-0007 OTHER CHAPTER",      # 10: id of another speaker's file
        "19-198-0008 EMPTY AUDIO",        # 11: zero samples
    ])  # fmt: skip
    _audio(chapter / "19-198-0003.flac", 0.5)  # named by the bad line 4: reported once
    _audio(chapter / "19-198-0004.flac", 0.5)  # no transcript line at all
    (chapter / "19-198-0006.flac").write_bytes(b"this is not audio")
    _audio(chapter / "19-198-0008.wav", 0.0)
    _audio(chapter / "19-198-0001.wav", 1.0)  # a second copy of 0001
    _audio(root / "dev-clean" / "19" / "227" / "19-227-0009.flac", 0.3)  # no line either
    _text(root / "dev-clean" / "19" / "227" / "notes.trans.txt", ["19-227-0000 X"])

    summary = import_librispeech(root, tmp_path / "out", progress=False)
    kinds = _problems(summary.problems)
    where = {k: sorted(p.where for p in ps) for k, ps in kinds.items()}
    assert where == {
        "missing-audio": [f"{trans}:3"],
        "malformed-line": [f"{trans}:10", f"{trans}:4", f"{trans}:5"],
        "duplicate-id": [f"{trans}:7"],
        "empty-text": [f"{trans}:8"],
        "unreadable-audio": [str(chapter / "19-198-0006.flac")],
        "empty-audio": [str(chapter / "19-198-0008.wav")],
        "duplicate-audio": [str(chapter / "19-198-0001.wav")],
        "no-transcript": [str(chapter / "19-198-0004.flac"),
                          str(root / "dev-clean/19/227/19-227-0009.flac")],
        "malformed-name": [str(root / "dev-clean/19/227/notes.trans.txt")],
    }  # fmt: skip
    assert "19-198-0002" in kinds["missing-audio"][0].message
    assert f"{trans}:1" in kinds["duplicate-id"][0].message

    # the import went on: every good line of every subset is there, nothing else
    dev = read_manifest(tmp_path / "out" / "dev-clean.jsonl")
    assert [u.id for u in dev] == ["19-198-0000", "19-198-0001", "19-227-0000", "103-1240-0000",
                                   "103-1240-0001"]  # fmt: skip
    assert dev[0].text == "northanger abbey"
    assert dev[1].audio.endswith("19-198-0001.flac")
    assert summary.utterances["test-clean"] == 1
    recorded = _rows(tmp_path / "out" / "problems.jsonl")
    assert recorded == [p.to_dict() for p in summary.problems]
    assert str(kinds["missing-audio"][0]) == f"{trans}:3: " + kinds["missing-audio"][0].message


def test_librispeech_undecodable_line_is_malformed(tmp_path: Path) -> None:
    root = _librispeech(tmp_path)
    trans = root / "test-clean" / "121" / "121726" / "121-121726.trans.txt"
    trans.write_bytes(trans.read_bytes() + b"121-121726-\xff\xfe0001 BAD BYTES\n")
    utterances, problems = scan_librispeech_subset(root / "test-clean")
    assert [u.id for u in utterances] == ["121-121726-0000"]
    assert [(p.kind, p.where) for p in problems] == [("malformed-line", f"{trans}:2")]


def test_librispeech_unreadable_transcript_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _librispeech(tmp_path)
    locked = root / "dev-clean" / "19" / "198" / "19-198.trans.txt"
    real_read_lines = importers._read_lines

    def read_lines(path: Path) -> list[tuple[int, str]]:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_lines(path)

    monkeypatch.setattr(importers, "_read_lines", read_lines)
    utterances, problems = scan_librispeech_subset(root / "dev-clean")
    assert [u.id for u in utterances] == ["19-227-0000", "103-1240-0000", "103-1240-0001"]
    assert [(p.kind, p.where) for p in problems] == [
        ("unreadable-file", str(locked)),
        ("no-transcript", str(locked.parent / "19-198-0000.flac")),
        ("no-transcript", str(locked.parent / "19-198-0001.flac")),
    ]
    assert "Permission denied" in problems[0].message


def test_librispeech_rejects_what_is_not_librispeech(tmp_path: Path) -> None:
    with pytest.raises(CorpusImportError, match="no such folder"):
        import_librispeech(tmp_path / "nowhere", tmp_path / "out", progress=False)
    (tmp_path / "empty" / "dev-clean").mkdir(parents=True)
    with pytest.raises(CorpusImportError, match="no LibriSpeech subset"):
        import_librispeech(tmp_path / "empty", tmp_path / "out", progress=False)
    root = _librispeech(tmp_path)
    with pytest.raises(CorpusImportError, match="train-other-500 not found.*dev-clean, test-clean"):
        import_librispeech(root, tmp_path / "out", subsets=["train-other-500"], progress=False)
    assert not (tmp_path / "out").exists()


# --- Google Speech Commands --------------------------------------------------------------

# label -> [(file name, seconds)]
COMMANDS = {
    "yes": [("0a7c2a8d_nohash_0.wav", 1.0), ("0a7c2a8d_nohash_1.wav", 0.9),
            ("c1d39ce8_nohash_0.wav", 1.0)],
    "no": [("0a7c2a8d_nohash_0.wav", 0.8), ("9aa21fa9_nohash_0.wav", 1.0),
           ("c1d39ce8_nohash_0.wav", 1.0)],
    "three": [("9aa21fa9_nohash_2.wav", 0.7)],
}  # fmt: skip
VALIDATION = ["no/9aa21fa9_nohash_0.wav", "three/9aa21fa9_nohash_2.wav"]
TESTING = ["yes/c1d39ce8_nohash_0.wav", "no/c1d39ce8_nohash_0.wav"]


def _speech_commands(base: Path) -> Path:
    root = base / "speech_commands_v0.02"
    for label, files in COMMANDS.items():
        for name, seconds in files:
            _audio(root / label / name, seconds)
    _audio(root / "_background_noise_" / "white_noise.wav", 2.5)
    _audio(root / "_background_noise_" / "dude_miaowing.wav", 1.5)
    _text(root / "_background_noise_" / "README.md", ["noise clips"])
    _text(root / "validation_list.txt", VALIDATION)
    _text(root / "testing_list.txt", TESTING)
    _text(root / "LICENSE", ["CC BY 4.0"])
    _text(root / "README.md", ["Speech Commands"])
    return root


def test_speech_commands_splits_by_the_lists(tmp_path: Path) -> None:
    root = _speech_commands(tmp_path)
    summary = import_speech_commands(root, tmp_path / "out", progress=False)
    assert summary.problems == ()
    assert summary.utterances == {"train": 3, "validation": 2, "test": 2, "background-noise": 2}

    def manifest(name: str) -> dict[str, Any]:
        return {u.id: u for u in read_manifest(tmp_path / "out" / f"{name}.jsonl")}

    train, validation, test = manifest("train"), manifest("validation"), manifest("test")
    assert sorted(train) == ["no-0a7c2a8d_nohash_0", "yes-0a7c2a8d_nohash_0", "yes-0a7c2a8d_nohash_1"]
    assert sorted(validation) == ["no-9aa21fa9_nohash_0", "three-9aa21fa9_nohash_2"]
    assert sorted(test) == ["no-c1d39ce8_nohash_0", "yes-c1d39ce8_nohash_0"]
    utt = train["no-0a7c2a8d_nohash_0"]
    assert (utt.text, utt.duration) == ("no", pytest.approx(0.8))
    assert utt.extra == {"speaker": "0a7c2a8d", "label": "no"}
    assert utt.audio == str(root / "no" / "0a7c2a8d_nohash_0.wav")
    assert validation["three-9aa21fa9_nohash_2"].text == "three"
    assert validation["three-9aa21fa9_nohash_2"].duration == pytest.approx(0.7)

    noise = manifest("background-noise")
    assert sorted(noise) == ["noise-dude_miaowing", "noise-white_noise"]
    assert noise["noise-white_noise"].text is None
    assert noise["noise-white_noise"].duration == pytest.approx(2.5)
    assert not any("_background_noise_" in u.audio for m in (train, validation, test) for u in m.values())


def test_speech_commands_bad_entries_are_reported_and_skipped(tmp_path: Path) -> None:
    root = _speech_commands(tmp_path)
    validation = _text(root / "validation_list.txt", [
        "no/9aa21fa9_nohash_0.wav",   # 1: good
        "three/9aa21fa9_nohash_2.wav",  # 2: good
        "no/9aa21fa9_nohash_0.wav",   # 3: repeated
        "yes/c1d39ce8_nohash_0.wav",  # 4: also in the testing list
        "up/ffffffff_nohash_0.wav",   # 5: not on disk
        "just-a-name.wav",            # 6: malformed
    ])  # fmt: skip
    testing = root / "testing_list.txt"
    _audio(root / "yes" / "recording.wav", 1.0)  # not <speaker>_nohash_<n>.wav
    (root / "no" / "deadbeef_nohash_0.wav").write_bytes(b"RIFF....not a wav")

    manifests, problems = scan_speech_commands(root)
    where = {k: sorted(p.where for p in ps) for k, ps in _problems(problems).items()}
    assert where == {
        "duplicate-entry": [f"{validation}:3"],
        "listed-twice": [f"{validation}:4"],
        "missing-audio": [f"{validation}:5"],
        "malformed-line": [f"{validation}:6"],
        "malformed-name": [str(root / "yes" / "recording.wav")],
        "unreadable-audio": [str(root / "no" / "deadbeef_nohash_0.wav")],
    }
    assert f"{testing}:1" in _problems(problems)["listed-twice"][0].message
    ids = {split: sorted(u.id for u in utts) for split, utts in manifests.items()}
    assert ids["test"] == ["no-c1d39ce8_nohash_0", "yes-c1d39ce8_nohash_0"]  # test wins
    assert ids["validation"] == ["no-9aa21fa9_nohash_0", "three-9aa21fa9_nohash_2"]
    assert len(ids["train"]) == 3


def test_speech_commands_rejects_what_is_not_speech_commands(tmp_path: Path) -> None:
    root = _speech_commands(tmp_path)
    with pytest.raises(CorpusImportError, match="no such folder"):
        import_speech_commands(tmp_path / "nowhere", tmp_path / "out", progress=False)
    (root / "testing_list.txt").unlink()
    with pytest.raises(CorpusImportError, match="no testing_list.txt"):
        import_speech_commands(root, tmp_path / "out", progress=False)
    bare = tmp_path / "bare"
    _text(bare / "validation_list.txt", [])
    _text(bare / "testing_list.txt", [])
    _audio(bare / "_background_noise_" / "pink_noise.wav", 1.0)
    with pytest.raises(CorpusImportError, match="no label folder"):
        import_speech_commands(bare, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --- Kaldi data directories ---------------------------------------------------------------

# data dir -> [(utterance, speaker, transcript, seconds)], laid out like speechocean762:
# ROOT/WAVE/SPEAKER<spk>/<utt>.WAV, ROOT/<data dir>/{wav.scp,text,utt2spk,spk2utt,...}
KALDI = {
    "train": [("000010011", "0001", "WE CALL IT BEAR", 0.5),
              ("000010035", "0001", "ZERO THREE FIVE ONE", 0.6),
              ("000050012", "0005", "MARK IS GOING TO SEE ELEPHANT", 0.7)],
    "test": [("000030012", "0003", "KATE LOVES CHINA", 0.4)],
}  # fmt: skip
KALDI_SPEAKERS = {"0001": ("m", 10), "0003": ("f", 35), "0005": ("f", 27)}


def _kaldi(base: Path) -> Path:
    """``base/so762``: the data dirs of :data:`KALDI` and their WAVs (tab-separated
    wav.scp and text as in speechocean762, space-separated utt2spk)."""
    root = base / "so762"
    for name, utts in KALDI.items():
        data = root / name
        speakers = sorted({spk for _, spk, _, _ in utts})
        for utt, spk, _, seconds in utts:
            _audio(root / "WAVE" / f"SPEAKER{spk}" / f"{utt}.WAV", seconds)
        _text(data / "wav.scp", [f"{u}\tWAVE/SPEAKER{s}/{u}.WAV" for u, s, _, _ in utts])
        _text(data / "text", [f"{u}\t{t}" for u, _, t, _ in utts])
        _text(data / "utt2spk", [f"{u} {s}" for u, s, _, _ in utts])
        _text(data / "spk2utt", [f"{s} " + " ".join(u for u, k, _, _ in utts if k == s) for s in speakers])
        _text(data / "spk2gender", [f"{s}\t{KALDI_SPEAKERS[s][0]}" for s in speakers])
        _text(data / "spk2age", [f"{s}\t{KALDI_SPEAKERS[s][1]}" for s in speakers])
    _audio(root / "WAVE" / "SPEAKER0001" / "000010099.WAV", 0.3)  # untranscribed, in no wav.scp
    return root


def test_kaldi_import_reads_a_data_dir(tmp_path: Path) -> None:
    root = _kaldi(tmp_path)
    summary = import_kaldi(root / "train", tmp_path / "out", progress=False)
    assert summary.problems == ()
    assert summary.utterances == {"train": 3}
    assert summary.hours["train"] == pytest.approx(1.8 / 3600, abs=1e-3)  # 3 decimals
    assert _rows(tmp_path / "out" / "problems.jsonl") == []
    train = read_manifest(tmp_path / "out" / "train.jsonl", require=("audio", "text", "duration"))
    assert [u.id for u in train] == ["000010011", "000010035", "000050012"]
    first = train[0]
    assert first.audio == str(root / "WAVE" / "SPEAKER0001" / "000010011.WAV")  # from the parent
    assert first.text == "we call it bear" and first.duration == pytest.approx(0.5)
    assert first.extra == {"speaker": "0001", "gender": "M", "age": 10}
    assert train[2].extra == {"speaker": "0005", "gender": "F", "age": 27}

    summary = import_kaldi(root / "test", tmp_path / "out", name="so762-test", progress=False)
    assert summary.manifests == {"so762-test": tmp_path / "out" / "so762-test.jsonl"}
    [test] = read_manifest(tmp_path / "out" / "so762-test.jsonl")
    assert (test.id, test.text, test.extra["age"]) == ("000030012", "kate loves china", 35)
    assert (tmp_path / "out" / "train.jsonl").is_file()  # the first import is still there


def test_kaldi_optional_files_and_root(tmp_path: Path) -> None:
    root = _kaldi(tmp_path)
    data = root / "train"
    for name in ("utt2spk", "spk2gender", "spk2age"):
        (data / name).unlink()
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    data.rename(moved)
    utterances, problems = read_kaldi_dir(moved)  # relative to moved's parent: all missing
    assert utterances == [] and [p.kind for p in problems] == ["missing-audio"] * 3
    assert str(tmp_path / "elsewhere" / "WAVE") in problems[0].message
    utterances, problems = read_kaldi_dir(moved, root=root)
    assert problems == []
    assert [u.extra for u in utterances] == [{}, {}, {}]  # no utt2spk: no speaker fields
    # absolute paths are taken as they are
    _text(moved / "wav.scp", [f"000010011 {root}/WAVE/SPEAKER0001/000010011.WAV"])
    _text(moved / "text", ["000010011 WE CALL IT BEAR"])
    [utt] = read_kaldi_dir(moved, root=tmp_path / "elsewhere")[0]
    assert utt.audio == str(root / "WAVE" / "SPEAKER0001" / "000010011.WAV")


def test_kaldi_durations_come_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _kaldi(tmp_path)

    def no_decoding(*args: Any, **kw: Any) -> Any:
        raise AssertionError("audio was decoded")

    monkeypatch.setattr(sf, "read", no_decoding)
    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    utterances, problems = read_kaldi_dir(root / "train")
    assert problems == []
    assert [u.duration for u in utterances] == pytest.approx([0.5, 0.6, 0.7])


def test_kaldi_segments_are_cut_into_clips(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    rng = np.random.default_rng(0)
    samples = (rng.uniform(-0.5, 0.5, 3 * SR) * 32767).astype(np.int16)  # 3 s
    (root / "audio").mkdir(parents=True)
    sf.write(str(root / "audio" / "meeting.wav"), samples, SR, subtype="PCM_16")
    data = root / "data" / "dev"
    _text(data / "wav.scp", ["meeting audio/meeting.wav"])
    _text(data / "segments", ["meeting-a meeting 0.5 1.25",
                              "meeting-b meeting 2.0 -1",     # to the end
                              "meeting-c meeting 2.5 3.3"])   # 0.3 s past the end: clamped
    _text(data / "text", ["meeting-a GOOD MORNING", "meeting-b HELLO", "meeting-c BYE"])
    _text(data / "utt2spk", ["meeting-a alice", "meeting-b bob", "meeting-c bob"])
    summary = import_kaldi(data, tmp_path / "out", root=root, progress=False)
    assert summary.problems == ()
    utts = {u.id: u for u in read_manifest(tmp_path / "out" / "dev.jsonl")}
    a = utts["meeting-a"]
    assert a.audio == str(tmp_path / "out" / "dev-clips" / "meeting-a.flac")
    assert a.duration == pytest.approx(0.75)
    assert a.extra == {"recording": "meeting", "segment": [0.5, 1.25], "speaker": "alice"}
    clip, rate = sf.read(a.audio, dtype="int16")
    assert rate == SR and np.array_equal(clip, samples[8000:20000])  # lossless cut
    assert utts["meeting-b"].extra["segment"] == [2.0, 3.0]
    assert utts["meeting-c"].extra["segment"] == [2.5, 3.0]
    assert np.array_equal(sf.read(utts["meeting-c"].audio, dtype="int16")[0], samples[40000:])
    assert _rows(tmp_path / "out" / "dev.jsonl")[0]["audio"] == "dev-clips/meeting-a.flac"

    # a recording among the clips the import would write: refused before anything is cut
    again = root / "data" / "again"
    _text(again / "wav.scp", [f"take {tmp_path / 'out' / 'dev-clips' / 'meeting-a.flac'}"])
    _text(again / "segments", ["meeting-a take 0.0 0.5"])
    _text(again / "text", ["meeting-a GOOD"])
    with pytest.raises(CorpusImportError, match="must not overwrite"):
        import_kaldi(again, tmp_path / "out", name="dev", progress=False)
    assert np.array_equal(sf.read(a.audio, dtype="int16")[0], samples[8000:20000])


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")


# kind -> (change to the train dir of _kaldi, file:line of the problem (or audio path),
#          words of its message, utterances still imported)
ALL = ["000010011", "000010035", "000050012"]
KALDI_BAD = {
    "piped-command": (
        "unsupported-audio",
        lambda d: _edit(d / "wav.scp", "WAVE/SPEAKER0001/000010035.WAV", "sox WAVE/a.WAV -t wav - |"),
        "wav.scp:2", "piped command", ["000010011", "000050012"]),
    "archive-offset": (
        "unsupported-audio",
        lambda d: _edit(d / "wav.scp", "WAVE/SPEAKER0001/000010035.WAV", "data/wav.ark:1234"),
        "wav.scp:2", "Kaldi archive", ["000010011", "000050012"]),
    "stdin": (
        "unsupported-audio",
        lambda d: _edit(d / "wav.scp", "WAVE/SPEAKER0001/000010035.WAV", "-"),
        "wav.scp:2", "standard input", ["000010011", "000050012"]),
    "missing-file": (
        "missing-audio", lambda d: (d.parent / "WAVE/SPEAKER0005/000050012.WAV").unlink(),
        "wav.scp:3", "no audio file", ALL[:2]),
    "text-without-audio": (
        "missing-audio", lambda d: _append(d / "text", "000010077 NO AUDIO"),
        "text:4", "no wav.scp entry", ALL),
    "audio-without-text": (
        "no-transcript",
        lambda d: _edit(d / "text", "000010035\tZERO THREE FIVE ONE\n", ""),
        "wav.scp:2", "no line in", ["000010011", "000050012"]),
    "wav-scp-without-path": (
        "malformed-line", lambda d: _append(d / "wav.scp", "000010088"),
        "wav.scp:4", "RECORDING PATH", ALL),
    "text-without-words": (
        "malformed-line", lambda d: _edit(d / "text", "\tZERO THREE FIVE ONE", ""),
        "text:2", "UTT TRANSCRIPT", ["000010011", "000050012"]),
    "bad-gender": (
        "malformed-line", lambda d: _edit(d / "spk2gender", "0005\tf", "0005\tfemale"),
        "spk2gender:2", "gender must be m or f", ALL),
    "bad-age": (
        "malformed-line", lambda d: _edit(d / "spk2age", "0005\t27", "0005\tadult"),
        "spk2age:2", "whole number", ALL),
    "bad-utt2spk": (
        "malformed-line", lambda d: _edit(d / "utt2spk", "000050012 0005", "000050012 0005 x"),
        "utt2spk:3", "UTT SPEAKER", ALL),
    "duplicate-id": (
        "duplicate-id", lambda d: _append(d / "text", "000010011 SAID TWICE"),
        "text:4", "text:1", ALL),
    "empty-text": (
        "empty-text", lambda d: _edit(d / "text", "ZERO THREE FIVE ONE", "..."),
        "text:2", "empty once normalised", ["000010011", "000050012"]),
    "unreadable-audio": (
        "unreadable-audio",
        lambda d: (d.parent / "WAVE/SPEAKER0001/000010035.WAV").write_bytes(b"RIFF not audio"),
        "WAVE/SPEAKER0001/000010035.WAV", "cannot read", ["000010011", "000050012"]),
    "empty-audio": (
        "empty-audio", lambda d: _audio(d.parent / "WAVE/SPEAKER0001/000010035.WAV", 0.0),
        "WAVE/SPEAKER0001/000010035.WAV", "no samples", ["000010011", "000050012"]),
    "no-speaker": (
        "no-speaker", lambda d: _edit(d / "utt2spk", "000050012 0005\n", ""),
        "text:3", "without a speaker", ALL),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(KALDI_BAD))
def test_kaldi_bad_entry_is_reported_and_the_import_goes_on(tmp_path: Path, case: str) -> None:
    kind, change, where, words, kept = KALDI_BAD[case]
    root = _kaldi(tmp_path)
    data = root / "train"
    change(data)
    summary = import_kaldi(data, tmp_path / "out", progress=False)
    assert [p.kind for p in summary.problems] == [kind]
    [problem] = summary.problems
    assert problem.where == str((data if ":" in where else root) / where)
    assert words in problem.message
    assert _rows(tmp_path / "out" / "problems.jsonl") == [problem.to_dict()]
    utts = read_manifest(tmp_path / "out" / "train.jsonl")
    assert [u.id for u in utts] == kept
    if case == "no-speaker":
        assert utts[2].extra == {}
    if case in ("bad-gender", "bad-age"):
        assert "gender" in utts[2].extra or "age" in utts[2].extra  # the other field stays
        assert not ("gender" in utts[2].extra and "age" in utts[2].extra)


# kind -> (segments file of a 3 s recording "rec", where, words)
SEGMENTS_BAD = {
    "start-after-end": ("bad-segment", "x rec 1.5 1.0", "not 0 <= start < end"),
    "past-the-end": ("bad-segment", "x rec 2.0 3.6", "not 0 <= start < end"),
    "negative-start": ("bad-segment", "x rec -0.5 1.0", "not 0 <= start < end"),
    "not-numbers": ("malformed-line", "x rec one two", "numbers of seconds"),
    "too-few-fields": ("malformed-line", "x rec 1.0", "UTT RECORDING START END"),
    "unknown-recording": ("missing-audio", "x tape 0.0 1.0", "recording tape is not in wav.scp"),
}


@pytest.mark.parametrize("case", sorted(SEGMENTS_BAD))
def test_kaldi_bad_segment_is_reported(tmp_path: Path, case: str) -> None:
    kind, line, words = SEGMENTS_BAD[case]
    _audio(tmp_path / "rec.wav", 3.0)
    data = tmp_path / "data"
    _text(data / "wav.scp", ["rec rec.wav"])
    _text(data / "segments", ["good rec 0.0 1.0", line])
    _text(data / "text", ["good FINE", "x BROKEN"])
    summary = import_kaldi(data, tmp_path / "out", progress=False)
    assert [(p.kind, p.where) for p in summary.problems] == [(kind, f"{data / 'segments'}:2")]
    assert words in summary.problems[0].message
    assert [u.id for u in read_manifest(tmp_path / "out" / "data.jsonl")] == ["good"]


def test_kaldi_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _kaldi(tmp_path)
    locked = root / "train" / "spk2age"
    real_read_lines = importers._read_lines

    def read_lines(path: Path) -> list[tuple[int, str]]:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_lines(path)

    monkeypatch.setattr(importers, "_read_lines", read_lines)
    utterances, problems = read_kaldi_dir(root / "train")
    assert [(p.kind, p.where) for p in problems] == [("unreadable-file", str(locked))]
    assert len(utterances) == 3 and all("age" not in u.extra for u in utterances)


def test_kaldi_rejects_what_is_not_a_data_dir(tmp_path: Path) -> None:
    root = _kaldi(tmp_path)
    with pytest.raises(CorpusImportError, match="no such folder"):
        import_kaldi(tmp_path / "nowhere", tmp_path / "out", progress=False)
    with pytest.raises(CorpusImportError, match="no wav.scp"):
        import_kaldi(root / "WAVE", tmp_path / "out", progress=False)
    (root / "test" / "text").unlink()
    with pytest.raises(CorpusImportError, match="no text"):
        import_kaldi(root / "test", tmp_path / "out", progress=False)
    with pytest.raises(CorpusImportError, match="no such folder"):
        import_kaldi(root / "train", tmp_path / "out", root=tmp_path / "nowhere", progress=False)
    with pytest.raises(CorpusImportError, match="plain file name"):
        import_kaldi(root / "train", tmp_path / "out", name="a/b", progress=False)
    assert not (tmp_path / "out").exists()


# --- the command line --------------------------------------------------------------------


def test_cli_import_librispeech_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _librispeech(tmp_path)
    out = tmp_path / "manifests"
    assert fusion_main(["data", "import-librispeech", str(root), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "dev-clean.jsonl" in printed and "5 utterances" in printed and "no problems" in printed
    assert len(read_manifest(out / "dev-clean.jsonl", require=("audio", "text", "duration"))) == 5
    assert len(read_manifest(out / "test-clean.jsonl")) == 1

    assert fusion_main(["data", "import-librispeech", str(root), "-o", str(tmp_path / "one"),
                        "--subsets", "test-clean", "--no-progress"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["problems.jsonl", "test-clean.jsonl"]

    # bad entries: manifests still written, problems named on stderr, exit status 1
    trans = root / "test-clean" / "121" / "121726" / "121-121726.trans.txt"
    trans.write_text(trans.read_text() + "121-121726-0001 NO AUDIO\n", encoding="utf-8")
    assert fusion_main(["data", "import-librispeech", str(root), "-o", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"missing-audio: {trans}:2: 121-121726-0001" in captured.err
    assert "1 problem," in captured.out and "problems.jsonl" in captured.out
    assert len(_rows(out / "problems.jsonl")) == 1
    assert len(read_manifest(out / "test-clean.jsonl")) == 1

    assert fusion_main(["data", "import-librispeech", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_cli_import_speech_commands_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _speech_commands(tmp_path)
    out = tmp_path / "manifests"
    argv = ["data", "import-speech-commands", str(root), "-o", str(out), "--no-progress"]
    assert fusion_main(argv) == 0
    printed = capsys.readouterr().out
    for name, n in (("train", 3), ("validation", 2), ("test", 2), ("background-noise", 2)):
        assert len(read_manifest(out / f"{name}.jsonl")) == n
        assert f"{name}.jsonl" in printed
    _text(root / "testing_list.txt", [*TESTING, *(f"up/{i:08x}_nohash_0.wav" for i in range(12))])
    assert fusion_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("missing-audio") == 10 and "... and 2 more" in err
    assert fusion_main(["data", "import-speech-commands", str(tmp_path), "-o", str(out)]) == 2
    assert "no validation_list.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fusion_main(["data", "import-speech-commands", str(root)])  # -o is required


def test_cli_import_kaldi_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _kaldi(tmp_path)
    out = tmp_path / "manifests"
    argv = ["data", "import-kaldi", str(root / "test"), "-o", str(out), "--no-progress"]
    assert fusion_main([*argv, "--name", "speechocean762-test"]) == 0
    printed = capsys.readouterr().out
    assert "speechocean762-test.jsonl" in printed and "1 utterances" in printed
    assert "no problems" in printed
    assert read_manifest(out / "speechocean762-test.jsonl")[0].extra["gender"] == "F"

    moved = tmp_path / "moved"
    (root / "test").rename(moved)
    assert fusion_main(["data", "import-kaldi", str(moved), "--root", str(root), "-o", str(out),
                        "--no-progress"]) == 0  # fmt: skip
    assert len(read_manifest(out / "moved.jsonl")) == 1
    capsys.readouterr()

    _edit(moved / "wav.scp", "WAVE/SPEAKER0003/000030012.WAV", "flac -dc a.flac |")
    assert fusion_main(["data", "import-kaldi", str(moved), "--root", str(root), "-o", str(out),
                        "--no-progress"]) == 1  # fmt: skip
    captured = capsys.readouterr()
    assert f"unsupported-audio: {moved / 'wav.scp'}:1: 000030012" in captured.err
    assert "1 problem," in captured.out
    assert read_manifest(out / "moved.jsonl") == []
    assert fusion_main(["data", "import-kaldi", str(tmp_path), "-o", str(out)]) == 2
    assert "no wav.scp" in capsys.readouterr().err

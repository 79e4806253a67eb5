"""Importers of corpora on disk: tiny LibriSpeech and Speech Commands trees laid out like
the real ones, every bad entry reported by file and line, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from fusion.cli import main as fusion_main
from fusion.corpus import importers
from fusion.corpus.importers import (
    PROBLEM_KINDS,
    CorpusImportError,
    Problem,
    find_librispeech_subsets,
    import_librispeech,
    import_speech_commands,
    scan_librispeech_subset,
    scan_speech_commands,
)
from fusion.manifest import read_manifest

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

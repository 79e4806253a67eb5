"""The real-speech splits of benchmarks/real_splits.py: the by-speaker rule on synthetic
speaker lists, the real-speech dev utterance kept out of librispeech-test, the checks, the
text-overlap counts and the files written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from real_splits import (ADULT_AGE, SOURCES, SPLITS, SplitError, alternate_speakers, main,  # noqa: E402
                         make_splits, real_speech_ids, text_file_overlap, text_overlap, write_splits)

from fusion.core.manifest import Utterance, read_manifest, write_manifest  # noqa: E402

# dev-clean-2's 26 speakers, as on disk
DEV_CLEAN_2 = ["84", "174", "251", "777", "1272", "1462", "1988", "1993", "2035", "2412", "2428",
               "2803", "3000", "3536", "3576", "3752", "5338", "5694", "5895", "6241", "6295",
               "6319", "7850", "7976", "8297", "8842"]  # fmt: skip


def test_dev_clean_2_speakers_alternate_by_number() -> None:
    even, odd = alternate_speakers(reversed(DEV_CLEAN_2))
    assert even[:3] == ["84", "251", "1272"] and odd[:3] == ["174", "777", "1462"]
    assert "2412" in odd and len(even) == len(odd) == 13


def test_speakers_sort_by_number_not_as_text() -> None:
    assert alternate_speakers(["9", "10", "100", "11"]) == (["9", "11"], ["10", "100"])
    with pytest.raises(SplitError, match="must be numbers"):
        alternate_speakers(["84", "anna"])


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 10**6), max_size=60), st.randoms(use_true_random=False))
def test_alternation_is_a_partition_of_the_sorted_list(numbers: set[int], rng) -> None:  # noqa: ANN001
    speakers = [str(n) for n in numbers]
    rng.shuffle(speakers)
    even, odd = alternate_speakers(speakers * 2)  # repeats do not count
    assert sorted(even + odd, key=int) == sorted(speakers, key=int)
    merged = [s for pair in zip(even, odd + [None]) for s in pair if s is not None]
    assert merged == sorted(speakers, key=int)
    assert len(even) - len(odd) in (0, 1)


def test_real_speech_ids_drop_the_source_prefix() -> None:
    real = [Utterance("librispeech-2412-153948-0000", extra={"source": "librispeech"}),
            Utterance("ljspeech-LJ002-0020", extra={"source": "ljspeech"}),
            Utterance("plain-id")]  # fmt: skip
    assert real_speech_ids(real) == {"2412-153948-0000", "LJ002-0020", "plain-id"}


def _utt(utt_id: str, speaker: str, text: str, **extra: object) -> Utterance:
    return Utterance(utt_id, f"/audio/{utt_id}.flac", text, 2.0, {"speaker": speaker, **extra})


def _sources() -> dict[str, list[Utterance]]:
    dev = [_utt(f"{spk}-1-{i:04d}", spk, f"sentence {spk} {i}") for spk in DEV_CLEAN_2 for i in range(2)]
    dev.append(_utt("2412-153948-0000", "2412", "if the reader will excuse me"))
    return {
        "train-clean-5": [_utt("19-198-0000", "19", "northanger abbey"),
                          _utt("32-21631-0000", "32", "sentence 84 0")],  # a dev sentence
        "dev-clean-2": dev,
        "speechocean762-train": [_utt("000010011", "0001", "we call it bear", age=10),
                                 _utt("000050012", "0005", "kate loves china", age=27)],
        "speechocean762-test": [_utt("000030012", "0003", "kate loves china", age=6),
                                _utt("000240001", "0024", "kate loves china", age=ADULT_AGE),
                                _utt("000440001", "0044", "a new prompt", age=40)],
    }  # fmt: skip


REAL = [Utterance("librispeech-2412-153948-0000", "/r/a.wav", "if the reader will excuse me",
                  extra={"source": "librispeech"}),
        Utterance("ljspeech-LJ002-0020", "/r/b.wav", "a new prompt",
                  extra={"source": "ljspeech"})]  # fmt: skip


def test_splits_follow_the_rule() -> None:
    splits = make_splits(_sources(), REAL)
    assert list(splits) == list(SPLITS)
    spk = {name: {u.extra["speaker"] for u in utts} for name, utts in splits.items()}
    assert spk["librispeech-dev"] == set(DEV_CLEAN_2[0::2])
    assert spk["librispeech-test"] == set(DEV_CLEAN_2[1::2])
    assert spk["train-real"] == {"19", "32", "0001", "0005"}
    assert [u.id for u in splits["speechocean762-test-adult"]] == ["000240001", "000440001"]
    assert len(splits["speechocean762-test"]) == 3
    corpora = {u.id: u.extra["corpus"] for u in splits["train-real"]}
    assert corpora == {"19-198-0000": "librispeech", "32-21631-0000": "librispeech",
                       "000010011": "speechocean762", "000050012": "speechocean762"}  # fmt: skip


def test_the_real_speech_dev_utterance_is_not_in_librispeech_test() -> None:
    splits = make_splits(_sources(), REAL)
    test_ids = {u.id for u in splits["librispeech-test"]}
    assert "2412-153948-0000" not in test_ids
    assert {"2412-1-0000", "2412-1-0001"} <= test_ids  # the speaker's other utterances stay
    assert not any(u.id == "2412-153948-0000" for utts in splits.values() for u in utts)
    # without the real-speech set it would be there
    assert "2412-153948-0000" in {u.id for u in make_splits(_sources(), [])["librispeech-test"]}


def test_splits_refuse_what_breaks_the_rule() -> None:
    sources = _sources()
    sources["train-clean-5"].append(_utt("174-50561-0000", "174", "a test speaker in train"))
    with pytest.raises(SplitError, match=r"\('librispeech', '174'\).*train-real and librispeech-test"):
        make_splits(sources, REAL)
    sources = _sources()
    sources["speechocean762-train"].append(_utt("000030099", "0003", "a test child in train", age=6))
    with pytest.raises(SplitError, match="train-real and speechocean762-test"):
        make_splits(sources, REAL)
    sources = _sources()
    sources["speechocean762-train"].append(_utt("19-198-0000", "0009", "same id", age=30))
    with pytest.raises(SplitError, match="19-198-0000 occurs twice"):
        make_splits(sources, REAL)
    sources = _sources()
    sources["speechocean762-test"].append(_utt("000990001", "0099", "no age"))
    with pytest.raises(SplitError, match="without an age.*000990001"):
        make_splits(sources, REAL)
    sources = _sources()
    sources["dev-clean-2"].append(Utterance("84-1-0009", "/a.flac", "no speaker", 1.0))
    with pytest.raises(SplitError, match="84-1-0009 has no speaker"):
        make_splits(sources, REAL)
    sources = _sources()
    del sources["speechocean762-test"]
    with pytest.raises(SplitError, match="missing imported manifest.*speechocean762-test"):
        make_splits(sources, REAL)


def test_speaker_ids_of_two_corpora_do_not_clash() -> None:
    sources = _sources()
    sources["speechocean762-train"].append(_utt("000840001", "84", "a speechocean speaker 84", age=30))
    splits = make_splits(sources, REAL)  # LibriSpeech's 84 is another person
    assert len(splits["train-real"]) == 5


def test_text_overlap_counts_verbatim_sentences() -> None:
    overlap = text_overlap(make_splits(_sources(), REAL), REAL)
    so = overlap["speechocean762-test"]
    assert (so.utterances, so.sentences) == (3, 2)
    assert (so.utterances_in_train, so.sentences_in_train) == (2, 1)  # "kate loves china" x 2
    assert (so.utterances_in_real_speech, so.sentences_in_real_speech) == (1, 1)
    adult = overlap["speechocean762-test-adult"]
    assert (adult.utterances, adult.utterances_in_train, adult.sentences_in_train) == (2, 1, 1)
    dev = overlap["librispeech-dev"]
    assert (dev.utterances_in_train, dev.sentences_in_train) == (1, 1)  # "sentence 84 0"
    test = overlap["librispeech-test"]
    assert (test.utterances, test.utterances_in_train, test.utterances_in_real_speech) == (26, 0, 0)


def test_text_file_overlap_counts_whole_normalised_lines(tmp_path: Path) -> None:
    splits = make_splits(_sources(), REAL)
    corpus = tmp_path / "lm.txt"
    corpus.write_text("Kate loves China.\nsay: a new prompt\n", encoding="utf-8")
    [(path, counts)] = text_file_overlap(splits, [corpus]).items()
    assert path == str(corpus)
    # "kate loves china" (two speakers) once normalised; "a new prompt" is only part of a line
    assert counts["speechocean762-test"] == {"utterances": 2, "sentences": 1}
    assert counts["speechocean762-test-adult"] == {"utterances": 1, "sentences": 1}
    assert counts["librispeech-test"] == {"utterances": 0, "sentences": 0}


def _write_sources(folder: Path) -> None:
    for name, utts in _sources().items():
        write_manifest(folder / SOURCES[name][0], utts)


def test_write_splits_and_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests, out, real = tmp_path / "manifests", tmp_path / "splits", tmp_path / "real.jsonl"
    _write_sources(manifests)
    write_manifest(real, REAL)
    (tmp_path / "lm.txt").write_text("a new prompt\n", encoding="utf-8")
    assert main(["--manifests", str(manifests), "--out", str(out), "--real-speech", str(real),
                 "--text", str(tmp_path / "lm.txt")]) == 0  # fmt: skip
    assert "librispeech-test" in capsys.readouterr().out
    for name in SPLITS:
        assert (out / f"{name}.jsonl").is_file()
    test = read_manifest(out / "librispeech-test.jsonl", require=("audio", "text", "duration"))
    assert len(test) == 26 and test[0].audio.startswith("/audio/")
    overlap = json.loads((out / "overlap.json").read_text())
    assert overlap["speechocean762-test"]["sentences_in_train"] == 1
    assert overlap["text_files"][str(tmp_path / "lm.txt")]["speechocean762-test"]["sentences"] == 1
    readme = (out / "README.txt").read_text()
    assert "train-real.jsonl" in readme and "import-kaldi" in readme and "--manifests" in readme

    with pytest.raises(SplitError, match="holds imported manifests"):
        write_splits(manifests, manifests / "dev-clean-2", real)
    (manifests / SOURCES["speechocean762-test"][0]).unlink()
    assert main(["--manifests", str(manifests), "--out", str(out), "--real-speech", str(real)]) == 2
    assert "fusion data import-kaldi /work/data/so762/test" in capsys.readouterr().err

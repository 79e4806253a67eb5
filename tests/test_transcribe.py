"""fusion transcribe: block-wise audio, VAD segments, recording-time words, resuming, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REAL_SPEECH
from fusion.am.features import load_audio
from fusion.am.vad import SegmenterConfig
from fusion.cli.main import main
from fusion.core.formats import vtt_text
from fusion.core.types import WordSpan
from fusion.pipeline.transcribe import (Recording, Transcriber, audio_blocks, collect_inputs, partial_lag,
                                        readable_cues)

AUDIO = REAL_SPEECH / "audio"
SHORT = AUDIO / "ljspeech-LJ002-0020.wav"  # "in eighteen thirteen", 1.5 s
OTHER = AUDIO / "ljspeech-LJ002-0035.wav"  # "eight the press yard", 1.6 s
LONG = AUDIO / "librispeech-2412-153948-0000.wav"  # 11.7 s
needs_audio = pytest.mark.skipif(not AUDIO.is_dir(), reason="real-speech set not present")
RATE = 16_000


def write(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    sf.write(path, samples, rate, subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


def speech(path: Path = SHORT) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber()


# -- audio --------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,channels", [(44_100, 2), (8_000, 1), (16_000, 3), (22_050, 1)])
def test_blocks_equal_resampling_and_downmixing_the_whole_file(tmp_path, rate, channels):
    rng = np.random.default_rng(rate + channels)
    t = np.arange(int(2.7 * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * rng.normal(size=(len(t), channels)))
    path = write(tmp_path / "x.wav", x.astype(np.float32), rate)
    blocks = list(audio_blocks(path, RATE, block_seconds=0.25))
    assert len(blocks) > 5
    got, whole = np.concatenate(blocks), load_audio(path)
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, atol=2e-5)


def test_unreadable_and_empty_audio_are_named(tmp_path):
    from fusion.pipeline.transcribe import TranscriptionError

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(TranscriptionError, match="bad.wav"):
        list(audio_blocks(bad))
    empty = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(TranscriptionError, match="empty"):
        list(audio_blocks(empty))


def test_inputs_from_files_folders_and_manifests(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write(tmp_path / "d" / "a.wav", np.zeros(RATE, dtype=np.float32))
    write(tmp_path / "d" / "sub" / "b.flac", np.zeros(RATE, dtype=np.float32))
    (tmp_path / "d" / "notes.txt").write_text("not audio")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "m1", "audio": "d/a.wav"}) + "\n")
    got = collect_inputs([tmp_path / "d", manifest])
    assert [r.id for r in got] == ["a", "sub/b", "m1"]
    assert got[2].path == (tmp_path / "d" / "a.wav").resolve()
    with pytest.raises(ValueError, match="id 'a'"):
        collect_inputs([tmp_path / "d", tmp_path / "d" / "a.wav"])


# -- the pipeline ---------------------------------------------------------------------------
@needs_audio
def test_word_times_are_in_recording_time(tmp_path, transcriber):
    alone = write(tmp_path / "alone.wav", speech())
    later = write(tmp_path / "later.wav", np.concatenate([np.zeros(4 * RATE, np.float32), speech()]))
    (a,), _ = transcriber.transcribe(alone)
    (b,), duration = transcriber.transcribe(later)
    assert duration == pytest.approx(4.0 + len(speech()) / RATE)
    assert b.text == a.text and a.text
    assert 3.0 < b.start <= b.words[0].start and b.words[-1].end <= b.end  # the padded segment
    for wa, wb in zip(a.words, b.words):
        assert wb.start == pytest.approx(wa.start + 4.0, abs=0.1)
        assert wb.end == pytest.approx(wa.end + 4.0, abs=0.1)
        assert 0.0 <= wb.confidence <= 1.0


@needs_audio
def test_segments_never_exceed_the_maximum_length(tmp_path, transcriber):
    long = write(tmp_path / "long.wav", np.concatenate([speech(LONG)] * 2))
    saved = transcriber.vad_config
    transcriber.vad_config = SegmenterConfig(max_segment=4.0)
    try:
        segments, _ = transcriber.transcribe(long)
    finally:
        transcriber.vad_config = saved
    assert len(segments) >= 6
    assert all(s.end - s.start <= 4.0 + 1e-6 for s in segments)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))
    words = [w for s in segments for w in s.words]
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))


@needs_audio
def test_batched_segments_equal_segments_one_at_a_time(tmp_path, transcriber, monkeypatch):
    # Segments of different lengths share length-sorted batches (padding); run one per
    # batch instead, each segment's transcript, word times and confidences are the same.
    gap = np.zeros(RATE, dtype=np.float32)
    audio = write(tmp_path / "three.wav", np.concatenate(
        [speech(SHORT), gap, speech(LONG), gap, speech(OTHER), gap, speech(SHORT)]))
    batched, _ = transcriber.transcribe(audio)
    monkeypatch.setattr("fusion.pipeline.transcribe.BATCH_SECONDS", 1e-3)  # every segment alone
    alone, _ = transcriber.transcribe(audio)
    assert len(batched) == len(alone) >= 4
    for a, b in zip(batched, alone):
        assert (a.start, a.end, a.text) == (b.start, b.end, b.text) and a.text
        assert [w.word for w in a.words] == [w.word for w in b.words]
        np.testing.assert_allclose([(w.start, w.end, w.confidence) for w in a.words],
                                   [(w.start, w.end, w.confidence) for w in b.words], atol=1e-4)


@needs_audio
def test_silence_gives_an_empty_transcript(tmp_path, transcriber):
    quiet = write(tmp_path / "quiet.wav", np.zeros(3 * RATE, dtype=np.float32))
    assert transcriber.transcribe(quiet) == ([], 3.0)


# -- the command ----------------------------------------------------------------------------
@needs_audio
def test_resume_skips_finished_recordings_and_redoes_a_changed_one(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "a.wav", speech(SHORT))
    write(folder / "b.wav", speech(OTHER))
    out = tmp_path / "out.jsonl"
    calls: list[str] = []
    real = Transcriber.transcribe

    def counting(self, path, **kw):
        calls.append(Path(path).name)
        return real(self, path, **kw)

    monkeypatch.setattr(Transcriber, "transcribe", counting)
    assert main(["transcribe", str(folder), "-o", str(out)]) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in first] == ["a", "b"] and sorted(calls) == ["a.wav", "b.wav"]
    assert all(r["text"] for r in first)
    calls.clear()
    assert main(["transcribe", str(folder), "-o", str(out)]) == 0
    assert calls == [] and [json.loads(line) for line in out.read_text().splitlines()] == first
    write(folder / "b.wav", speech(SHORT))  # same name, other audio
    assert main(["transcribe", str(folder), "-o", str(out)]) == 0
    assert calls == ["b.wav"]
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert again[0] == first[0] and again[1]["text"] == first[0]["text"]


@needs_audio
def test_a_bad_file_is_recorded_and_the_batch_goes_on(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "good.wav", speech())
    (folder / "bad.wav").write_bytes(b"RIFF\x00\x00garbage")
    out = tmp_path / "out.jsonl"
    assert main(["transcribe", str(folder), "-o", str(out)]) == 1
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["good"]
    errors = [json.loads(line) for line in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["bad"] and "bad.wav" in errors[0]["error"]
    err = capsys.readouterr().err
    assert any(line.startswith("fusion transcribe: error:") and "bad.wav" in line
               for line in err.splitlines())


def test_an_output_equal_to_an_input_is_refused(tmp_path, capsys):
    audio = write(tmp_path / "a.wav", np.zeros(RATE, dtype=np.float32))
    before = audio.read_bytes()
    for flag in ("-o", "--ctm", "--srt"):
        assert main(["transcribe", str(audio), flag, str(audio)]) == 2
        assert "overwrite an input" in capsys.readouterr().err
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav"}) + "\n")
    assert main(["transcribe", str(manifest), "-o", str(manifest)]) == 2
    assert audio.read_bytes() == before


@needs_audio
def test_subtitles_and_ctm_from_the_command(tmp_path):
    audio = write(tmp_path / "a.wav", speech(LONG))
    srt, vtt, ctm = tmp_path / "a.srt", tmp_path / "subs", tmp_path / "a.ctm"
    assert main(["transcribe", str(audio), "-o", str(tmp_path / "o.jsonl"), "--srt", str(srt),
                 "--vtt", str(vtt), "--ctm", str(ctm)]) == 0
    blocks = srt.read_text().strip().split("\n\n")
    assert blocks[0].splitlines()[0] == "1"
    assert " --> " in blocks[0].splitlines()[1] and "," in blocks[0].splitlines()[1]
    text = (vtt / "a.vtt").read_text()
    assert text.startswith("WEBVTT\n\n") and "." in text.splitlines()[2]
    words = ctm.read_text().splitlines()
    assert words and all(line.split()[:2] == ["a", "1"] and len(line.split()) == 6 for line in words)


def test_readable_cues_fit_two_lines_of_42_characters():
    words = [{"word": w, "start": i * 0.4, "end": i * 0.4 + 0.3}
             for i, w in enumerate(("the quick brown fox jumps over the lazy dog " * 6).split())]
    cues = readable_cues([{"words": words}])
    assert len(cues) > 3
    assert " ".join(c[2].replace("\n", " ") for c in cues) == " ".join(w["word"] for w in words)
    for start, end, text in cues:
        lines = text.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines)
        assert end - start <= 7.0 and start < end
    assert vtt_text([(61.5, 3723.25, "hi\nthere")]) == (
        "WEBVTT\n\n00:01:01.500 --> 01:02:03.250\nhi\nthere\n\n")


def test_partial_lag_counts_from_each_word_end_to_its_stable_appearance():
    words = [WordSpan("a", 0.0, 0.5), WordSpan("b", 1.0, 1.5), WordSpan("c", 2.0, 2.2)]
    partials = [(1.0, "a"), (2.0, "a x"), (3.0, "a b"), (4.0, "a b c")]
    assert partial_lag(partials, words) == pytest.approx([0.5, 1.5, 1.8])


def test_recording_ids_are_unique_per_part_file():
    from fusion.cli.transcribe import _part_path

    a, b = Recording("x/y", Path("/a")), Recording("x_y", Path("/b"))
    assert _part_path(Path("p"), a) != _part_path(Path("p"), b)


@needs_audio
def test_streaming_with_unlimited_context_gives_the_offline_transcript(tmp_path, transcriber):
    from fusion.pipeline.transcribe import StreamOptions

    audio = write(tmp_path / "a.wav", speech(LONG)[: 4 * RATE])
    offline, _ = transcriber.transcribe(audio)
    wave = speech(LONG)[RATE: 3 * RATE]
    transcriber.stream = StreamOptions(chunk=1.0, left=30.0, lookahead=30.0)
    try:
        frames = [f for _, f in transcriber.chunk_log_probs(wave)]
        streamed, _ = transcriber.transcribe(audio)
        transcriber.stream = StreamOptions(chunk=0.5, left=0.5, lookahead=0.25)
        limited = [(end, f) for end, f in transcriber.chunk_log_probs(wave)]
    finally:
        transcriber.stream = None
    whole = transcriber.adapter([wave])[0]
    np.testing.assert_allclose(np.concatenate(frames), whole, atol=1e-4)
    assert sum(len(f) for _, f in limited) == len(whole)  # limited context: same frame count
    assert all(end <= min(len(wave), (k + 1) * RATE // 2 + RATE // 4)
               for k, (end, _) in enumerate(limited))  # never more look-ahead than asked
    assert [s.text for s in streamed] == [s.text for s in offline]
    for s in streamed:
        assert len(s.partials) >= 2  # one per chunk (the last may differ: end-of-utterance scores)
        assert all(a[0] <= b[0] for a, b in zip(s.partials, s.partials[1:]))

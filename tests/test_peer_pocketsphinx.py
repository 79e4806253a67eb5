"""pocketsphinx as a peer (benchmarks/peer_pocketsphinx.py): its output parser, the WAVs and
control lists it is given, failure accounting, the cache and, where pocketsphinx is
installed, one real run."""

from __future__ import annotations

import json
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REAL_SPEECH
from fusion.core.manifest import read_manifest
from fusion.core.metrics import score_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peer_pocketsphinx as ps  # noqa: E402

# --- output parser -------------------------------------------------------------------


def test_parse_hyp_lines_reads_words_names_and_empty_hypotheses() -> None:
    lines = ["HELLO WORLD (u000000 -1234)\n", " (u000001 -3072)\n", "\n",
             "<s> go(2) [NOISE] home </s> (u000002 -5)"]
    assert ps.parse_hyp_lines(lines) == {"u000000": "HELLO WORLD", "u000001": "",
                                         "u000002": "<s> go(2) [NOISE] home </s>"}


def test_parse_hyp_lines_names_file_and_line_of_a_bad_line() -> None:
    with pytest.raises(ps.PocketsphinxError, match=r"part0\.hyp:2: not a pocketsphinx hypothesis"):
        ps.parse_hyp_lines(["yes (u1 -3)", "garbage without a score"], "part0.hyp")


@pytest.mark.parametrize("raw, clean", [
    ("HELLO WORLD", "hello world"),
    ("<s> <sil> go home </s>", "go home"),
    ("[NOISE] read(2) the(3) ++BREATH++ book +COUGH+", "read the book"),
    ("<sil> [NOISE]", ""),
    ("", ""),
    ("don't stop", "don't stop"),
    ("wood-cutters 42", "wood cutters forty two"),
])
def test_clean_hypothesis_drops_fillers_and_alternate_marks(raw: str, clean: str) -> None:
    assert ps.clean_hypothesis(raw) == clean


# --- input: WAVs and control lists ---------------------------------------------------


def _manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_write_audio_gives_16k_mono_16bit_wavs_with_44_byte_headers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pcm = rng.integers(-20000, 20000, 16000, dtype=np.int16)
    sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    stereo = (0.1 * rng.standard_normal((8000, 2))).astype(np.float32)
    sf.write(tmp_path / "b.flac", stereo, 8000)
    m = _manifest(tmp_path, [{"id": "a", "audio": "a.wav", "text": "x"},
                             {"id": "gone", "audio": "gone.wav", "text": "y"},
                             {"id": "b/odd id", "audio": "b.flac", "text": "z"}])
    out = ps.write_audio(read_manifest(m), tmp_path / "wav")
    assert out.ids == {"u000000": "a", "u000002": "b/odd id"}
    assert out.seconds == {"u000000": 1.0, "u000002": 1.0}
    assert list(out.failed) == ["gone"] and "audio file not found" in out.failed["gone"]
    for name in out.ids:
        path = tmp_path / "wav" / f"{name}.wav"
        with wave.open(str(path)) as fh:
            shape = (fh.getnchannels(), fh.getsampwidth(), fh.getframerate(), fh.getnframes())
        assert shape == (1, 2, 16000, 16000)
        assert path.stat().st_size == ps.WAV_HEADER_BYTES + 2 * 16000
    # a 16-kHz 16-bit source passes through bit-exact, header skipped as pocketsphinx does
    body = (tmp_path / "wav" / "u000000.wav").read_bytes()[ps.WAV_HEADER_BYTES:]
    assert np.array_equal(np.frombuffer(body, dtype="<i2"), pcm)


def test_split_control_balances_audio_and_keeps_order() -> None:
    seconds = {"a": 10.0, "b": 1.0, "c": 9.0, "d": 2.0, "e": 5.0}
    parts = ps.split_control(seconds, 2)
    # a 10 -> 0, c 9 -> 1, e 5 -> 1 (14), d 2 -> 0 (12), b 1 -> 0 (13): longest first onto the lighter
    assert parts == [["a", "b", "d"], ["c", "e"]]
    assert ps.split_control(seconds, 9) == [["a"], ["c"], ["e"], ["d"], ["b"]]
    assert ps.split_control({}, 3) == []
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        ps.split_control(seconds, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 30.0), max_size=40), st.integers(1, 6))
def test_split_control_uses_every_name_once_in_order(durations: list[float], jobs: int) -> None:
    seconds = {f"u{i}": d for i, d in enumerate(durations)}
    parts = ps.split_control(seconds, jobs)
    assert sorted(n for p in parts for n in p) == sorted(seconds)
    assert all(p and p == sorted(p, key=lambda n: int(n[1:])) for p in parts)
    assert len(parts) == min(jobs, len(seconds))
    if parts:  # greedy LPT: no part exceeds another by more than its longest utterance
        loads = [sum(seconds[n] for n in p) for p in parts]
        assert max(loads) - min(loads) <= max(seconds.values()) + 1e-9


def test_group_ids_by_age_band_and_gender(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [
        {"id": "k", "audio": "k.wav", "text": "a", "age": 9, "gender": "F"},
        {"id": "t", "audio": "t.wav", "text": "a", "age": 17, "gender": "M"},
        {"id": "g", "audio": "g.wav", "text": "a", "age": 18, "gender": "F"},
        {"id": "n", "audio": "n.wav", "text": "a"},
    ])
    assert ps.group_ids(read_manifest(m)) == {"age": {"adult": ["g"], "child": ["k", "t"]},
                                              "gender": {"F": ["k", "g"], "M": ["t"]}}
    assert ps.group_ids(read_manifest(m)[3:]) == {}


# --- runs without pocketsphinx: failures and cache -----------------------------------


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ps.PocketsphinxModel, list]:
    """A model whose files exist, a version, and a decoder that answers from a table (and
    records each call's control parts)."""
    (tmp_path / "model" / "en-us").mkdir(parents=True)
    (tmp_path / "model" / "en-us" / "mdef").write_text("m")
    (tmp_path / "model" / "lm.bin").write_text("l")
    (tmp_path / "model" / "dict").write_text("d")
    monkeypatch.setattr(ps, "pocketsphinx_version", lambda: "test-1")
    calls: list[list[list[str]]] = []

    def decode(parts, wav_dir, work, model):  # noqa: ANN001, ANN202
        calls.append(parts)
        answers = {"u000000": "<s> THE CAT(2) [NOISE] </s>", "u000001": ""}
        names = [n for p in parts for n in p]
        return ({n: answers[n] for n in names if n in answers},
                {n: "pocketsphinx wrote no hypothesis" for n in names if n not in answers}, ["ERROR: x"])

    monkeypatch.setattr(ps, "_decode_parts", decode)
    model = ps.PocketsphinxModel(tmp_path / "model" / "en-us", tmp_path / "model" / "lm.bin",
                                 tmp_path / "model" / "dict")
    return model, calls


def test_scores_count_failures_as_empty_and_reuse_the_cache(
        tmp_path: Path, fake_model: tuple[ps.PocketsphinxModel, list]) -> None:
    model, calls = fake_model
    for name in ("a", "b", "c"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(1600, np.float32), 16000)
    m = _manifest(tmp_path, [{"id": "a", "audio": "a.wav", "text": "the cat", "age": 30},
                             {"id": "b", "audio": "b.wav", "text": "a dog", "age": 8},
                             {"id": "c", "audio": "c.wav", "text": "sat"},
                             {"id": "d", "audio": "missing.wav", "text": "on mats"}])
    cache = tmp_path / "cache"
    r = ps.pocketsphinx_scores(m, jobs=2, cache_dir=cache, model=model)
    refs = {u.id: u.text for u in read_manifest(m)}
    expected = score_corpus(refs, {"a": "the cat", "b": "", "c": "", "d": ""})
    assert (r["wer"], r["cer"], r["errors"], r["words"]) == (expected.wer, expected.cer, 5, 7)
    assert r["failed"] == 2 and set(r["failed_utterances"]) == {"c", "d"}
    assert "audio file not found" in r["failed_utterances"]["d"]
    assert r["empty"] == 3 and r["utterances"] == 4 and r["audio_seconds"] == pytest.approx(0.3)
    assert r["groups"]["age"]["adult"]["wer"] == 0.0 and r["groups"]["age"]["child"]["errors"] == 2
    assert not r["cached"] and len(calls) == 1
    again = ps.pocketsphinx_scores(m, jobs=1, cache_dir=cache, model=model)
    assert again["cached"] and len(calls) == 1
    assert again["wer"] == r["wer"] and again["failed_utterances"] == r["failed_utterances"]
    m.write_text(m.read_text() + json.dumps({"id": "e", "audio": "a.wav", "text": "x"}) + "\n")
    grown = ps.pocketsphinx_scores(m, cache_dir=cache, model=model)
    assert not grown["cached"] and len(calls) == 2
    # a, e share a.wav and b was decoded (empty words) before: only c (named u000000 in
    # this run, where the fake decoder answers "the cat") goes to pocketsphinx again
    assert grown["reused"] == 3 and calls[1] == [["u000000"]]
    assert grown["audio_seconds"] == pytest.approx(0.4) and grown["decoded_seconds"] == pytest.approx(0.1)
    hyps = ps.pocketsphinx_hypotheses(m, cache_dir=cache, model=model)  # cached: no decoding
    assert len(calls) == 2
    assert hyps == {"a": "the cat", "b": "", "c": "the cat", "d": "", "e": "the cat"}


def test_a_killed_run_resumes_from_the_chunks_it_finished(
        tmp_path: Path, fake_model: tuple[ps.PocketsphinxModel, list],
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, calls = fake_model
    for name in ("a", "b", "c"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(800, np.float32), 16000)
    m = _manifest(tmp_path, [{"id": n, "audio": f"{n}.wav", "text": "x"} for n in "abc"])
    monkeypatch.setattr(ps, "CHUNK_UTTERANCES", 1)
    real = ps._decode_parts
    killed: list[bool] = []

    def dies_on_the_second_chunk(*args):  # noqa: ANN002, ANN202
        if len(calls) == 1 and not killed:
            killed.append(True)
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(ps, "_decode_parts", dies_on_the_second_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        ps.run_pocketsphinx(m, jobs=1, cache_dir=tmp_path / "cache", model=model)
    assert calls == [[["u000000"]]]
    run = ps.run_pocketsphinx(m, jobs=1, cache_dir=tmp_path / "cache", model=model)
    assert run.reused == 1 and calls[1:] == [[["u000000"]], [["u000000"]]]  # b, then c
    assert run.words["a"] == "<s> THE CAT(2) [NOISE] </s>" and run.decoded_seconds == pytest.approx(0.1)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        ps.run_pocketsphinx(m, jobs=0, model=model)


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    model = ps.PocketsphinxModel(tmp_path / "en-us", tmp_path / "lm.bin", tmp_path / "dict")
    with pytest.raises(ps.PocketsphinxError, match=r"acoustic model folder not found: .*en-us"):
        model.check()


def test_cli_refuses_an_output_over_an_input_and_bad_jobs(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [{"id": "a", "audio": "a.wav", "text": "x"}])
    assert ps.main([str(m), "--out", str(m)]) == 2
    assert ps.main([str(m), "--jobs", "0"]) == 2
    assert ps.main([str(m), "--every", "0"]) == 2
    assert m.read_text().startswith('{"id": "a"')


# --- one real run --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(ps.BATCH) is None or not ps.DEBIAN_MODEL.exists(),
                    reason="Debian's pocketsphinx / pocketsphinx-en-us not installed")
@pytest.mark.skipif(not (REAL_SPEECH / "manifest.jsonl").exists(), reason="no shared data")
def test_end_to_end_on_two_real_utterances(tmp_path: Path) -> None:
    keep = {"ljspeech-LJ002-0035", "an4-an104-mrcb-b"}
    rows = [u.to_dict() for u in read_manifest(REAL_SPEECH / "manifest.jsonl") if u.id in keep]
    m = _manifest(tmp_path, rows)
    r = ps.pocketsphinx_scores(m, jobs=2, cache_dir=tmp_path / "cache")
    assert r["utterances"] == 2 and r["failed"] == 0 and r["jobs"] == 2
    hyps = ps.pocketsphinx_hypotheses(m, cache_dir=tmp_path / "cache")
    assert hyps == {"ljspeech-LJ002-0035": "eight the press yard", "an4-an104-mrcb-b": "start"}
    assert r["wer"] == 0.0 and 0 < r["rtf"] and r["audio_seconds"] == pytest.approx(2.6, abs=0.05)
    out = tmp_path / "ps.json"
    assert ps.main([str(m), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["splits"]["m"]["wer"] == 0.0
    assert "| m | 2 | 0 |" in out.with_suffix(".md").read_text()
    # a sample of every 2nd utterance: the first one, taken from the store, nothing decoded
    assert ps.main([str(m), "--every", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    sample = json.loads(out.read_text())["splits"]["m-every2"]
    assert (sample["utterances"], sample["reused"], sample["every"]) == (1, 1, 2)
    assert sample["decoded_seconds"] == 0 and sample["rtf"] is None

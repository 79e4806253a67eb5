"""Synthetic accents: phoneme rewrite rules, the accent voices, speaking with them."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from fusion.corpus.accents import ACCENT_RULES, accent_phonemes, accented_text, espeak_phonemes
from fusion.corpus.synth import SynthesisError, synthesize
from fusion.corpus.voices import (
    ESPEAK_DIALECTS,
    ESPEAK_EXTRA_VARIANTS,
    ESPEAK_VARIANTS,
    Prosody,
    Voice,
    accent_voices,
    is_heldout,
    select_voices,
    train_only_catalogue,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (Debian package espeak-ng)"
)

# espeak-ng 1.51's en-us phonemes for "the thing is that he was running_ and the judge said
# bags love nation stone with a bottle of milk" (``espeak-ng -q -x -v en-us``).
PHONEMES = ("D@2 T'IN Iz Dat hi: wVz r'VnIN_:_: and D@2 dZ'VdZ s'Ed b'agz l'Vv n'eIS@n "
            "st'oUn wID a# b'0t#@L Vv m'Ilk")  # fmt: skip


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ts", "d@2 t'IN Iz dat hi: wVz r'VnIN_:_: and d@2 dZ'VdZ s'Ed b'agz l'Vv n'eIS@n "
               "st'oUn wId a# b'0t#@L Vv m'Ilk"),
        # word-initial th -> d, elsewhere v
        ("tf", "d@2 f'IN Iz dat hi: wVz r'VnIN_:_: and d@2 dZ'VdZ s'Ed b'agz l'Vv n'eIS@n "
               "st'oUn wIv a# b'0t#@L Vv m'Ilk"),
        ("hd", "D@2 T'IN Iz Dat i: wVz r'VnIN_:_: and D@2 dZ'VdZ s'Ed b'agz l'Vv n'eIS@n "
               "st'oUn wID a# b'0t#@L Vv m'Ilk"),
        # word-final only, past the pause marks
        ("gd", "D@2 T'In Iz Dat hi: wVz r'VnIn_:_: and D@2 dZ'VdZ s'Ed b'agz l'Vv n'eIS@n "
               "st'oUn wID a# b'0t#@L Vv m'Ilk"),
        ("cr", "D@2 T'IN Iz Dat hi: wVz r'VnIN_:_: an D@2 dZ'VdZ s'Ed b'agz l'Vv n'eIS@n "
               "st'oUn wID a# b'0t#@L Vv m'Ilk"),
        # dZ -> tS as one sound; only the last obstruent of a word
        ("fd", "D@2 T'IN Is Dat hi: wVs r'VnIN_:_: ant D@2 dZ'VtS s'Et b'ags l'Vf n'eIS@n "
               "st'oUn wIT a# b'0t#@L Vf m'Ilk"),
        ("mo", "D@2 T'IN Iz Dat hi: wVz r'VnIN_:_: and D@2 dZ'VdZ s'Ed b'agz l'Vv n'e:S@n "
               "st'o:n wID a# b'0t#@L Vv m'Ilk"),
        # I of the diphthong eI and U of oU stay
        ("tl", "D@2 T'i:N i:z Dat hi: wVz r'Vni:N_:_: and D@2 dZ'VdZ s'Ed b'agz l'Vv n'eIS@n "
               "st'oUn wi:D a# b'0t#@L Vv m'i:lk"),
        ("vw", "D@2 T'IN Iz Dat hi: wVz r'VnIN_:_: and D@2 dZ'VdZ s'Ed b'agz l'Vw n'eIS@n "
               "st'oUn wID a# b'0t#@L Vw m'Ilk"),
        # schwa, not the syllabic l (@L)
        ("sv", "Da T'IN Iz Dat hi: wVz r'VnIN_:_: and Da dZ'VdZ s'Ed b'agz l'Vv n'eISan "
               "st'oUn wID a b'0t#@L Vv m'Ilk"),
    ],
)  # fmt: skip
def test_each_rule_rewrites_by_hand(code: str, expected: str) -> None:
    assert accent_phonemes(PHONEMES, [code]) == expected


def test_rules_apply_in_order_and_keep_lines() -> None:
    assert accent_phonemes(PHONEMES, []) == PHONEMES
    # devoicing after cluster reduction: "and" -> "an"; before it, "and" -> "ant", which stays
    assert accent_phonemes("and\nb'agz", ["cr", "fd"]) == "an\nb'ags"
    assert accent_phonemes("and", ["fd", "cr"]) == "ant"
    assert accent_phonemes("'hOt ,hi:", ["hd"]) == "'Ot ,i:"  # stress marks stay
    assert accent_phonemes("'aI 'OI 'aU @U U@", ["tl"]) == "'aI 'OI 'aU @U U@"


def test_unknown_rules_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"unknown accent rule\(s\) xx, yy; choose from ts, tf"):
        accent_phonemes("D@", ["ts", "xx", "yy"])
    with pytest.raises(ValueError, match=r"'espeaka-x': unknown accent rule\(s\) zz"):
        Voice("espeaka-x", "espeak-ng", "en-us+m3", settings="ts zz")


def test_accent_voices_are_seeded_train_only_and_named_after_their_rules() -> None:
    voices = accent_voices()
    assert voices == accent_voices() and accent_voices(seed=1) != voices
    assert set(voices) < set(train_only_catalogue())
    assert len(voices) == 12 * 7 == len({v.name for v in voices})
    assert sum(v.weight for v in voices) == pytest.approx(40.0)
    assert not select_voices(["espeak-*", "espeakv-*"], voices)
    seen = [d for d in ESPEAK_DIALECTS if d != "en-029"]
    named = set(ESPEAK_VARIANTS[1:] + ESPEAK_EXTRA_VARIANTS)
    for voice in voices:
        assert not is_heldout(voice) and voice.engine == "espeak-ng"
        dialect, variant = voice.model.split("+")
        codes = voice.settings.split()
        assert dialect in seen and variant in named and codes
        assert voice.name == f"espeaka-{voice.model}-" + "-".join(codes)
        assert set(codes) <= set(ACCENT_RULES) and not {"ts", "tf"} <= set(codes)
    assert [v.model.split("+")[0] for v in voices[::12]] == seen
    assert all(len(accent_voices(rule_probability=0.0)[i].settings.split()) == 1 for i in range(84))
    # A held-out dialect makes no accents, and its accents would be held out anyway.
    other = accent_voices(per_dialect=2, patterns=("espeak-en-us*",))
    assert len(other) == 2 * 6 and not any("en-us" in v.model for v in other)
    assert is_heldout("espeaka-en-029+m3-ts") and not is_heldout("espeaka-en-us+m3-ts")


@needs_espeak
def test_accented_text_speaks_rewritten_phonemes_and_the_same_words() -> None:
    plain = espeak_phonemes("the thing", "en-us")
    assert plain == "D@2 T'IN"
    assert accented_text("the thing", "en-us", []) == "[[D@2 T'IN]]"
    assert accented_text("the thing", "en-us", ["ts"]) == "[[d@2 t'IN]]"
    assert espeak_phonemes("-s the", "en-us") == "'Es D@2"  # text, not an option
    with pytest.raises(RuntimeError, match="espeak-ng -x -v nosuch failed"):
        espeak_phonemes("the", "nosuch")


@needs_espeak
def test_an_accent_voice_speaks_deterministically_and_otherwise() -> None:
    text = "the three brothers were thinking of the other one"
    voice = Voice("espeaka-en-us+m3-ts", "espeak-ng", "en-us+m3", settings="ts")
    accented = synthesize(text, voice, prosody=Prosody(1.0, 1.0), seed=1)
    again = synthesize(text, voice, prosody=Prosody(1.0, 1.0), seed=1)
    plain = synthesize(text, Voice("p", "espeak-ng", voice.model), prosody=Prosody(), seed=1)
    assert torch.equal(accented, again) and accented.abs().max() > 0.5
    assert accented.numel() != plain.numel() or not torch.equal(accented, plain)
    # same words, about as long
    assert 0.8 < accented.numel() / plain.numel() < 1.25
    broken = Voice("espeaka-nosuch+m3-ts", "espeak-ng", "nosuch+m3", settings="ts")
    with pytest.raises(SynthesisError, match="voice espeaka-nosuch[+]m3-ts: espeak-ng -x"):
        synthesize(text, broken)


def test_an_accent_voice_without_espeak_fails_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("espeak-ng")

    monkeypatch.setattr(subprocess, "run", missing)
    voice = Voice("espeaka-en-us+m3-ts", "espeak-ng", "en-us+m3", settings="ts")
    with pytest.raises(SynthesisError, match="espeaka-en-us[+]m3-ts: program 'espeak-ng' not installed"):
        synthesize("the", voice)

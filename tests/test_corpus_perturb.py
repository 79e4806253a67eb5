"""fusion data augment: copies of a real-speech manifest (speed, simulated rooms, noise)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.cli import corpus as data_cli
from fusion.core.manifest import Utterance, read_manifest
from fusion.corpus.augment import RoomConfig
from fusion.corpus.perturb import (PerturbConfig, PerturbError, RoomBank, augment_manifest, plan_copies,
                                   simulate_room_bank)

RATE = 16_000
# Small rooms of low image order: a test room simulates in milliseconds (and the order
# cap shortens its measured RT60 to about 0.2 s).
FAST_ROOMS = RoomConfig(rt60=(0.15, 0.3), size_min=(3.0, 3.0, 2.5), size_max=(4.0, 4.0, 3.0),
                        max_order=20)  # fmt: skip


def _tone(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    voiced = sum(np.sin(2 * np.pi * 140 * (1 + seed % 3 * 0.1) * k * t) / k for k in range(1, 20))
    return (level * voiced / np.abs(voiced).max() + 0.002 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def _corpus(tmp_path: Path, n: int = 4, seconds: float = 0.6) -> Path:
    """``n`` utterances of two speakers in tmp_path/in/, with a manifest."""
    folder = tmp_path / "in"
    (folder / "audio").mkdir(parents=True)
    rows = []
    for i in range(n):
        sf.write(folder / "audio" / f"u{i}.wav", _tone(seconds + 0.1 * i, i), RATE, subtype="PCM_16")
        rows.append({"id": f"s{i % 2}-u{i}", "audio": f"audio/u{i}.wav", "text": f"words {i}",
                     "duration": seconds + 0.1 * i, "speaker": f"s{i % 2}", "corpus": "test"})  # fmt: skip
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _config(**changes: object) -> PerturbConfig:
    base = {"rooms": 3, "room": FAST_ROOMS}
    return PerturbConfig(**{**base, **changes})  # type: ignore[arg-type]


def _run(manifest: Path, out: Path, **kwargs: object):  # noqa: ANN202
    kwargs.setdefault("config", _config())
    return augment_manifest(manifest, out, jobs=1, progress=False, **kwargs)  # type: ignore[arg-type]


def _audio_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.wav"))}


def test_default_recipe_two_speeds_ids_fields_and_ops(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path)
    summary = _run(manifest, tmp_path / "out")
    rows = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    assert summary.manifest == tmp_path / "out" / "train.jsonl"
    assert summary.copies == len(rows) == 8 and summary.written == 8 and not summary.problems
    for i, (a, b) in enumerate(zip(rows[::2], rows[1::2])):
        assert a["id"].startswith(f"s{i % 2}-u{i}~sp0.9") and b["id"].startswith(f"s{i % 2}-u{i}~sp1.1")
        for row in (a, b):
            assert re.fullmatch(r"s\d-u\d~sp(0\.9|1\.1)(-rir)?(-(white|pink|brown|babble))?", row["id"])
            assert row["text"] == f"words {i}" and row["speaker"] == f"s{i % 2}"
            assert row["corpus"] == "test" and row["orig_id"] == f"s{i % 2}-u{i}"
            kinds = [op["type"] for op in row["augment"]]
            assert kinds[0] == "speed" and set(kinds) <= {"speed", "room", "noise"}
            assert ("-rir" in row["id"]) == ("room" in kinds)
            assert (tmp_path / "out" / row["audio"]).is_file()
    assert read_manifest(summary.manifest)  # a valid manifest
    assert _audio_files(tmp_path / "in").keys() == {f"audio/u{i}.wav" for i in range(4)}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, n=3)
    config = _config(p_room=1.0, p_noise=1.0)
    _run(manifest, tmp_path / "a", seed=5, config=config)
    _run(manifest, tmp_path / "b", seed=5, config=config)
    _run(manifest, tmp_path / "c", seed=6, config=config)
    a, b, c = (_audio_files(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 6
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert a != c


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration_by_the_factor(tmp_path: Path, factor: float) -> None:
    manifest = _corpus(tmp_path, n=2, seconds=1.0)
    summary = _run(manifest, tmp_path / "out", config=_config(speeds=(factor,), p_room=0, p_noise=0))
    for row, utt in zip(read_manifest(summary.manifest), read_manifest(manifest)):
        frames = sf.info(row.audio).frames
        assert frames == pytest.approx(sf.info(utt.audio).frames / factor, abs=2)
        assert row.duration == pytest.approx(frames / RATE, abs=1e-3)


def test_room_copy_keeps_length_and_is_finite(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, n=2)
    summary = _run(manifest, tmp_path / "out", config=_config(speeds=(1.0,), p_room=1, p_noise=0))
    for row, utt in zip(read_manifest(summary.manifest), read_manifest(manifest)):
        (op,) = row.extra["augment"]
        assert op["type"] == "room" and 0.15 <= op["rt60"] <= 0.3
        assert 0.15 <= op["rt60_measured"] <= 0.3
        wet, _ = sf.read(row.audio)
        dry, _ = sf.read(utt.audio)
        assert wet.shape == dry.shape and np.isfinite(wet).all()
        assert not np.allclose(wet, dry, atol=1e-3)
        assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(dry**2)), rel=0.01)


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
def test_noise_reaches_the_recorded_snr(tmp_path: Path, kind: str) -> None:
    manifest = _corpus(tmp_path, n=4)
    config = _config(speeds=(1.0,), p_room=0, p_noise=1, noise_kinds=(kind,))
    summary = _run(manifest, tmp_path / "out", config=config)
    for row, utt in zip(read_manifest(summary.manifest), read_manifest(manifest)):
        (op,) = row.extra["augment"]
        assert op["kind"] == kind and row.id.endswith(f"~sp1-{kind}")
        noisy, _ = sf.read(row.audio)
        clean, _ = sf.read(utt.audio)
        snr = 10 * math.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
        assert snr == pytest.approx(op["snr_db"], abs=0.1)  # 16-bit rounding aside
        if kind == "babble":
            assert 13 <= op["snr_db"] <= 20
            speakers = {u.id: u.extra["speaker"] for u in read_manifest(manifest)}
            assert op["talkers"] == len(op["talker_ids"]) >= 1
            assert all(speakers[t] != row.extra["speaker"] for t in op["talker_ids"])
        else:
            assert 5 <= op["snr_db"] <= 20


def test_resume_writes_only_missing_files(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, n=3)
    out = tmp_path / "out"
    first = _run(manifest, out)
    files = sorted(out.rglob("*.wav"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    second = _run(manifest, out)
    assert (second.written, second.reused) == (1, len(files) - 1)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files[1:])
    assert second.manifest.read_bytes() == first.manifest.read_bytes()
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(PerturbError, match="other settings.*seed"):
        _run(manifest, out, seed=1)
    settings = json.loads((out / "augment.json").read_text())
    settings["settings"]["version"] -= 1  # made by an older version of the recipe
    (out / "augment.json").write_text(json.dumps(settings))
    with pytest.raises(PerturbError, match="other settings.*version"):
        _run(manifest, out)


def test_bad_audio_is_recorded_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _corpus(tmp_path, n=3)
    (tmp_path / "in" / "audio" / "u1.wav").write_bytes(b"RIFF not really a wave file")
    (tmp_path / "in" / "audio" / "u2.wav").unlink()
    out = tmp_path / "out"
    summary = _run(manifest, out, config=_config(noise_kinds=("pink",)))
    assert [r.extra["orig_id"] for r in read_manifest(summary.manifest)] == ["s0-u0", "s0-u0"]
    problems = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert [p["id"] for p in problems] == ["s1-u1", "s0-u2"]
    assert "cannot decode audio" in problems[0]["error"] and "s1-u1" in problems[0]["error"]
    assert "not found" in problems[1]["error"]
    status = data_cli.main([
        "augment", str(manifest), "--out", str(out), "--rooms", "3", "--no-progress", "--jobs", "1",
        "--noise-kinds", "pink",
    ])  # fmt: skip  (a new settings file: the room config differs from _config's)
    assert status == 2 and "other settings" in capsys.readouterr().err
    status = data_cli.main(["augment", str(manifest), "--out", str(tmp_path / "cli"),
                            "--rooms", "2", "--rt60", "0.2", "0.3", "--speeds", "1.0",
                            "--p-room", "0", "--no-progress", "--jobs", "1"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert status == 1
    assert any("'s1-u1'" in line and "cannot decode audio" in line for line in err)
    assert any("'s0-u2'" in line and "not found" in line for line in err)


def test_a_failing_babble_talker_skips_that_copy_only(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, n=2)  # two speakers: each babbles with the other
    (tmp_path / "in" / "audio" / "u1.wav").write_bytes(b"bad")
    config = _config(speeds=(1.0,), p_room=0, p_noise=1, noise_kinds=("babble",))
    summary = _run(manifest, tmp_path / "out", config=config)
    assert summary.copies == 0
    assert [(p["id"], "babble talker 's1-u1'" in p["error"]) for p in summary.problems] == [
        ("s0-u0~sp1-babble", True), ("s1-u1", False)
    ]


def test_refuses_the_manifests_folder_as_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _corpus(tmp_path, n=2)
    before = _audio_files(tmp_path / "in"), manifest.read_bytes()
    with pytest.raises(PerturbError, match="folder of .*overwrite the input"):
        _run(manifest, tmp_path / "in")
    status = data_cli.main(["augment", str(manifest), "--out", str(tmp_path / "in" / "."),
                            "--no-progress"])  # fmt: skip
    assert status == 2 and "overwrite the input" in capsys.readouterr().err
    assert (_audio_files(tmp_path / "in"), manifest.read_bytes()) == before
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["audio", "train.jsonl"]


def test_refuses_an_output_path_that_is_an_input(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, n=1)
    plan = plan_copies(read_manifest(manifest)[0], seed=0, config=_config(p_room=0),
                       rooms=[], pool=read_manifest(manifest))  # fmt: skip
    out = tmp_path / "out"
    victim = out / plan.copies[0].audio
    victim.parent.mkdir(parents=True)
    victim.write_bytes((tmp_path / "in" / "audio" / "u0.wav").read_bytes())
    manifest.write_text(json.dumps({"id": "s0-u0", "audio": str(victim), "text": "x"}) + "\n")
    with pytest.raises(PerturbError, match="would overwrite the input audio"):
        _run(manifest, out, config=_config(p_room=0))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abc-_/ 0", min_size=1, max_size=12), st.integers(0, 2**32))
def test_a_copy_at_speed_one_is_never_the_original(utt_id: str, seed: int) -> None:
    utt = Utterance(id=utt_id, audio="/x.wav", text="t")
    rooms = [{"type": "room", "rt60": 0.3}]
    for p_room, p_noise in ((0.0, 0.5), (0.5, 0.0), (0.1, 0.1)):
        config = PerturbConfig(speeds=(1.0,), p_room=p_room, p_noise=p_noise, noise_kinds=("pink",))
        (copy,) = plan_copies(utt, seed=seed, config=config, rooms=rooms, pool=[utt]).copies
        assert copy.ops and copy.id.startswith(f"{utt_id}~sp1-")
        assert re.fullmatch(r"audio/[0-9a-f]{2}/[A-Za-z0-9._+~-]+\.wav", copy.audio)


def test_room_bank_keeps_rooms_whose_measured_rt60_is_in_range(tmp_path: Path) -> None:
    config = _config(rooms=4)
    bank = simulate_room_bank(0, config)
    assert len(bank.ops) == 4 and all(0.15 <= op["rt60_measured"] <= 0.3 for op in bank.ops)
    again = simulate_room_bank(0, config, jobs=1)
    assert bank.ops == again.ops and bank.ops != simulate_room_bank(1, config).ops
    for op in bank.ops:
        assert bank.rir(op, RATE).numel() > 0
    too_short = _config(rooms=1, room=RoomConfig(rt60=(0.3, 0.4), size_min=(3.0, 3.0, 2.5),
                                                 size_max=(4.0, 4.0, 3.0), max_order=2))  # fmt: skip
    with pytest.raises(PerturbError, match="measured RT60 in \\[0.3, 0.4\\]"):
        simulate_room_bank(0, too_short)


def test_room_bank_is_cached_and_refused_when_stale(tmp_path: Path) -> None:
    import torch

    ops = [{"type": "room", "rt60": 0.3}, {"type": "room", "rt60": 0.5}]
    bank = RoomBank(ops, [torch.arange(3.0), torch.ones(5)])
    bank.save(tmp_path / "rooms.npz", {"seed": 0})
    loaded = RoomBank.load(tmp_path / "rooms.npz", {"seed": 0})
    assert loaded is not None and loaded.ops == tuple(ops)
    assert torch.equal(loaded.rir(ops[1], RATE), torch.ones(5))
    assert RoomBank.load(tmp_path / "rooms.npz", {"seed": 1}) is None
    assert RoomBank.load(tmp_path / "missing.npz", {"seed": 0}) is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert RoomBank.load(tmp_path / "bad.npz", {"seed": 0}) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"speeds": (1.0,), "p_room": 0.0, "p_noise": 0.0}, "copy the originals"),
     ({"speeds": (0.1,)}, "speeds"), ({"speeds": (1.1, 1.1)}, "differ"),
     ({"copies": 0}, "copies"), ({"p_noise": 1.5}, "p_noise"),
     ({"noise_kinds": ("purple",)}, "noise_kinds"), ({"snr_db": (20.0, 5.0)}, "snr_db"),
     ({"babble_talkers": (0, 2)}, "babble_talkers")],
)  # fmt: skip
def test_bad_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PerturbError, match=message):
        PerturbConfig(**changes)  # type: ignore[arg-type]


def test_cli_help_states_the_config_defaults() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    data_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", "augment", "x", "-o", "y"])
    assert args.copies is None and args.speeds is None  # the dataclass decides
    helps = {a.dest: a.help for a in _augment_actions()}
    config = PerturbConfig()

    def shown(value: object) -> str:
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
            if isinstance(value, tuple) else str(value)  # fmt: skip

    for dest, value in [("copies", config.copies), ("speeds", config.speeds),
                        ("p_room", config.p_room), ("p_noise", config.p_noise),
                        ("rt60", config.room.rt60), ("snr", config.snr_db),
                        ("babble_snr", config.babble_snr_db), ("noise_kinds", config.noise_kinds),
                        ("rooms", config.rooms)]:  # fmt: skip
        assert f"(default {shown(value)})" in helps[dest], dest
    from fusion.corpus.perturb import DEFAULT_JOBS

    assert f"default {DEFAULT_JOBS})" in helps["jobs"]


def _augment_actions() -> list:  # noqa: ANN202
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    data = data_cli.add_parser(sub)
    commands = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["augment"]._actions

"""Word-time calibration (hmm.timing): contexts, fitting, applying, files."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.core.types import WordSpan
from hmm.timing import BoundaryCalibration, CalibrationError, contexts

FS = 0.04


def words(*spans: tuple[float, float]) -> tuple[WordSpan, ...]:
    return tuple(WordSpan(f"w{i}", a, b) for i, (a, b) in enumerate(spans))


def test_contexts_count_gap_frames_and_clip():
    ws = words((0.2, 0.4), (0.44, 0.6), (1.0, 1.2), (1.2, 1.3))
    assert contexts(ws, FS, 4) == [("first", "gap1"), ("gap1", "gap4"), ("gap4", "gap0"), ("gap0", "last")]
    assert contexts(ws[:1], FS, 4) == [("first", "last")]
    assert contexts(ws, FS, 2)[1] == ("gap1", "gap2")


def test_fit_recovers_shifts_per_context_and_falls_back_when_rare():
    rng = np.random.default_rng(3)
    aligned, refs = [], []
    for s in rng.uniform(0, 1, size=40):
        # w0 first; w1 right after it (aligned: 2-frame gap); w2 after a pause (> 4 frames)
        ref = [(s, s + 0.3), (s + 0.3, s + 0.6), (s + 0.84, s + 1.1)]
        # aligned: w1's start lags by 0.05, the others are on time; every end leads by 0.02
        aligned.append((WordSpan("a", s, s + 0.28), WordSpan("b", s + 0.35, s + 0.58),
                        WordSpan("c", s + 0.84, s + 1.08)))
        refs.append(ref)
    cal = BoundaryCalibration.fit(aligned, refs, FS, max_gap=4, min_count=10)
    ctx = contexts(aligned[0], FS, 4)
    assert ctx[1][0] == "gap2" and ctx[2][0] == "gap4"
    assert cal.start_shift["gap2"] == pytest.approx(0.05)
    assert cal.start_shift["first"] == pytest.approx(0.0) and cal.start_shift["gap4"] == pytest.approx(0.0)
    assert cal.end_shift["all"] == pytest.approx(-0.02)
    assert cal.counts["start:gap2"] == 40
    fixed = [cal.apply(ws) for ws in aligned]
    for ws, ref in zip(fixed, refs):
        np.testing.assert_allclose([(w.start, w.end) for w in ws], ref, atol=1e-9)
    # too rare: pooled shift
    rare = BoundaryCalibration.fit(aligned, refs, FS, max_gap=4, min_count=41)
    assert set(rare.start_shift) == {"all"} and set(rare.end_shift) == {"all"}


def test_letter_layer_fits_what_the_context_shift_leaves():
    rng = np.random.default_rng(5)
    aligned, refs = [], []
    for s in rng.uniform(0, 1, size=30):
        # every word follows a pause; "take" ends 0.06 early (its silent e), "pat" starts
        # 0.03 late (the stop's release), "mob" is on time; "zoo" (rare) starts 0.2 late
        ref = [(s, s + 0.3), (s + 0.6, s + 0.9), (s + 1.2, s + 1.5)]
        aligned.append((WordSpan("take", s, s + 0.24), WordSpan("pat", s + 0.63, s + 0.9),
                        WordSpan("mob", s + 1.2, s + 1.5)))
        refs.append(ref)
    aligned.append((WordSpan("zoo", 0.2, 0.5),))
    refs.append([(0.0, 0.5)])
    cal = BoundaryCalibration.fit(aligned, refs, FS, min_count=1000, letter_min_count=10)
    # contexts too rare: pooled medians (starts 0, ends 0); letters carry the rest
    assert cal.start_shift == {"all": pytest.approx(0.0)} and cal.end_shift == {"all": pytest.approx(0.0)}
    assert cal.start_letter == {"t": pytest.approx(0.0), "p": pytest.approx(0.03), "m": pytest.approx(0.0)}
    assert cal.end_letter == {"e": pytest.approx(-0.06), "t": pytest.approx(0.0), "b": pytest.approx(0.0)}
    assert cal.counts["start-letter:z"] == 1 and "z" not in cal.start_letter
    for ws, ref in zip(aligned[:-1], refs[:-1]):
        np.testing.assert_allclose([(w.start, w.end) for w in cal.apply(ws)], ref, atol=1e-9)
    assert cal.apply(aligned[-1])[0].start == pytest.approx(0.2)  # unknown letter: no shift
    without = BoundaryCalibration.fit(aligned, refs, FS, min_count=1000, letter_min_count=None)
    assert without.start_letter == {} and without.end_letter == {}
    with pytest.raises(CalibrationError, match="letter_min_count"):
        BoundaryCalibration.fit(aligned, refs, FS, letter_min_count=0)


def test_apply_clips_orders_and_never_overlaps():
    cal = BoundaryCalibration.constant(FS, start=-0.1, end=0.1)  # push starts later, ends earlier
    ws = cal.apply(words((0.0, 0.3), (0.3, 0.35), (0.4, 0.6)), duration=0.5)
    for w in ws:
        assert 0.0 <= w.start <= w.end <= 0.5
    assert all(ws[i].end <= ws[i + 1].start for i in range(len(ws) - 1))
    assert ws[1].start == ws[1].end  # a word whose span collapsed meets itself half way
    late = BoundaryCalibration.constant(FS, start=0.1, end=-0.1)  # starts earlier, ends later
    ws = late.apply(words((0.05, 0.2), (0.2, 0.4)), duration=0.45)
    assert ws[0].start == 0.0 and ws[-1].end == 0.45
    assert ws[0].end == ws[1].start == pytest.approx(0.2)
    assert BoundaryCalibration(FS).apply(words((0.1, 0.2))) == words((0.1, 0.2))
    assert BoundaryCalibration(FS).apply(()) == ()


def test_files_round_trip_and_bad_input(tmp_path):
    cal = BoundaryCalibration(FS, 3, {"all": 0.05, "gap1": 0.06}, {"all": -0.01}, {"start:gap1": 7},
                              {"p": 0.02}, {"e": -0.05})
    path = tmp_path / "cal.json"
    cal.save(path)
    back = BoundaryCalibration.load(path)
    assert back == cal
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(CalibrationError, match="bad.json"):
        BoundaryCalibration.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CalibrationError, match="cannot read"):
        BoundaryCalibration.load(tmp_path / "broken.json")
    with pytest.raises(CalibrationError, match="pooled"):
        BoundaryCalibration(FS, start_shift={"gap1": 0.0})
    with pytest.raises(CalibrationError, match="frame_shift"):
        BoundaryCalibration(0.0)
    with pytest.raises(CalibrationError, match="single letters"):
        BoundaryCalibration(FS, start_letter={"ph": 0.01})
    with pytest.raises(CalibrationError, match="finite"):
        BoundaryCalibration(FS, end_letter={"e": float("nan")})
    # a file without the letter layer (written before it existed) loads with none
    old = cal.to_dict()
    del old["start_letter"], old["end_letter"]
    assert BoundaryCalibration.from_dict(old).start_letter == {}
    with pytest.raises(CalibrationError, match="max_gap"):
        BoundaryCalibration(FS, max_gap=0)
    with pytest.raises(CalibrationError, match="reference"):
        BoundaryCalibration.fit([words((0, 1))], [[(0, 1), (1, 2)]], FS)
    with pytest.raises(CalibrationError, match="no words"):
        BoundaryCalibration.fit([()], [[]], FS)
    with pytest.raises(CalibrationError, match="references"):
        BoundaryCalibration.fit([words((0, 1))], [], FS)

"""Silero VAD probabilities and the segmenter that cuts a stream at pauses."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REAL_SPEECH
from fusion.am.vad import VAD_RATE, WINDOW, Segmenter, SegmenterConfig

W = WINDOW / VAD_RATE  # seconds per probability


def segments(probs, config=SegmenterConfig(), num_samples=None):
    probs = np.asarray(probs, dtype=float)
    n = len(probs) * WINDOW if num_samples is None else num_samples
    return [s.seconds for s in Segmenter(config).segments(probs, n)]


def test_one_speech_run_is_one_padded_segment():
    cfg = SegmenterConfig(pad=0.2, min_silence=0.3)
    probs = [0.0] * 50 + [0.9] * 40 + [0.0] * 50
    assert segments(probs, cfg) == [pytest.approx((50 * W - 0.2, 90 * W + 0.2))]


def test_a_short_dip_does_not_end_a_segment_and_a_long_pause_does():
    cfg = SegmenterConfig(pad=0.0, min_silence=0.3)  # 0.3 s: 10 windows
    short = [0.9] * 20 + [0.1] * 5 + [0.9] * 20 + [0.0] * 20
    assert segments(short, cfg) == [pytest.approx((0.0, 45 * W))]
    long = [0.9] * 20 + [0.1] * 12 + [0.9] * 20 + [0.0] * 20
    assert segments(long, cfg) == [pytest.approx((0.0, 20 * W)), pytest.approx((32 * W, 52 * W))]


def test_hysteresis_keeps_speech_between_the_two_thresholds():
    cfg = SegmenterConfig(threshold=0.5, pad=0.0)  # exit below 0.35
    probs = [0.9] * 10 + [0.4] * 30 + [0.0] * 20
    assert segments(probs, cfg) == [pytest.approx((0.0, 40 * W))]


def test_short_blips_are_dropped():
    cfg = SegmenterConfig(min_speech=0.25, pad=0.0)  # 0.25 s: 8 windows
    assert segments([0.0] * 10 + [0.9] * 5 + [0.0] * 30, cfg) == []


def test_padding_never_overlaps_the_previous_segment():
    cfg = SegmenterConfig(pad=0.3, min_silence=0.3)
    probs = [0.9] * 20 + [0.0] * 10 + [0.9] * 20 + [0.0] * 20
    (a0, a1), (b0, b1) = segments(probs, cfg)
    assert a1 <= b0 and a0 == 0.0
    assert b1 == pytest.approx(50 * W + 0.3)


def test_long_speech_is_cut_at_its_least_speechlike_window():
    cfg = SegmenterConfig(max_segment=5.0, pad=0.0)
    probs = np.full(250, 0.95)  # 8 s of speech
    probs[120] = 0.55  # the dip, in the first segment's second half
    got = segments(probs, cfg)
    assert len(got) == 2
    assert got[0] == pytest.approx((0.0, 120 * W))  # cut at the dip (after smoothing)
    assert got[1][0] == pytest.approx(120 * W)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=1500),
       st.floats(1.0, 12.0), st.floats(0.0, 0.3))
def test_segments_are_ordered_disjoint_within_bounds_and_never_too_long(probs, max_seg, pad):
    cfg = SegmenterConfig(max_segment=max_seg, pad=pad, min_silence=max(pad, 0.1))
    n = len(probs) * WINDOW
    got = segments(probs, cfg, n)
    for (a, b), nxt in zip(got, got[1:] + [(n / VAD_RATE, None)]):
        assert 0.0 <= a < b <= n / VAD_RATE
        assert b - a <= max_seg + 1e-9
        assert b <= nxt[0]


def test_streamed_probabilities_give_the_segments_of_the_whole():
    rng = np.random.default_rng(3)
    probs = np.repeat(rng.uniform(size=60), 25)
    whole = segments(probs)
    seg = Segmenter()
    got = []
    for part in np.array_split(probs, 17):
        got += seg.accept(part)
    got += seg.finish(len(probs) * WINDOW)
    assert [s.seconds for s in got] == whole


@pytest.mark.parametrize("bad", [dict(threshold=1.5), dict(pad=0.5, min_silence=0.3),
                                 dict(max_segment=0.3), dict(min_speech=float("nan"))])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="VAD"):
        SegmenterConfig(**bad)


@pytest.mark.skipif(not (REAL_SPEECH / "audio").is_dir(), reason="real-speech set not present")
def test_silero_finds_real_speech_between_silences_and_not_in_them():
    from fusion.am.vad import SileroVAD

    speech, rate = sf.read(REAL_SPEECH / "audio" / "ljspeech-LJ001-0001.wav", dtype="float32")
    assert rate == VAD_RATE
    silence = np.zeros(3 * VAD_RATE, dtype=np.float32)
    audio = np.concatenate([silence, speech, silence, speech, silence])
    vad = SileroVAD()
    probs = np.concatenate([vad.accept(b) for b in np.array_split(audio, 7)] + [vad.flush()])
    assert len(probs) == -(-len(audio) // WINDOW)
    got = segments(probs, SegmenterConfig(max_segment=30.0), len(audio))
    d = len(speech) / VAD_RATE
    spans = [(3.0, 3.0 + d), (6.0 + d, 6.0 + 2 * d)]
    for a, b in got:  # every segment lies on speech (padding and VAD tolerance: 0.5 s)
        assert any(s - 0.5 <= a and b <= e + 0.5 for s, e in spans), (a, b)
    for s, e in spans:  # and each utterance is mostly covered
        covered = sum(max(0.0, min(b, e) - max(a, s)) for a, b in got)
        assert covered >= 0.8 * (e - s)
    vad.reset()
    assert (vad.accept(np.zeros(2 * VAD_RATE, dtype=np.float32)) < 0.5).all()

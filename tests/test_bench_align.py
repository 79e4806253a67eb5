"""Helpers of the alignment benchmark (benchmarks/bench_align.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_align  # noqa: E402


def test_match_words_merges_festival_pieces():
    fest = [["the", 0.2, 0.3], ["king", 0.3, 0.68], ["'s", 0.0, 0.0], ["t", 0.7, 0.8], ["v", 0.8, 0.9],
            ["shant", 0.9, 1.2]]
    assert bench_align.match_words("the king's tv shan't".split(), fest) == [
        ["the", 0.2, 0.3], ["king's", 0.3, 0.68], ["tv", 0.7, 0.9], ["shan't", 0.9, 1.2]]
    assert bench_align.match_words("the kings".split(), fest[:2]) is None
    assert bench_align.match_words("the".split(), fest[:2]) is None  # festival spoke more
    assert bench_align.match_words(["s"], [["'s", 0.0, 0.0]]) is None  # a word without segments


def test_pick_sentences_is_seeded_and_filtered(tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("\n".join([f"sentence number {i} is here" for i in range(30)] + ["too short"]))
    a = bench_align.pick_sentences(text, 10, seed=1)
    assert a == bench_align.pick_sentences(text, 10, seed=1) and len(set(a)) == 10
    assert all(4 <= len(s.split()) <= 25 and s == s.lower() for s in a)
    with pytest.raises(SystemExit, match="usable"):
        bench_align.pick_sentences(text, 31, seed=1)


def test_stats():
    s = bench_align.stats(np.array([0.0, 10.0, 20.0, 50.0, 100.0]))
    assert s["median_ms"] == 20.0 and s["within_40ms"] == 0.6 and s["boundaries"] == 5


@pytest.mark.skipif(shutil.which("festival") is None
                    or not Path("/usr/share/festival/voices/english/kal_diphone").is_dir(),
                    reason="needs festival with the kal voice")
def test_festival_reports_word_times(tmp_path):
    words = bench_align.festival_batch("kal_diphone", [("u1", "the king's cat sat", 1.0)], tmp_path)
    matched = bench_align.match_words("the king's cat sat".split(), words["u1"])
    assert matched is not None and [w[0] for w in matched] == ["the", "king's", "cat", "sat"]
    times = [t for _, a, b in matched for t in (a, b)]
    assert times == sorted(times) and times[0] > 0
    assert (tmp_path / "u1.raw.wav").stat().st_size > 1000


def test_cross_fitted_errors_score_each_fold_out_of_sample():
    from fusion.core.types import WordSpan

    utts, words = [], []
    for i in range(10):
        s = 0.1 * i
        ref = (("pat", s, s + 0.3), ("tame", s + 0.8, s + 1.1))
        utts.append(bench_align.RefUtterance(f"u{i}", "pat tame", "v", 1.0, "", 2.0, ref))
        # every start 0.04 late; the last utterance's end of "tame" 0.2 early (an outlier)
        late_end = 0.2 if i == 9 else 0.0
        words.append((WordSpan("pat", s + 0.04, s + 0.3), WordSpan("tame", s + 0.84, s + 1.1 - late_end)))
    dev = bench_align.Aligned(utts, words, 1.0)
    errs = bench_align.cross_fitted_errors(dev, 0.04, folds=5)
    assert set(errs) == {"", " + offset", " + context offsets", " + context and letter offsets"}
    raw = bench_align.errors(dev)
    assert sorted(errs[""].start) == pytest.approx(sorted(raw.start))  # nothing fitted: same errors
    # the constant start lag is fitted on the other folds and removed from each held-out one
    np.testing.assert_allclose(errs[" + offset"].start, 0.0, atol=1e-6)  # ms
    assert sorted(np.abs(errs[" + offset"].end))[-1] == pytest.approx(200.0)  # the outlier stays
    assert errs[" + offset"].voice.tolist() == ["v"] * 20

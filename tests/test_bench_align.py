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

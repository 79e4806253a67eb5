"""Helpers of the neural-LM fusion throughput benchmark (benchmarks/bench_nlm_fusion.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_nlm_fusion  # noqa: E402


def _run(seconds: float, best: list[list]) -> dict:
    return {"seconds": seconds, "audio_seconds": 60.0, "words_scored": 10, "forwards": 2, "best": best}


def test_sides_compare_by_median_and_by_their_best_hypotheses():
    best = [["a b", -1.0], ["c", -2.0]]
    other = [["a b", -1.0 + 2e-6], ["c d", -2.5]]
    row = bench_nlm_fusion.compare_sides({"current": [_run(3.0, best), _run(2.0, best), _run(4.0, best)],
                                          "pre-redesign": [_run(6.0, other), _run(9.0, other),
                                                           _run(5.0, other)]})
    assert row["current"]["median_seconds"] == 3.0 and row["pre-redesign"]["median_seconds"] == 6.0
    assert row["speedup"] == 2.0 and row["current"]["x_real_time"] == 20.0
    assert row["identical_best"] == 0.5 and row["max_score_difference"] == pytest.approx(0.5)
    data = {"date": "d", "command": "c", "machine": {"cpu": "cpu", "cores": 2}, "utterances": 2,
            "weights": {"lm": 1.0}, "nbest": 4, "repeats": 3, "baseline_rev": "r",
            "rows": [{"split": "dev", "beam": 32, **row}]}
    md = bench_nlm_fusion.markdown(data)
    assert "| dev | 32 | 3.00 s (20.0x) | 6.00 s (10.0x) | 2.00x | 10 / 10 | 2 / 2 | 50% (5.0e-01) |" in md

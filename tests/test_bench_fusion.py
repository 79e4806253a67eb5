"""Helpers of the fusion ablation benchmark (benchmarks/bench_fusion.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_fusion  # noqa: E402


def test_rows_compare_each_system_with_the_one_named():
    """Each row's WER and interval, and against the system it builds on, the paired change
    and the probability it is better: here the second system mends two of the first's
    three errors, on two utterances of three."""
    refs = {"a": "x y", "b": "x y z w", "c": "p q"}
    scores = {}
    first = bench_fusion.row("test", "greedy", refs, {"a": "x", "b": "x y z", "c": "p r"}, 1.0, 10.0, scores)
    second = bench_fusion.row("test", "+ lm", refs, {"a": "x y", "b": "x y z", "c": "p q"}, 2.0, 10.0,
                              scores, "greedy")
    assert (first["wer"], second["wer"]) == (37.5, 12.5) and "vs" not in first
    assert first["throughput"] == 10.0 and second["throughput"] == 5.0
    assert first["wer_ci"][0] <= 37.5 <= first["wer_ci"][1]
    vs = second["vs"]
    assert vs["system"] == "greedy" and vs["delta"] == -25.0
    assert vs["p_better"] == pytest.approx(26 / 27, abs=0.02)  # worse only when b is drawn alone
    assert vs["interval"][1] == 0.0 and vs["interval"][0] < -25.0
    assert bench_fusion._versus(vs).startswith("-25.00 (") and bench_fusion._versus(None) == ""
    assert set(scores) == {("test", "greedy"), ("test", "+ lm")}

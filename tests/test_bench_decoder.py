"""Per-beam tuned weights and the summary of the decoder benchmark (benchmarks/bench_decoder.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_decoder  # noqa: E402


def _best_toml(path: Path, beam: int, lm: float, bonus: float, threshold: float = 10.0,
               oov: float | None = None) -> str:
    path.write_text(f"[search]\nbeam_size = {beam}\nnbest = 8\nbeam_threshold = {threshold}\n\n"
                    f"[weights]\nlm = {lm}\nword_bonus = {bonus}\n"
                    + (f"oov = {oov}\n" if oov is not None else ""), encoding="utf-8")
    return str(path)


def _args(*tuned: str) -> argparse.Namespace:
    return argparse.Namespace(alpha=0.5, beta=1.0, tuned=list(tuned))


LMS = {"ours-4gram": Path("4gram.arpa"), "cmusphinx-3gram": Path("cmu.arpa")}


def test_one_tuned_file_gives_its_weights_at_every_beam(tmp_path):
    weights = bench_decoder.lm_weights(
        _args("ours-4gram=" + _best_toml(tmp_path / "t.toml", 32, 0.98, 2.2, 12.0)), LMS)
    for beam in (8, 32, 128):
        w = bench_decoder.weights_at(weights["ours-4gram"], beam)
        assert (w["alpha"], w["beta"], w["beam_threshold"]) == (0.98, 2.2, 12.0)
    untuned = bench_decoder.weights_at(weights["cmusphinx-3gram"], 8)
    assert (untuned["alpha"], untuned["beta"], untuned["source"]) == (0.5, 1.0, "given")


def test_each_beam_takes_the_weights_tuned_at_the_nearest_beam(tmp_path):
    weights = bench_decoder.lm_weights(_args(
        "ours-4gram=" + _best_toml(tmp_path / "t32.toml", 32, 0.98, 2.2),
        "ours-4gram=" + _best_toml(tmp_path / "t8.toml", 8, 0.9, 4.0)), LMS)
    w = weights["ours-4gram"]
    assert (w["alpha"], w["beta"]) == (0.98, 2.2)  # the first file is the LM's headline entry
    assert sorted(w["per_beam"]) == ["32", "8"]
    beta = {beam: bench_decoder.weights_at(w, beam)["beta"] for beam in (4, 8, 15, 17, 32, 128)}
    # 16 is as near to 8 as to 32 on a log scale: 15 goes to 8, 17 to 32
    assert beta == {4: 4.0, 8: 4.0, 15: 4.0, 17: 2.2, 32: 2.2, 128: 2.2}
    assert "beam 8: LM weight 0.900" in bench_decoder._weights_text({"weights": weights})


def test_two_files_tuned_at_one_beam_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="second file tuned at beam 32"):
        bench_decoder.lm_weights(_args(
            "ours-4gram=" + _best_toml(tmp_path / "a.toml", 32, 0.98, 2.2),
            "ours-4gram=" + _best_toml(tmp_path / "b.toml", 32, 0.9, 4.0)), LMS)


def test_a_tuned_file_for_an_lm_not_in_the_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no LM 'word-5gram'"):
        bench_decoder.lm_weights(_args("word-5gram=" + _best_toml(tmp_path / "a.toml", 32, 1, 1)), LMS)


def test_a_tuned_unknown_word_penalty_goes_with_its_beam(tmp_path):
    """A best.toml with weight 'oov' gives ours that penalty at its beam; one without, none."""
    weights = bench_decoder.lm_weights(_args(
        "cmusphinx-3gram=" + _best_toml(tmp_path / "t32.toml", 32, 0.5, 0.0),
        "cmusphinx-3gram=" + _best_toml(tmp_path / "t128.toml", 128, 0.4, -0.5, oov=5.0)), LMS)
    w = weights["cmusphinx-3gram"]
    assert [bench_decoder.weights_at(w, beam)["oov"] for beam in (8, 32, 128)] == [0.0, 0.0, 5.0]
    text = bench_decoder._weights_text({"weights": weights})
    assert "beam 128: LM weight 0.400 (nats), word bonus -0.500, our unknown-word penalty 5, " in text
    assert "beam 32: LM weight 0.500 (nats), word bonus 0.000, our pruning" in text


def test_summary_compares_ours_with_the_best_peer_paired():
    """At each point our better configuration against the better peer, on the same
    utterances: ours mends two of pyctcdecode's three errors (on two of three utterances,
    so it is better in every resample but those drawing the third alone: 26/27)."""
    refs = {"a": "x y", "b": "x y z w", "c": "p q"}
    hyps = {"ours": {"a": "x y", "b": "x y z", "c": "p q"},
            "ours-lexicon": {"a": "x", "b": "x y z", "c": "p q"},
            "pyctcdecode": {"a": "x", "b": "x y z", "c": "p r"},
            "flashlight-lexicon": {"a": "", "b": "", "c": ""},
            "greedy": {"a": "", "b": "", "c": ""}}
    rows, scores = [], {}
    for split in ("test", "test-unseen-voices"):  # the same decoding twice: the headline is test's
        for decoder, h in hyps.items():
            lm, beam = (None, None) if decoder == "greedy" else ("ours-4gram", 32)
            score = scores[split, decoder, lm, beam] = bench_decoder.score_corpus(refs, h)
            wer = 100 * score.wer
            rows.append({"split": split, "decoder": decoder, "lm": lm, "beam": beam, "wer": wer,
                         "throughput": 10.0 if split == "test" else 20.0})
    plain = bench_decoder.summarise(rows)
    assert plain["ours_behind_best_peer"] == [] and "paired_vs_best_peer" not in plain
    summary = bench_decoder.summarise(rows, scores)
    assert {k: summary[k] for k in plain} == plain  # the pairing adds, and changes nothing
    assert (summary["split"], summary["wer_ours"], summary["speedup_vs_pyctcdecode"]) == ("test", 12.5, 1.0)
    v, unseen = summary["paired_vs_best_peer"]
    assert unseen["split"] == "test-unseen-voices" and unseen["delta"] == v["delta"]
    assert (v["ours"], v["peer"], v["wer_ours"], v["wer_peer"]) == ("ours", "pyctcdecode", 12.5, 37.5)
    assert v["delta"] == -25.0 and v["utterances"] == 3 and v["interval"][1] == 0.0
    assert v["p_ours_better"] == pytest.approx(26 / 27, abs=0.02) and v["p_peer_better"] == 0.0
    assert summary["ours_ahead_beyond_chance"].startswith("2 of 2 points")
    assert summary["ours_behind_beyond_chance"] == []
    md = bench_decoder._paired_table(summary["paired_vs_best_peer"])
    assert "| test | ours-4gram | 32 | ours | 12.5 | pyctcdecode | 37.5 | -25.00 (" in md
    assert bench_decoder._paired_table(None) == ""


def test_timed_keeps_the_fastest_pass_and_checks_the_hypotheses(monkeypatch):
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # passes of 3 s, 1 s and 2 s
    monkeypatch.setattr(bench_decoder.time, "perf_counter", lambda: next(clock))
    calls = []
    hyps, seconds = bench_decoder.timed(lambda: calls.append(1) or {"u1": "a cat"})
    assert (hyps, seconds, len(calls)) == ({"u1": "a cat"}, 1.0, bench_decoder.PASSES)
    monkeypatch.setattr(bench_decoder.time, "perf_counter", iter(range(100)).__next__)
    outputs = iter([{"u1": "a cat"}, {"u1": "a hat"}])
    with pytest.raises(RuntimeError, match="different hypotheses on a second pass"):
        bench_decoder.timed(lambda: next(outputs))

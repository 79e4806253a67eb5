"""Weight tuning: studies, the resumable trial log, the first-pass objective, `fusion tune`."""

import json
import tomllib

import numpy as np
import pytest

from fusion.cli.main import main
from fusion.core.metrics import score_corpus
from fusion.core.posteriors import PosteriorsWriter
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.decoder.scorers import LMScorer, WordBonus
from fusion.pipeline.config import DecodeConfig
from fusion.rescoring.tune import FirstPassObjective, Param, TrialLog, grid_points, run_study
from fusion.run.parallel import LocalBackend
from lm.arpa import ArpaLM

ARPA = """\\data\\
ngram 1=7
ngram 2=2

\\1-grams:
-2.0\t<unk>
-99\t<s>\t-0.3
-0.6\t</s>
-0.7\tthe\t-0.2
-1.0\tcat
-1.0\tsat
-1.2\tmat

\\2-grams:
-0.2\t<s> the
-0.3\tthe cat

\\end\\
"""

PARAMS = [Param.linspace("a", 0.0, 1.0, 3), Param.linspace("b", -1.0, 1.0, 3)]


def _bowl(batch):
    """A cheap objective with its minimum at a=0.5, b=0 (WER in 'percent')."""
    return [{"state": "complete", "wer": 10 + (p["a"] - 0.5) ** 2 + p["b"] ** 2, "cer": 1.0} for p in batch]


def test_param_validation_and_grid():
    assert Param.linspace("a", 0, 1, 3).grid == (0.0, 0.5, 1.0)
    assert len(grid_points(PARAMS)) == 9
    with pytest.raises(ValueError, match="low must be below high"):
        Param("a", 1.0, 0.0, (0.5,))
    with pytest.raises(ValueError, match="grid values"):
        Param("a", 0.0, 1.0, (2.0,))


def test_grid_study_finds_grid_optimum_and_resumes(tmp_path):
    log = TrialLog(tmp_path / "t.jsonl")
    calls = []

    def evaluate(batch):
        calls.extend(batch)
        return _bowl(batch)

    best = run_study("grid", "grid", PARAMS, evaluate, log, stage="first_pass")
    assert best["params"] == {"a": 0.5, "b": 0.0}
    assert len(calls) == 9
    # a rerun finds every point logged and evaluates nothing
    again = run_study("grid", "grid", PARAMS, evaluate, TrialLog(tmp_path / "t.jsonl"), stage="first_pass")
    assert len(calls) == 9 and again == best


def test_truncated_last_line_is_dropped_and_rerun(tmp_path):
    path = tmp_path / "t.jsonl"
    run_study("grid", "grid", PARAMS, _bowl, TrialLog(path), stage="first_pass")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 20])  # a kill mid-write
    log = TrialLog(path)
    assert len(log.trials) == 8
    calls = []
    run_study("grid", "grid", PARAMS, lambda b: (calls.extend(b), _bowl(b))[1], log, stage="first_pass")
    assert len(calls) == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line) for line in lines)
    assert sorted(json.loads(x)["number"] for x in lines) == list(range(9))


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_sampled_study_resumes_without_rerunning(tmp_path, sampler):
    path = tmp_path / "t.jsonl"
    calls = []

    def evaluate(batch):
        calls.extend(batch)
        return _bowl(batch)

    run_study(sampler, sampler, PARAMS, evaluate, TrialLog(path), stage="first_pass", trials=5, seed=1)
    assert len(calls) == 5
    best = run_study(sampler, sampler, PARAMS, evaluate, TrialLog(path), stage="first_pass", trials=8, seed=1)
    assert len(calls) == 8  # only the 3 missing trials ran
    trials = TrialLog(path).of(sampler)
    assert [t["number"] for t in trials] == list(range(8))
    assert all(0 <= t["params"]["a"] <= 1 and -1 <= t["params"]["b"] <= 1 for t in trials)
    assert best["wer"] == min(t["wer"] for t in trials)


def test_tpe_is_seeded():
    runs = []
    for _ in range(2):
        log = TrialLog.__new__(TrialLog)
        log.path, log.trials = None, []
        log.append = log.trials.append  # in memory
        run_study("tpe", "tpe", PARAMS, _bowl, log, stage="first_pass", trials=6, seed=3)
        runs.append([t["params"] for t in log.trials])
    assert runs[0] == runs[1]


def test_failed_trials_are_logged_not_fatal(tmp_path):
    def evaluate(batch):
        return [{"state": "failed", "error": "boom", "wer": float("inf"), "cer": float("inf")}
                if p["a"] == 0.0 else _bowl([p])[0] for p in batch]

    log = TrialLog(tmp_path / "t.jsonl")
    best = run_study("grid", "grid", PARAMS, evaluate, log, stage="first_pass")
    assert sum(t["state"] == "failed" for t in log.trials) == 3
    assert best["state"] == "complete"


@pytest.fixture(scope="module")
def dev(tmp_path_factory, table):
    """Simulated dev posteriors, a manifest and a unigram LM that knows the words."""
    root = tmp_path_factory.mktemp("dev")
    rng = np.random.default_rng(0)
    texts = ["the cat sat", "the mat", "cat sat the mat", "the cat", "sat mat"]
    with PosteriorsWriter(root / "dev.npz", token_table=table) as w:
        for i, text in enumerate(texts):
            w.write(simulate_posteriors(f"d{i}", text, table, rng, SimulationConfig(confusion=0.25))[0])
    (root / "dev.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                            for i, t in enumerate(texts)))
    (root / "lm.arpa").write_text(ARPA)
    return root


def test_first_pass_objective_in_process_equals_pool(dev, table):
    from fusion.core.posteriors import PosteriorsReader

    with PosteriorsReader(dev / "dev.npz") as r:
        posts = [r[u] for u in r.ids]
    refs = {json.loads(x)["id"]: json.loads(x)["text"] for x in (dev / "dev.jsonl").read_text().splitlines()}
    scorers = [LMScorer(ArpaLM(dev / "lm.arpa")), WordBonus()]
    params = [{"lm": 0.0, "word_bonus": 0.0}, {"lm": 1.0, "word_bonus": 1.0, "beam_size": 4}]
    with FirstPassObjective(table, scorers, posts, refs) as local:
        a = local(params)
    with FirstPassObjective(table, scorers, posts, refs, backend=LocalBackend(workers=2)) as pool:
        b = pool(params)
    assert [(x["wer"], x["cer"]) for x in a] == [(x["wer"], x["cer"]) for x in b]
    assert all(x["state"] == "complete" and x["audio_seconds"] > 0 for x in a)
    # a subset of the dev set is scored against its own references only
    with FirstPassObjective(table, scorers, posts[:2], refs) as subset:
        (part,) = subset(params[1:])
        hyps, _ = subset.decode(params[1])
    expected = score_corpus({u: refs[u] for u in hyps}, hyps)
    assert part["wer"] == pytest.approx(100 * expected.wer)


def test_fusion_tune_end_to_end(dev, tmp_path, capsys):
    out = tmp_path / "tune"
    argv = [str(dev / "dev.npz"), "--dev", str(dev / "dev.jsonl"), "--lm", str(dev / "lm.arpa"),
            "-o", str(out), "--lm-grid", "0:1:2", "--bonus-grid=0:2:2", "--random-trials", "1",
            "--tpe-trials", "1", "--beams", "4,8", "--beam-size", "8", "--nbest", "4",
            "--nlm", "none", "--hmm", "yes", "--hmm-fit-utterances", "3", "--rescore-trials", "3"]
    assert main(["tune", *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    trials = TrialLog(out / "trials.jsonl").trials
    assert len([t for t in trials if t["stage"] == "first_pass"]) == 4 + 1 + 1
    assert summary["first_pass"]["best"]["wer"] == min(t["wer"] for t in trials if t["stage"] == "first_pass")
    assert [s["beam_size"] for s in summary["beam_sweep"]] == [4, 8]
    assert [s["beam_threshold"] for s in summary["threshold_sweep"]] == [10.0, 15.0, 20.0, 25.0]
    threshold = min(summary["threshold_sweep"], key=lambda r: (r["wer"], r["cer"], r["beam_threshold"]))
    assert summary["search"] == {"beam_size": 8, "nbest": 4, "beam_threshold": threshold["beam_threshold"],
                                 "picked_from_sweep": False}
    assert summary["oracle_wer"] <= summary["rescore"]["best"]["wer"]
    assert summary["rescore"]["bayes_trial_fraction"] == pytest.approx(3 / 5 ** 3)
    config = tomllib.loads((out / "best.toml").read_text())
    assert set(config["rescore"]["weights"]) == {"acoustic", "lm", "word_bonus", "hmm"}
    loaded = DecodeConfig.load(out / "best.toml")
    assert loaded.rescore_hmm == out / "hmm.json" and loaded.search.nbest == 4
    assert loaded.search.beam_threshold == threshold["beam_threshold"]
    # a rerun has nothing left to do: same log, same summary
    assert main(["tune", *argv]) == 0
    assert len(TrialLog(out / "trials.jsonl").trials) == len(trials)
    # other posteriors (say, of a retrained model) are refused, not mixed into the log
    other = tmp_path / "other.npz"
    other.write_bytes((dev / "dev.npz").read_bytes() + b"\0")
    assert main(["tune", str(other), *argv[1:]]) == 2
    assert "other inputs (posteriors differ)" in capsys.readouterr().err
    assert len(TrialLog(out / "trials.jsonl").trials) == len(trials)
    # and fusion decode reads the tuned config, rescoring included
    hyp = tmp_path / "hyp.jsonl"
    assert main(["decode", str(dev / "dev.npz"), "--decoder", "beam", "--config", str(out / "best.toml"),
                 "-o", str(hyp)]) == 0
    rows = [json.loads(x) for x in hyp.read_text().splitlines()]
    assert len(rows) == 5 and "hmm" in rows[0]["scores"]


@pytest.mark.ray
def test_first_pass_objective_on_ray_equals_local(dev, table):
    pytest.importorskip("ray")
    from fusion.core.posteriors import PosteriorsReader
    from fusion.run.distributed import RayBackend

    with PosteriorsReader(dev / "dev.npz") as r:
        posts = [r[u] for u in r.ids]
    refs = {json.loads(x)["id"]: json.loads(x)["text"] for x in (dev / "dev.jsonl").read_text().splitlines()}
    scorers = [LMScorer(ArpaLM(dev / "lm.arpa")), WordBonus()]
    params = [{"lm": 0.5, "word_bonus": 1.0}, {"lm": 1.0, "word_bonus": 0.0}]
    with FirstPassObjective(table, scorers, posts, refs) as local:
        a = local(params)
    with FirstPassObjective(table, scorers, posts, refs,
                            backend=RayBackend(address="local", num_cpus=2)) as on_ray:
        b = on_ray(params)
        c = on_ray(params)  # the second trial reuses the shared objects
    assert [(x["wer"], x["cer"]) for x in a] == [(x["wer"], x["cer"]) for x in b] == \
        [(x["wer"], x["cer"]) for x in c]


def _quick_tune(dev, out, *extra: str) -> list[str]:
    """``fusion tune`` arguments of a small run without rescorers: a 2 x 2 grid, one random
    and one TPE trial, beam 8, 4-best."""
    return [str(dev / "dev.npz"), "--dev", str(dev / "dev.jsonl"), "--lm", str(dev / "lm.arpa"),
            "-o", str(out), "--lm-grid", "0:1:2", "--bonus-grid=0:2:2", "--random-trials", "1",
            "--tpe-trials", "1", "--beam-size", "8", "--nbest", "4", "--nlm", "none", "--hmm", "no",
            "--rescore-trials", "2", *extra]


def test_fusion_tune_picks_the_sweeps_best_beam(dev, tmp_path):
    out = tmp_path / "tune"
    assert main(["tune", *_quick_tune(dev, out, "--beams", "1,2,8", "--pick-beam")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    best = min(summary["beam_sweep"], key=lambda r: (r["wer"], r["beam_size"]))["beam_size"]
    assert summary["search"]["beam_size"] == best and summary["search"]["picked_from_sweep"]
    config = DecodeConfig.load(out / "best.toml")  # a valid config whatever the beam
    assert config.search.beam_size == best and config.search.nbest == min(4, best)


def test_fusion_tune_keeps_the_threshold_with_the_lowest_dev_wer(dev, tmp_path, capsys):
    """A threshold so tight that only the best beam survives each frame loses to a wide one
    (or ties it, and then the tighter, faster one is kept); the weight studies run at the
    first threshold of the sweep, and the config carries the one kept."""
    out = tmp_path / "tune"
    argv = _quick_tune(dev, out, "--beams", "8", "--beam-thresholds", "25,0.01")
    assert main(["tune", *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    wide, tight = summary["threshold_sweep"]
    assert (wide["beam_threshold"], tight["beam_threshold"]) == (25.0, 0.01)
    assert wide["wer"] <= tight["wer"] or wide["cer"] <= tight["cer"]
    kept = 0.01 if (tight["wer"], tight["cer"]) <= (wide["wer"], wide["cer"]) else 25.0
    assert summary["search"]["beam_threshold"] == kept
    assert DecodeConfig.load(out / "best.toml").search.beam_threshold == kept
    # the sweep decides the N-best lists: other thresholds are other inputs
    assert main(["tune", *argv[:-1], "25,15"]) == 2
    assert "beam_thresholds differ" in capsys.readouterr().err
    # a threshold must be positive
    assert main(["tune", *argv[:-1], "10,0"]) == 2
    assert "--beam-thresholds must be positive" in capsys.readouterr().err


def test_tune_directory_of_an_older_version_resumes_at_the_old_threshold(dev, tmp_path, capsys):
    """inputs.json written before the threshold sweep existed means a sweep of just 10."""
    out = tmp_path / "tune"
    argv = _quick_tune(dev, out, "--beams", "8", "--beam-thresholds", "10")
    assert main(["tune", *argv]) == 0
    inputs = json.loads((out / "inputs.json").read_text())
    del inputs["beam_thresholds"]
    (out / "inputs.json").write_text(json.dumps(inputs))
    assert main(["tune", *argv]) == 0
    assert main(["tune", *argv[:-2]]) == 2  # the default sweep is not what that directory ran
    assert "beam_thresholds differ" in capsys.readouterr().err


def test_fusion_tune_sweeps_the_unknown_word_penalty(dev, tmp_path, capsys):
    """--oov-penalties: swept at the best weights and threshold; the best on dev (the
    smallest of equals) goes into the config as weight 'oov', none when it is 0, and, with
    --oov-confidence, only if a paired bootstrap says it beats no penalty that surely."""
    out = tmp_path / "tune"
    argv = _quick_tune(dev, out, "--beams", "8", "--oov-penalties", "0,3,40", "--oov-confidence", "0")
    assert main(["tune", *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    sweep = summary["oov_sweep"]
    assert [r["oov"] for r in sweep] == [0.0, 3.0, 40.0]
    assert "p_better" not in sweep[0] and all(0 <= r["p_better"] <= 1 for r in sweep[1:])
    kept = min(sweep, key=lambda r: (r["wer"], r["cer"], r["oov"]))["oov"]
    assert DecodeConfig.load(out / "best.toml").weights.get("oov", 0.0) == kept
    # the same sweep asked for near-certainty: the lowest dev WER is kept only if it is sure
    sure = tmp_path / "sure"
    assert main(["tune", *_quick_tune(dev, sure, "--beams", "8", "--oov-penalties", "0,3,40",
                                      "--oov-confidence", "0.999")]) == 0
    sure_sweep = json.loads((sure / "summary.json").read_text())["oov_sweep"]
    assert [{k: v for k, v in r.items() if k != "not_kept"} for r in sure_sweep] == sweep
    best = min(sweep, key=lambda r: (r["wer"], r["cer"], r["oov"]))
    expect = best["oov"] if not best["oov"] or best["p_better"] >= 0.999 else 0.0
    assert DecodeConfig.load(sure / "best.toml").weights.get("oov", 0.0) == expect
    assert any("not_kept" in r for r in sure_sweep) == (expect != best["oov"])
    # the weight studies ran without the penalty: their trials equal a run without the sweep
    plain = tmp_path / "plain"
    assert main(["tune", *_quick_tune(dev, plain, "--beams", "8")]) == 0
    strip = [{k: t[k] for k in ("params", "wer", "cer")} for t in TrialLog(plain / "trials.jsonl").trials
             if t["stage"] == "first_pass"]
    assert [{k: t[k] for k in ("params", "wer", "cer")} for t in TrialLog(out / "trials.jsonl").trials
            if t["stage"] == "first_pass"] == strip
    assert "oov_sweep" not in json.loads((plain / "summary.json").read_text())
    # a penalty that is kept is in the config, the N-best table and the rescoring weights,
    # and fusion decode reads it
    forced = tmp_path / "forced"
    assert main(["tune", *_quick_tune(dev, forced, "--beams", "8", "--oov-penalties", "3")]) == 0
    config = tomllib.loads((forced / "best.toml").read_text())
    assert config["weights"]["oov"] == 3.0 and "oov" in config["rescore"]["weights"]
    hyp = tmp_path / "hyp.jsonl"
    assert main(["decode", str(dev / "dev.npz"), "--decoder", "beam", "--config", str(forced / "best.toml"),
                 "-o", str(hyp)]) == 0
    assert "oov" in json.loads(hyp.read_text().splitlines()[0])["scores"]
    # a penalty is 0 or more
    assert main(["tune", *_quick_tune(dev, tmp_path / "bad", "--oov-penalties", "0,-1")]) == 2
    assert "--oov-penalties must be 0 or more" in capsys.readouterr().err
    for bad in ("1", "-0.1"):
        assert main(["tune", *_quick_tune(dev, tmp_path / "bad", "--oov-confidence", bad)]) == 2
        assert f"--oov-confidence must lie in [0, 1), got {float(bad)}" in capsys.readouterr().err

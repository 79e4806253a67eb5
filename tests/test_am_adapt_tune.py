"""Choosing test-time adaptation settings per model (fusion.am.adapt_tune, fusion adapt-tune)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fusion.am.adapt import AdaptConfig
from fusion.am.adapt_tune import choose_setting, load_settings, score_steps, settings_path, tune_adaptation
from fusion.am.model import CTCModel, ModelConfig, model_checkpoint, save_checkpoint
from fusion.cli.am import adapt_config_from_args, add_adapt_arguments
from fusion.cli.main import main
from fusion.core.manifest import read_manifest
from fusion.core.tokens import character_table

TINY = ModelConfig(subsampling_channels=8, d_model=32, n_heads=2, ff_mult=2, n_layers=2,
                   conv_kernel=5, dropout=0.0)


def tiny_model(seed: int = 0) -> CTCModel:
    torch.manual_seed(seed)
    return CTCModel(TINY, character_table()).eval()


def tones(folder, name: str, n: int, *, seconds: float = 2.0, bad: bool = False):
    """A manifest of ``n`` noisy tones saying "a cat" (with ``bad``, one unreadable file too)."""
    rng = np.random.default_rng(len(name) + n)
    t = np.arange(int(seconds * 16000)) / 16000
    with (folder / f"{name}.jsonl").open("w") as fh:
        for i in range(n):
            wav = 0.2 * np.sin(2 * np.pi * (250 + 90 * i) * t) + 0.02 * rng.standard_normal(len(t))
            sf.write(folder / f"{name}{i}.wav", wav.astype(np.float32), 16000)
            fh.write(json.dumps({"id": f"{name}{i}", "audio": f"{name}{i}.wav", "text": "a cat"}) + "\n")
        if bad:
            (folder / f"{name}-bad.wav").write_bytes(b"not audio")
            fh.write(json.dumps({"id": f"{name}-bad", "audio": f"{name}-bad.wav", "text": "a"}) + "\n")
    return folder / f"{name}.jsonl"


def row(lr, steps, dev, target=None):
    return {"lr": lr, "steps": steps, "dev_cer": dev, **({} if target is None else {"target_cer": target})}


def test_rule_lowest_target_within_the_dev_cost():
    grid = [row(0.0, 0, 3.34, 23.30), row(3e-4, 5, 3.42, 19.61), row(5e-4, 5, 3.50, 19.01),
            row(5e-4, 3, 3.44, 19.61), row(2e-4, 5, 3.40, 20.10)]
    # 5e-4 x 5 is best on the target but costs dev 0.16 > 0.1; of the rest, 19.61 twice:
    # fewer steps wins
    assert choose_setting(grid, max_cost=0.1, has_target=True) == row(5e-4, 3, 3.44, 19.61)
    assert choose_setting(grid, max_cost=0.2, has_target=True) == row(5e-4, 5, 3.50, 19.01)
    # at no cost allowed, only what does not hurt dev: the plain model
    assert choose_setting(grid, max_cost=0.0, has_target=True)["steps"] == 0
    # a cost exactly at the limit is allowed
    assert choose_setting(grid, max_cost=0.08, has_target=True) == row(3e-4, 5, 3.42, 19.61)


def test_rule_without_a_target_and_when_nothing_helps():
    grid = [row(0.0, 0, 10.0), row(1e-4, 1, 9.5), row(1e-3, 1, 9.5), row(1e-4, 2, 9.0)]
    assert choose_setting(grid, max_cost=0.1, has_target=False) == row(1e-4, 2, 9.0)
    worse = [row(0.0, 0, 3.0, 20.0), row(1e-4, 1, 3.05, 20.5)]
    assert choose_setting(worse, max_cost=0.1, has_target=True)["steps"] == 0  # ties keep plain
    with pytest.raises(ValueError, match="plain model's row"):
        choose_setting(worse[1:], max_cost=0.1, has_target=True)


def test_score_steps_step_zero_is_the_plain_model_and_bad_audio_is_skipped(tmp_path):
    from fusion.am.infer import compute_posteriors
    from fusion.core.metrics import score_corpus
    from fusion.decoder.greedy import greedy_decode

    manifest = tones(tmp_path, "dev", 3, bad=True)
    utts = read_manifest(manifest)
    model = tiny_model()
    s = score_steps(model, utts, AdaptConfig(steps=2, lr=1e-2, min_seconds=0), progress=False)
    assert len(s.cer) == 3 and s.utterances == 3 and s.adapted == 3 and s.chars == 3 * 5
    assert [f[0] for f in s.failed] == ["dev-bad"] and "dev-bad" in s.failed[0][1]
    plain = [p for p in compute_posteriors(utts[:3], model)]
    score = score_corpus({u.id: u.text for u in utts[:3]},
                         {r.utt_id: r.best.text for r in greedy_decode(plain, model.token_table)})
    assert s.cer[0] == pytest.approx(100 * score.cer) and s.char_errors[0] == score.chars.errors
    # the last step's CER is what fusion posteriors --adapt-steps 2 would give
    adapted = list(compute_posteriors(utts[:3], model, adapt=AdaptConfig(steps=2, lr=1e-2, min_seconds=0)))
    last = score_corpus({u.id: u.text for u in utts[:3]},
                        {r.utt_id: r.best.text for r in greedy_decode(adapted, model.token_table)})
    assert s.char_errors[2] == last.chars.errors


def test_tune_writes_settings_that_the_flags_read(tmp_path):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model_checkpoint(tiny_model()))
    dev, target = tones(tmp_path, "dev", 2), tones(tmp_path, "real", 2)
    out = settings_path(ckpt)
    assert out == tmp_path / "m.adapt.json"
    record = tune_adaptation(tiny_model(), read_manifest(dev), read_manifest(target),
                             lrs=[1e-2, 1e-3], max_steps=2, base=AdaptConfig(min_seconds=0),
                             progress=False, checkpoint=ckpt, out=out)
    assert [(r["lr"], r["steps"]) for r in record["grid"]] == [
        (0.0, 0), (1e-3, 1), (1e-3, 2), (1e-2, 1), (1e-2, 2)]
    assert record["chosen"] == choose_setting(record["grid"], max_cost=0.1, has_target=True)
    assert record["chosen"] in record["grid"]
    assert json.loads(out.read_text()) == record and len(record["model"]["sha256"]) == 64
    own = load_settings(ckpt)
    assert own == AdaptConfig.from_dict(record["config"])

    # the flags: --adapt takes the model's settings; a flag given wins over them
    p = argparse.ArgumentParser()
    add_adapt_arguments(p)
    forced = AdaptConfig(steps=2, lr=0.5, min_seconds=0)
    out.write_text(json.dumps({"config": forced.to_dict()}))
    assert adapt_config_from_args(p.parse_args([]), ckpt) is None
    assert adapt_config_from_args(p.parse_args(["--adapt"]), ckpt) == forced
    assert adapt_config_from_args(p.parse_args(["--adapt-steps", "4", "--adapt-lr", "1e-3"]), ckpt) == \
        AdaptConfig(steps=4, lr=1e-3, min_seconds=0)
    assert adapt_config_from_args(p.parse_args(["--adapt"]), tmp_path / "other.pt") == AdaptConfig()
    assert adapt_config_from_args(p.parse_args(["--adapt", "--adapt-steps", "0"]), ckpt) is None


def test_a_model_adaptation_does_not_help_is_left_alone(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model_checkpoint(tiny_model()))
    settings_path(ckpt).write_text(json.dumps({"config": AdaptConfig(steps=0).to_dict()}))
    p = argparse.ArgumentParser()
    add_adapt_arguments(p)
    assert adapt_config_from_args(p.parse_args(["--adapt"]), ckpt) is None
    assert "chose no adaptation for this model" in capsys.readouterr().err
    assert adapt_config_from_args(p.parse_args(["--adapt-steps", "2"]), ckpt).steps == 2


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"steps": 5}', "no 'config' object"),
    ('{"config": {"steps": 5, "rate": 1}}', "unknown key\\(s\\) rate"),
    ('{"config": {"lr": -1}}', "adapt lr must be > 0"),
])
def test_bad_settings_files_name_the_file(tmp_path, text, match):
    ckpt = tmp_path / "m.pt"
    settings_path(ckpt).write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_settings(ckpt)
    assert "m.adapt.json" in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"lrs": []}, "at least one rate"),
    ({"lrs": [1e-3, 0.0]}, "rates must be > 0"),
    ({"max_steps": 0}, "max_steps must be a whole number >= 1"),
    ({"max_cost": -0.1}, "max_cost must be >= 0"),
])
def test_bad_tuning_arguments_are_refused(tmp_path, kwargs, match):
    utts = read_manifest(tones(tmp_path, "dev", 1))
    args = {"lrs": [1e-3], "max_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        tune_adaptation(tiny_model(), utts, None, progress=False, **args)


def test_sets_without_transcripts_or_readable_audio_are_refused(tmp_path):
    (tmp_path / "notext.jsonl").write_text('{"id": "x", "audio": "x.wav"}\n')
    with pytest.raises(ValueError, match="utterance 'x' has no text"):
        tune_adaptation(tiny_model(), read_manifest(tmp_path / "notext.jsonl"), None, lrs=[1e-3],
                        max_steps=1, progress=False, names={"dev": "notext.jsonl"})
    (tmp_path / "x.wav").write_bytes(b"junk")
    (tmp_path / "junk.jsonl").write_text('{"id": "x", "audio": "x.wav", "text": "a"}\n')
    with pytest.raises(ValueError, match="none of the 1 utterances could be read"):
        tune_adaptation(tiny_model(), read_manifest(tmp_path / "junk.jsonl"), None, lrs=[1e-3],
                        max_steps=1, progress=False)


def test_cli_tunes_then_posteriors_adapt_with_the_chosen_settings(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model_checkpoint(tiny_model()))
    dev = tones(tmp_path, "dev", 2)
    assert main(["adapt-tune", "--model", str(ckpt), "--dev", str(dev), "--lr", "1e-2",
                 "--max-steps", "2", "--adapt-min-seconds", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "chosen:" in out and "m.adapt.json" in out and out.count("<- chosen") == 1
    record = json.loads(settings_path(ckpt).read_text())
    assert record["rule"] == "lowest dev CER" and record["config"]["min_seconds"] == 0
    assert main(["adapt-tune", "--model", str(ckpt), "--dev", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert main(["adapt-tune", "--model", str(ckpt), "--dev", str(dev), "--max-steps", "0",
                 "--no-progress"]) == 2
    assert "max_steps must be" in capsys.readouterr().err
    # fusion posteriors --adapt: the settings beside the model, the same as giving them as flags
    from fusion.core.posteriors import PosteriorsReader

    settings_path(ckpt).write_text(json.dumps(
        {"config": AdaptConfig(steps=2, lr=1e-2, min_seconds=0).to_dict()}))
    outs = {}
    as_flags = ["--adapt-steps", "2", "--adapt-lr", "1e-2", "--adapt-min-seconds", "0"]
    for name, flags in (("own", ["--adapt"]), ("flags", as_flags), ("plain", [])):
        out_path = tmp_path / f"{name}.npz"
        assert main(["posteriors", str(dev), "-o", str(out_path), "--model", str(ckpt),
                     "--no-progress", *flags]) == 0
        with PosteriorsReader(out_path) as reader:
            outs[name] = reader["dev0"].log_probs
    np.testing.assert_array_equal(outs["own"], outs["flags"])
    assert not np.allclose(outs["own"], outs["plain"])

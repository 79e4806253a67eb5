"""Training: batches by duration, exact resume after a kill, BEST-RQ pretraining, fine-tuning."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fusion.am.config import (BatchConfig, BestRQConfig, ConfigError, OptimConfig, PretrainConfig, RunConfig,
                              TokensConfig, TrainConfig)
from fusion.am.data import FeatureSet, load_feature_sets, make_batches
from fusion.am.features import CMVN, spectral_shape
from fusion.am.model import (CheckpointError, CTCModel, ModelConfig, average_checkpoints, load_checkpoint,
                             load_model, model_checkpoint, model_from_checkpoint, save_checkpoint)
from fusion.am.pretrain import BestRQModel, pretrain_bestrq, span_mask
from fusion.am.subword import SentencePieceUnits, train_sentencepiece
from fusion.am.train import CTCTask, ctc_feasible, load_pretrained_encoder, train_ctc
from fusion.am.trainer import LRSchedule
from fusion.cli import am as am_cli
from fusion.core.manifest import ManifestError
from fusion.core.tokens import TokenTableError, character_table

TINY = ModelConfig(subsampling_channels=8, d_model=32, n_heads=2, ff_mult=2, n_layers=2,
                   conv_kernel=5, dropout=0.1)
WORDS = ["a", "ab", "abc", "ba", "cab", "be", "bad", "ace", "dab", "cade"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Ten tone-and-noise clips of 0.4-1.3 s with short transcripts."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(WORDS):
        n = int(16000 * (0.4 + 0.1 * i))
        t = np.arange(n) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.02 * rng.standard_normal(n)
        sf.write(root / f"u{i}.wav", wav.astype(np.float32), 16000)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": text, "duration": n / 16000})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return root


def config(total=7, **run) -> TrainConfig:
    return TrainConfig(
        model=TINY,
        optim=OptimConfig(lr=3e-3, warmup_steps=2, total_steps=total),
        batch=BatchConfig(max_frames=300, max_utterances=4, pool=2),
        run=RunConfig(num_threads=1, eval_every_steps=3, checkpoint_minutes=60,
                      checkpoint_every_steps=2, **run),
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_make_batches_deterministic_and_capped():
    lengths = torch.randint(50, 400, (200,), generator=torch.Generator().manual_seed(0))
    a = make_batches(lengths, max_frames=2000, max_utterances=16, seed=3, epoch=1)
    assert a == make_batches(lengths, max_frames=2000, max_utterances=16, seed=3, epoch=1)
    assert a != make_batches(lengths, max_frames=2000, max_utterances=16, seed=3, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(200))
    for b in a:
        assert len(b) <= 16 and max(int(lengths[i]) for i in b) * len(b) <= 2000


def test_lr_schedule():
    s = LRSchedule(OptimConfig(lr=1e-3, warmup_steps=10, total_steps=110, min_lr_ratio=0.1))
    assert s(0) == pytest.approx(1e-4) and s(9) == pytest.approx(1e-3)
    assert s(60) == pytest.approx(0.55e-3) and s(110) == pytest.approx(1e-4)
    n = LRSchedule(OptimConfig(lr=1e-3, warmup_steps=10, schedule="noam"))
    assert n(39) == pytest.approx(0.5e-3)


def test_ctc_feasible():
    assert ctc_feasible([1, 2, 3], 3) and not ctc_feasible([1, 1, 2], 3)
    assert ctc_feasible([1, 1, 2], 4) and not ctc_feasible([], 5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_resume_after_kill(corpus, tmp_path, precision):
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    dev = FeatureSet.from_manifest(corpus / "dev.jsonl", progress=False)
    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": dev}
    assert len(make_batches(
        train.lengths, max_frames=300, max_utterances=4, seed=1, epoch=0, pool=2)) >= 3

    straight = tmp_path / "straight"
    train_ctc(None, None, straight, config(keep_snapshots=2, precision=precision), **kw)
    # evaluations at steps 3, 6 and 7: the model of the last two is kept
    snaps = sorted((straight / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["step-00000006.pt", "step-00000007.pt"]
    for k, v in weights(straight / "last.pt").items():
        assert torch.equal(weights(snaps[-1])[k], v), k

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # dies after step 5; last checkpoint at step 4
        train_ctc(None, None, killed, config(precision=precision), stop_after=5, **kw)
    ckpt = load_checkpoint(killed / "last.pt")
    assert ckpt["train_state"]["trainer"]["step"] == 4
    assert ckpt["train_state"]["trainer"]["batch_in_epoch"] > 0  # killed mid-epoch
    state = train_ctc(None, None, killed, config(precision=precision), **kw)
    assert state.step == 7

    a, b = weights(straight / "last.pt"), weights(killed / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 8))
    evals = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()
             if "dev_cer" in json.loads(line)]
    assert [e["step"] for e in evals] == [3, 6, 7]
    assert (killed / "curves.png").stat().st_size > 1000
    model = load_model(killed / "model.pt")
    assert model.config == TINY
    assert load_model(killed / "best.pt").config == TINY
    # continuing a finished CTC model copies its head and its feature normalisation too
    cont = CTCModel(TINY, cmvn=CMVN(torch.ones(TINY.n_mels), torch.full((TINY.n_mels,), 2.0)))
    assert load_pretrained_encoder(cont, killed / "model.pt")
    assert torch.equal(cont.head.weight, model.head.weight)
    assert torch.equal(cont.cmvn.mean, model.cmvn.mean)
    assert torch.equal(cont.cmvn.std, model.cmvn.std)

    other = replace(config(), optim=OptimConfig(lr=1e-3, warmup_steps=2, total_steps=7))
    with pytest.raises(CheckpointError, match="different config \\(sections optim\\)"):
        train_ctc(None, None, killed, other, **kw)
    # the schedule's length alone may change: the run goes on to the new total
    said = []
    state = train_ctc(None, None, killed, config(total=9), **{**kw, "log": said.append})
    assert state.step == 9
    assert any("total_steps 7 -> 9" in m for m in said)


def test_bf16_on_a_cpu_without_bf16_kernels_is_warned_about(corpus, tmp_path, monkeypatch):
    import fusion.am.trainer as trainer

    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    said: list[str] = []
    kw = {"progress": False, "log": said.append, "train_set": train, "dev_set": train}
    assert isinstance(trainer.cpu_has_bf16_kernels(), bool)  # this machine's answer, either way
    monkeypatch.setattr(trainer, "cpu_has_bf16_kernels", lambda: False)
    train_ctc(None, None, tmp_path / "bf16", config(total=1, precision="bf16"), **kw)
    assert sum("bf16 is emulated" in m for m in said) == 1
    said.clear()
    train_ctc(None, None, tmp_path / "fp32", config(total=1), **kw)
    assert not any("bf16" in m for m in said)
    monkeypatch.setattr(trainer, "cpu_has_bf16_kernels", lambda: True)
    train_ctc(None, None, tmp_path / "bf16-native", config(total=1, precision="bf16"), **kw)
    assert not any("emulated" in m for m in said)


def test_training_on_shards_equals_training_on_their_joined_manifest(corpus, tmp_path, capsys):
    rows = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    lines = [json.dumps({**r, "audio": str(corpus / r["audio"])}) + "\n" for r in rows]
    for name, part in (("a", lines[:4]), ("b", lines[4:]), ("c", lines[3:4])):
        (tmp_path / f"shard-{name}.jsonl").write_text("".join(part))
    shards = [tmp_path / "shard-a.jsonl", tmp_path / "shard-b.jsonl"]
    cache = tmp_path / "cache"
    joined, _ = load_feature_sets(corpus / "train.jsonl", None, cache_dir=cache, progress=False)
    both, _ = load_feature_sets(shards, None, cache_dir=cache, progress=False)
    assert both.ids == joined.ids and both.texts == joined.texts
    assert torch.equal(both.flat, joined.flat) and torch.equal(both.offsets, joined.offsets)
    assert len(list(cache.glob("feats-shard-*.pt"))) == 2  # each shard cached on its own

    # the CLI takes several manifests; the model is the one the joined manifest trains
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        "[model]\nsubsampling_channels = 8\nd_model = 32\nn_heads = 2\nff_mult = 2\n"
        "n_layers = 2\nconv_kernel = 5\n[optim]\nlr = 3e-3\nwarmup_steps = 2\n"
        "total_steps = 3\n[batch]\nmax_frames = 300\nmax_utterances = 4\npool = 2\n"
        "[run]\nnum_threads = 1\neval_every_steps = 3\n")
    common = ["--dev", str(corpus / "dev.jsonl"), "--config", str(cfg), "--cache", str(cache),
              "--no-progress"]
    assert am_cli.main(["train", "--train", *map(str, shards), "--out",
                        str(tmp_path / "shards"), *common]) == 0
    assert am_cli.main(["train", "--train", str(corpus / "train.jsonl"), "--out",
                        str(tmp_path / "joined"), *common]) == 0
    a, b = weights(tmp_path / "shards" / "last.pt"), weights(tmp_path / "joined" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # an utterance in two shards is refused, naming both manifests
    with pytest.raises(ManifestError, match=r"shard-c\.jsonl: 1 utterance also in "
                                            r".*shard-a\.jsonl \('u3'\)"):
        load_feature_sets([*shards, tmp_path / "shard-c.jsonl"], None, cache_dir=cache,
                          progress=False)
    capsys.readouterr()
    assert am_cli.main(["train", "--train", *map(str, shards), str(shards[0]),
                        "--out", str(tmp_path / "twice"), *common]) == 2
    err = capsys.readouterr().err  # every shared id counted, the first three named
    assert "shard-a.jsonl: 4 utterances also in" in err and "('u0', 'u1', 'u2', ...)" in err


def test_repeat_gives_a_shard_that_many_times_and_bad_counts_are_refused(corpus, tmp_path, capsys):
    rows = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    lines = [json.dumps({**r, "audio": str(corpus / r["audio"])}) + "\n" for r in rows]
    shards = [tmp_path / "shard-a.jsonl", tmp_path / "shard-b.jsonl"]
    shards[0].write_text("".join(lines[:2]))
    shards[1].write_text("".join(lines[2:5]))
    cache = tmp_path / "cache"
    a, _ = load_feature_sets(shards[:1], None, cache_dir=cache, progress=False)
    b, _ = load_feature_sets(shards[1:], None, cache_dir=cache, progress=False)
    weighted, _ = load_feature_sets(shards, None, cache_dir=cache, progress=False, repeats=[1, 3])
    assert weighted.ids == a.ids + b.ids * 3
    assert torch.equal(weighted.flat, torch.cat([a.flat, b.flat, b.flat, b.flat]))
    assert weighted.total_seconds == pytest.approx(a.total_seconds + 3 * b.total_seconds)
    same, _ = load_feature_sets(shards, None, cache_dir=cache, progress=False, repeats=[1, 1])
    plain, _ = load_feature_sets(shards, None, cache_dir=cache, progress=False)
    assert same.ids == plain.ids and torch.equal(same.flat, plain.flat)
    for bad, match in (([1], "1 repeat count"), ([1, 2, 1], "3 repeat count"),
                       ([0, 1], "whole numbers >= 1"), ([1, 1.5], "whole numbers >= 1"),
                       ([True, 1], "whole numbers >= 1")):
        with pytest.raises(ValueError, match=match):
            load_feature_sets(shards, None, cache_dir=cache, progress=False, repeats=bad)
    with pytest.raises(ValueError, match="already loaded"):
        load_feature_sets(None, None, cache_dir=cache, train_set=a, repeats=[2])
    # the CLI takes one count per manifest and names the mismatch
    capsys.readouterr()
    assert am_cli.main(["train", "--train", *map(str, shards), "--repeat", "2",
                        "--out", str(tmp_path / "bad"), "--cache", str(cache),
                        "--no-progress"]) == 2
    assert "1 repeat count(s) for 2 training manifest(s)" in capsys.readouterr().err


def test_span_mask():
    lengths = torch.tensor([50, 20, 3])
    m = span_mask(lengths, 50, 0.05, 5, torch.Generator().manual_seed(0))
    assert m.shape == (3, 50)
    assert m.any(dim=1).all()
    assert not m[1, 20:].any() and not m[2, 3:].any()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pretrain_resume_and_finetune(corpus, tmp_path, precision):
    train = FeatureSet.from_manifest(corpus / "train.jsonl", require_text=False, progress=False)
    cfg = PretrainConfig(
        model=TINY, optim=OptimConfig(lr=2e-3, warmup_steps=1, total_steps=5),
        batch=BatchConfig(max_frames=300, max_utterances=4, pool=2),
        bestrq=BestRQConfig(codebook_size=32, codebook_dim=8, mask_prob=0.1, mask_span=3),
        run=RunConfig(num_threads=1, eval_every_steps=5, checkpoint_every_steps=2,
                      precision=precision),
    )
    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": train}
    pretrain_bestrq(None, None, tmp_path / "a", cfg, **kw)
    with pytest.raises(KeyboardInterrupt):
        pretrain_bestrq(None, None, tmp_path / "b", cfg, stop_after=3, **kw)
    pretrain_bestrq(None, None, tmp_path / "b", cfg, **kw)
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert any("dev_bestrq_acc" in r for r in log)

    # A CTC model starts from the pretrained encoder; a mismatched encoder is refused.
    model = CTCModel(TINY)
    assert not load_pretrained_encoder(model, tmp_path / "a" / "last.pt")
    enc = {k[len("encoder."):]: v for k, v in a.items() if k.startswith("encoder.")}
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc[k])
    with pytest.raises(CheckpointError, match="n_layers"):
        load_pretrained_encoder(CTCModel(ModelConfig(**{**TINY.to_dict(), "n_layers": 3})),
                                tmp_path / "a" / "last.pt")
    ft = train_ctc(corpus / "train.jsonl", corpus / "dev.jsonl", tmp_path / "ft", config(total=2),
                   pretrained=tmp_path / "a" / "last.pt", progress=False, log=lambda m: None)
    assert ft.step == 2
    assert any((tmp_path / "ft" / "cache").iterdir())  # features cached for the next run


def test_sentencepiece_units_train_resume_and_decode(corpus, tmp_path):
    """Subword units: learnt from the transcripts, kept in the checkpoint, resumed exactly."""
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": None}
    sp = replace(config(total=4), tokens=TokensConfig(kind="sentencepiece", vocab_size=12))
    straight = train_ctc(None, None, tmp_path / "straight", sp, **kw)
    with pytest.raises(KeyboardInterrupt):
        train_ctc(None, None, tmp_path / "killed", sp, stop_after=3, **kw)
    train2 = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    resumed = train_ctc(None, None, tmp_path / "killed", sp, **{**kw, "train_set": train2})
    assert straight.step == resumed.step == 4
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "killed" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    model = load_model(tmp_path / "killed" / "model.pt")
    units = model.units
    assert units is not None and model.token_table == units.table
    assert model.token_table.boundary_style == "prefix" and len(model.token_table) == 13
    assert model.config.vocab_size == 13
    for text in WORDS + ["cab ace bad"]:  # every transcript spells and reads back
        assert model.token_table.text_from_ids(units.encode(text)) == text
    # the model's posteriors decode with the subword table
    from fusion.am.infer import CTCModelAdapter, compute_posteriors
    from fusion.core.manifest import read_manifest
    from fusion.decoder.greedy import greedy_decode

    posts = list(compute_posteriors(read_manifest(corpus / "dev.jsonl"), CTCModelAdapter(model)))
    assert all(p.num_tokens == 13 for p in posts)
    assert len(greedy_decode(posts, model.token_table)) == 3


def test_sentencepiece_units_refuse_unknown_characters():
    units = train_sentencepiece(["a cab", "bad ace"], 8)
    assert units.table.tokens[0] == "<blank>"
    with pytest.raises(TokenTableError, match="'xyz'.*does not know"):
        units.encode("xyz")
    with pytest.raises(TokenTableError, match="not a sentencepiece model"):
        SentencePieceUnits(b"not a model")
    with pytest.raises(ConfigError, match="tokens.kind"):
        TokensConfig(kind="phones")


def test_frozen_encoder_steps_train_only_the_head(corpus, tmp_path):
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": None}
    optim = OptimConfig(lr=3e-3, warmup_steps=1, total_steps=3, freeze_encoder_steps=3)
    frozen = replace(config(total=3), optim=optim)
    train_ctc(None, None, tmp_path / "frozen", frozen, **kw)
    first = load_model(tmp_path / "frozen" / "model.pt")
    # the same seed makes the same initial model: the encoder never moved, the head did
    seeded = train_ctc(None, None, tmp_path / "one", replace(frozen, optim=replace(
        frozen.optim, total_steps=1)), **kw)
    assert seeded.step == 1
    one = load_model(tmp_path / "one" / "model.pt")
    for (name, a), b in zip(first.encoder.state_dict().items(), one.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.head.weight, one.head.weight)
    # after the freeze the encoder learns
    thawed = replace(frozen, optim=replace(frozen.optim, total_steps=4, freeze_encoder_steps=2))
    train_ctc(None, None, tmp_path / "thawed", thawed, **kw)
    moved = load_model(tmp_path / "thawed" / "model.pt")
    pairs = zip(moved.encoder.state_dict().values(), one.encoder.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_upsampling_head_continues_a_trained_model(corpus, tmp_path):
    """A finished model continued with ``model.upsample = 2`` starts with its transcripts,
    learns the split, and a continuation of that keeps the split."""
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": None}
    train_ctc(None, None, tmp_path / "base", config(total=3), **kw)
    base = load_model(tmp_path / "base" / "model.pt")
    up = replace(TINY, upsample=2)
    fresh = CTCModel(up).eval()
    assert load_pretrained_encoder(fresh, tmp_path / "base" / "model.pt")
    feats, lengths = torch.randn(2, 120, TINY.n_mels), torch.tensor([120, 77])
    with torch.no_grad():
        a, na = base(feats, lengths)
        b, nb = fresh(feats, lengths)
    torch.testing.assert_close(b, a.repeat_interleave(2, dim=1))
    assert nb.tolist() == (2 * na).tolist()

    cfg = replace(config(total=3), model=up)
    said: list[str] = []
    train_ctc(None, None, tmp_path / "up", cfg, pretrained=tmp_path / "base" / "model.pt",
              **{**kw, "log": said.append})
    assert any("2 CTC frames each (20 ms frames)" in m for m in said)
    trained = load_model(tmp_path / "up" / "model.pt")
    assert trained.config.upsample == 2 and trained.frame_shift == pytest.approx(0.02)
    assert trained.split.proj.weight.abs().sum() > 0
    again = CTCModel(up)
    load_pretrained_encoder(again, tmp_path / "up" / "model.pt")
    assert torch.equal(again.split.proj.weight, trained.split.proj.weight)


def test_shape_norm_reference_comes_from_the_training_set(corpus, tmp_path):
    """A model with ``shape_norm`` continued from one without takes its training set's
    mean spectral shape as reference; a continuation of that keeps the reference it learnt
    with; BEST-RQ refuses the option."""
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    mean = train.spectral_shape_mean()
    by_hand = torch.stack([spectral_shape(train.features(i)[None])[0] for i in range(len(train))])
    torch.testing.assert_close(mean, by_hand.mean(0))
    torch.testing.assert_close(train.spectral_shape_mean(max_utterances=5),
                               by_hand[::2].mean(0))  # every other one of 10
    with pytest.raises(ValueError, match="empty"):
        train.subset([]).spectral_shape_mean()

    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": None}
    train_ctc(None, None, tmp_path / "base", config(total=2), **kw)
    shaped = replace(config(total=2), model=replace(TINY, shape_norm=True))
    train_ctc(None, None, tmp_path / "shaped", shaped, pretrained=tmp_path / "base" / "model.pt", **kw)
    first = load_model(tmp_path / "shaped" / "model.pt")
    torch.testing.assert_close(first.shape_ref, mean)
    other = train.subset([0, 1, 2])  # another set, another mean: the checkpoint's wins
    kw["train_set"] = other
    train_ctc(None, None, tmp_path / "again", shaped, pretrained=tmp_path / "shaped" / "model.pt", **kw)
    assert torch.equal(load_model(tmp_path / "again" / "model.pt").shape_ref, first.shape_ref)
    with pytest.raises(ValueError, match="BEST-RQ"):
        BestRQModel(replace(TINY, shape_norm=True), BestRQConfig())


def test_resume_fills_config_keys_added_since(corpus, tmp_path):
    """A checkpoint written before a config key existed resumes with the key's default."""
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": None}
    with pytest.raises(KeyboardInterrupt):
        train_ctc(None, None, tmp_path / "run", config(total=4), stop_after=2, **kw)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    del ckpt["train_state"]["config"]["tokens"]  # as written before [tokens] existed
    del ckpt["train_state"]["config"]["optim"]["freeze_encoder_steps"]
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    assert train_ctc(None, None, tmp_path / "run", config(total=4), **kw).step == 4


def test_feature_subset_keeps_the_chosen_utterances(corpus):
    full = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    part = full.subset([3, 1])
    assert part.ids == ["u3", "u1"] and part.texts == [WORDS[3], WORDS[1]]
    assert torch.equal(part.features(0), full.features(3)) and torch.equal(part.features(1), full.features(1))
    assert len(full.subset([])) == 0
    with pytest.raises(IndexError, match="subset"):
        full.subset([len(full)])


def test_run_config_device_and_budget_checked():
    for bad in ("gpu", "cuda:x", ""):
        with pytest.raises(ConfigError, match="run.device"):
            RunConfig(device=bad)
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        RunConfig(time_budget_minutes=-1)
    assert RunConfig(device="cuda:1").device == "cuda:1"


def test_cuda_device_refused_without_cuda(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    kw = {"progress": False, "log": lambda m: None, "train_set": train, "dev_set": None}
    with pytest.raises(ConfigError, match="no CUDA device"):
        train_ctc(None, None, tmp_path / "run", config(device="cuda"), **kw)
    # "auto" falls back to the CPU
    assert train_ctc(None, None, tmp_path / "auto", config(total=2, device="auto"), **kw).step == 2


def test_time_budget_sets_the_schedule_and_resume_keeps_it(corpus, tmp_path, monkeypatch):
    """The run times its probe steps and fits total_steps to the budget; a resumed run
    keeps the length chosen (saved in the checkpoint), whatever the config says."""
    import fusion.am.trainer as trainer_mod

    clock = iter(range(0, 10_000, 10))  # every reading of the clock is 10 s later
    monkeypatch.setattr(trainer_mod.time, "monotonic", lambda: float(next(clock)))
    train = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    said: list[str] = []
    kw = {"progress": False, "log": said.append, "train_set": train, "dev_set": None}
    run = {"time_budget_minutes": 10.0, "budget_probe_steps": 3}
    with pytest.raises(KeyboardInterrupt):
        train_ctc(None, None, tmp_path / "run", config(total=1000, **run), stop_after=4, **kw)
    total = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["config"]["optim"]["total_steps"]
    assert any(f"schedule runs to step {total}" in m for m in said)
    assert 3 < total < 1000
    state = train_ctc(None, None, tmp_path / "run", config(total=1000, **run), **kw)
    assert state.step == total


def _ctc_checkpoint(path: Path, seed: int, **changes) -> Path:
    torch.manual_seed(seed)
    cmvn = CMVN(torch.zeros(TINY.n_mels), torch.ones(TINY.n_mels))
    model = CTCModel(replace(TINY, **changes), cmvn=cmvn)
    save_checkpoint(path, model_checkpoint(model, train_state={"step": seed}))
    return path


def test_average_checkpoints(tmp_path):
    a, b, c = (_ctc_checkpoint(tmp_path / f"{n}.pt", seed) for n, seed in
               (("a", 1), ("b", 2), ("c", 3)))
    avg = average_checkpoints([a, b, c], half=False)
    assert "train_state" not in avg
    for k, v in weights(a).items():
        if v.is_floating_point():
            mean = (v.double() + weights(b)[k].double() + weights(c)[k].double()) / 3
            assert torch.allclose(avg["model"][k].double(), mean, atol=1e-6), k
            assert avg["model"][k].dtype == torch.float32
    one = average_checkpoints([a], half=False)  # one checkpoint averages to itself
    assert all(torch.equal(one["model"][k], v) for k, v in weights(a).items())
    half = average_checkpoints([a, b])
    assert all(v.dtype == torch.float16 for v in half["model"].values() if v.is_floating_point())
    model = model_from_checkpoint(avg)  # loads as a model, with a's config and units
    assert model.config == TINY

    with pytest.raises(CheckpointError, match="at least one"):
        average_checkpoints([])
    other = _ctc_checkpoint(tmp_path / "other.pt", 4, n_layers=3)
    with pytest.raises(CheckpointError, match=r"other\.pt: its config differs"):
        average_checkpoints([a, other])
    # a checkpoint written before a config key existed holds its default: the same config
    data = load_checkpoint(b)
    del data["config"]["shape_norm"]
    save_checkpoint(tmp_path / "older.pt", data)
    older = average_checkpoints([tmp_path / "older.pt", a], half=False)
    assert torch.allclose(older["model"][k].double(), (weights(a)[k].double()
                                                       + weights(b)[k].double()) / 2, atol=1e-6)
    data = load_checkpoint(b)
    data["cmvn"] = {"mean": torch.ones(TINY.n_mels), "std": torch.ones(TINY.n_mels)}
    save_checkpoint(tmp_path / "cmvn.pt", data)
    with pytest.raises(CheckpointError, match=r"cmvn\.pt: its feature normalisation differs"):
        average_checkpoints([a, tmp_path / "cmvn.pt"])
    data = load_checkpoint(b)
    data["token_table"] = {**data["token_table"], "blank": "<b>"}
    save_checkpoint(tmp_path / "table.pt", data)
    with pytest.raises(CheckpointError, match=r"table\.pt: its token_table differs"):
        average_checkpoints([a, tmp_path / "table.pt"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        average_checkpoints([a, tmp_path / "junk.pt"])


def test_average_checkpoints_weighted(tmp_path):
    a, b = (_ctc_checkpoint(tmp_path / f"{n}.pt", seed) for n, seed in (("a", 1), ("b", 2)))
    two_to_one = average_checkpoints([a, b], half=False, weights=[2, 1])["model"]
    repeated = average_checkpoints([a, a, b], half=False)["model"]  # the same mean, by count
    for k, v in weights(a).items():
        if v.is_floating_point():
            by_hand = (2 * v.double() + weights(b)[k].double()) / 3
            assert torch.allclose(two_to_one[k].double(), by_hand, atol=1e-6), k
            assert torch.allclose(two_to_one[k], repeated[k], atol=1e-6), k
    only_a = average_checkpoints([a, b], half=False, weights=[1.0, 0.0])["model"]
    assert all(torch.equal(only_a[k], v) for k, v in weights(a).items())
    equal = average_checkpoints([a, b], half=False, weights=[0.3, 0.3])["model"]
    plain = average_checkpoints([a, b], half=False)["model"]
    assert all(torch.allclose(equal[k], plain[k], atol=1e-7) for k in plain)

    with pytest.raises(ValueError, match="1 weights for 2 checkpoints"):
        average_checkpoints([a, b], weights=[1.0])
    for bad in ([1.0, -0.5], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="must be >= 0 and not all 0"):
            average_checkpoints([a, b], weights=bad)


def test_average_cli(tmp_path, capsys):
    paths = [_ctc_checkpoint(tmp_path / f"step-{i:08d}.pt", i) for i in (3, 1, 2)]
    out = tmp_path / "avg.pt"
    assert am_cli.main(["average", *map(str, paths), "-o", str(out), "--last", "2",
                        "--fp32"]) == 0
    assert "step-00000002.pt, step-00000003.pt" in capsys.readouterr().err
    want = average_checkpoints(sorted(paths)[1:], half=False)["model"]
    assert all(torch.equal(want[k], v) for k, v in weights(out).items())
    assert am_cli.main(["average", *map(str, paths[:2]), "-o", str(out), "--fp32",
                        "--weights", "1", "3"]) == 0
    assert "weights 1 3" in capsys.readouterr().err
    want = average_checkpoints(paths[:2], half=False, weights=[1, 3])["model"]
    assert all(torch.equal(want[k], v) for k, v in weights(out).items())
    assert am_cli.main(["average", *map(str, paths[:2]), "-o", str(out), "--weights", "1"]) == 2
    assert "1 weights for 2 checkpoints" in capsys.readouterr().err
    assert am_cli.main(["average", str(paths[0]), "-o", str(out), "--last", "0"]) == 2
    assert am_cli.main(["average", str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "missing.pt: no such checkpoint" in capsys.readouterr().err


def test_feature_sets_concatenate_in_order(corpus, tmp_path):
    full = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    joined = FeatureSet.concat([full.subset([0, 1, 2]), full.subset([]), full.subset([3, 4])])
    assert joined.ids == full.ids[:5] and joined.texts == full.texts[:5]
    assert torch.equal(joined.lengths, full.lengths[:5])
    for i in range(5):
        assert torch.equal(joined.features(i), full.features(i))
    with pytest.raises(ValueError, match="no feature sets"):
        FeatureSet.concat([])
    parts = [full.subset([0, 1]), full.subset([2, 3, 4])]
    table = character_table()
    for part in parts:
        part.targets(table)
    assert FeatureSet.concat(parts)._targets == full.targets(table)[:5]  # cached ids carried
    saved = tmp_path / "set.pt"
    joined.save(saved)
    back = FeatureSet.load(saved)
    assert back.ids == joined.ids and torch.equal(back.flat, joined.flat)


def test_training_set_grows_between_epochs(corpus, tmp_path):
    """Utterances ``grow`` returns join the next epoch's batches (synthesis while training)."""
    full = FeatureSet.from_manifest(corpus / "train.jsonl", progress=False)
    first, later = full.subset(range(5)), full.subset(range(5, 10))
    model = CTCModel(TINY, character_table(), full.cmvn())
    handed = iter([None, later])
    task = CTCTask(model, first, None, config(), log=lambda m: None,
                   grow=lambda: next(handed, None))
    epoch0 = {i for b in task.epoch_batches(1, 0) for i in b}
    assert epoch0 == set(range(5))
    epoch1 = {i for b in task.epoch_batches(1, 1) for i in b}
    assert epoch1 == set(range(10)) and task.train.ids == full.ids
    assert {i for b in task.epoch_batches(1, 2) for i in b} == set(range(10))  # grow: None

    said: list[str] = []
    handed = iter([None, later])
    state = train_ctc(None, None, tmp_path / "grown", config(total=12),
                      progress=False, log=said.append, train_set=first,
                      grow=lambda: next(handed, None))
    assert state.step == 12 and state.epoch >= 2
    assert any("5 utterances" in m and "joined the training set: 10 usable" in m for m in said)
    with pytest.raises(ValueError, match="cannot resume exactly"):
        train_ctc(None, None, tmp_path / "grown", config(total=14), progress=False,
                  log=said.append, train_set=first, grow=lambda: None)

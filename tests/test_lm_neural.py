"""The neural LM: a tiny model trained for a few steps on generated text (seeded)."""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusion.cli.nlm import add_parsers
from lm.base import LMError, perplexity
from lm.neural import DEFAULT_MODEL_DIR, NeuralLM, _PrefixCache, load_checkpoint
from lm.neural_train import TrainConfig, evaluate_text, export_neural_lm, load_train_config, train_neural_lm

SUBJ = ["the cat", "a dog", "my friend", "the old man", "she", "they", "nobody"]
VERB = ["saw", "liked", "found", "chased", "didn't want", "painted"]
OBJ = ["the ball", "a red apple", "the house", "some bread", "o'brien's boat", "the green door"]
ADV = ["yesterday", "quickly", "again", "at night", "in the morning"]


def make_text(n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        k = 6 if i % 40 == 0 else r.choice([1, 1, 2])  # some sentences longer than the context
        parts = [f"{r.choice(SUBJ)} {r.choice(VERB)} {r.choice(OBJ)}"
                 + (f" {r.choice(ADV)}" if r.random() < 0.4 else "") for _ in range(k)]
        out.append(" and ".join(parts))
    return out


CFG = TrainConfig(
    vocab_size=60, n_layer=2, n_head=2, n_embd=32, block_size=24, dropout=0.1,
    batch_tokens=512, lr=3e-3, min_lr=3e-4, warmup_steps=5, max_steps=24,
    log_every=4, eval_every=12, eval_sentences=0, checkpoint_minutes=60.0,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("text")
    (d / "train.txt").write_text("\n".join(make_text(300, 0)) + "\n", encoding="utf-8")
    (d / "dev.txt").write_text("\n".join(make_text(30, 1)) + "\n\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    res = train_neural_lm(data / "train.txt", data / "dev.txt", out, CFG, progress=False, log=lambda m: None)
    assert res.steps == CFG.max_steps and not res.interrupted
    assert res.best_dev_ppl is not None and math.isfinite(res.best_dev_ppl)
    return out


@pytest.fixture(scope="module")
def lm(run: Path) -> NeuralLM:
    return NeuralLM.load(run / "checkpoint.pt")


SENTENCES = [s.split() for s in make_text(12, 7)] + [["a"], ["they", "saw", "dogcats"]]


def test_training_learns_and_logs(run: Path) -> None:
    lines = (run / "log.jsonl").read_text().splitlines()
    rows = [__import__("json").loads(x) for x in lines]
    train = [r for r in rows if r["event"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in rows if r["event"] == "eval"] == [12, 24]
    assert (run / "best.pt").exists() and (run / "tokenizer.model").exists()


def test_next_piece_distribution_sums_to_one(lm: NeuralLM) -> None:
    states = [lm.start()]
    for words in SENTENCES[:4]:
        s = lm.start()
        for w in words:
            s, _ = lm.score(s, w)
            states.append(s)
    for s in states:
        lp = lm.next_logprobs(s)
        assert lp.shape == (len(lm.tokenizer),)
        assert torch.exp(lp.double()).sum().item() == pytest.approx(1.0, abs=1e-5)
        assert lp[lm.cfg.bos_id].item() == float("-inf")  # <s> is never predicted
        assert lm.finish(s) == pytest.approx(lp[lm.cfg.eos_id].item(), abs=1e-6)


def reference_total(lm: NeuralLM, words: list[str]) -> float:
    """Piece by piece, one full forward per prediction on the last block_size pieces."""
    ids = [lm.cfg.bos_id, *lm.tokenizer.encode_words(words), lm.cfg.eos_id]
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            ctx = torch.tensor(ids[max(0, t - lm.cfg.block_size):t])[None]
            total += torch.log_softmax(lm.model(ctx)[0][0, -1], -1)[ids[t]].item()
    return total


def test_incremental_batched_scoring_equals_full_sequence(lm: NeuralLM) -> None:
    long = [w for s in SENTENCES[:5] for w in s]  # longer than the context: sliding window
    sents = SENTENCES + [long]
    assert len(lm.tokenizer.encode_words(long)) + 1 > lm.cfg.block_size
    full = lm.score_sentences(sents)
    for words, f in zip(sents, full):
        assert f == pytest.approx(reference_total(lm, words), abs=1e-4)
    with lm.session() as session:  # word at a time, all hypotheses batched per step
        states = [lm.start()] * len(sents)
        totals = [0.0] * len(sents)
        for t in range(max(map(len, sents))):
            active = [i for i, s in enumerate(sents) if t < len(s)]  # prefix lengths differ
            res = lm.score_many([states[i] for i in active], [sents[i][t] for i in active])
            for i, (st, lp) in zip(active, res):
                states[i], totals[i] = st, totals[i] + lp
        ends = lm.finish_many(states)
        # each piece within the context, <s> included, runs through the model at most once
        # (shared sentence starts once in all; those past the context in sliding windows)
        pieces = [min(len(lm.tokenizer.encode_words(s)) + 1, lm.cfg.block_size) for s in sents]
        assert 0 < session.cache.computed <= sum(pieces)
    for tot, end, f in zip(totals, ends, full):
        assert tot + end == pytest.approx(f, abs=1e-4)
    # the same without a session (no cache across calls) and through the base-class loop
    for words, f in zip(sents[:3] + sents[-1:], full[:3] + full[-1:]):
        s, tot = lm.start(), 0.0
        for w in words:
            s, lp = lm.score(s, w)
            tot += lp
        assert tot + lm.finish(s) == pytest.approx(f, abs=1e-4)
        assert lm.score_sentence(words, eos=False) == pytest.approx(tot, abs=1e-4)


def test_score_many_equals_one_by_one(lm: NeuralLM) -> None:
    rng = random.Random(3)
    vocab = sorted({w for s in SENTENCES for w in s}) + ["caf\u00e9", "xyzzy"]
    states, words = [], []
    for _ in range(40):
        s = lm.start()
        for _ in range(rng.randrange(0, 8)):
            s, _ = lm.score(s, rng.choice(vocab))
        states.append(s)
        words.append(rng.choice(vocab))
    states += states[:5]  # duplicates
    words += words[:5]
    with lm.session() as session:
        batched = session.score_many(states, words)
    with lm.session() as session:
        single = [session.score(s, w) for s, w in zip(states, words)]
    one = [lm.score(s, w) for s, w in zip(states, words)]  # no session at all
    # a budget that closes a forward after every job: the packed row split into many
    split = NeuralLM(lm.model, lm.tokenizer, batch_tokens=1).score_many(states, words)
    for (sb, lb), (ss, ls), (so, lo), (sp, lp) in zip(batched, single, one, split):
        assert sb == ss == so == sp
        assert lb == pytest.approx(ls, abs=1e-4) and lb == pytest.approx(lo, abs=1e-4)
        assert lb == pytest.approx(lp, abs=1e-4)


def test_growing_words_reuse_the_longest_cached_prefix(lm: NeuralLM) -> None:
    # a word spelt out letter by letter (as a beam search does): each spelling's pieces
    # mostly extend a cached piece sequence, and the scores stay those of a cold start
    state = lm.score(lm.start(), "the")[0]
    spellings = ["o'brienscatsaw"[:n] for n in range(1, 15)]
    with lm.session() as session:
        warm = [session.score_many([state], [w])[0][1] for w in spellings]
        computed = session.cache.computed
    cold = [lm.score(state, w)[1] for w in spellings]
    assert warm == pytest.approx(cold, abs=1e-4)
    # from scratch, each spelling would run its history and all its pieces but the last
    assert computed < sum(len(state) + len(lm.tokenizer.encode_word(w)) - 1 for w in spellings) / 2
    cache = _PrefixCache(1 << 20)
    full = lm.start() + lm.tokenizer.encode_word("o'brien")
    lm._entries([full[:2], full], cache)
    assert cache.longest_prefix(full + (5, 6), hint=1)[0] == len(full)  # longer than the hint
    assert cache.longest_prefix(full[:2] + (7,), hint=2)[0] == 2


def test_states_are_immutable_hashable_values(lm: NeuralLM) -> None:
    s0 = lm.start()
    s1, lp1 = lm.score(s0, "the")
    s1b, lp1b = lm.score(lm.start(), "the")
    assert s0 == lm.start() and s1 == s1b and hash(s1) == hash(s1b) and lp1 == pytest.approx(lp1b)
    assert isinstance(s1, tuple) and s1[: len(s0)] == s0
    assert len({s0, s1, s1b}) == 2
    s2, _ = lm.score(s1, "cat")
    assert s1 == s1b  # scoring did not change its input state
    with pytest.raises(LMError):
        lm.score(("not", "a", "state"), "the")
    assert lm.level == "word" and lm.contains("the") and s2 != s1


def test_unknown_characters_and_bad_words(lm: NeuralLM) -> None:
    assert lm.contains("cat") and lm.contains("dogcats")  # unseen word, known characters
    assert not lm.contains("caf\u00e9") and not lm.contains("")
    unk = lm.tokenizer.unk_id
    assert unk in lm.tokenizer.encode_word("caf\u00e9")
    s, lp = lm.score(lm.start(), "caf\u00e9")
    assert math.isfinite(lp) and lp < lm.score(lm.start(), "cat")[1]
    for bad in ["", "two words", "tab\tword"]:
        with pytest.raises(LMError):
            lm.score(lm.start(), bad)


def test_perplexity_is_word_normalised(lm: NeuralLM, data: Path) -> None:
    res = evaluate_text(lm, data / "dev.txt")
    sents = [line.split() for line in (data / "dev.txt").read_text().splitlines() if line.strip()]
    assert res["units"] == sum(len(s) + 1 for s in sents) and res["sentences"] == len(sents)
    total = sum(lm.score_sentences(sents))
    assert res["ppl"] == pytest.approx(math.exp(-total / res["units"]))
    assert perplexity(lm, sents)[0] == pytest.approx(res["ppl"])


def test_checkpoint_round_trip_weights_only(lm: NeuralLM, run: Path, tmp_path: Path) -> None:
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    assert raw["format"] == "asrfuse.neural-lm" and raw["tokenizer"].dtype == torch.uint8
    exported = export_neural_lm(run / "checkpoint.pt", tmp_path / "fp32", half=False)
    again = NeuralLM.load(exported.parent)
    sents = SENTENCES[:6]
    assert again.score_sentences(sents) == pytest.approx(lm.score_sentences(sents), abs=1e-5)
    small = NeuralLM.load(export_neural_lm(run / "checkpoint.pt", tmp_path / "fp16"))
    assert small.score_sentences(sents) == pytest.approx(lm.score_sentences(sents), rel=0.02)
    assert (tmp_path / "fp16" / "model.pt").stat().st_size < exported.stat().st_size


class Payload:
    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


def test_pickled_code_checkpoint_is_refused(run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["extra"] = Payload()
    torch.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(LMError, match="weights_only"):
        NeuralLM.load(tmp_path / "evil.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(LMError, match="not an asrfuse neural LM checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LMError, match="refused"):
        load_checkpoint(tmp_path / "junk.pt")


def test_resume_after_interruption_is_exact(data: Path, run: Path, tmp_path: Path) -> None:
    first = train_neural_lm(data / "train.txt", data / "dev.txt", tmp_path, CFG, progress=False,
                            stop_after_steps=7, log=lambda m: None)
    assert first.interrupted and first.steps == 7
    with pytest.raises(LMError, match="another config"):
        train_neural_lm(data / "train.txt", None, tmp_path, replace(CFG, lr=1e-3), log=lambda m: None)
    second = train_neural_lm(data / "train.txt", data / "dev.txt", tmp_path, CFG, progress=False,
                             log=lambda m: None)
    assert second.steps == CFG.max_steps and not second.interrupted
    a = load_checkpoint(run / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(a["tokenizer"], b["tokenizer"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (a["step"], a["epoch"], a["pos"]) == (b["step"], b["epoch"], b["pos"])


def test_bad_training_input(tmp_path: Path, data: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(LMError, match="no sentences"):
        train_neural_lm(tmp_path / "empty.txt", None, tmp_path / "r1", CFG, log=lambda m: None)
    with pytest.raises(LMError, match="no sentences"):
        train_neural_lm(data / "train.txt", tmp_path / "empty.txt", tmp_path / "r2", CFG, log=lambda m: None)
    (tmp_path / "c.toml").write_text("n_layer = 2\nlearning_rate = 0.1\n", encoding="utf-8")
    with pytest.raises(LMError, match="unknown keys: learning_rate"):
        load_train_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("n_layer = 'two'\n", encoding="utf-8")
    with pytest.raises(LMError, match="n_layer must be int"):
        load_train_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("n_embd = 30\nn_head = 4\nlr = 1\n", encoding="utf-8")
    with pytest.raises(LMError, match="multiple of n_head"):
        load_train_config(tmp_path / "c.toml")


def test_cli_trains_from_toml(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in {
        "vocab_size": 40, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 24,
        "batch_tokens": 256, "max_steps": 3, "warmup_steps": 1, "eval_every": 3, "eval_sentences": 5,
    }.items())
    (tmp_path / "c.toml").write_text(toml + "\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lm-train-neural", "--train", str(data / "train.txt"), "--dev",
                              str(data / "dev.txt"), "--out", str(tmp_path / "run"),
                              "--config", str(tmp_path / "c.toml"), "--no-progress"])
    assert args.func(args) == 0
    assert '"steps": 3' in capsys.readouterr().out
    args = parser.parse_args(["lm-eval-neural", str(tmp_path / "run" / "best.pt"), str(data / "dev.txt")])
    assert args.func(args) == 0
    assert '"ppl"' in capsys.readouterr().out
    args = parser.parse_args(["lm-train-neural", "--train", str(tmp_path / "missing.txt"),
                              "--out", str(tmp_path / "r2")])
    assert args.func(args) == 2


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.pt").exists(), reason="no committed default model")
def test_default_model_loads_and_prefers_fluent_text() -> None:
    lm = NeuralLM.default()
    assert lm.level == "word" and lm.contains("the")
    good = "and god said let there be light".split()
    bad = "light be there let said god and".split()
    with lm.session() as session:
        s, total = session.start(), 0.0
        for w in good:
            s, lp = session.score(s, w)
            total += lp
        total += session.finish(s)
    assert total == pytest.approx(lm.score_sentence(good), abs=1e-3)
    assert lm.score_sentence(good) > lm.score_sentence(bad) + 5


def test_character_units_option(data: Path, tmp_path: Path) -> None:
    cfg = replace(CFG, units="char", vocab_size=100, max_steps=3, eval_every=3, block_size=48,
                  n_layer=1, n_embd=16)
    res = train_neural_lm(data / "train.txt", data / "dev.txt", tmp_path, cfg, progress=False,
                          log=lambda m: None)
    lm = NeuralLM.load(tmp_path / "best.pt")
    pieces = lm.tokenizer.pieces(lm.tokenizer.encode_word("cat"))
    assert pieces == ["\u2581", "c", "a", "t"] or pieces == ["\u2581c", "a", "t"]
    words = "the cat saw the ball".split()
    with lm.session():
        s, total = lm.start(), 0.0
        for w in words:
            s, lp = lm.score(s, w)
            total += lp
        total += lm.finish(s)
    assert total == pytest.approx(lm.score_sentence(words), abs=1e-4)
    assert res.best_dev_ppl is not None

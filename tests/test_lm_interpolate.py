"""Linear interpolation of ARPA n-gram models (lm/interpolate.py, ``fusion lm mix``)."""

import json
import math

import kenlm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.cli.main import main
from lm.arpa import ArpaLM, read_arpa
from lm.base import LMError
from lm.interpolate import check_weights, fit_weights, mix_arpa
from lm.ngram import build_arpa, build_binary

LN10 = math.log(10)


def arpa_text(order, entries):
    """An ARPA file from ``{n: [(prob, words, backoff or None), ...]}`` (probabilities as
    plain probabilities, written as log10 with full precision; ``0`` prob means -99)."""
    lines = ["\\data\\"] + [f"ngram {n}={len(entries[n])}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        for prob, words, bow in entries[n]:
            p = -99.0 if prob == 0 else math.log10(prob)
            lines.append(f"{p:.12f}\t{words}" + ("" if bow is None else f"\t{math.log10(bow):.12f}"))
    return "\n".join(lines + ["", "\\end\\", ""])


# Model A: unigrams </s> .2, a .5, b .3; bigrams <s> a .6, a b .5; back-offs normalise:
# <s>: (1 - .6) / (1 - .5) = .8; a: (1 - .5) / (1 - .3) = 5/7.
MODEL_A = arpa_text(2, {
    1: [(0, "<s>", 0.8), (0.2, "</s>", None), (0.5, "a", 5 / 7), (0.3, "b", 1.0)],
    2: [(0.6, "<s> a", None), (0.5, "a b", None)],
})
# Model B: unigrams </s> .25, a .25, c .5; bigrams <s> c .5, c </s> .5;
# <s>: (1 - .5) / (1 - .5) = 1; c: (1 - .5) / (1 - .25) = 2/3.
MODEL_B = arpa_text(2, {
    1: [(0, "<s>", 1.0), (0.25, "</s>", None), (0.25, "a", None), (0.5, "c", 2 / 3)],
    2: [(0.5, "<s> c", None), (0.5, "c </s>", None)],
})


@pytest.fixture()
def tiny(tmp_path):
    (tmp_path / "a.arpa").write_text(MODEL_A)
    (tmp_path / "b.arpa").write_text(MODEL_B)
    return tmp_path


def test_hand_computed_mixture(tiny):
    mix_arpa([tiny / "a.arpa", tiny / "b.arpa"], tiny / "mix.arpa", [0.25, 0.75])
    got = read_arpa(tiny / "mix.arpa")
    # unigrams: .25 p_A + .75 p_B, a word a model lacks scoring 0 from it
    uni = {"</s>": .25 * .2 + .75 * .25, "a": .25 * .5 + .75 * .25, "b": .25 * .3, "c": .75 * .5}
    # bigrams, each model through its own back-off (A lists no context c: its bow is 1)
    bi = {("<s>", "a"): .25 * .6 + .75 * (1.0 * .25), ("<s>", "c"): .75 * .5,
          ("a", "b"): .25 * .5, ("c", "</s>"): .25 * .2 + .75 * .5}
    # back-offs: (1 - mass listed after h) / (1 - the same words' unigram mass)
    bow = {"<s>": (1 - bi["<s>", "a"] - bi["<s>", "c"]) / (1 - uni["a"] - uni["c"]),
           "a": (1 - bi["a", "b"]) / (1 - uni["b"]),
           "c": (1 - bi["c", "</s>"]) / (1 - uni["</s>"]), "b": 1.0, "</s>": 1.0}
    assert bow["<s>"] == pytest.approx(0.92)
    assert set(got.ngrams[0]) == {("<s>",), *((w,) for w in uni)}
    assert got.ngrams[0]["<s>",][0] == pytest.approx(-99 * LN10)
    for w, p in uni.items():
        assert got.ngrams[0][w,][0] == pytest.approx(math.log(p), abs=1e-6)
    for w, b in bow.items():
        assert got.ngrams[0][w,][1] == pytest.approx(math.log(b), abs=1e-6)
    assert set(got.ngrams[1]) == set(bi)
    for g, p in bi.items():
        assert got.ngrams[1][g][0] == pytest.approx(math.log(p), abs=1e-6)
    # a backed-off word is the static approximation, not the dynamic mixture:
    # p(b | <s>) = bow(<s>) p(b) = .92 * .075 = .069, where .25 * (.8 * .3) + .75 * 0 = .06
    lm = ArpaLM(tiny / "mix.arpa")
    assert lm._log_prob(("<s>",), "b") == pytest.approx(math.log(0.069), abs=1e-6)
    total = sum(math.exp(lm._log_prob(("<s>",), w)) for w in ("a", "b", "c", "</s>"))
    assert total == pytest.approx(1.0, abs=1e-6)  # ARPA log10 to 7 decimals


# ------------------------------------------------------------- random normalised models

POOL = ["<unk>", "a", "b", "c", "d", "e", "f", "g"]


def random_model(rng, order):
    """A random back-off model that normalises exactly: ``{n: [(prob, words, bow)]}``."""
    vocab = ["</s>"] + ([w for w in POOL if rng.random() < 0.7] or ["a"])
    uni = rng.dirichlet(np.ones(len(vocab)))
    probs = [{(w,): p for w, p in zip(vocab, uni)}]  # per order: n-gram -> probability
    contexts = ["<s>"] + [w for w in vocab if w != "</s>"]
    backoff = {}

    def lower(history, w):  # probability of w after history under the orders built so far
        for k in range(len(history), -1, -1):
            h = history[len(history) - k:]
            if h + (w,) in probs[len(h)]:
                scale = 1.0
                for j in range(len(history), k, -1):
                    scale *= backoff.get(history[len(history) - j:], 1.0)
                return scale * probs[len(h)][h + (w,)]
        return 0.0

    for n in range(2, order + 1):
        hists = [(c,) for c in contexts] if n == 2 else \
            [g for g in probs[n - 2] if g[-1] != "</s>"]
        table = {}
        for h in hists:
            if rng.random() < 0.4:
                continue
            # words listed after h: those listed after h[1:] (suffix closure), a random subset
            allowed = [w for w in vocab if n == 2 or h[1:] + (w,) in probs[n - 2]]
            listed = [w for w in allowed if rng.random() < 0.5][: len(vocab) - 1]
            if not listed:
                continue
            share = rng.dirichlet(np.ones(len(listed) + 1))
            for w, p in zip(listed, share):
                table[h + (w,)] = p
            backoff[h] = share[-1] / (1 - sum(lower(h[1:], w) for w in listed))
        probs.append(table)
    entries = {1: [(0, "<s>", backoff.get(("<s>",), 1.0))]}
    for n, table in enumerate(probs, start=1):
        entries.setdefault(n, []).extend(
            (p, " ".join(g), None if n == order else backoff.get(g, 1.0)) for g, p in table.items())
    return arpa_text(order, entries), vocab


def distribution_sum(lm, history, vocab):
    return sum(math.exp(lm._log_prob(history, w)) for w in vocab)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), order=st.sampled_from([2, 3]),
       k=st.sampled_from([2, 3]), drop_unk=st.booleans())
def test_mixture_normalises_for_every_history(tmp_path_factory, seed, order, k, drop_unk):
    rng = np.random.default_rng(seed)
    d = tmp_path_factory.mktemp("norm")
    paths, vocab = [], set()
    for i in range(k):
        text, words = random_model(rng, order if i == 0 else int(rng.integers(2, order + 1)))
        (d / f"{i}.arpa").write_text(text)
        paths.append(d / f"{i}.arpa")
        vocab |= set(words)
        assert distribution_sum(ArpaLM(paths[-1]), ("<s>",), words) == pytest.approx(1.0)
    weights = rng.dirichlet(np.ones(k))
    weights[-1] = 1.0 - weights[:-1].sum()
    mixture = mix_arpa(paths, d / "mix.arpa", weights, drop_unk=drop_unk)
    # without <unk>, a context may list every word left: its listed words take the mass
    assert drop_unk or mixture.stats.lost_mass_contexts == 0
    lm = ArpaLM(d / "mix.arpa")
    if drop_unk:  # a closed vocabulary: <unk> nowhere, the rest sums to one
        assert not any("<unk>" in g for table in lm.model.ngrams for g in table)
        vocab.discard("<unk>")
    histories = [()] + [g for table in lm.model.ngrams[:-1] for g in table if g[-1] != "</s>"]
    histories.append(("g", "unlisted")[2 - lm.order + 1:])  # a context no model lists
    for h in histories:
        assert distribution_sum(lm, h, vocab) == pytest.approx(1.0, abs=1e-6), h


# ------------------------------------------------------------- against KenLM, lmplz models

def _text(rng, words, n):
    return "\n".join(" ".join(rng.choice(words, size=rng.integers(2, 10))) for _ in range(n)) + "\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two lmplz 3-grams over overlapping vocabularies, and their 0.3 : 0.7 mixture."""
    d = tmp_path_factory.mktemp("kenlm")
    rng = np.random.default_rng(11)
    words = [f"w{i}" for i in range(24)]
    (d / "a.txt").write_text(_text(rng, words[:16], 300))
    (d / "b.txt").write_text(_text(rng, words[8:], 300))
    build_arpa(d / "a.txt", d / "a.arpa", order=3)
    build_arpa(d / "b.txt", d / "b.arpa", order=2)
    sentences = [list(rng.choice(words + ["oov"], size=rng.integers(1, 12))) for _ in range(400)]
    return d, words, sentences


def _token_scores(model, sentence):
    """log10 probability and matched n-gram length of each word and </s>."""
    return [(p, n) for p, n, _ in model.full_scores(" ".join(sentence))]


@pytest.mark.parametrize("weights", [(0.3, 0.7), (1.0, 0.0)])
def test_mixture_scores_as_the_models_mixed(built, weights):
    d, words, sentences = built
    out = d / f"mix-{weights[0]}.arpa"
    mix_arpa([d / "a.arpa", d / "b.arpa"], out, weights)
    mixed, models = kenlm.Model(str(out)), [kenlm.Model(str(d / p)) for p in ("a.arpa", "b.arpa")]
    listed = read_arpa(out).ngrams
    exact = approximate = 0
    for sentence in sentences:
        padded = ["<s>", *sentence, "</s>"]
        for i, (lp, _) in enumerate(_token_scores(mixed, sentence), start=1):
            word = padded[i]
            if word == "oov":
                continue
            # each model alone; a word it does not know has probability 0 from it
            p = sum(w * 10 ** _token_scores(m, sentence)[i - 1][0] for w, m in zip(weights, models)
                    if word in m)
            if p == 0:  # a word only a zero-weight model knows
                continue
            history = tuple("<unk>" if w == "oov" else w for w in padded[max(0, i - 2):i])
            # the longest suffix of the history the mixture lists as a context
            h = next(history[j:] for j in range(len(history) + 1)
                     if not history[j:] or history[j:] in listed[len(history) - j - 1])
            if h + (word,) in listed[len(h)] or weights[1] == 0.0:
                # listed n-gram (contexts passed are unlisted by every model, back-off 1),
                # or one model alone: the mixture is exact
                assert lp * LN10 == pytest.approx(math.log(p), abs=1e-4), (sentence, i)
                exact += 1
            else:
                approximate += 1
    # one model alone is exact everywhere; a true mixture is exact on its listed n-grams
    assert exact > 800 and (approximate > 500 if weights[1] else approximate == 0)


def test_binary_output_and_order_of_the_mixture(built, tmp_path):
    d, _, _ = built
    assert main(["lm", "mix", str(d / "a.arpa"), str(d / "b.arpa"), "--weights", "0.5", "0.5",
                 "-o", str(tmp_path / "m.arpa"), "--binary"]) == 0
    model = kenlm.Model(str(tmp_path / "m.bin"))
    assert model.order == 3
    counts = read_arpa(tmp_path / "m.arpa").counts
    a, b = read_arpa(d / "a.arpa").counts, read_arpa(d / "b.arpa").counts
    assert counts[2] == a[2] and max(a[1], b[1]) <= counts[1] <= a[1] + b[1]


# ------------------------------------------------------------- weights by EM

def unigram_model(probs):
    return arpa_text(1, {1: [(0, "<s>", None)] + [(p, w, None) for w, p in probs.items()]})


def test_em_weights_known_optimum(tmp_path, capsys):
    # </s> has the same probability under both: the dev likelihood is
    # 3 ln(.1 + .5 l) + ln(.6 - .5 l) + const, maximal at l = .85
    (tmp_path / "a.arpa").write_text(unigram_model({"a": 0.6, "b": 0.1, "</s>": 0.3}))
    (tmp_path / "b.arpa").write_text(unigram_model({"a": 0.1, "b": 0.6, "</s>": 0.3}))
    (tmp_path / "dev.txt").write_text("a\na\na\nb\n")
    assert main(["lm", "mix", str(tmp_path / "a.arpa"), str(tmp_path / "b.arpa"),
                 "--fit-weights", str(tmp_path / "dev.txt"), "-o", str(tmp_path / "m.arpa"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == pytest.approx([0.85, 0.15], abs=1e-6)
    expected = math.exp(-(3 * math.log(0.525) + math.log(0.175) + 4 * math.log(0.3)) / 8)
    fit = result["fit"]
    assert fit["mixture"] == pytest.approx(expected) == fit["common_mixture"]
    assert fit["tokens"] == fit["common_tokens"] == 8
    alone_a = math.exp(-(3 * math.log(0.6) + math.log(0.1) + 4 * math.log(0.3)) / 8)
    assert fit["common_models"][0] == pytest.approx(alone_a)
    # the written mixture gives a the mixed probability
    assert read_arpa(tmp_path / "m.arpa").ngrams[0]["a",][0] == pytest.approx(math.log(.525), abs=1e-6)


def test_em_recovers_sampling_weights():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(20), size=2)  # two "models" over 20 words
    truth = np.array([0.3, 0.7])
    tokens = rng.choice(20, size=200_000, p=truth @ probs)
    weights, _, _ = fit_weights(probs[:, tokens])
    assert weights == pytest.approx(truth, abs=0.01)


# ------------------------------------------------------------- bad input

@pytest.mark.parametrize("case, message", [
    ("missing", "no such LM file"),
    ("sum", "must sum to 1"),
    ("count", "give one per model"),
    ("negative", "must lie in [0, 1]"),
    ("overwrite", "would overwrite the input model"),
    ("binary", "mixing needs the model's ARPA file"),
    ("dev", "no such dev text"),
])
def test_bad_input_one_line_error(tiny, capsys, case, message):
    a, b = str(tiny / "a.arpa"), str(tiny / "b.arpa")
    out = str(tiny / "m.arpa")
    weights = ["--weights", "0.5", "0.5"]
    args = {
        "missing": [a, str(tiny / "nope.arpa"), *weights, "-o", out],
        "sum": [a, b, "--weights", "0.5", "0.6", "-o", out],
        "count": [a, b, "--weights", "1.0", "-o", out],
        "negative": [a, b, "--weights", "1.5", "-0.5", "-o", out],
        "overwrite": [a, b, *weights, "-o", str(tiny / "." / "b.arpa")],
        "binary": [a, str(tiny / "b.bin"), *weights, "-o", out],
        "dev": [a, b, "--fit-weights", str(tiny / "nodev.txt"), "-o", out],
    }[case]
    if case == "binary":
        build_binary(tiny / "b.arpa", tiny / "b.bin")
    before = (tiny / "b.arpa").read_bytes()
    assert main(["lm", "mix", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert (tiny / "b.arpa").read_bytes() == before and not (tiny / "m.arpa").exists()


def test_check_weights_accepts_rounding():
    assert check_weights([1 / 3] * 3, 3) == pytest.approx((1 / 3,) * 3)
    with pytest.raises(LMError):
        check_weights([0.5, float("nan")], 2)

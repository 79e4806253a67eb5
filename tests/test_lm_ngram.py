"""N-gram LMs: the ARPA reader, our back-off scorer against KenLM, building with lmplz."""

import gzip
import math

import kenlm
import numpy as np
import pytest

from lm.arpa import ArpaLM, read_arpa
from lm.base import LMError, perplexity
from lm.ngram import KenLM, build_arpa, build_binary, units_text

# A hand-made trigram: log10 probabilities and back-offs chosen to make the arithmetic easy.
SMALL_ARPA = """\
\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.5
-0.5\t</s>
-0.3\ta\t-0.2
-0.6\tb\t-0.1

\\2-grams:
-0.2\t<s> a\t-0.3
-0.4\ta b\t-0.05
-0.1\tb </s>

\\3-grams:
-0.05\t<s> a b

\\end\\
"""

LN10 = math.log(10)


@pytest.fixture(scope="module")
def small_arpa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "small.arpa"
    path.write_text(SMALL_ARPA)
    return path


def _sentences(rng, n):
    vocab = "the a cat dog sat ran on under mat big small and saw it".split()
    weights = np.linspace(2, 1, len(vocab))
    weights /= weights.sum()
    return [" ".join(rng.choice(vocab, size=rng.integers(2, 9), p=weights)) for _ in range(n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 3-gram and a 4-gram estimated by lmplz from generated text, plus a binary."""
    d = tmp_path_factory.mktemp("built")
    rng = np.random.default_rng(7)
    (d / "train.txt").write_text("\n".join(_sentences(rng, 400)) + "\n")
    (d / "test.txt").write_text("\n".join(_sentences(rng, 40)) + "\n")
    build_arpa(d / "train.txt", d / "3.arpa", order=3)
    build_arpa(d / "train.txt", d / "4.arpa.gz", order=4, prune=(0, 0, 1))
    build_binary(d / "3.arpa", d / "3.bin")
    return d


def test_a_quantised_binary_scores_as_its_arpa_to_within_its_bits(built):
    """build_binary(quantize=8) (build_binary -q 8 -b 8 trie, as the default 3-gram's): a
    smaller file whose sentence scores stay close to the ARPA's; bad settings are refused."""
    q8 = build_binary(built / "3.arpa", built / "3q8.bin", quantize=8)
    assert q8.stat().st_size < (built / "3.bin").stat().st_size
    exact, quantised = KenLM(built / "3.arpa"), KenLM(q8)
    for line in (built / "test.txt").read_text().splitlines()[:20]:
        words = line.split()
        assert quantised.score_sentence(words) == pytest.approx(
            exact.score_sentence(words), abs=0.05 * len(words) + 0.05)
    with pytest.raises(ValueError, match="quantize needs a trie"):
        build_binary(built / "3.arpa", built / "x.bin", data_structure="probing", quantize=8)
    with pytest.raises(ValueError, match="1 to 25 bits"):
        build_binary(built / "3.arpa", built / "x.bin", quantize=0)


def test_hand_computed_back_off(small_arpa):
    lm = ArpaLM(small_arpa)
    s0 = lm.start()
    s1, lp_a = lm.score(s0, "a")  # listed bigram <s> a
    assert lp_a == pytest.approx(-0.2 * LN10)
    s2, lp_b = lm.score(s1, "b")  # listed trigram <s> a b
    assert lp_b == pytest.approx(-0.05 * LN10)
    # after "a b": "a b </s>" is not listed -> back-off(a b) + p(</s> | b) = -0.05 - 0.1
    assert lm.finish(s2) == pytest.approx(-0.15 * LN10)
    # after "b": "b a" not listed -> back-off(b) + p(a) = -0.1 - 0.3
    _, lp = lm.score(lm.score(s0, "b")[0], "a")
    assert lp == pytest.approx(-0.4 * LN10)
    # OOV word scores as <unk>, and <unk> has no back-off context
    _, lp_oov = lm.score(s0, "zebra")
    assert lp_oov == pytest.approx((-0.5 - 1.0) * LN10)
    assert not lm.contains("zebra") and lm.contains("a") and not lm.contains("<s>")


@pytest.mark.parametrize("name", ["small", "3.arpa", "4.arpa.gz", "3.bin"])
def test_our_scores_equal_kenlm(name, small_arpa, built, rng):
    path = small_arpa if name == "small" else built / name
    ours = ArpaLM(small_arpa if name == "small" else built / name.replace(".bin", ".arpa"))
    theirs = KenLM(path)
    vocab = ["a", "b"] if name == "small" else sorted(
        {w for line in (built / "test.txt").read_text().split("\n") for w in line.split()})
    vocab = vocab + ["oov-word"]
    for _ in range(30):
        words = [str(w) for w in rng.choice(vocab, size=int(rng.integers(1, 8)))]
        so, sk = ours.start(), theirs.start()
        for w in words:
            so, lo = ours.score(so, w)
            sk, lk = theirs.score(sk, w)
            assert lo == pytest.approx(lk, abs=1e-4 * LN10), (words, w)
        assert ours.finish(so) == pytest.approx(theirs.finish(sk), abs=1e-4 * LN10)
        assert theirs.score_sentence(words) == pytest.approx(ours.score_sentence(words), abs=1e-3)


def test_distributions_sum_to_one(built, rng):
    lm = KenLM(built / "3.arpa")
    vocab = [w for (w,) in read_arpa(built / "3.arpa").ngrams[0] if w not in ("<s>", "</s>")]
    contexts = [[], ["the"], ["the", "cat"], ["saw", "it"], ["oov-word"]]
    for context in contexts:
        state = lm.start()
        for w in context:
            state, _ = lm.score(state, w)
        total = sum(math.exp(lm.score(state, w)[1]) for w in vocab) + math.exp(lm.finish(state))
        assert total == pytest.approx(1.0, abs=1e-4), context


def test_states_are_hashable_values(built):
    lm = KenLM(built / "3.arpa")
    a = lm.score(lm.score(lm.start(), "the")[0], "cat")[0]
    b = lm.score(lm.score(lm.start(), "the")[0], "cat")[0]
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    before = lm.start()
    lm.score(before, "the")  # scoring never changes the state it was given
    assert before == lm.start()
    arpa = ArpaLM(built / "3.arpa")
    s = arpa.score(arpa.start(), "the")[0]
    assert isinstance(s, tuple) and hash(s) == hash(tuple(s))


def test_perplexity_matches_kenlm(built):
    lm = KenLM(built / "3.arpa")
    lines = (built / "test.txt").read_text().split("\n")
    sentences = [line.split() for line in lines if line]
    ppl, n = perplexity(lm, sentences)
    assert n == sum(len(s) + 1 for s in sentences)
    model = kenlm.Model(str(built / "3.arpa"))
    expected = 10 ** (-sum(model.score(" ".join(s)) for s in sentences) / n)
    assert ppl == pytest.approx(expected, rel=1e-6)


def test_pruning_shrinks_the_model(built):
    full, pruned = read_arpa(built / "3.arpa"), read_arpa(built / "4.arpa.gz")
    assert pruned.order == 4 and pruned.counts[2] < full.counts[2]


def test_character_level_model(tmp_path, rng):
    units_text(_sentences(rng, 200), tmp_path / "chars.txt")
    assert (tmp_path / "chars.txt").read_text().startswith(
        " | ".join(" ".join(w) for w in _sentences(np.random.default_rng(1234), 1)[0].split()))
    build_arpa(tmp_path / "chars.txt", tmp_path / "c.arpa", order=5)
    lm = KenLM(tmp_path / "c.arpa", level="token")
    assert lm.level == "token" and lm.contains("|") and lm.contains("t")
    state, lp_t = lm.score(lm.start(), "t")
    _, lp_h = lm.score(state, "h")
    assert lp_h > math.log(1 / 27)  # "th" is frequent in the text


# -- bad input ------------------------------------------------------------------------
def _arpa_with(tmp_path, text, name="bad.arpa"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s[: s.index("\\3-grams:")], r"file ends inside the \\2-grams: section"),
        (lambda s: s[: s.index("\\1-grams:")], r"file ends before the \\1-grams: section"),
        (lambda s: s.replace("\\3-grams:", "\\4-grams:"), r"bad.arpa:18: expected '.3-grams:'"),
        (lambda s: s[: s.index("-0.05\t<s> a b")] + "-0.05\t<s> a b\n", "ends inside"),
        (lambda s: s.replace("ngram 2=3", "ngram 2=4"),
         r"bad.arpa:\d+: \\data\\ declares ngram 2=4 but the \\2-grams: section has 3"),
        (lambda s: s.replace("-0.6\tb\t-0.1", "-0.6"), r"bad.arpa:11: a 1-gram entry needs"),
        (lambda s: s.replace("-0.6\tb", "x\tb"), r"bad.arpa:11: not a number"),
        (lambda s: s.replace("-0.6\tb", "0.6\tb"), r"bad.arpa:11: log10 probability must be <= 0"),
        (lambda s: s.replace("\\data\\", "data"), r"no \\data\\ header"),
        (lambda s: s.replace("\\end\\", ""), r"ends inside the \\3-grams"),
        (lambda s: s.replace("\\end\\", "\\fin\\"), r"expected \\end\\"),
        (lambda s: s.replace("-0.05\t<s> a b", "-0.05\t<s> a b\t-0.1"), "3-gram entry needs"),
    ],
)
def test_bad_arpa_files(tmp_path, mutate, message):
    path = _arpa_with(tmp_path, mutate(SMALL_ARPA))
    with pytest.raises(LMError, match=message):
        read_arpa(path)
    with pytest.raises(LMError, match="bad.arpa"):
        KenLM(path)


def test_bad_utf8_and_truncated_gzip(tmp_path):
    path = _arpa_with(tmp_path, SMALL_ARPA.encode().replace(b"-0.3\ta", b"-0.3\t\xff"))
    with pytest.raises(LMError, match=r"bad.arpa:10: not UTF-8"):
        read_arpa(path)
    data = gzip.compress(SMALL_ARPA.encode())
    gz = _arpa_with(tmp_path, data[: len(data) // 2], "cut.arpa.gz")
    with pytest.raises(LMError, match="cut.arpa.gz"):
        read_arpa(gz)


def test_build_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(LMError, match="empty.txt: the training text is empty"):
        build_arpa(tmp_path / "empty.txt", tmp_path / "x.arpa", order=3)
    with pytest.raises(LMError, match="no such text file"):
        build_arpa(tmp_path / "absent.txt", tmp_path / "x.arpa", order=3)
    with pytest.raises(ValueError, match="order"):
        build_arpa(tmp_path / "empty.txt", tmp_path / "x.arpa", order=7)
    with pytest.raises(LMError, match="no such LM file"):
        KenLM(tmp_path / "absent.arpa")
    assert not (tmp_path / "x.arpa").exists()


def test_perplexity_can_skip_oov(small_arpa):
    lm = ArpaLM(small_arpa)
    # "a zebra": skip mode counts p(a|<s>) and p(</s>|a zebra) only, zebra stays in context
    state, lp_a = lm.score(lm.start(), "a")
    state, _ = lm.score(state, "zebra")
    expected = math.exp(-(lp_a + lm.finish(state)) / 2)
    assert perplexity(lm, [["a", "zebra"]], oov="skip") == (pytest.approx(expected), 2)
    assert perplexity(lm, [["a", "zebra"]])[1] == 3
    with pytest.raises(ValueError, match="oov"):
        perplexity(lm, [["a"]], oov="ignore")
    with pytest.raises(LMError, match="empty"):
        perplexity(lm, [])

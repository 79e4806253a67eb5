import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.core.metrics import ErrorCounts, WordErrors, compare, score_corpus, score_utterance, word_errors


def test_hand_computed_word_and_char_errors():
    s = score_utterance("u", "a b c d e f g", "a x c e f g h")
    # b->x (S), delete d (D), insert h (I) over 7 words; no other alignment costs 3
    assert (s.words.substitutions, s.words.deletions, s.words.insertions) == (1, 1, 1)
    assert s.words.rate == pytest.approx(3 / 7)
    c = score_utterance("u", "abc d", "abd")
    # "abc d" (5 chars incl. space) -> "abd": delete "c" and " " -> 2 errors
    assert c.chars.errors == 2 and c.chars.ref_len == 5 and c.chars.rate == pytest.approx(0.4)


def test_normalisation_applies_to_both_sides():
    s = score_utterance("u", "Hello, World! 42", "hello world forty-two")
    assert s.words.errors == 0 and s.chars.errors == 0
    raw = score_utterance("u", "Hello", "hello", normalize=False)
    assert raw.words.errors == 1


def test_empty_sides():
    assert score_utterance("u", "", "").words.rate == 0.0
    ins = score_utterance("u", "", "a b")
    assert ins.words == ErrorCounts(0, 0, 2, 0) and ins.words.rate == float("inf")
    dels = score_utterance("u", "a b c", "")
    assert dels.words == ErrorCounts(0, 3, 0, 3) and dels.chars.deletions == 5


def test_corpus_totals_are_error_sums_over_reference_lengths():
    refs = {"a": "one two three four", "b": "five", "c": "six seven"}
    hyps = {"a": "one two three four", "b": "fine", "z": "stray"}
    score = score_corpus(refs, hyps)
    # a: 0 errors / 4; b: 1 / 1; c missing: 2 deletions / 2 -> 3 / 7
    assert score.words.errors == 3 and score.words.ref_len == 7
    assert score.wer == pytest.approx(3 / 7)
    assert score.missing == ("c",) and score.extra == ("z",)
    assert score.to_dict()["per_utterance"][1]["wer"] == 1.0


def test_word_errors_by_hand():
    score = score_corpus(
        {"a": "the cat sat on the mat", "b": "the dog", "c": "", "d": "sat down"},
        {"a": "de cat on de mat", "b": "the dog barked", "c": "extra", "d": ""},
    )
    # a: the->de twice (S), sat deleted (the only alignment of 3 edits); b: right, and an
    # insertion, counted for no reference word; c: only an insertion; d: nothing heard
    errs = word_errors(score)
    assert errs == [
        WordErrors("sat", 2, 2, (("", 2),)),
        WordErrors("the", 3, 2, (("de", 2),)),
        WordErrors("down", 1, 1, (("", 1),)),
    ]
    assert errs[1].rate == pytest.approx(2 / 3)
    assert errs[1].to_dict() == {"word": "the", "count": 3, "errors": 2, "heard_as": [["de", 2]]}
    # top, min_count, and a plain list of utterance scores
    assert [e.word for e in word_errors(score, top=1)] == ["sat"]
    assert [e.word for e in word_errors(score.utterances, min_count=2)] == ["sat", "the"]
    assert word_errors(score_corpus({"a": "x y"}, {"a": "x y"})) == []


def test_word_errors_heard_as_orders_by_count_then_word():
    score = score_corpus({"a": "and and and and", "b": "and"}, {"a": "ad an ad en", "b": "and"})
    (e,) = word_errors(score)
    assert (e.count, e.errors, e.heard_as) == (5, 4, (("ad", 2), ("an", 1), ("en", 1)))


_sentences = st.lists(st.sampled_from(["a", "b", "c", "the", "de"]), max_size=8).map(" ".join)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_sentences, _sentences), min_size=1, max_size=4))
def test_word_errors_sum_to_the_corpus_substitutions_and_deletions(pairs):
    score = score_corpus({str(i): r for i, (r, _) in enumerate(pairs)},
                         {str(i): h for i, (_, h) in enumerate(pairs)})
    errs = word_errors(score)
    assert sum(e.errors for e in errs) == score.words.substitutions + score.words.deletions
    assert all(0 < e.errors <= e.count and sum(n for _, n in e.heard_as) == e.errors
               for e in errs)


_REFS = {"a": "x y", "b": "x y z w", "c": "p q"}


def test_compare_by_hand():
    """A errs on a (a deletion) and c (a substitution), 2 of 8 words; B is right everywhere.
    B is better in every resample but those drawing b alone: 1 - (1/3)^3 = 26/27."""
    a = score_corpus(_REFS, {"a": "x", "b": "x y z w", "c": "p r"})
    b = score_corpus(_REFS, _REFS)
    c = compare(a, b)
    assert (c.rate_a, c.rate_b, c.delta, c.utterances) == (25.0, 0.0, -25.0, 3)
    assert c.p_better == pytest.approx(26 / 27, abs=0.01) and c.p_worse == 0.0
    # 1/27 of the resamples (b alone) have delta 0, over the 2.5% in the upper tail; the
    # largest gap is three draws of a: 3 errors in 6 words
    assert c.interval[1] == 0.0 and -50.0 <= c.interval[0] < -25.0
    chars = compare(a, b, unit="chars")
    assert chars.unit == "chars" and chars.rate_a == pytest.approx(100 * 3 / 13)  # " y" and "q" of 13
    assert c.to_dict()["delta"] == -25.0 and c.to_dict()["interval"] == list(c.interval)


def test_compare_of_a_system_with_itself_is_no_difference():
    a = score_corpus(_REFS, {"a": "x", "b": "x y z", "c": "p r"})
    c = compare(a, a, resamples=500)
    assert c.delta == 0.0 and c.interval == (0.0, 0.0) and c.p_better == c.p_worse == 0.0


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_sentences.filter(bool), _sentences, _sentences), min_size=2, max_size=6),
       st.integers(0, 2**32 - 1))
def test_compare_swapped_negates_the_difference(rows, seed):
    refs = {str(i): r for i, (r, _, _) in enumerate(rows)}
    a = score_corpus(refs, {str(i): h for i, (_, h, _) in enumerate(rows)})
    b = score_corpus(refs, {str(i): h for i, (_, _, h) in enumerate(rows)})
    ab, ba = compare(a, b, resamples=200, seed=seed), compare(b, a, resamples=200, seed=seed)
    assert ab.delta == pytest.approx(-ba.delta) and (ab.rate_a, ab.rate_b) == (ba.rate_b, ba.rate_a)
    # the same seed draws the same utterances, so each resample's difference is negated
    assert ab.interval == pytest.approx((-ba.interval[1], -ba.interval[0]))
    assert (ab.p_better, ab.p_worse) == (ba.p_worse, ba.p_better) and ab.p_better + ab.p_worse <= 1.0


def test_compare_refuses_what_it_cannot_pair():
    a = score_corpus(_REFS, _REFS)
    with pytest.raises(ValueError, match=r"different utterances: 1 only in A \(e.g. \['c'\]\)"):
        compare(a, score_corpus({"a": "x y", "b": "x y z w"}, {}))
    with pytest.raises(ValueError, match="different references for 1 utterances, e.g. 'c'"):
        compare(a, score_corpus({**_REFS, "c": "p"}, {}))
    with pytest.raises(ValueError, match="at least 2 utterances, got 1"):
        one = score_corpus({"a": "x"}, {"a": "y"})
        compare(one, one)
    with pytest.raises(ValueError, match="hold no words"):
        empty = score_corpus({"a": "", "b": ""}, {"a": "x"})
        compare(empty, empty)
    with pytest.raises(ValueError, match="unit must be 'words' or 'chars'"):
        compare(a, a, unit="phones")
    with pytest.raises(ValueError, match="level must lie between 0 and 1, got 1.0"):
        compare(a, a, level=1.0)
    with pytest.raises(ValueError, match="resamples must be at least 1, got 0"):
        compare(a, a, resamples=0)


def test_subset_equals_scoring_only_those_utterances():
    hyps = {"a": "x", "b": "x y z"}  # c has no hypothesis: missing
    full = score_corpus(_REFS, hyps)
    part = full.subset(["a", "c"])
    alone = score_corpus({k: _REFS[k] for k in ("a", "c")}, hyps)
    assert (part.utterances, part.words, part.chars, part.missing) == (
        alone.utterances, alone.words, alone.chars, alone.missing)

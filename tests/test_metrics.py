import pytest

from fusion.metrics import ErrorCounts, score_corpus, score_utterance


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

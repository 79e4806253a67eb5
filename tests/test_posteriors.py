import numpy as np
import pytest

from fusion.posteriors import (
    Posteriors, PosteriorsError, PosteriorsReader, PosteriorsWriter, to_log_probs,
)
from fusion.tokens import character_table


def _random_log_probs(rng, frames=7, vocab=29):
    x = rng.normal(size=(frames, vocab))
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_npz_round_trip_keeps_ids_shifts_and_table(tmp_path, rng, table):
    items = [
        Posteriors("spk1/utt 1.wav", _random_log_probs(rng, 5), 0.04),
        Posteriors("ünïcode-ίδ", _random_log_probs(rng, 0), 0.02),
        Posteriors("u3", _random_log_probs(rng, 11), 0.08),
    ]
    with PosteriorsWriter(tmp_path / "p.npz", token_table=table) as writer:
        for p in items:
            writer.write(p)
    with PosteriorsReader(tmp_path / "p.npz") as reader:
        assert reader.ids == [p.utt_id for p in items]
        assert reader.token_table == table and reader.kind == "log_probs"
        for want, got in zip(items, reader):
            assert got.utt_id == want.utt_id and got.frame_shift == want.frame_shift
            np.testing.assert_array_equal(got.log_probs, want.log_probs)
        assert reader["u3"].num_frames == 11 and "u3" in reader and "nope" not in reader
        with pytest.raises(KeyError, match="nope"):
            reader["nope"]


def test_plain_npz_from_another_pipeline(tmp_path, rng, table):
    probs = np.exp(_random_log_probs(rng))
    np.savez(tmp_path / "plain.npz", a=probs, b=probs[:3])
    with pytest.raises(PosteriorsError, match="kind= and frame_shift="):
        PosteriorsReader(tmp_path / "plain.npz")
    reader = PosteriorsReader(tmp_path / "plain.npz", kind="probs", frame_shift=0.02,
                              token_table=table)
    assert reader.ids == ["a", "b"]
    np.testing.assert_allclose(reader["a"].log_probs, np.log(probs), atol=1e-6)
    with pytest.raises(PosteriorsError, match="29 columns"):
        PosteriorsReader(tmp_path / "plain.npz", kind="probs", frame_shift=0.02,
                         token_table=character_table().__class__(
                             ("<b>", "|", "a"), 0, "|"))["a"]


def test_kinds_agree(rng):
    logits = rng.normal(size=(6, 29)) * 3
    log_probs = to_log_probs(logits, "logits")
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(to_log_probs(np.exp(log_probs), "probs"), log_probs, atol=1e-5)
    np.testing.assert_allclose(to_log_probs(log_probs, "log_probs"), log_probs, atol=1e-6)


def test_minus_inf_is_a_zero_probability(table):
    x = np.full((2, 29), -np.inf)
    x[:, 0] = 0.0
    assert to_log_probs(x, "log_probs", num_tokens=29)[0, 0] == 0.0


def test_writer_aborts_cleanly(tmp_path, rng):
    path = tmp_path / "p.npz"
    with pytest.raises(RuntimeError):
        with PosteriorsWriter(path) as writer:
            writer.write(Posteriors("a", _random_log_probs(rng), 0.04))
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with PosteriorsWriter(path) as writer:
        writer.write(Posteriors("a", _random_log_probs(rng), 0.04))
        with pytest.raises(PosteriorsError, match="written twice"):
            writer.write(Posteriors("a", _random_log_probs(rng), 0.04))


@pytest.mark.parametrize(
    "make, kind, message",
    [
        (lambda lp: lp[0], "log_probs", "2-D array"),
        (lambda lp: lp[None], "log_probs", "2-D array"),
        (lambda lp: lp[:, :28], "log_probs", "28 columns but the token table has 29"),
        (lambda lp: np.where(np.arange(29) == 3, np.nan, lp), "log_probs", "NaN"),
        (lambda lp: np.where(np.arange(29) == 3, np.inf, lp), "logits", r"\+inf"),
        (lambda lp: lp + 1.0, "log_probs", "not a log-probability distribution"),
        (lambda lp: np.exp(lp) * 2, "probs", "sum to"),
        (lambda lp: lp, "probs", r"outside \[0, 1\]"),
        (lambda lp: np.full_like(lp, -np.inf), "logits", "every logit"),
        (lambda lp: (lp * 0).astype(np.int64), "logits", "floating point"),
    ],
)
def test_validation_errors_name_the_utterance(rng, make, kind, message):
    bad = make(_random_log_probs(rng))
    with pytest.raises(PosteriorsError, match=message) as info:
        Posteriors.from_array("utt-7", bad, kind=kind, frame_shift=0.04,
                              token_table=character_table())
    assert "'utt-7'" in str(info.value)


def test_bad_kind_and_frame_shift(rng):
    with pytest.raises(ValueError, match="kind must be one of"):
        to_log_probs(_random_log_probs(rng), "softmax")
    with pytest.raises(PosteriorsError, match="frame_shift"):
        Posteriors("u", _random_log_probs(rng), 0.0)


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PosteriorsError, match="junk.npz"):
        PosteriorsReader(tmp_path / "junk.npz")


def test_stored_table_must_match_given_one(tmp_path, rng, table):
    with PosteriorsWriter(tmp_path / "p.npz", token_table=table) as w:
        w.write(Posteriors("a", _random_log_probs(rng), 0.04))
    other = table.__class__(table.tokens[::-1], blank_id=28, word_boundary="|")
    with pytest.raises(PosteriorsError, match="differs"):
        PosteriorsReader(tmp_path / "p.npz", token_table=other)

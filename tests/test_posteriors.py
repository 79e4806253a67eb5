import zipfile

import numpy as np
import pytest

from fusion.core.npzindex import content_fingerprint
from fusion.core.posteriors import (Posteriors, PosteriorsError, PosteriorsReader, PosteriorsWriter,
                                    read_located, to_log_probs)
from fusion.core.tokens import character_table


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


def _asrfuse_archive(path, table, rng, n=6, compress=False):
    with PosteriorsWriter(path, token_table=table, compress=compress) as w:
        for i in range(n):
            w.write(Posteriors(f"spk{i % 2}/utt {i}", _random_log_probs(rng, 1 + i), 0.02 * (1 + i % 3)))
    return {}


def _plain_zip64(path, table, rng):
    """A plain .npz whose directory uses zip64 throughout (sizes, offsets, end record)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key in ("a", "b/c", "ünï"):
            with archive.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, _random_log_probs(rng, 4))
    return dict(kind="log_probs", frame_shift=0.03)


ARCHIVES = {
    "stored": lambda path, table, rng: _asrfuse_archive(path, table, rng),
    "deflated": lambda path, table, rng: _asrfuse_archive(path, table, rng, compress=True),
    "empty": lambda path, table, rng: _asrfuse_archive(path, table, rng, n=0),
    "plain": lambda path, table, rng: (
        np.savez_compressed(path, x=_random_log_probs(rng), y=_random_log_probs(rng, 2)),
        dict(kind="log_probs", frame_shift=0.01))[1],
}


def _assert_same_reading(path, kw, expect_located: bool) -> None:
    with PosteriorsReader(path, **kw) as normal, PosteriorsReader(path, compact=True, **kw) as compact:
        assert list(compact.ids) == normal.ids and len(compact) == len(normal)
        assert compact.kind == normal.kind and compact.token_table == normal.token_table
        assert compact.fingerprint == normal.fingerprint == content_fingerprint(path)
        for i, (want, got) in enumerate(zip(normal, compact)):
            assert (got.utt_id, got.frame_shift) == (want.utt_id, want.frame_shift)
            np.testing.assert_array_equal(got.log_probs, want.log_probs)
            np.testing.assert_array_equal(compact[want.utt_id].log_probs, want.log_probs)
            assert want.utt_id in compact
            assert (compact.location(i) is not None) == expect_located
            assert normal.location(i) is None
        assert "nope" not in compact and 3 not in compact
        with pytest.raises(KeyError, match="nope"):
            compact["nope"]
        if expect_located and len(normal):
            loc = compact.location(len(normal) - 1)
            with open(path, "rb") as fh:  # elsewhere, with the location alone
                got = read_located(fh, loc, normal.ids[-1], kind=compact.kind)
            np.testing.assert_array_equal(got.log_probs, normal[normal.ids[-1]].log_probs)


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_compact_mode_reads_as_the_normal_mode(tmp_path, rng, table, name):
    """Same ids, arrays, frame shifts, kind and table, whether zipfile indexes the archive or
    compact mode streams its directory (stored, deflated, empty, plain)."""
    path = tmp_path / f"{name}.npz"
    kw = ARCHIVES[name](path, table, rng)
    _assert_same_reading(path, kw, expect_located=True)


def test_compact_mode_reads_zip64_archives(tmp_path, rng, table, monkeypatch):
    """zip64 sizes, offsets and end records (forced small, as a multi-GB archive has them);
    Python writes a zip64 end record whose plain twin holds real values past 2 GiB."""
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    _asrfuse_archive(tmp_path / "many.npz", table, rng)
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)
    kw = _plain_zip64(tmp_path / "big.npz", table, rng)
    monkeypatch.undo()
    for name, args in (("many.npz", {}), ("big.npz", kw)):
        with open(tmp_path / name, "rb") as fh:
            assert fh.read()[-42:-38] == b"PK\x06\x07", name  # the zip64 locator is there
        _assert_same_reading(tmp_path / name, args, expect_located=True)


def test_compact_mode_reads_other_archives_the_normal_way(tmp_path, rng, table):
    """A member that is not .npy: compact mode lists ids the normal way (no locations) and
    reads the same; a plain .npz with such a member fails the same way in both modes."""
    _asrfuse_archive(tmp_path / "extra.npz", table, rng)
    with zipfile.ZipFile(tmp_path / "extra.npz", "a") as archive:
        archive.writestr("notes.txt", "made by hand")
    _assert_same_reading(tmp_path / "extra.npz", {}, expect_located=False)
    np.savez(tmp_path / "plain.npz", a=_random_log_probs(rng))
    with zipfile.ZipFile(tmp_path / "plain.npz", "a") as archive:
        archive.writestr("notes.txt", "made by hand")
    kw = dict(kind="log_probs", frame_shift=0.01)
    errors = []
    for compact in (False, True):
        with PosteriorsReader(tmp_path / "plain.npz", compact=compact, **kw) as reader:
            assert list(reader.ids) == ["a", "notes.txt"]
            with pytest.raises(PosteriorsError) as info:
                reader["notes.txt"]
            errors.append(str(info.value))
    assert errors[0] == errors[1] and "notes.txt" in errors[0]


def test_compact_mode_errors_match_the_normal_mode(tmp_path, rng, table):
    """Damage found on opening, and a damaged member found on reading, say the same."""
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for compact in (False, True):
        with pytest.raises(PosteriorsError, match="junk.npz: not a readable .npz"):
            PosteriorsReader(tmp_path / "junk.npz", compact=compact)
    _asrfuse_archive(tmp_path / "p.npz", table, rng)
    blob = bytearray((tmp_path / "p.npz").read_bytes())
    with PosteriorsReader(tmp_path / "p.npz", compact=True) as reader:
        member = reader.location(2).member
    at = member.offset + 30 + len(member.name) + member.size // 2
    blob[at] ^= 0xFF  # one byte of utterance 2's array: its CRC no longer matches
    (tmp_path / "bad.npz").write_bytes(bytes(blob))
    errors = []
    for compact in (False, True):
        with PosteriorsReader(tmp_path / "bad.npz", compact=compact) as reader:
            reader[reader.ids[1]]
            with pytest.raises(PosteriorsError, match="cannot be read") as info:
                reader[reader.ids[2]]
            errors.append(str(info.value))
    assert errors[0] == errors[1] and "spk0/utt 2" in errors[0] and "CRC" in errors[0]

"""Fuzz tests: the posteriors reader, Posteriors.from_array and the decoders' inputs."""

import io
import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fusion.core.posteriors import KINDS, Posteriors, PosteriorsError, PosteriorsReader, PosteriorsWriter
from fusion.core.simulate import simulate_posteriors
from fusion.core.tokens import character_table
from fusion.decoder.greedy import GreedyDecoder
from fusion.decoder.options import SearchOptions
from fusion.decoder.search import BeamSearchDecoder
from fusion.run.batch import BatchError, BatchOptions, decode_batch

TABLE = character_table()
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: keep failures fast
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _reader_is_hardened() -> bool:
    """Whether fusion/core/posteriors.py has the fix that fuzzing called for (see the report of
    issue 8: np.load's EOFError, KeyError/TypeError on bad metadata, leaked file handles)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/empty.npz"
        open(path, "wb").close()
        try:
            PosteriorsReader(path)
        except PosteriorsError:
            return True
        except Exception:
            return False
    return False


HARDENED = _reader_is_hardened()
NEEDS_FIX = pytest.mark.xfail(
    not HARDENED, strict=True, raises=(Exception, pytest.PytestUnraisableExceptionWarning),
    reason="PosteriorsReader lets EOFError/KeyError/TypeError/TokenTableError escape and leaks "
           "the file on damaged .npz files; fix proposed with issue 8")


def _valid_npz(tmp_path_factory) -> bytes:
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("valid") / "v.npz"
    with PosteriorsWriter(path, token_table=TABLE) as w:
        for i, text in enumerate(["hi", "a cat", "ok"]):
            w.write(simulate_posteriors(f"u{i}", text, TABLE, rng)[0])
    return path.read_bytes()


@pytest.fixture(scope="module")
def valid_npz(tmp_path_factory) -> bytes:
    return _valid_npz(tmp_path_factory)


def _read_all(path, **kwargs) -> None:
    """Open and read every utterance, in both reading modes; only PosteriorsError may come
    out."""
    for compact in (False, True):
        try:
            with PosteriorsReader(path, compact=compact, **kwargs) as reader:
                for utt_id in reader.ids:
                    reader[utt_id]
        except PosteriorsError:
            pass


@NEEDS_FIX
@FUZZ
@given(data=st.binary(max_size=2048))
def test_reader_random_bytes(tmp_path, data):
    path = tmp_path / "random.npz"
    path.write_bytes(data)
    _read_all(path)
    _read_all(path, kind="probs", frame_shift=0.02)


@NEEDS_FIX
@FUZZ
@given(data=st.data())
def test_reader_truncated_or_corrupted_archive(tmp_path, valid_npz, data):
    blob = bytearray(valid_npz)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        if blob:
            i = data.draw(st.integers(0, len(blob) - 1), label="offset")
            blob[i] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "corrupt.npz"
    path.write_bytes(bytes(blob))
    _read_all(path)


@NEEDS_FIX
@FUZZ
@given(meta=st.one_of(
    st.text(max_size=50),
    st.builds(lambda d: __import__("json").dumps(d), st.dictionaries(
        st.sampled_from(["format", "version", "kind", "token_table", "utterances"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just("asrfuse-posteriors"),
                  st.just("log_probs"), st.lists(st.integers(), max_size=2),
                  st.lists(st.dictionaries(st.sampled_from(["id", "key", "frame_shift"]),
                                           st.one_of(st.text(max_size=3), st.integers())),
                           max_size=2))))))
def test_reader_corrupt_metadata(tmp_path, meta):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zf.open("__asrfuse_meta__.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array(meta))
        with zf.open("u0.npy", "w") as fh:
            np.lib.format.write_array(fh, np.zeros((2, len(TABLE)), np.float32))
    path = tmp_path / "meta.npz"
    path.write_bytes(buf.getvalue())
    _read_all(path)


ARRAYS = st.one_of(
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
               elements=st.floats(allow_nan=True, allow_infinity=True, width=16)),
    hnp.arrays(st.sampled_from([np.int32, np.bool_, np.uint8]),
               hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)),
)


@FUZZ
@given(array=ARRAYS, kind=st.sampled_from(KINDS), tokens=st.booleans(),
       shift=st.sampled_from([0.04, 0.0, -1.0, math.nan]))
def test_from_array_only_raises_posteriors_error(array, kind, tokens, shift):
    try:
        p = Posteriors.from_array("u", array, kind=kind, frame_shift=shift,
                                  token_table=TABLE if tokens else None)
    except PosteriorsError:
        return
    lp = np.asarray(p.log_probs)
    assert lp.ndim == 2 and lp.dtype == np.float32
    assert not np.isnan(lp).any() and not np.isposinf(lp).any()


LOGITS = hnp.arrays(np.float64, st.tuples(st.integers(1, 25), st.just(len(TABLE))),
                    elements=st.floats(-30, 30, allow_nan=False))


@FUZZ
@given(logits=LOGITS, sharp=st.floats(0.1, 20.0))
def test_decoders_never_crash_and_give_finite_scores(logits, sharp):
    p = Posteriors.from_array("u", logits * sharp, kind="logits", frame_shift=0.04,
                              token_table=TABLE)
    beam = BeamSearchDecoder(TABLE, options=SearchOptions(beam_size=4, nbest=2))
    for decoder in (GreedyDecoder(TABLE), beam):
        result = decoder.decode(p)
        assert result.utt_id == "u" and result.nbest
        for hyp in result.nbest:
            assert math.isfinite(hyp.score) and all(math.isfinite(v) for v in hyp.scores.values())
            assert all(0 <= t.start_frame < t.end_frame <= p.num_frames for t in hyp.tokens)
            assert isinstance(hyp.text, str)
        result.to_dict(TABLE)


# until posteriors.py is fixed, np.load leaks the handle of a damaged archive
@pytest.mark.filterwarnings("default::pytest.PytestUnraisableExceptionWarning" if not HARDENED
                            else "error::pytest.PytestUnraisableExceptionWarning")
@FUZZ
@given(data=st.data())
def test_batch_survives_damaged_inputs(tmp_path, valid_npz, data):
    """Whatever the damage, the batch layer gives a BatchError or per-utterance errors."""
    blob = bytearray(valid_npz)
    for _ in range(data.draw(st.integers(1, 6), label="flips")):
        i = data.draw(st.integers(0, len(blob) - 1), label="offset")
        blob[i] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    (case / "in.npz").write_bytes(bytes(blob))
    try:
        summary = decode_batch([case / "in.npz"], case / "out", GreedyDecoder(TABLE), table=TABLE,
                               options=BatchOptions(shard_size=2, progress=False))
    except BatchError:
        return
    assert summary.decoded + summary.failed == summary.utterances

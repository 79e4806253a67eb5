"""The Ray backend gives the local backend's results: decoding, batch runs, map_ray.

Ray is started once for the module, in this process with 2 CPUs; the module is skipped
when ray is not installed.
"""

import functools
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import test_batch  # noqa: E402
from test_batch import ArgmaxDecoder, FailingDecoder, read_rows, write_corpus  # noqa: E402

from fusion.cli import main as cli  # noqa: E402
from fusion.core.simulate import SimulationConfig, simulate_posteriors  # noqa: E402
from fusion.decoder.options import SearchOptions  # noqa: E402
from fusion.decoder.scorers import HotwordScorer, LMScorer, WordBonus  # noqa: E402
from fusion.decoder.search import BeamSearchDecoder  # noqa: E402
from fusion.run.batch import BatchOptions, decode_batch  # noqa: E402
from fusion.run.distributed import RayBackend, decode_ray, map_ray, ray_session  # noqa: E402
from fusion.run.parallel import decode_parallel  # noqa: E402
from lm.ngram import KenLM, build_arpa  # noqa: E402

pytestmark = pytest.mark.ray

TEXTS = ["the cat sat", "a dog ran", "on the mat", "the big dog", "it sat", "a cat"] * 2


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    # the test modules' classes travel by value: Ray's workers cannot import them
    for module in (sys.modules[__name__], test_batch):
        ray.cloudpickle.register_pickle_by_value(module)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for module in (sys.modules[__name__], test_batch):
        ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def posteriors(table):
    rng = np.random.default_rng(9)
    return [simulate_posteriors(f"u{i}", t, table, rng, SimulationConfig(confusion=0.1))[0]
            for i, t in enumerate(TEXTS)]


def test_beam_search_with_lm_gives_the_local_results_in_order(table, posteriors, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    lm = KenLM(build_arpa(tmp_path / "t.txt", tmp_path / "t.arpa", order=3))
    decoder = BeamSearchDecoder(table, [LMScorer(lm), WordBonus(), HotwordScorer(["big dog"])],
                                {"lm": 0.5, "word_bonus": 1.0, "hotwords": 1.0},
                                SearchOptions(beam_size=8, nbest=2))
    local = list(decode_parallel(decoder, iter(posteriors), workers=1))
    remote = list(decode_ray(decoder, iter(posteriors), workers=2, in_flight=3))
    assert [r.utt_id for r in remote] == [p.utt_id for p in posteriors]
    assert remote == local
    with pytest.raises(ValueError, match="workers"):
        list(decode_ray(decoder, posteriors, workers=0))
    with pytest.raises(ValueError, match="the Ray cluster has 2"):
        list(decode_ray(decoder, posteriors, workers=3))


class SlowFirst(ArgmaxDecoder):
    """Later utterances finish first: order must come from the input, not completion."""

    def decode(self, p):
        import time

        time.sleep(0.3 if p.utt_id == "u0" else 0.0)
        return super().decode(p)


def test_order_is_kept_and_input_is_read_lazily(table, posteriors):
    pulled = []

    def stream():
        for p in posteriors:
            pulled.append(p.utt_id)
            yield p

    results = decode_ray(SlowFirst(table), stream(), in_flight=2)  # default: one actor per CPU
    first = next(results)
    assert first.utt_id == "u0" and len(pulled) <= 3  # at most in_flight queued, plus one
    rest = list(results)
    assert [r.utt_id for r in [first] + rest] == [p.utt_id for p in posteriors]
    assert [first] + rest == [ArgmaxDecoder(table).decode(p) for p in posteriors]


def test_a_failing_utterance_is_raised_like_the_local_backend(table, posteriors):
    with pytest.raises(RuntimeError, match="boom"):  # u7 fails; the same type as locally
        list(decode_ray(FailingDecoder(table), posteriors))
    with pytest.raises(RuntimeError, match="boom"):
        list(decode_parallel(FailingDecoder(table), posteriors, workers=1))


def test_batch_run_on_ray_matches_the_local_run_and_records_failures(tmp_path, table):
    post = tmp_path / "a.npz"
    write_corpus(post, table, 30)
    options = BatchOptions(shard_size=7, progress=False, allow_empty=True)
    local = decode_batch([post], tmp_path / "local", FailingDecoder(table), table=table,
                         options=options)
    remote = decode_batch([post], tmp_path / "ray", FailingDecoder(table), table=table,
                          options=options, backend=RayBackend(workers=2, in_flight=5))
    assert remote.hyps.read_bytes() == local.hyps.read_bytes()
    assert remote.errors.read_bytes() == local.errors.read_bytes()
    errors = {e["id"]: e["error"] for e in read_rows(remote.errors)}
    assert set(errors) == {"nan", "narrow", "u7"}
    assert "decoder failed (RuntimeError: boom)" in errors["u7"]


def test_resume_on_ray_after_a_local_interruption(tmp_path, table):
    post = tmp_path / "a.npz"
    write_corpus(post, table, 30)
    options = BatchOptions(shard_size=7, progress=False)
    clean = decode_batch([post], tmp_path / "clean", ArgmaxDecoder(table), table=table,
                         options=options)

    class Interrupted(ArgmaxDecoder):
        def decode(self, p):
            if p.utt_id == "u20":
                raise KeyboardInterrupt
            return super().decode(p)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        decode_batch([post], out, Interrupted(table), table=table, options=options)
    resumed = decode_batch([post], out, ArgmaxDecoder(table), table=table, options=options,
                           resume=True, backend=RayBackend())
    assert resumed.utterances_skipped > 0
    assert resumed.hyps.read_bytes() == clean.hyps.read_bytes()


def test_fusion_decode_backend_ray(tmp_path, table, capsys):
    post = tmp_path / "a.npz"
    write_corpus(post, table, 20)
    table.save(tmp_path / "tokens.json")
    common = [str(post), "--tokens", str(tmp_path / "tokens.json")]
    batch_args = ["--shard-size", "6", "--no-progress"]
    assert cli.main(["decode", *common, "--out-dir", str(tmp_path / "local"), *batch_args]) == 1
    assert cli.main(["decode", *common, "--out-dir", str(tmp_path / "ray"), *batch_args,
                     "--backend", "ray", "--workers", "2"]) == 1
    assert "2 utterances failed" in capsys.readouterr().err
    for name in ("hyps.jsonl", "errors.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert cli.main(["decode", *common, "-o", str(tmp_path / "ray.jsonl"), "--backend", "ray"]) == 1
    rows = read_rows(tmp_path / "ray.jsonl")  # an empty utterance: an empty hypothesis in both
    assert rows == read_rows(tmp_path / "local" / "hyps.jsonl")
    args = cli.get_parser().parse_args(["decode", *common, "--out-dir", "o", "--workers", "2",
                                        "--backend", "ray", "--ray-address", "auto"])
    assert cli.batch_backend(args, BatchOptions(workers=2)) == RayBackend(
        address="auto", workers=2, in_flight=32)


def scaled_sum(scale, pair):
    if pair == (0, 0):
        raise ValueError("no zeros")
    return scale * (pair[0] + pair[1])


def test_map_ray_keeps_order_and_raises_the_first_failure():
    items = [(i, 10 - i) for i in range(1, 10)] + [(5, 7)]
    fn = functools.partial(scaled_sum, 2.0)
    assert map_ray(fn, items) == [fn(x) for x in items]
    assert map_ray(fn, []) == []
    with pytest.raises(ValueError, match="no zeros"):
        map_ray(fn, [(1, 2), (0, 0)], cpus_per_task=0.5)


def test_ray_session_reuses_the_connection_it_finds():
    with ray_session("ray://nowhere:1") as session:  # connected already: used, left open
        assert session.is_initialized()
    assert ray.is_initialized()


def test_ray_session_argument_checks(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="leave num_cpus out"):
        with ray_session("auto", num_cpus=2):
            pass
    with pytest.raises(ValueError, match="num_cpus"):
        with ray_session("local", num_cpus=0):
            pass
    calls = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with ray_session():
        pass
    monkeypatch.delenv("RAY_ADDRESS")
    with ray_session(num_cpus=3):
        pass
    assert calls == [{"address": "10.0.0.1:6379"}, "shutdown",
                     {"address": "local", "num_cpus": 3, "include_dashboard": False}, "shutdown"]


def test_an_unreachable_cluster_is_a_prompt_clear_error(tmp_path, table):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"no Ray cluster at 127.0.0.1:{port}"):
        RayBackend(address=f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="HOST:PORT"):
        RayBackend(address="somewhere")
    post = tmp_path / "a.npz"
    write_corpus(post, table, 3, bad=False)
    table.save(tmp_path / "tokens.json")
    assert cli.main(["decode", str(post), "--tokens", str(tmp_path / "tokens.json"), "--out-dir",
                     str(tmp_path / "out"), "--backend", "ray", "--ray-address",
                     f"127.0.0.1:{port}"]) == 2
    assert not (tmp_path / "out").exists()  # refused before anything was written

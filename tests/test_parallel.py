import numpy as np
import pytest

from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import HotwordScorer, LMScorer, WordBonus
from fusion.decoder.search import BeamSearchDecoder
from fusion.run.parallel import LocalBackend, decode_parallel
from lm.ngram import KenLM, build_arpa


def test_workers_give_the_serial_results_in_order(table, tmp_path):
    rng = np.random.default_rng(9)
    texts = ["the cat sat", "a dog ran", "on the mat", "the big dog", "it sat", "a cat"] * 2
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    lm = KenLM(build_arpa(tmp_path / "t.txt", tmp_path / "t.arpa", order=3))
    decoder = BeamSearchDecoder(table, [LMScorer(lm), WordBonus(), HotwordScorer(["big dog"])],
                                {"lm": 0.5, "word_bonus": 1.0, "hotwords": 1.0},
                                SearchOptions(beam_size=8, nbest=2))
    posteriors = [simulate_posteriors(f"u{i}", t, table, rng, SimulationConfig(confusion=0.1))[0]
                  for i, t in enumerate(texts)]
    serial = [decoder.decode(p) for p in posteriors]
    parallel = list(decode_parallel(decoder, iter(posteriors), workers=2, in_flight=3))
    assert [r.utt_id for r in parallel] == [p.utt_id for p in posteriors]
    assert parallel == serial
    # several utterances per task (5 does not divide the 12): same results, same order
    assert list(decode_parallel(decoder, iter(posteriors), workers=2, chunk=5)) == serial
    with pytest.raises(ValueError, match="workers"):
        list(decode_parallel(decoder, posteriors, workers=0))
    with pytest.raises(ValueError, match="chunk"):
        list(decode_parallel(decoder, posteriors, workers=2, chunk=0))


def _scaled(state: dict, item: int) -> int:
    if item < 0:
        raise ValueError(f"negative item {item}")
    return state["factor"] * item


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pool_holds_its_state_for_many_rounds_and_raises_the_first_failure(workers):
    """Backend.pool: each worker gets the state once; map keeps the input order."""
    with LocalBackend(workers=workers).pool({"factor": 3}) as pool:
        assert pool.size == workers
        assert pool.map(_scaled, range(7)) == [3 * x for x in range(7)]
        assert pool.map(_scaled, [5]) == [15]  # a second round on the same workers
        with pytest.raises(ValueError, match="negative item -1"):
            pool.map(_scaled, [1, -1, 2])
        assert pool.map(_scaled, []) == []

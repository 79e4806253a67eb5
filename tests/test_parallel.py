import numpy as np
import pytest

from fusion.decoder import BeamSearchDecoder
from fusion.options import SearchOptions
from fusion.parallel import decode_parallel
from fusion.scorers import HotwordScorer, LMScorer, WordBonus
from fusion.simulate import SimulationConfig, simulate_posteriors
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

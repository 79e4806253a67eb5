"""Streaming decoding (BeamSearchDecoder.stream): the final result is decode()'s on the
concatenation of the chunks, whatever the chunking, in both searches."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import peaky
from fusion.core.posteriors import Posteriors
from fusion.core.simulate import SimulationConfig, simulate_posteriors
from fusion.core.tokens import character_table
from fusion.core.types import PartialResult
from fusion.decoder.greedy import greedy_decode
from fusion.decoder.options import SearchOptions, lexicon_pruning
from fusion.decoder.scorers import HotwordScorer, LexiconScorer, LMScorer, WordBonus, WordScorer
from fusion.decoder.search import BeamSearchDecoder
from lm.ngram import KenLM, build_arpa
from search_oracle import SEARCHES, PythonSearchDecoder

TRIGRAM = Path(__file__).resolve().parents[1] / "lm" / "models" / "word-3gram"
HOTWORDS = {"the cat": 2.0, "cat sat on": 1.5, "jane": 3.0, "sat": 0.5}
TEXTS = ["the cat sat on the mat", "jane austen had a cat", "and the dog ran away from the house",
         "it is a truth universally acknowledged"]
SCORER_SETS = ("lm", "lm+hotwords", "lexicon", "constraint")
SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]  # module fixtures; loaded CI


def _scorers(kind: str, lm: KenLM, words: list[str]) -> tuple[list, dict[str, float]]:
    chosen = {
        "lm": [LMScorer(lm, unigrams=words), WordBonus()],
        "lm+hotwords": [LMScorer(lm, unigrams=words), WordBonus(), HotwordScorer(HOTWORDS)],
        "lexicon": [LMScorer(lm), LexiconScorer(words), WordBonus()],
        "constraint": [LexiconScorer(words, constraint=True), LMScorer(lm), WordBonus()],
    }[kind]
    return chosen, {s.name: w for s, w in zip(chosen, (0.9, 1.2, 1.5))}


@pytest.fixture(scope="module")
def compiled_decoders() -> dict[str, BeamSearchDecoder]:
    """The committed word 3-gram with each scorer set, compiled search."""
    table = character_table()
    lm = KenLM(TRIGRAM / "model.bin")
    words = (TRIGRAM / "vocab.txt").read_text().split()
    out = {}
    for kind in SCORER_SETS:
        scorers, weights = _scorers(kind, lm, words)
        extra = lexicon_pruning(len(table)) if kind == "constraint" else {}
        options = SearchOptions(**{"beam_size": 12, "nbest": 3, **extra})
        out[kind] = BeamSearchDecoder(table, scorers, weights, options)
    return out


@pytest.fixture(scope="module")
def python_decoders(tmp_path_factory) -> dict[str, BeamSearchDecoder]:
    """A small 3-gram with each scorer set, the oracle's Python search."""
    folder = tmp_path_factory.mktemp("ngram")
    (folder / "text.txt").write_text("\n".join(TEXTS * 3) + "\n")
    lm = KenLM(build_arpa(folder / "text.txt", folder / "3.arpa", order=3))
    words = sorted({w for t in TEXTS for w in t.split()})
    table = character_table()
    out = {}
    for kind in SCORER_SETS:
        scorers, weights = _scorers(kind, lm, words)
        out[kind] = PythonSearchDecoder(table, scorers, weights, SearchOptions(beam_size=8, nbest=3))
    return out


def _utterance(seed: int, style: str) -> Posteriors:
    """Simulated speech of one of TEXTS (noisy, confusable), or random log-probabilities."""
    rng = np.random.default_rng(seed)
    table = character_table()
    if style == "random":
        logits = rng.normal(0, 3, size=(int(rng.integers(0, 60)), len(table)))
        return Posteriors.from_array("u", logits, kind="logits", frame_shift=0.04)
    p, _ = simulate_posteriors("u", TEXTS[seed % len(TEXTS)], table, rng,
                               SimulationConfig(confusion=0.3, noise=1.5, peak=4))
    return p


@st.composite
def chunkings(draw, frames: int) -> list[int]:
    """Chunk ends: anywhere, empty chunks and 1-frame chunks included."""
    style = draw(st.sampled_from(["anywhere", "frames", "whole", "empty ends"]))
    if style == "frames":
        return list(range(frames + 1))  # an empty chunk first, then one frame at a time
    if style == "whole":
        return [frames]
    cuts = draw(st.lists(st.integers(0, frames), max_size=12))
    if style == "empty ends":
        cuts += [0, 0, frames, frames]
    return sorted(cuts) + [frames]


def _streamed(decoder: BeamSearchDecoder, p: Posteriors, ends: list[int]):
    stream = decoder.stream(p.frame_shift, p.utt_id)
    start = 0
    for end in ends:
        partial = stream.accept(p.log_probs[start:end])
        assert partial.num_frames == end
        start = end
    return stream.finish()


@settings(max_examples=120, deadline=None, suppress_health_check=SLOW_OK)
@given(st.integers(0, 2**32 - 1), st.sampled_from(SCORER_SETS), st.sampled_from(["speech", "random"]),
       st.data())
def test_compiled_stream_equals_offline_decoding(compiled_decoders, seed, kind, style, data):
    """The 3-gram, hotwords and the lexicon: same N-best, texts, scores, per-scorer scores,
    token and word times and confidences as decode() of the whole utterance."""
    decoder = compiled_decoders[kind]
    p = _utterance(seed, style)
    ends = data.draw(chunkings(p.num_frames), label="chunk ends")
    assert _streamed(decoder, p, ends) == decoder.decode(p)


@settings(max_examples=40, deadline=None, suppress_health_check=SLOW_OK)
@given(st.integers(0, 2**32 - 1), st.sampled_from(SCORER_SETS), st.integers(1, 200), st.data())
def test_dropping_pruned_branches_changes_nothing(compiled_decoders, seed, kind, compact_min, data):
    """The compiled search drops the prefixes no beam descends from once its tables pass
    ``compact_min`` prefixes (65536 by default): lowered to compact every few frames, the
    same results as decode(), which never compacts these short utterances."""
    decoder = compiled_decoders[kind]
    p = _utterance(seed, "speech")
    ends = data.draw(chunkings(p.num_frames), label="chunk ends")
    stream = decoder.stream(p.frame_shift, p.utt_id)
    stream._search.compact_min = compact_min
    start = 0
    for end in ends:
        stream.accept(p.log_probs[start:end])
        start = end
    assert stream.finish() == decoder.decode(p)


@settings(max_examples=40, deadline=None, suppress_health_check=SLOW_OK)
@given(st.integers(0, 2**32 - 1), st.sampled_from(SCORER_SETS), st.sampled_from(["speech", "random"]),
       st.data())
def test_python_stream_equals_offline_decoding(python_decoders, seed, kind, style, data):
    decoder = python_decoders[kind]
    p = _utterance(seed, style)
    ends = data.draw(chunkings(p.num_frames), label="chunk ends")
    assert _streamed(decoder, p, ends) == decoder.decode(p)


@pytest.mark.parametrize("engine", ["compiled", "python"])
@settings(max_examples=25, deadline=None, suppress_health_check=SLOW_OK)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_a_restored_snapshot_goes_on_as_the_stream_did(compiled_decoders, python_decoders, engine,
                                                       seed, data):
    """Snapshot mid-utterance, finish, restore, feed the rest chunked otherwise, finish
    again: the same result, the offline one; a snapshot restores any number of times."""
    decoder = (compiled_decoders if engine == "compiled" else python_decoders)["lm+hotwords"]
    p = _utterance(seed, "speech")
    offline = decoder.decode(p)
    at = data.draw(st.integers(0, p.num_frames), label="snapshot at")
    stream = decoder.stream(p.frame_shift, p.utt_id)
    stream.accept(p.log_probs[:at])
    snap = stream.snapshot()
    before = stream.partial()
    stream.accept(p.log_probs[at:])
    assert stream.finish() == offline
    for _ in range(2):
        stream.restore(snap)
        assert stream.num_frames == at and stream.partial() == before
        middle = data.draw(st.integers(at, p.num_frames), label="then a cut at")
        stream.accept(p.log_probs[at:middle])
        stream.accept(p.log_probs[middle:])
        assert stream.finish() == offline
    other = decoder.stream(p.frame_shift, p.utt_id)  # a snapshot moves between streams too
    other.restore(snap)
    other.accept(p.log_probs[at:])
    assert other.finish() == offline


@pytest.mark.parametrize("engine", ["compiled", "python"])
def test_partial_results_are_the_best_prefix_so_far(engine):
    """No LM, peaky frames: after each chunk the best prefix is the greedy transcript of
    the frames so far, the word in progress included."""
    table = character_table()
    frames = list("--cc-a-tt--|-s-aa-t--")
    lp = peaky(table, frames, peak=12.0)
    decoder = SEARCHES[engine](table)
    stream = decoder.stream(0.04, "u")
    for t in range(1, len(frames) + 1):
        partial = stream.accept(lp[t - 1:t])
        assert isinstance(partial, PartialResult)
        (greedy,) = greedy_decode([Posteriors("u", lp[:t], 0.04)], table)
        assert partial.token_ids == greedy.best.token_ids
        assert partial.num_frames == t and partial.duration == pytest.approx(t * 0.04)
    assert partial.text == "cat sat"
    assert stream.partial() == partial  # asking again changes nothing
    assert stream.finish().best.text == "cat sat"


def test_bad_chunks_and_misuse_are_clear_errors(python_decoders):
    decoder = python_decoders["lm"]
    width = len(decoder.table)
    with pytest.raises(ValueError, match="frame_shift"):
        decoder.stream(0.0)
    stream = decoder.stream(0.04, "call-7")
    with pytest.raises(ValueError, match=rf"stream 'call-7': a chunk must be frames x {width}"):
        stream.accept(np.zeros((3, width + 1), np.float32))
    with pytest.raises(ValueError, match="a chunk must be frames x"):
        stream.accept(np.zeros(width, np.float32))
    with pytest.raises(ValueError, match="floating point"):
        stream.accept(np.zeros((2, width), np.int64))
    stream.accept(np.full((4, width), -np.log(width)))
    bad = np.full((3, width), -np.log(width))
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or \\+inf in log-probabilities at frame 6"):
        stream.accept(bad)
    assert stream.num_frames == 4  # a refused chunk is not taken
    snap = stream.snapshot()
    stream.finish()
    assert stream.finished
    with pytest.raises(ValueError, match="finished"):
        stream.accept(bad[:0])
    with pytest.raises(ValueError, match="already finished"):
        stream.finish()
    with pytest.raises(ValueError, match="finished"):
        stream.snapshot()
    other = PythonSearchDecoder(decoder.table)
    with pytest.raises(ValueError, match="not a snapshot of a stream of this decoder"):
        other.stream(0.04).restore(snap)
    stream.restore(snap)  # a finished stream comes back
    assert not stream.finished and stream.num_frames == 4


def test_a_chunk_is_copied(python_decoders):
    """The stream keeps its own copy: the caller may reuse its buffer."""
    decoder = python_decoders["lm"]
    p = _utterance(3, "speech")
    stream = decoder.stream(p.frame_shift, p.utt_id)
    buffer = np.empty((10, p.num_tokens), np.float32)
    for start in range(0, p.num_frames, 10):
        chunk = p.log_probs[start:start + 10]
        buffer[:len(chunk)] = chunk
        stream.accept(buffer[:len(chunk)])
        buffer[:] = 0.0
    assert stream.finish() == decoder.decode(p)


_OPEN: contextvars.ContextVar[tuple] = contextvars.ContextVar("open_sessions", default=())


class _SessionScorer(WordScorer):
    """A word scorer with a per-utterance session kept in a context variable, as the
    neural LM keeps its KV caches: records every session and what scored inside one."""

    name = "sessions"

    def __init__(self) -> None:
        self.opened: list[list[str]] = []

    def start(self):
        return 0

    def score_word(self, state, word):
        (session,) = _OPEN.get()  # scoring happens inside exactly one session
        session.append(word)
        return state + 1, -0.5 * len(word)

    def session(self):
        @contextmanager
        def opened():
            words: list[str] = []
            self.opened.append(words)
            token = _OPEN.set(_OPEN.get() + (words,))
            try:
                yield words
            finally:
                _OPEN.reset(token)
        return opened()


def test_python_stream_keeps_one_session_open_from_first_chunk_to_finish(table):
    """A neural LM's caches last the utterance: one session per stream, as per decode(),
    entered in the stream's own context (the caller's stays clean between calls)."""
    scorer = _SessionScorer()
    decoder = BeamSearchDecoder(table, [scorer], {"sessions": 1.0}, SearchOptions(beam_size=8))
    p = _utterance(1, "speech")
    offline = decoder.decode(p)
    assert len(scorer.opened) == 1
    stream = decoder.stream(p.frame_shift, p.utt_id)
    for start in range(0, p.num_frames, 7):
        stream.accept(p.log_probs[start:start + 7])
        assert _OPEN.get() == ()
    assert stream.finish() == offline
    assert len(scorer.opened) == 2 and set(scorer.opened[1]) == set(scorer.opened[0])

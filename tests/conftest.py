from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable, character_table
from lm.arpa import ArpaLM

REAL_SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-speech"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``torch`` skips where torch is missing: `make test`'s core-only venv."""
    if item.get_closest_marker("torch") and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch (the am extra); this venv has the core only")


@pytest.fixture(scope="session")
def table() -> TokenTable:
    return character_table()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def peaky(table: TokenTable, frames: list[str], peak: float = 10.0) -> np.ndarray:
    """Log-probs whose frame t peaks on token ``frames[t]`` (``-`` is the blank)."""
    ids = [table.blank_id if f == "-" else table.id_of(f) for f in frames]
    logits = np.zeros((len(ids), len(table)))
    logits[np.arange(len(ids)), ids] = peak
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


# A unigram LM that strongly prefers "bat" to "cat" (log10 probabilities).
BIASED_ARPA = """\\data\\
ngram 1=6

\\1-grams:
-2.0\t<unk>
-99\t<s>
-0.5\t</s>
-0.5\tbat
-3.0\tcat
-1.0\tsat

\\end\\
"""


@pytest.fixture(scope="session")
def biased_lm(tmp_path_factory) -> ArpaLM:
    path = tmp_path_factory.mktemp("lm") / "biased.arpa"
    path.write_text(BIASED_ARPA)
    return ArpaLM(path)


def ambiguous(table: TokenTable) -> Posteriors:
    """'?at sat' where the first letter is 55% c, 45% b: acoustics say cat, LM says bat."""
    frames = ["-", "c", "a", "t", "-", "|", "s", "a", "t", "-"]
    lp = peaky(table, frames, peak=12.0)
    row = np.full(len(table), 1e-6)
    row[table.id_of("c")], row[table.id_of("b")] = 0.55, 0.45
    lp[1] = np.log(row / row.sum())
    return Posteriors("amb", lp, 0.04)

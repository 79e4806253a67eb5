from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusion.tokens import TokenTable, character_table

REAL_SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-speech"


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

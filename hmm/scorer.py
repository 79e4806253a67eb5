"""The alignment score as a fusion feature for N-best rescoring.

:class:`AlignmentScorer` scores a whole hypothesis: the log-likelihood, under the hybrid
HMM with its learned duration model, of the utterance's posteriors given the
hypothesis text. Like every scorer it has a name (its weight's key) and returns its own
unweighted score; the caller weights and adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from fusion.core.posteriors import Posteriors
from hmm.model import TiedDurationHMM, frames
from hmm.topology import AlignmentError, build_graph, transcript_ids

__all__ = ["AlignmentScorer", "ScoreMode"]

ScoreMode = Literal["forward", "viterbi"]


class AlignmentScorer:
    """HMM log-likelihood of a hypothesis given the posteriors, natural log.

    Args:
        model: the duration model (topology, emissions, tied transition probabilities).
        name: the scorer's name (its weight's key in a rescoring sweep).
        mode: ``"forward"`` sums over all alignments (the likelihood),
            ``"viterbi"`` takes the best one.

    An empty hypothesis is scored as all blank (when the topology has blanks); a
    hypothesis that needs more frames than there are scores ``-inf``; characters outside
    the table raise :class:`hmm.topology.AlignmentError` naming the utterance.
    """

    def __init__(self, model: TiedDurationHMM, name: str = "hmm", *, mode: ScoreMode = "forward") -> None:
        if mode not in ("forward", "viterbi"):
            raise ValueError(f"scorer {name!r}: mode must be 'forward' or 'viterbi', got {mode!r}")
        self.model = model
        self.name = name
        self.mode = mode

    def score(self, posteriors: Posteriors, text: str) -> float:
        """The unweighted score of ``text`` for ``posteriors``."""
        model = self.model
        ids = transcript_ids(model.table, posteriors.utt_id, text)
        graph = build_graph(model.table, ids, model.config.topology, utt_id=posteriors.utt_id)
        if graph.num_states > model.config.max_states:
            raise AlignmentError(f"utterance {posteriors.utt_id!r}: hypothesis needs {graph.num_states} "
                                 f"states, more than max_states={model.config.max_states}")
        if posteriors.num_frames == 0 or graph.min_frames > posteriors.num_frames:
            return float("-inf")
        hmm = model.hmm(graph)
        X = frames(posteriors)
        value = hmm.score(X) if self.mode == "forward" else hmm.decode(X)[0]
        return float(value) if np.isfinite(value) else float("-inf")

    def score_nbest(self, posteriors: Posteriors, texts: Sequence[str]) -> list[float]:
        """:meth:`score` of each hypothesis of an N-best list."""
        return [self.score(posteriors, t) for t in texts]

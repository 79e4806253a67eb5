"""hmmlearn integration: per-utterance HMMs over neural emissions, and a tied duration model.

:class:`AlignmentHMM` is an ``hmmlearn.base.BaseHMM`` for one transcript's state graph
whose emissions are the neural scaled likelihoods (:class:`hmm.emissions.ScaledLikelihoods`)
of the state's unit. Its observations ``X`` are the utterance's ``(T, V)`` frame
log-posteriors (use :func:`frames`), so hmmlearn's ``decode`` (Viterbi),
``score_samples`` / ``predict_proba`` (forward-backward) and ``fit`` (EM on this one
graph, structural zeros kept) work unchanged. The end of the utterance is enforced by
giving non-final states ``-inf`` at the last frame of every sequence.

:class:`TiedDurationHMM` learns how long each unit lasts in a model's outputs across many
utterances, each with its own graph: one self-loop probability per unit class
(``loop_``) and one probability of entering a skippable blank (``optional_blank_``).
hmmlearn's ``fit`` cannot tie parameters across different graphs, so its E-step runs
hmmlearn's forward-backward per utterance (``_fit_log`` and
``_accumulate_sufficient_statistics``: expected transition counts) and the M-step pools
those counts by unit class (exact EM: the total log-likelihood never decreases).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from hmmlearn.base import BaseHMM

from fusion.core.manifest import atomic_write
from fusion.core.posteriors import Posteriors
from fusion.core.tokens import TokenTable
from hmm.emissions import ScaledLikelihoods, TokenPriors
from hmm.topology import (ARC_BLANK, ARC_SKIP, START, AlignmentError, StateGraph, TopologyConfig, build_graph,
                          transcript_ids)

__all__ = ["LOG_FLOOR", "AlignmentHMM", "DurationConfig", "TiedDurationHMM", "frames"]

#: the format tag of :meth:`TiedDurationHMM.save` files
FORMAT = "asrfuse-duration-hmm-1"

#: floor of frame log-probabilities handed to hmmlearn (which rejects ``-inf`` inputs)
LOG_FLOOR = -1.0e4


def frames(posteriors: Posteriors) -> np.ndarray:
    """The observations of an :class:`AlignmentHMM`: ``(T, V)`` float64 log-posteriors,
    floored at :data:`LOG_FLOOR` (a zero probability becomes ``exp(-1e4)``)."""
    return np.maximum(posteriors.log_probs.astype(np.float64), LOG_FLOOR)


class AlignmentHMM(BaseHMM):
    """The HMM of one transcript: a state graph with neural scaled-likelihood emissions.

    Args:
        graph: the transcript's state graph (:func:`hmm.topology.build_graph`).
        emissions: the emission model; state ``s`` emits
            ``emissions.log_likelihoods(X)[:, graph.state_tokens[s]]``.
        startprob, transmat: initial parameters (from :meth:`StateGraph.matrices`);
            their zeros are structural and stay zero under ``fit``.
        params: what ``fit`` updates (``"s"`` startprob, ``"t"`` transmat).
        Other arguments are hmmlearn's (``n_iter``, ``tol``, ``transmat_prior``, ...).

    ``init_params`` is empty: ``fit`` starts from the given parameters, never random ones.
    """

    def __init__(self, graph: StateGraph, emissions: ScaledLikelihoods, startprob: np.ndarray,
                 transmat: np.ndarray, *, n_iter: int = 10, tol: float = 1e-4, params: str = "t",
                 startprob_prior: float = 1.0, transmat_prior: float = 1.0,
                 algorithm: str = "viterbi", verbose: bool = False) -> None:
        super().__init__(n_components=graph.num_states, startprob_prior=startprob_prior,
                         transmat_prior=transmat_prior, algorithm=algorithm, n_iter=n_iter,
                         tol=tol, verbose=verbose, params=params, init_params="",
                         implementation="log")
        self.graph = graph
        self.emissions = emissions
        self.startprob = startprob
        self.transmat = transmat
        self.startprob_ = np.array(startprob, dtype=np.float64)
        self.transmat_ = np.array(transmat, dtype=np.float64)
        if self.transmat_.shape != (graph.num_states, graph.num_states):
            raise ValueError(f"utterance {graph.utt_id!r}: transmat shape {self.transmat_.shape} "
                             f"does not match {graph.num_states} states")

    # -- the public emission API -------------------------------------------------------
    def emission_log_likelihoods(self, X: np.ndarray) -> np.ndarray:
        """``(T, S)`` log-likelihood of each frame under each state (scaled likelihood of
        the state's unit), with non-final states at ``-inf`` on the last frame."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0:
            raise AlignmentError(f"utterance {self.graph.utt_id!r}: needs a non-empty (T, V) array")
        ll = self.emissions.log_likelihoods(X, utt_id=self.graph.utt_id)[:, self.graph.state_tokens]
        ll[-1, ~self.graph.final] = -np.inf
        return ll

    def _compute_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        return self.emission_log_likelihoods(X)

    def _check_and_set_n_features(self, X: np.ndarray) -> None:
        pass  # the emission object checks the vocabulary

    def _get_n_fit_scalars_per_param(self) -> dict[str, int]:
        start, trans = self.graph.structure()
        return {"s": max(int(start.sum()) - 1, 0),
                "t": int((trans.sum(axis=1) - 1).clip(min=0).sum())}

    def _generate_sample_from_state(self, state: int, random_state: object = None) -> np.ndarray:
        raise NotImplementedError("AlignmentHMM does not generate posteriors")


@dataclass(frozen=True)
class DurationConfig:
    """Settings of :class:`TiedDurationHMM`.

    Attributes:
        topology: the per-transcript graph shape.
        initial_loop: starting self-loop probability of every unit class.
        initial_optional_blank: starting probability of entering a skippable blank.
        n_iter: most EM iterations of :meth:`TiedDurationHMM.fit`.
        tol: stop when the total log-likelihood gains less than this.
        min_prob: probabilities are kept in ``[min_prob, 1 - min_prob]`` (no arc is
            ever turned into a structural zero, nor a loop into a trap).
        max_states: most states of one graph (``transmat`` is dense ``S x S``).
    """

    topology: TopologyConfig = TopologyConfig()
    initial_loop: float = 0.5
    initial_optional_blank: float = 0.5
    n_iter: int = 10
    tol: float = 1e-4
    min_prob: float = 1e-4
    max_states: int = 3000

    def __post_init__(self) -> None:
        if not 0 < self.min_prob < 0.5:
            raise ValueError(f"min_prob must be in (0, 0.5), got {self.min_prob}")
        for name in ("initial_loop", "initial_optional_blank"):
            if not self.min_prob <= getattr(self, name) <= 1 - self.min_prob:
                raise ValueError(f"{name} must be in [min_prob, 1 - min_prob], got {getattr(self, name)}")
        if self.n_iter < 0 or self.tol < 0 or self.max_states < 1:
            raise ValueError("n_iter and tol must be >= 0, max_states >= 1")


@dataclass(eq=False)
class TiedDurationHMM:
    """A hybrid HMM with a tied duration model, trained by EM over many utterances.

    Args:
        table: the token table (blank, boundary, spelling).
        emissions: the emission model (default: plain posteriors).
        config: graph shape and EM settings.

    Fitted attributes (set at construction to the initial values, updated by :meth:`fit`):
        loop_: ``(V,)`` self-loop probability per unit class (the blank included).
        optional_blank_: probability of entering a skippable blank.
        log_likelihoods_: total log-likelihood of the training data before each M-step.
        n_iter_: EM iterations run.
    """

    table: TokenTable
    emissions: ScaledLikelihoods = field(default_factory=ScaledLikelihoods)
    config: DurationConfig = field(default_factory=DurationConfig)
    loop_: np.ndarray = field(init=False)
    optional_blank_: float = field(init=False)
    log_likelihoods_: list[float] = field(init=False, default_factory=list)
    n_iter_: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.loop_ = np.full(len(self.table), self.config.initial_loop)
        self.optional_blank_ = self.config.initial_optional_blank

    # -- graphs and per-utterance HMMs -----------------------------------------------
    def graph(self, utt_id: str, text: str, num_frames: int | None = None) -> StateGraph:
        """The state graph of ``text``; errors name ``utt_id`` (unknown characters, a
        transcript needing more than ``num_frames`` frames, a graph over ``max_states``)."""
        ids = transcript_ids(self.table, utt_id, text)
        graph = build_graph(self.table, ids, self.config.topology, utt_id=utt_id)
        if graph.num_states > self.config.max_states:
            raise AlignmentError(
                f"utterance {utt_id!r}: the transcript needs {graph.num_states} HMM states, more than "
                f"max_states={self.config.max_states}; split the utterance into segments"
            )
        if num_frames is not None and graph.min_frames > num_frames:
            raise AlignmentError(
                f"utterance {utt_id!r}: the transcript needs at least {graph.min_frames} frames "
                f"but the posteriors have {num_frames}: transcript too long for the audio"
            )
        return graph

    def hmm(self, graph: StateGraph, **kwargs: object) -> AlignmentHMM:
        """An :class:`AlignmentHMM` for ``graph`` with the current tied parameters."""
        startprob, transmat = graph.matrices(self.loop_, self.optional_blank_)
        return AlignmentHMM(graph, self.emissions, startprob, transmat, **kwargs)  # type: ignore[arg-type]

    def hmm_for(self, posteriors: Posteriors, text: str) -> AlignmentHMM:
        """The HMM of ``text`` checked against ``posteriors`` (enough frames)."""
        return self.hmm(self.graph(posteriors.utt_id, text, posteriors.num_frames))

    def score(self, posteriors: Posteriors, text: str) -> float:
        """Forward log-likelihood of ``posteriors`` given ``text`` (all paths summed)."""
        return float(self.hmm_for(posteriors, text).score(frames(posteriors)))

    def expected_durations(self) -> np.ndarray:
        """``(V,)`` mean frames a unit of each class lasts under the model."""
        k = self.config.topology.states_per_token
        chain = self.config.topology.states_per_unit - k
        mean = chain + k / (1.0 - self.loop_)
        mean[self.table.blank_id] = 1.0 / (1.0 - self.loop_[self.table.blank_id])
        return mean

    # -- EM ------------------------------------------------------------------------------
    def _estep(self, data: list[tuple[StateGraph, np.ndarray]]) -> tuple[float, np.ndarray, np.ndarray]:
        """Total log-likelihood and tied expected counts: ``(V, 2)`` loops / exits per
        unit class, ``(2,)`` entered / skipped optional blanks."""
        vocab = len(self.table)
        loop_counts = np.zeros((vocab, 2))
        branch = np.zeros(2)
        total = 0.0
        for graph, X in data:
            model = self.hmm(graph)
            lattice, logprob, posteriors, fwd, bwd = model._fit_log(X)
            if not np.isfinite(logprob):
                raise AlignmentError(f"utterance {graph.utt_id!r}: no path through the graph "
                                     "has a finite likelihood")
            stats = model._initialize_sufficient_statistics()
            model.params = "st"
            model._accumulate_sufficient_statistics(stats, X, lattice, posteriors, fwd, bwd)
            trans, start = stats["trans"], stats["start"]
            total += float(logprob)
            n = graph.num_states
            diag = trans[np.arange(n), np.arange(n)]
            exits = trans.sum(axis=1) - diag
            looping = graph.loops
            np.add.at(loop_counts[:, 0], graph.state_tokens[looping], diag[looping])
            np.add.at(loop_counts[:, 1], graph.state_tokens[looping], exits[looping])
            for src in np.unique(graph.arc_src):
                idx = np.flatnonzero(graph.arc_src == src)
                kinds = graph.arc_kind[idx]
                if not ((kinds == ARC_BLANK).any() and (kinds == ARC_SKIP).any()):
                    continue
                dst = graph.arc_dst[idx]
                mass = start[dst] if src == START else trans[src, dst]
                branch[0] += mass[kinds == ARC_BLANK].sum()
                branch[1] += mass[kinds == ARC_SKIP].sum()
        return total, loop_counts, branch

    def fit(self, posteriors: Sequence[Posteriors], transcripts: Sequence[str]) -> TiedDurationHMM:
        """Learn ``loop_`` and ``optional_blank_`` by EM over utterances.

        Args:
            posteriors: one :class:`Posteriors` per utterance.
            transcripts: the matching normalised texts.

        Each iteration: forward-backward (hmmlearn) on every utterance's own graph,
        expected self-loop / exit counts pooled per unit class, then
        ``loop_[c] = loops / (loops + exits)`` and likewise ``optional_blank_``. A class
        never seen keeps its value. Estimates are clipped to ``[min_prob, 1 - min_prob]``
        (the maximiser under that constraint, so EM stays monotone): ``log_likelihoods_``
        records the total log-likelihood of each E-step and never decreases.

        Known bias: the end of an utterance is not a transition, so a unit that ends
        utterances (and the trailing blank) looks slightly longer than it is.
        """
        if len(posteriors) != len(transcripts):
            raise ValueError(f"{len(posteriors)} posteriors but {len(transcripts)} transcripts")
        if not posteriors:
            raise ValueError("fit needs at least one utterance")
        data = []
        for post, text in zip(posteriors, transcripts):
            if not text.split():
                raise AlignmentError(f"utterance {post.utt_id!r}: empty transcript")
            data.append((self.graph(post.utt_id, text, post.num_frames), frames(post)))
        lo, hi = self.config.min_prob, 1.0 - self.config.min_prob
        self.log_likelihoods_ = []
        self.n_iter_ = 0
        for _ in range(self.config.n_iter):
            total, loop_counts, branch = self._estep(data)
            self.log_likelihoods_.append(total)
            self.n_iter_ += 1
            counts = loop_counts.sum(axis=1)
            seen = counts > 0
            ratio = loop_counts[:, 0] / np.where(seen, counts, 1.0)
            self.loop_ = np.where(seen, np.clip(ratio, lo, hi), self.loop_)
            if branch.sum() > 0:
                self.optional_blank_ = float(np.clip(branch[0] / branch.sum(), lo, hi))
            if len(self.log_likelihoods_) > 1 and (
                    self.log_likelihoods_[-1] - self.log_likelihoods_[-2] < self.config.tol):
                break
        return self

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted model as JSON (data, never code): table, topology, settings,
        emissions (prior scale and priors) and the learned transition probabilities."""
        emissions = self.emissions
        data = {
            "format": FORMAT,
            "table": self.table.to_dict(),
            "topology": asdict(self.config.topology),
            "config": {k: v for k, v in asdict(self.config).items() if k != "topology"},
            "kappa": emissions.kappa,
            "priors": emissions.priors.to_dict() if emissions.priors is not None else None,
            "loop": [float(x) for x in self.loop_],
            "optional_blank": float(self.optional_blank_),
            "log_likelihoods": [float(x) for x in self.log_likelihoods_],
        }
        with atomic_write(path) as fh:
            json.dump(data, fh, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> TiedDurationHMM:
        """Read :meth:`save`'s JSON; a file that is not one raises ``ValueError``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError("not a duration-model file")
            table = TokenTable.from_dict(data["table"])
            priors = TokenPriors.from_dict(data["priors"], source=str(path)) if data["priors"] else None
            config = DurationConfig(topology=TopologyConfig(**data["topology"]), **data["config"])
            model = cls(table, ScaledLikelihoods(priors, float(data["kappa"])), config)
            loop = np.asarray(data["loop"], dtype=np.float64)
            if loop.shape != (len(table),) or not ((loop > 0) & (loop < 1)).all():
                raise ValueError("'loop' must hold one probability in (0, 1) per token")
            model.loop_ = loop
            model.optional_blank_ = float(data["optional_blank"])
            model.log_likelihoods_ = [float(x) for x in data.get("log_likelihoods", [])]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: cannot read duration model: {exc}") from None
        return model

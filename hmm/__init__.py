"""The HMM alignment layer: hybrid scaled likelihoods, topologies, forced alignment.

Modules (import them directly; nothing is imported here):

``hmm.emissions``
    token priors and :class:`~hmm.emissions.ScaledLikelihoods` (``log p(s|o) - kappa log p(s)``).
``hmm.topology``
    per-transcript state graphs: CTC's topology and k-state token HMMs with minimum durations.
``hmm.model``
    :class:`~hmm.model.AlignmentHMM` (an ``hmmlearn`` ``BaseHMM`` over neural emissions) and
    :class:`~hmm.model.TiedDurationHMM` (EM of tied self-loop probabilities over many utterances).
``hmm.align``
    forced alignment to token and word spans with confidences (torchaudio fast path, HMM Viterbi,
    checkpointed Viterbi for long inputs in ``hmm.viterbi``).
``hmm.timing``
    :class:`~hmm.timing.BoundaryCalibration`: context-dependent shifts of aligned word times,
    learned from reference timings (a CTC spike lags or leads the true boundary).
``hmm.scorer``
    :class:`~hmm.scorer.AlignmentScorer`: the HMM log-likelihood of a hypothesis, for N-best rescoring.
"""

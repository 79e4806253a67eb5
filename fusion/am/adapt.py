"""Single-utterance test-time adaptation of a :class:`~fusion.am.model.CTCModel`.

A voice, accent or channel the model never heard shifts its input; the model then
spreads its posteriors over several characters where it would have been sure.
SUTA (Lin et al., 2022, "Listen, Adapt, Better WER: Source-free Single-utterance
Test-time Adaptation for Automatic Speech Recognition") takes a few gradient steps on
each utterance alone, without its transcript, towards confident and distinct outputs,
then decodes it and forgets the change:

* the loss is ``entropy_weight * E + (1 - entropy_weight) * MCC``: ``E`` the mean
  entropy of the temperature-smoothed frame posteriors over the frames whose best token
  is not blank (blank frames are already sure and would dominate the mean), ``MCC``
  minimum class confusion (Jin et al., 2020): the off-diagonal mass of the row-normalised
  token co-occurrence matrix ``P^T P``, which keeps the steps from merging tokens. By
  default ``E`` alone, which did better on our dev sets than SUTA's 0.3;
* only some parameters move (``params``): ``"norm"``, every LayerNorm's gain and bias;
  ``"frontend"``, the convolutional subsampling that turns log-mel frames into the
  encoder's input (where a new speaker's spectrum is first seen); or ``"all"``;
* every utterance starts from the model's own weights, and each utterance is adapted
  alone, so a batch gives what each of its utterances gives alone.

The cost is ``steps`` forward and backward passes more per utterance: several times
slower than plain inference, so it is off unless asked for (``fusion posteriors
--adapt``, ``fusion demo --adapt``). The settings that suit a model are chosen for it on
dev sets by :mod:`fusion.am.adapt_tune` (``fusion adapt-tune``) and kept beside its
checkpoint.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from fusion.am.features import HOP_LENGTH, SAMPLE_RATE
from fusion.am.model import CTCModel

__all__ = [
    "PARAM_GROUPS",
    "AdaptConfig",
    "AdaptResult",
    "TestTimeAdapter",
    "adaptable_parameters",
    "suta_loss",
]

#: the parameter groups test-time adaptation may move
PARAM_GROUPS = ("norm", "frontend", "all")


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of :class:`TestTimeAdapter` (validated on construction).

    ``steps`` gradient steps of AdamW at rate ``lr`` on the ``params`` groups;
    ``temperature`` smooths the posteriors the loss sees; ``entropy_weight`` in [0, 1]
    splits the loss between entropy and minimum class confusion. ``mix`` < 1 returns
    ``log((1 - mix) p_plain + mix p_adapted)``, the adapted posteriors mixed with the plain
    model's (which the first step computes anyway): for beam search with an LM, which
    adapted posteriors alone, confident where they are wrong, serve less well on the
    voices the model knows. Utterances shorter than ``min_seconds`` are not adapted (a
    second of speech is too little to estimate a voice from: adapting the real-speech dev
    set's isolated AN4 words made them worse).

    The defaults were chosen for the embedded model on the two dev sets, the synthetic
    ``dev`` split (seen voices) and the real-speech set (unseen conditions): the lowest
    real-speech CER at a cost of at most 0.1 CER on ``dev``. At 5 steps, entropy alone
    did better on both than SUTA's 0.3 share of minimum class confusion (real speech
    19.58 against 19.77 % CER, dev 3.41 against 3.48; plain 23.76 and 3.38). With SUTA's
    mix, temperature 1 gained much less (22.5) and a rate of 1e-3 cost ``dev`` 0.42; with
    entropy alone, temperature 4 gained more on real speech (19.20) but cost ``dev`` 0.24.
    Those numbers are stage 24's, whose rate was 5e-4. The model embedded after it (m30,
    stage 24 averaged with stage 30's mean) pays 0.16 on ``dev`` at 5e-4, so its rate was
    chosen again by the same rule over 2e-4, 3e-4 and 5e-4 at 1-5 steps: 3e-4 at 5 steps
    (dev 3.34 -> 3.42, real speech 23.30 -> 19.61).
    """

    steps: int = 5
    lr: float = 3e-4
    params: tuple[str, ...] = ("norm", "frontend")
    temperature: float = 2.5
    entropy_weight: float = 1.0
    min_seconds: float = 1.5
    mix: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.params, str):
            object.__setattr__(self, "params", tuple(p for p in self.params.split("+") if p))
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"adapt steps must be a whole number >= 0, got {self.steps!r}")
        if not self.lr > 0:  # `not >` catches NaN too
            raise ValueError(f"adapt lr must be > 0, got {self.lr!r}")
        if not self.params:
            raise ValueError(f"adapt params: name at least one of {', '.join(PARAM_GROUPS)}")
        unknown = [p for p in self.params if p not in PARAM_GROUPS]
        if unknown:
            raise ValueError(f"adapt params: unknown group(s) {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(PARAM_GROUPS)}")
        if not self.temperature > 0:
            raise ValueError(f"adapt temperature must be > 0, got {self.temperature!r}")
        if not 0 <= self.entropy_weight <= 1:
            raise ValueError(f"adapt entropy_weight must be in [0, 1], got {self.entropy_weight!r}")
        if not self.min_seconds >= 0:
            raise ValueError(f"adapt min_seconds must be >= 0, got {self.min_seconds!r}")
        if not 0 < self.mix <= 1:
            raise ValueError(f"adapt mix must be in (0, 1], got {self.mix!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptConfig:
        """From plain data (a TOML table or JSON object); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"adapt: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**{k: tuple(v) if k == "params" and isinstance(v, list) else v
                      for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = list(self.params)
        return out


@dataclass(frozen=True)
class AdaptResult:
    """One utterance's adapted log-probs ``(T', V)`` and the loss before each step
    (empty when the utterance was not adapted); with ``keep_history``, ``history[k]``
    is what ``k`` steps would have returned (``history[0]`` the plain model's output,
    ``history[-1]`` is ``log_probs``)."""

    log_probs: torch.Tensor
    losses: tuple[float, ...]
    history: tuple[torch.Tensor, ...] = ()

    @property
    def adapted(self) -> bool:
        return bool(self.losses)


def adaptable_parameters(model: nn.Module, groups: Iterable[str]) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` that ``groups`` name, by name, in the model's order.

    ``"norm"``: the gains and biases of every ``nn.LayerNorm``; ``"frontend"``: those of
    the encoder's convolutional subsampling (``encoder.subsample``); ``"all"``: all.
    """
    groups = tuple(groups)
    unknown = [g for g in groups if g not in PARAM_GROUPS]
    if unknown:
        raise ValueError(f"unknown parameter group(s) {unknown}; choose from {PARAM_GROUPS}")
    chosen: set[str] = set()
    if "all" in groups:
        chosen.update(name for name, _ in model.named_parameters())
    if "norm" in groups:
        for mod_name, mod in model.named_modules():
            if isinstance(mod, nn.LayerNorm):
                chosen.update(f"{mod_name}.{n}" for n, _ in mod.named_parameters(recurse=False))
    if "frontend" in groups:
        chosen.update(name for name, _ in model.named_parameters()
                      if name.startswith("encoder.subsample."))
    return {name: p for name, p in model.named_parameters() if name in chosen}


def suta_loss(log_probs: torch.Tensor, blank_id: int, *, temperature: float,
              entropy_weight: float) -> torch.Tensor:
    """The SUTA objective of one utterance's ``log_probs (T, V)`` (a scalar).

    ``entropy_weight`` times the mean entropy (nats) of ``softmax(log_probs /
    temperature)`` over the frames whose best token is not ``blank_id`` (0 if all are
    blank), plus the rest times minimum class confusion: with ``P`` those smoothed
    posteriors ``(T, V)``, ``C = P^T P`` row-normalised, ``(sum(C) - trace(C)) / V``.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (T, V), got shape {tuple(log_probs.shape)}")
    smoothed = (log_probs / temperature).log_softmax(-1)  # (T, V)
    probs = smoothed.exp()
    entropy = -(probs * smoothed).sum(-1)  # (T,)
    speech = log_probs.argmax(-1) != blank_id  # (T,)
    em = entropy[speech].mean() if bool(speech.any()) else entropy.sum() * 0.0
    confusion = probs.T @ probs  # (V, V)
    confusion = confusion / confusion.sum(1, keepdim=True).clamp_min(1e-8)
    mcc = (confusion.sum() - confusion.trace()) / confusion.shape[0]
    return entropy_weight * em + (1.0 - entropy_weight) * mcc


class TestTimeAdapter:
    """Adapts a private copy of ``model`` to one utterance at a time (see the module).

    ``adapter(feats (T, n_mels))`` -> :class:`AdaptResult`. The caller's model is never
    changed; the copy's weights are restored after every utterance, so results do not
    depend on what was adapted before.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, model: CTCModel, config: AdaptConfig | None = None, *,
                 keep_history: bool = False) -> None:
        self.config = config or AdaptConfig()
        self.keep_history = keep_history
        self.model = copy.deepcopy(model).float().eval()
        self.blank_id = model.token_table.blank_id
        self._params = adaptable_parameters(self.model, self.config.params)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self._params.values():
            p.requires_grad_(True)
        self._initial = {name: p.detach().clone() for name, p in self._params.items()}

    @property
    def parameter_names(self) -> list[str]:
        return list(self._params)

    def _restore(self) -> None:
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(self._initial[name])

    def __call__(self, feats: torch.Tensor) -> AdaptResult:
        if feats.dim() != 2:
            raise ValueError(f"feats must be (T, n_mels), got shape {tuple(feats.shape)}")
        cfg = self.config
        x = feats.float()[None]  # (1, T, F)
        lengths = torch.tensor([feats.shape[0]])
        if cfg.steps == 0 or feats.shape[0] * HOP_LENGTH / SAMPLE_RATE < cfg.min_seconds:
            with torch.no_grad():
                log_probs, _ = self.model(x, lengths)
            return AdaptResult(log_probs[0], (), (log_probs[0],) if self.keep_history else ())
        optimizer = torch.optim.AdamW(list(self._params.values()), lr=cfg.lr, weight_decay=0.0)
        losses: list[float] = []
        history: list[torch.Tensor] = []
        plain = None
        try:
            with torch.enable_grad():
                for _ in range(cfg.steps):
                    log_probs, _ = self.model(x, lengths)  # (1, T', V)
                    if plain is None:
                        plain = log_probs[0].detach()
                    if self.keep_history:
                        history.append(self._mix(plain, log_probs[0].detach()))
                    loss = suta_loss(log_probs[0], self.blank_id, temperature=cfg.temperature,
                                     entropy_weight=cfg.entropy_weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
            with torch.no_grad():
                log_probs, _ = self.model(x, lengths)
        finally:
            self._restore()
        assert plain is not None  # steps >= 1
        out = self._mix(plain, log_probs[0])
        if self.keep_history:
            history.append(out)
        return AdaptResult(out, tuple(losses), tuple(history))

    def _mix(self, plain: torch.Tensor, adapted: torch.Tensor) -> torch.Tensor:
        """``log((1 - mix) exp(plain) + mix exp(adapted))``; ``adapted`` itself at mix 1."""
        mix = self.config.mix
        if mix == 1:
            return adapted
        return torch.logaddexp(plain + math.log1p(-mix), adapted + math.log(mix))

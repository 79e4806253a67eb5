"""BEST-RQ self-supervised pretraining of the Conformer encoder.

Targets come from a frozen random-projection quantiser (Chiu et al., 2022): the
normalised log-mel frames under each encoder output frame are stacked
(``subsampling * n_mels`` values), projected by a fixed random matrix to
``codebook_dim``, L2-normalised and matched to the nearest of ``codebook_size`` fixed
random unit vectors; the index is the target. The encoder sees the features with
masked spans replaced by Gaussian noise and predicts the target of every masked output
frame (cross-entropy). Nothing of the quantiser is trained; it is saved (as buffers)
with the model so a resumed run uses the same targets.

The encoder's weights are stored under ``encoder.*`` exactly as in a CTC model, so
``fusion train --pretrained PRETRAIN_DIR/last.pt`` starts CTC fine-tuning from them.
Training runs through the same :class:`fusion.am.trainer.Trainer` as CTC training
(checkpoints, exact resume, log, plot).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusion.am.config import BestRQConfig, PretrainConfig, from_dict, to_dict
from fusion.am.data import FeatureSet, collate, load_feature_sets, make_batches
from fusion.am.features import CMVN
from fusion.am.model import (
    CMVNModule,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    ConformerEncoder,
    ModelConfig,
    lengths_to_mask,
    min_input_frames,
    subsampled_length,
)
from fusion.am.trainer import Trainer, TrainerState, seed_everything

__all__ = ["BestRQModel", "BestRQTask", "pretrain_bestrq", "span_mask"]


def span_mask(lengths: torch.Tensor, max_len: int, prob: float, span: int,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, max_len)`` bool: each valid frame starts a masked span of ``span`` frames with
    probability ``prob``; every utterance gets at least one span."""
    b = lengths.shape[0]
    valid = lengths_to_mask(lengths, max_len)  # (B, T)
    starts = (torch.rand(b, max_len, generator=generator) < prob) & valid  # (B, T)
    none = ~starts.any(dim=1)
    if none.any():  # force one span at a random valid start
        pos = (torch.rand(b, generator=generator) * lengths.clamp_min(1)).long()  # (B,)
        starts[none, pos[none]] = True
        starts &= valid
    c = torch.cumsum(starts.long(), dim=1)  # (B, T)
    shifted = torch.nn.functional.pad(c, (span, 0))[:, :max_len]  # c[t - span], 0 before start
    return (c - shifted > 0) & valid


class BestRQModel(CMVNModule):
    """Encoder + prediction head + frozen random-projection quantiser."""

    def __init__(self, config: ModelConfig, bestrq: BestRQConfig, cmvn: CMVN | None = None,
                 *, seed: int = 0) -> None:
        super().__init__()
        if config.shape_norm:
            raise ValueError("model.shape_norm is a CTC fine-tuning option; BEST-RQ "
                             "pretraining does not support it")
        self.config = config
        self.bestrq = bestrq
        self._init_cmvn(cmvn, config.n_mels)
        self.encoder = ConformerEncoder(config)
        self.head = nn.Linear(config.d_model, bestrq.codebook_size)
        g = torch.Generator().manual_seed(seed + 7919)
        fan_in = config.subsampling * config.n_mels
        proj = torch.randn(fan_in, bestrq.codebook_dim, generator=g)
        proj *= (2.0 / (fan_in + bestrq.codebook_dim)) ** 0.5  # Xavier normal
        codebook = F.normalize(torch.randn(bestrq.codebook_size, bestrq.codebook_dim, generator=g),
                               dim=-1)
        self.register_buffer("projection", proj)  # (s*F, Dc), frozen
        self.register_buffer("codebook", codebook)  # (K, Dc), frozen

    def targets(self, x: torch.Tensor, out_frames: int) -> torch.Tensor:
        """Codebook indices ``(B, T')`` of normalised features ``x (B, T, F)``."""
        b, _, f = x.shape
        s = self.config.subsampling
        stacked = x[:, : out_frames * s].reshape(b, out_frames, s * f)  # (B, T'*s, F) -> (B, T', s*F)
        z = F.normalize(stacked @ self.projection, dim=-1)  # (B, T', Dc)
        return (z @ self.codebook.T).argmax(dim=-1)  # (B, T', K) -> (B, T')

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked-prediction loss of a batch and stats (accuracy, masked fraction)."""
        cfg, s = self.bestrq, self.config.subsampling
        x = self.normalize(feats)  # (B, T, F)
        b, t, _f = x.shape
        out_lengths = subsampled_length(lengths, s)  # (B,)
        t_out = int(subsampled_length(t, s))
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # float32 targets
            targets = self.targets(x, t_out)  # (B, T')
            mask = span_mask(out_lengths, t_out, cfg.mask_prob, cfg.mask_span, generator)  # (B, T')
            mask_in = torch.zeros(b, t, dtype=torch.bool)  # (B, T)
            mask_in[:, : t_out * s] = mask.repeat_interleave(s, dim=1)  # (B, T') -> (B, T'*s)
            noise = torch.randn(x.shape, generator=generator) * cfg.noise_std  # (B, T, F)
            x = torch.where(mask_in.unsqueeze(-1), noise, x)
        h, _ = self.encoder(x, lengths)  # (B, T', D)
        with torch.autocast(h.device.type, enabled=False):  # the head in float32 under autocast
            logits = self.head(h[mask].float())  # (M, K) at masked output frames
        goal = targets[mask]  # (M,)
        loss = F.cross_entropy(logits, goal)
        acc = float((logits.argmax(-1) == goal).float().mean()) if goal.numel() else 0.0
        frac = float(mask.sum()) / max(1, int(out_lengths.sum()))
        return loss, {"accuracy": acc, "masked_fraction": frac, "masked_frames": int(goal.numel())}


class BestRQTask:
    """BEST-RQ masked prediction as a :class:`fusion.am.trainer.Task`."""

    kind = "bestrq"
    metric = "dev_bestrq_loss"

    def __init__(self, model: BestRQModel, train: FeatureSet, dev: FeatureSet | None,
                 config: PretrainConfig) -> None:
        self.module = model
        self.model = model
        self.train = train
        self.dev = dev
        self.config = config
        lo = min_input_frames(config.model.subsampling) + config.model.subsampling
        hi = int(config.batch.max_duration * 100)
        self.keep = [i for i in range(len(train)) if lo <= int(train.lengths[i]) <= hi]
        if not self.keep:
            raise ValueError("no training utterance has a usable length")
        self._keep_lengths = train.lengths[self.keep]

    def num_train_items(self) -> int:
        return len(self.keep)

    def epoch_batches(self, seed: int, epoch: int) -> list[list[int]]:
        b = self.config.batch
        local = make_batches(self._keep_lengths, max_frames=b.max_frames,
                             max_utterances=b.max_utterances, seed=seed, epoch=epoch, pool=b.pool)
        return [[self.keep[i] for i in batch] for batch in local]

    def train_step(self, batch: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        data = collate(self.train, batch)
        loss, stats = self.model(data.feats, data.lengths)
        return loss, {"audio_seconds": data.num_frames / 100.0, "utterances": len(batch), **stats}

    def evaluate(self) -> dict[str, float]:
        if self.dev is None or len(self.dev) == 0:
            return {}
        n = min(len(self.dev), self.config.run.dev_max_utterances)
        lo = min_input_frames(self.config.model.subsampling)
        idx = [i for i in range(n) if int(self.dev.lengths[i]) >= lo]
        if not idx:
            return {}
        batches = make_batches(self.dev.lengths[idx], max_frames=self.config.batch.max_frames,
                               max_utterances=self.config.batch.max_utterances, seed=0, epoch=0,
                               shuffle=False)
        gen = torch.Generator().manual_seed(0)  # the same masks every evaluation
        total, correct_w, weight = 0.0, 0.0, 0
        for batch in batches:
            data = collate(self.dev, [idx[i] for i in batch])
            loss, stats = self.model(data.feats, data.lengths, generator=gen)
            m = stats["masked_frames"]
            total += float(loss) * m
            correct_w += stats["accuracy"] * m
            weight += m
        return {"dev_bestrq_loss": total / max(weight, 1), "dev_bestrq_acc": correct_w / max(weight, 1)}

    def model_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": "bestrq",
            "config": self.model.config.to_dict(),
            "bestrq": to_dict(self.model.bestrq),
            "cmvn": self.model.cmvn.to_dict(),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
        }

    def load_payload(self, data: dict[str, Any]) -> None:
        self.model.load_state_dict(data["model"])
        self.model.set_cmvn(CMVN.from_dict(data["cmvn"]))


def pretrain_bestrq(
    train_manifest: str | Path | Sequence[str | Path],
    dev_manifest: str | Path | None,
    out_dir: str | Path,
    config: PretrainConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
    train_set: FeatureSet | None = None,
    dev_set: FeatureSet | None = None,
    repeats: Sequence[int] | None = None,
) -> TrainerState:
    """BEST-RQ pretraining into ``out_dir`` (resumes from ``out_dir/last.pt``).

    Manifests need ``audio`` only (transcripts are not used); ``repeats`` weights them
    (see :func:`~fusion.am.data.load_feature_sets`).
    """
    config = config or PretrainConfig()
    config = from_dict(PretrainConfig, config) if isinstance(config, dict) else config
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.run.num_threads)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    train_set, dev_set = load_feature_sets(
        train_manifest, dev_manifest, cache_dir=cache, require_text=False, progress=progress,
        train_set=train_set, dev_set=dev_set, repeats=repeats)
    say(f"pretraining on {len(train_set)} utterances, {train_set.total_seconds / 3600:.2f} h")
    seed_everything(config.run.seed)
    model = BestRQModel(config.model, config.bestrq, train_set.cmvn(), seed=config.run.seed)
    task = BestRQTask(model, train_set, dev_set, config)
    trainer = Trainer(task, out_dir, optim=config.optim, run=config.run, config=config,
                      progress=progress, log=say, stop_after=stop_after)
    if trainer.try_resume():
        say(f"resumed from {trainer.last_path} at step {trainer.state.step}")
    return trainer.train()

"""CTC training of the Conformer acoustic model (optionally from a BEST-RQ encoder).

:func:`train_ctc` reads the train and dev manifests into memory (features cached
under ``out_dir/cache``), computes global CMVN statistics over the training set, and
runs :class:`fusion.am.trainer.Trainer` with a :class:`CTCTask`: CTC loss
(``torch.nn.functional.ctc_loss``, blank 0, ``zero_infinity``) per target token,
SpecAugment on the training batches, greedy dev CER (``jiwer.cer``) every
``run.eval_every_steps``.

Files in ``out_dir``: ``last.pt`` (resumable training checkpoint), ``best.pt`` (model
with the best dev CER so far), ``model.pt`` (the final model), ``log.jsonl`` (one line
per step, plus evaluation lines), ``curves.png``; with ``[tokens] kind =
"sentencepiece"``, ``units.model`` (the subword units, learnt from the training
transcripts when the run starts). Running again with the same ``out_dir`` resumes
exactly where ``last.pt`` left off.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jiwer
import torch
import torch.nn.functional as F

from fusion.am.config import TokensConfig, TrainConfig
from fusion.am.data import FeatureSet, collate, load_feature_sets, make_batches
from fusion.am.features import CMVN, SpecAugment
from fusion.am.model import (CheckpointError, CTCModel, ModelConfig, load_checkpoint, model_checkpoint,
                             save_checkpoint)
from fusion.am.subword import SentencePieceUnits, train_sentencepiece
from fusion.am.trainer import Trainer, TrainerState, seed_everything
from fusion.core.tokens import TokenTable, character_table
from fusion.decoder.greedy import best_path

__all__ = ["CTCTask", "ctc_feasible", "greedy_texts", "load_pretrained_encoder", "train_ctc"]


def ctc_feasible(target: list[int], num_frames: int) -> bool:
    """Whether CTC can align ``target`` to ``num_frames`` frames (repeats need a blank)."""
    repeats = sum(1 for a, b in itertools.pairwise(target) if a == b)
    return 0 < len(target) and len(target) + repeats <= num_frames


def greedy_texts(log_probs: torch.Tensor, lengths: torch.Tensor, table: TokenTable) -> list[str]:
    """Greedy CTC transcripts of a padded ``(B, T, V)`` batch: argmax, merge repeats, drop blanks."""
    out = []
    lp = log_probs.detach().cpu().numpy()
    for b, n in enumerate(lengths.tolist()):
        spans, _ = best_path(lp[b, :n], table.blank_id)
        out.append(table.text_from_ids([s.token_id for s in spans]))
    return out


class CTCTask:
    """CTC training of a :class:`CTCModel` on a :class:`FeatureSet` (see :class:`Task`)."""

    kind = "ctc"
    metric = "dev_cer"

    def __init__(self, model: CTCModel, train: FeatureSet, dev: FeatureSet | None,
                 config: TrainConfig, log: Callable[[str], None] | None = None,
                 grow: Callable[[], FeatureSet | None] | None = None) -> None:
        self.module = model
        self.model = model
        self.train = train
        self.dev = dev
        self.config = config
        self.table = model.token_table
        self.augment = SpecAugment(config.specaug)
        self.say = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.grow = grow
        self.keep = self._usable(train)
        if not self.keep:
            raise ValueError("no training utterance is usable (all too long or too short for CTC)")
        self._keep_lengths = train.lengths[self.keep]
        self._dev_batches: list[list[int]] | None = None
        self.device = torch.device("cpu")

    def _usable(self, part: FeatureSet, first: int = 0) -> list[int]:
        """Indices (``first`` + position in ``part``) of the utterances of ``part`` that CTC
        can train on; says why the others cannot."""
        targets = part.targets(self.table, self.model.units.encode if self.model.units else None)
        max_frames = int(self.config.batch.max_duration * 100)
        keep, too_long, infeasible = [], 0, 0
        for i in range(len(part)):
            n = int(part.lengths[i])
            if n > max_frames:
                too_long += 1
            elif not ctc_feasible(targets[i], int(self.model.output_lengths(n))):
                infeasible += 1
            else:
                keep.append(first + i)
        if too_long or infeasible:
            self.say(f"training on {len(keep)} of {len(part)} utterances: {too_long} "
                     f"longer than {self.config.batch.max_duration} s, {infeasible} with more "
                     f"characters than the {self.model.frame_shift * 1000:g}-ms CTC frames can hold")
        return keep

    def extend(self, more: FeatureSet) -> None:
        """Add utterances to the training set; the next epoch's batches draw on them too."""
        self.keep = self.keep + self._usable(more, len(self.train))  # spells ``more`` only
        self.train = FeatureSet.concat([self.train, more])
        self._keep_lengths = self.train.lengths[self.keep]

    def to(self, device: torch.device) -> None:
        """Train on ``device``: the model moves there, and each batch when it is made."""
        self.device = device
        self.model.to(device)

    def num_train_items(self) -> int:
        return len(self.keep)

    def at_step(self, step: int) -> None:
        """Before update ``step`` (0-based): the encoder learns once the freeze is over."""
        learn = step >= self.config.optim.freeze_encoder_steps
        for p in self.model.encoder.parameters():
            p.requires_grad_(learn)

    def epoch_batches(self, seed: int, epoch: int) -> list[list[int]]:
        more = self.grow() if self.grow is not None else None
        if more is not None and len(more):
            self.extend(more)
            self.say(f"epoch {epoch}: {len(more)} utterances ({more.total_seconds / 3600:.2f} h) "
                     f"joined the training set: {len(self.keep)} usable, "
                     f"{float(self._keep_lengths.sum()) / 360000:.2f} h")
        b = self.config.batch
        local = make_batches(self._keep_lengths, max_frames=b.max_frames,
                             max_utterances=b.max_utterances, seed=seed, epoch=epoch, pool=b.pool)
        return [[self.keep[i] for i in batch] for batch in local]

    def train_step(self, batch: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        data = collate(self.train, batch, self.table)
        dev = self.device
        log_probs, out_lengths = self.model(data.feats.to(dev), data.lengths.to(dev),
                                            augment=self.augment)
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),  # (B, T', V) -> (T', B, V)
            data.targets.to(dev), out_lengths, data.target_lengths.to(dev),
            blank=self.table.blank_id, reduction="sum", zero_infinity=True,
        ) / data.target_lengths.sum()
        return loss, {"audio_seconds": data.num_frames / 100.0, "utterances": len(batch),
                      "padded_frames": int(data.feats.shape[0] * data.feats.shape[1])}

    def dev_batches(self) -> list[list[int]]:
        if self._dev_batches is None:
            assert self.dev is not None
            n = min(len(self.dev), self.config.run.dev_max_utterances)
            local = make_batches(self.dev.lengths[:n], max_frames=self.config.batch.max_frames,
                                 max_utterances=self.config.batch.max_utterances, seed=0,
                                 epoch=0, shuffle=False)
            self._dev_batches = local
        return self._dev_batches

    def evaluate(self) -> dict[str, float]:
        if self.dev is None or len(self.dev) == 0:
            return {}
        refs, hyps = [], []
        for batch in self.dev_batches():
            data = collate(self.dev, batch)
            log_probs, out_lengths = self.model(data.feats.to(self.device),
                                                data.lengths.to(self.device))
            hyps += greedy_texts(log_probs.cpu(), out_lengths.cpu(), self.table)
            refs += [self.dev.texts[i] or "" for i in batch]
        pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
        if not pairs:
            return {}
        refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
        return {"dev_cer": float(jiwer.cer(refs, hyps)), "dev_wer": float(jiwer.wer(refs, hyps))}

    def model_payload(self) -> dict[str, Any]:
        return model_checkpoint(self.model)

    def load_payload(self, data: dict[str, Any]) -> None:
        self.model.load_state_dict(data["model"])
        self.model.set_cmvn(CMVN.from_dict(data["cmvn"]))


def load_pretrained_encoder(model: CTCModel, path: str | Path) -> bool:
    """Copy the encoder weights of a BEST-RQ or CTC checkpoint into ``model``.

    The checkpoint's feature normalisation comes with them: the encoder learnt on
    features scaled by those statistics, not by the new training set's. From a CTC
    checkpoint with the same token table the CTC head is copied too (to continue training
    a finished model under a new schedule), and its subframe split when it has one of
    the same ``upsample`` (otherwise ``model``'s new split starts as frame repetition,
    which leaves the copied model's transcripts unchanged); returns whether the head was.
    The spectral-shape reference comes too when both models normalise shapes; a model
    with ``shape_norm`` continued from one without keeps its training set's reference.
    """
    data = load_checkpoint(path)
    if data.get("kind") not in ("bestrq", "ctc"):
        raise CheckpointError(f"{path}: a {data.get('kind')!r} checkpoint has no encoder to load")
    theirs = ModelConfig.from_dict(dict(data["config"])).encoder_signature()
    mine = model.config.encoder_signature()
    if theirs != mine:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise CheckpointError(
            f"{path}: encoder architecture differs from this config in {', '.join(diff)}"
        )

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in data["model"].items() if k.startswith(prefix)}

    model.encoder.load_state_dict(part("encoder."))
    model.set_cmvn(CMVN.from_dict(data["cmvn"]))
    if model.config.shape_norm and "shape_ref" in data["model"]:
        model.shape_ref.copy_(data["model"]["shape_ref"])
    if data["kind"] == "ctc" and data.get("token_table") == model.token_table.to_dict():
        model.head.load_state_dict(part("head."))
        if model.split is not None and dict(data["config"]).get("upsample") == model.config.upsample:
            model.split.load_state_dict(part("split."))  # else: new, starts as frame repetition
        return True
    return False


UNITS_FILE = "units.model"


def subword_units(path: Path, train_set: FeatureSet, config: TokensConfig,
                  say: Callable[[str], None]) -> SentencePieceUnits:
    """The run's sentencepiece units: those at ``path`` (a resumed run), else learnt from
    the training transcripts and saved there."""
    if path.is_file():
        return SentencePieceUnits.load(path)
    units = train_sentencepiece((t or "" for t in train_set.texts), config.vocab_size,
                                model_type=config.model_type)
    units.save(path)
    say(f"subword units: {len(units.table) - 1} sentencepiece pieces ({config.model_type}) -> {path}")
    return units


def train_ctc(
    train_manifest: str | Path | Sequence[str | Path],
    dev_manifest: str | Path | None,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    pretrained: str | Path | None = None,
    token_table: TokenTable | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
    train_set: FeatureSet | None = None,
    dev_set: FeatureSet | None = None,
    grow: Callable[[], FeatureSet | None] | None = None,
    repeats: Sequence[int] | None = None,
) -> TrainerState:
    """Train (or resume training) a CTC model into ``out_dir``; returns the final state.

    ``train_set``/``dev_set`` may be given already loaded (tests, tuning); otherwise
    the manifests are read. ``stop_after`` simulates a kill after that many steps.
    ``grow``, called at the start of every epoch, may return utterances to add to the
    training set (speech synthesised while the model trains); a run that grows cannot
    resume exactly (the set it would rebuild lacks what grew), so it refuses to resume.
    ``repeats`` weights the training manifests (see :func:`~fusion.am.data.load_feature_sets`).
    """
    config = config or TrainConfig()
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.run.num_threads)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    train_set, dev_set = load_feature_sets(train_manifest, dev_manifest, cache_dir=cache,
                                           progress=progress, train_set=train_set, dev_set=dev_set,
                                           repeats=repeats)
    for name, fs in (("train", train_set), ("dev", dev_set)):
        if fs is not None:
            say(f"{name}: {len(fs)} utterances, {fs.total_seconds / 3600:.2f} h"
                + (f", {len(fs.skipped)} unreadable skipped" if fs.skipped else ""))
            for utt_id, reason in fs.skipped[:5]:
                say(f"  skipped {utt_id}: {reason}")
    seed_everything(config.run.seed)
    units = None
    if config.tokens.kind == "sentencepiece":
        units = subword_units(out_dir / UNITS_FILE, train_set, config.tokens, say)
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, vocab_size=len(units.table)))
    table = units.table if units else token_table or character_table()
    shape_ref = train_set.spectral_shape_mean() if config.model.shape_norm else None
    model = CTCModel(config.model, table, train_set.cmvn(), units, shape_ref)
    say(f"model: {model.num_parameters() / 1e6:.2f}M parameters, "
        f"{config.model.subsampling}x subsampling"
        + (f", {config.model.upsample} CTC frames each" if config.model.upsample > 1 else "")
        + f" ({config.model.frame_shift * 1000:g} ms frames)")
    task = CTCTask(model, train_set, dev_set, config, log=say, grow=grow)
    trainer = Trainer(task, out_dir, optim=config.optim, run=config.run, config=config,
                      progress=progress, log=say, stop_after=stop_after)
    if grow is not None and trainer.last_path.is_file():
        raise ValueError(f"{out_dir}: holds a run to resume, but a growing training set "
                         "cannot resume exactly; use a new directory")
    if trainer.try_resume():
        say(f"resumed from {trainer.last_path} at step {trainer.state.step} "
            f"(epoch {trainer.state.epoch}, batch {trainer.state.batch_in_epoch})")
    elif pretrained is not None:
        with_head = load_pretrained_encoder(model, pretrained)
        say(f"encoder{', CTC head' if with_head else ''} and feature normalisation "
            f"initialised from {pretrained}")
    state = trainer.train()
    save_checkpoint(out_dir / "model.pt", model_checkpoint(model))
    return state

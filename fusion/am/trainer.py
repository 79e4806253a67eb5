"""The training loop shared by CTC training and BEST-RQ pretraining.

:class:`Trainer` owns what both have in common: AdamW, the learning-rate schedule,
gradient clipping, seeds and RNG states, duration-bucketed epochs, a JSONL log of every
step, periodic evaluation, a loss/metric plot, and checkpoints written atomically every
few minutes (and on SIGTERM/SIGINT). A :class:`Task` supplies the model, the loss of a
batch and the evaluation.

Resume is exact: ``out_dir/last.pt`` holds the model, the optimizer, the schedule's
step, the torch and Python RNG states and the position in the epoch (epoch number and
batches done; an epoch's batches are a function of ``(seed, epoch)``). Training N steps
straight and training k steps, being killed, and resuming give identical weights. The
log is cut back to the checkpoint's step on resume, so no step appears twice.

``run.device`` trains on a GPU (a task with ``to(device)``; checkpoints hold CPU tensors,
and the CUDA RNG states when CUDA is in use, though CUDA kernels need not repeat
bit for bit). ``run.time_budget_minutes`` fits the schedule's length to a wall-clock
budget (:meth:`Trainer._fit_budget`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fusion.am.config import ConfigError, OptimConfig, RunConfig, from_dict, to_dict
from fusion.am.model import CheckpointError, load_checkpoint, save_checkpoint
from fusion.core.manifest import atomic_write

__all__ = ["LRSchedule", "Task", "Trainer", "TrainerState", "plot_log", "seed_everything"]

LAST = "last.pt"
SNAPSHOTS = "snapshots"
LOG = "log.jsonl"
PLOT = "curves.png"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str) -> torch.device:
    """``run.device`` as a torch device (``"auto"``: CUDA when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device = {name!r}, but torch sees no CUDA device")
    return torch.device(name)


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (AVX-512 or AMX). Without them
    (an AVX2-only CPU), bfloat16 autocast is emulated: measured on an AVX2 AMD EPYC, a
    training step took 40 s in bf16 against 4.5 s in fp32; on an AMX Xeon bf16 was 1.7x
    faster than fp32. Unknown (no such check in this torch): assumed present."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return True if check is None else bool(check())
    except RuntimeError:
        return True


class LRSchedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine / noam / constant."""

    def __init__(self, config: OptimConfig) -> None:
        self.config = config

    def __call__(self, step: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return c.lr
        if c.schedule == "noam":
            return c.lr * math.sqrt(max(c.warmup_steps, 1) / (step + 1))
        span = max(1, c.total_steps - c.warmup_steps)
        progress = min(1.0, (step - c.warmup_steps) / span)
        floor = c.lr * c.min_lr_ratio
        return floor + (c.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Task(Protocol):
    """What a training job supplies to :class:`Trainer`."""

    module: nn.Module  # the trained parameters
    kind: str  # checkpoint kind ("ctc", "bestrq")
    metric: str  # evaluation metric that picks the best checkpoint (lower is better), or ""

    def num_train_items(self) -> int: ...

    def epoch_batches(self, seed: int, epoch: int) -> list[list[int]]: ...

    def train_step(self, batch: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (graph attached) and loggable numbers (e.g. audio seconds)."""

    def evaluate(self) -> dict[str, float]: ...

    def model_payload(self) -> dict[str, Any]:
        """The checkpoint without training state (format, kind, config, weights...)."""

    def load_payload(self, data: dict[str, Any]) -> None: ...

    # Optional: ``to(device)`` moves the model (and where batches go) to a device;
    # a task without it trains on the CPU only.


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    train_seconds: float = 0.0  # wall time spent in training steps
    audio_seconds: float = 0.0  # audio processed

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Interrupt(Exception):
    pass


class Trainer:
    """Runs ``task`` under ``optim``/``run`` configs, checkpointing into ``out_dir``.

    ``config`` is the whole job config (plain data, saved in checkpoints; a resume with
    a different config, apart from its ``run`` section, is refused).
    ``stop_after`` (tests) raises :class:`KeyboardInterrupt` after that many steps as a
    simulated kill, without a checkpoint.
    """

    def __init__(self, task: Task, out_dir: str | Path, *, optim: OptimConfig, run: RunConfig,
                 config: Any, progress: bool = True, log: Callable[[str], None] | None = None,
                 stop_after: int | None = None) -> None:
        self.task = task
        self.out_dir = Path(out_dir)
        self.optim_config = optim
        self.run_config = run
        self.config = to_dict(config)
        self._config_type = type(config)
        self.progress = progress
        self.say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stop_after = stop_after
        self.schedule = LRSchedule(optim)
        self.device = resolve_device(run.device)
        if run.precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16_kernels():
            self.say('warning: run.precision = "bf16", but this CPU has no bfloat16 kernels '
                     "(no AVX-512 or AMX): bf16 is emulated and steps may be several times "
                     'slower than in fp32; consider --set run.precision="fp32"')
        if self.device.type != "cpu":
            move = getattr(task, "to", None)
            if move is None:
                raise ConfigError(f"run.device = {run.device!r}: {task.kind} training runs "
                                  f"on the CPU only")
            move(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.optimizer = self._make_optimizer()
        self.state = TrainerState()
        self._stop_signal: int | None = None

    # -- set-up -------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.task.module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or name.endswith(".bias") else decay).append(p)
        c = self.optim_config
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=c.lr, betas=c.betas, eps=c.eps,
        )

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG

    def checkpoint(self) -> dict[str, Any]:
        return {
            **self.task.model_payload(),
            "train_state": {
                "config": self.config,
                "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(),
                "trainer": self.state.to_dict(),
            },
        }

    def save(self) -> None:
        save_checkpoint(self.last_path, self.checkpoint())

    def try_resume(self) -> bool:
        """Restore ``out_dir/last.pt`` if it exists; returns whether it did."""
        if not self.last_path.is_file():
            return False
        data = load_checkpoint(self.last_path, kind=self.task.kind)
        ts = data.get("train_state")
        if not isinstance(ts, dict):
            raise CheckpointError(f"{self.last_path}: no training state to resume from")
        saved_config = ts["config"]
        try:  # keys added to the config since the checkpoint was written take their defaults
            saved_config = to_dict(from_dict(self._config_type, saved_config))
        except (ConfigError, TypeError):
            pass
        saved, mine = _resume_view(saved_config), _resume_view(self.config)
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise CheckpointError(
                f"{self.last_path}: was trained with a different config (sections "
                f"{', '.join(diff)}); use another --out or the same config"
            )
        before = ts["config"].get("optim", {}).get("total_steps")
        if self.run_config.time_budget_minutes > 0 and before is not None:
            self._set_total_steps(int(before))  # the length the budget chose stays
        elif before != self.optim_config.total_steps:
            self.say(f"schedule changed on resume: total_steps {before} -> "
                     f"{self.optim_config.total_steps} (the LR follows the new schedule from "
                     f"step {ts['trainer']['step']})")
        self.task.load_payload(data)
        self.optimizer.load_state_dict(ts["optimizer"])
        self.state = TrainerState(**ts["trainer"])
        set_rng_state(ts["rng"])
        self._truncate_log(self.state.step)
        return True

    def _truncate_log(self, step: int) -> None:
        if not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        with atomic_write(self.log_path) as fh:
            fh.write("".join(line + "\n" for line in keep))

    def _set_total_steps(self, total: int) -> None:
        self.optim_config = dataclasses.replace(self.optim_config, total_steps=total)
        self.schedule = LRSchedule(self.optim_config)
        self.config.setdefault("optim", {})["total_steps"] = total

    def _fit_budget(self, started: float, probe: tuple[float, int]) -> int:
        """Total steps that end a budgeted run inside its budget, from the wall time per
        step since ``probe`` (the time and step at which timing began, after the first
        steps, which pay for warming up); ``started`` is when the run began. Called after
        the probe steps and again after each evaluation, so that evaluations and
        checkpoints are counted; the schedule's length changes by little each time."""
        run = self.run_config
        now = time.monotonic()
        per_step = (now - probe[0]) / max(1, self.state.step - probe[1])
        left = run.time_budget_minutes * 60 - (now - started)
        total = self.state.step + max(1, int(0.97 * left / per_step))
        if total != self.optim_config.total_steps:
            self._set_total_steps(total)
            self.say(f"time budget {run.time_budget_minutes:g} min: {per_step * 1000:.0f} ms "
                     f"per step, so the schedule runs to step {total}")
        return total

    # -- the loop -----------------------------------------------------------------------
    def _handle_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def train(self) -> TrainerState:
        """Train until ``optim.total_steps`` (or ``run.max_epochs``); returns the state.

        SIGTERM/SIGINT finish the current step, write a checkpoint and raise
        :class:`KeyboardInterrupt`.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        run, total = self.run_config, self.optim_config.total_steps
        old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old_handlers[sig] = signal.signal(sig, self._handle_signal)
            except ValueError:  # not the main thread
                pass
        bar = tqdm(total=total, initial=self.state.step, disable=not self.progress,
                   desc="train", dynamic_ncols=True, mininterval=2)
        last_save = time.monotonic()
        steps_this_run = 0
        budget = run.time_budget_minutes > 0 and self.state.step == 0
        started = time.monotonic()
        probe = (started, 0)
        log_fh = self.log_path.open("a", encoding="utf-8")
        try:
            while self.state.step < total and self.state.epoch < run.max_epochs:
                batches = self.task.epoch_batches(run.seed, self.state.epoch)
                while self.state.batch_in_epoch < len(batches) and self.state.step < total:
                    record = self._step(batches[self.state.batch_in_epoch])
                    steps_this_run += 1
                    st = self.state
                    if budget and steps_this_run == min(5, run.budget_probe_steps - 1):
                        probe = (time.monotonic(), st.step)
                    if budget and steps_this_run == run.budget_probe_steps:
                        total = bar.total = self._fit_budget(started, probe)
                    if st.step % run.log_every_steps == 0:
                        log_fh.write(json.dumps(record) + "\n")
                        log_fh.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                    ep=st.epoch, refresh=False)
                    if st.step % run.eval_every_steps == 0 or st.step == total:
                        self._evaluate(log_fh)
                        if budget and steps_this_run > run.budget_probe_steps and st.step < total:
                            # the rate now counts evaluations and checkpoints as well
                            total = bar.total = self._fit_budget(started, probe)
                    due_time = time.monotonic() - last_save >= run.checkpoint_minutes * 60
                    due_step = (run.checkpoint_every_steps > 0
                                and st.step % run.checkpoint_every_steps == 0)
                    if due_time or due_step or self._stop_signal is not None:
                        self.save()
                        last_save = time.monotonic()
                    if self._stop_signal is not None:
                        raise _Interrupt
                    if self.stop_after is not None and steps_this_run >= self.stop_after:
                        raise KeyboardInterrupt("simulated kill")
                if self.state.batch_in_epoch >= len(batches):
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
            self.save()
            plot_log(self.log_path, self.out_dir / PLOT)
        except _Interrupt:
            self.say(f"stopped by signal {self._stop_signal} at step {self.state.step}; "
                     f"checkpoint {self.last_path} (rerun the same command to resume)")
            raise KeyboardInterrupt from None
        finally:
            log_fh.close()
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return self.state

    def _step(self, batch: list[int]) -> dict[str, Any]:
        st = self.state
        lr = self.schedule(st.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.task.module.train()
        at_step = getattr(self.task, "at_step", None)
        if at_step is not None:
            at_step(st.step)
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.run_config.precision == "bf16"):
            loss, info = self.task.train_step(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            self.task.module.parameters(), self.optim_config.clip_norm))
        loss_value = float(loss.detach())
        skipped = not (math.isfinite(grad_norm) and math.isfinite(loss_value))
        if not skipped:
            self.optimizer.step()
        dt = time.perf_counter() - t0
        st.step += 1
        st.batch_in_epoch += 1
        st.train_seconds += dt
        st.audio_seconds += float(info.get("audio_seconds", 0.0))
        record = {"step": st.step, "epoch": st.epoch, "loss": loss_value, "lr": lr,
                  "grad_norm": grad_norm, "step_seconds": round(dt, 4),
                  **{k: v for k, v in info.items()}}
        if skipped:
            record["skipped"] = True
        return record

    def _evaluate(self, log_fh: Any) -> None:
        st = self.state
        if self.run_config.keep_snapshots:  # also without a dev set
            self._snapshot()
        self.task.module.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            metrics = self.task.evaluate()
        if not metrics:
            return
        rt = st.audio_seconds / st.train_seconds if st.train_seconds else 0.0
        record = {"step": st.step, "epoch": st.epoch, "eval_seconds": round(time.perf_counter() - t0, 2),
                  "x_real_time": round(rt, 1), **metrics}
        log_fh.write(json.dumps(record) + "\n")
        log_fh.flush()
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        self.say(f"step {st.step} epoch {st.epoch}: {shown} (training at {rt:.0f}x real time)")
        metric = self.task.metric
        if metric and metric in metrics:
            value = metrics[metric]
            if st.best_metric is None or value < st.best_metric:
                st.best_metric = value
                save_checkpoint(self.out_dir / "best.pt", self.task.model_payload())
        plot_log(self.log_path, self.out_dir / PLOT)

    def _snapshot(self) -> None:
        """The model now, as ``snapshots/step-NNNNNNNN.pt``; older ones beyond
        ``run.keep_snapshots`` are deleted."""
        folder = self.out_dir / SNAPSHOTS
        folder.mkdir(exist_ok=True)
        save_checkpoint(folder / f"step-{self.state.step:08d}.pt", self.task.model_payload())
        kept = sorted(folder.glob("step-*.pt"))
        for old in kept[:-self.run_config.keep_snapshots]:
            old.unlink()


def plot_log(log_path: str | Path, png_path: str | Path) -> bool:
    """Plot training loss (and any evaluation metric) per step as a PNG; False if no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps, losses, evals = [], [], {}
    log_path = Path(log_path)
    if not log_path.is_file():
        return False
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in r:
            steps.append(r["step"])
            losses.append(r["loss"])
        for k, v in r.items():
            if k.startswith("dev_") and isinstance(v, (int, float)):
                evals.setdefault(k, []).append((r["step"], v))
    if not steps:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    window = max(1, len(losses) // 100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.25 if window > 1 else 1.0, linewidth=0.8,
            label=None if window > 1 else "train loss")
    if window > 1:
        kernel = np.ones(window) / window
        smooth = np.convolve(losses, kernel, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", label="train loss (smoothed)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if evals:
        ax2 = ax.twinx()
        for (name, pts), color in zip(sorted(evals.items()), ("tab:red", "tab:green", "tab:purple")):
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=name)
        ax2.set_ylabel("dev metric")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(png_path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return True


def _resume_view(config: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint: everything but the ``run``
    section and the schedule's length (``optim.total_steps`` may be shortened, to anneal
    early, or lengthened)."""
    view = {k: v for k, v in config.items() if k != "run"}
    if isinstance(view.get("optim"), dict):
        view["optim"] = {k: v for k, v in view["optim"].items() if k != "total_steps"}
    return view

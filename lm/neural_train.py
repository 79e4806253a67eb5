"""Training, evaluation and export of the neural LM (:mod:`lm.neural`).

:func:`train_neural_lm` trains a sentencepiece tokenizer on the training text (once, at
the start of a run), then the Transformer on whole sentences (``<s>`` pieces ``</s>``,
each starting at position 0 as in scoring; a sentence longer than the context is cut into
overlapping windows). It is seeded and resumable: the run directory holds

* ``checkpoint.pt`` -- the latest state (weights, AdamW state, step, data position, RNG),
  written atomically every ``checkpoint_minutes``, at each evaluation, at the end, and on
  SIGINT/SIGTERM (the step in flight finishes first). Running the same command again
  resumes exactly: the same batches in the same order, the same dropout masks.
* ``best.pt`` -- the model with the best dev perplexity so far (model-only checkpoint).
* ``log.jsonl`` -- one JSON object per log line (loss, learning rate, dev perplexity).
* ``tokenizer.model`` -- the sentencepiece model (also inside every checkpoint).

AdamW with linear warm-up and cosine decay to ``min_lr``, gradient clipping, dropout.
Perplexities are word-normalised (:func:`lm.base.perplexity`): total natural-log
probability of the text including ``</s>``, divided by words + sentences, so they compare
directly with a word n-gram's.
"""

from __future__ import annotations

import io
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusion.core.manifest import atomic_write
from lm.base import LMError, perplexity
from lm.neural import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, MODEL_FILE, NeuralConfig, NeuralLM,
                       PieceTokenizer, TransformerLM, load_checkpoint, tensor_from_bytes)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_text",
    "export_neural_lm",
    "load_train_config",
    "read_sentences",
    "train_neural_lm",
    "train_tokenizer",
]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (a TOML file sets any of these keys)."""

    # tokenizer
    units: str = "piece"  # "piece": sentencepiece unigram/bpe; "char": one piece per character
    vocab_size: int = 1000  # pieces, <unk> <s> </s> included (a soft limit on small text)
    sp_model_type: str = "unigram"  # "unigram" or "bpe" (units = "piece")
    sp_max_sentences: int = 2_000_000  # sentences sampled to train the tokenizer
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 128
    dropout: float = 0.1
    # optimisation
    seed: int = 0
    batch_tokens: int = 4096  # padded pieces per batch
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 200
    max_steps: int = 4000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    bf16: bool = True  # bfloat16 autocast for training forwards (fast on CPUs with AMX/AVX512-BF16)
    compile: bool = False  # torch.compile the training forward (about 2x on CPU; a minute to compile)
    # running
    threads: int = 1
    log_every: int = 50
    eval_every: int = 500
    eval_sentences: int = 2000  # dev sentences scored at each evaluation (0: all)
    checkpoint_minutes: float = 5.0

    def __post_init__(self) -> None:
        if self.units not in ("piece", "char"):
            raise LMError(f"units must be 'piece' or 'char', not {self.units!r}")
        if self.sp_model_type not in ("unigram", "bpe"):
            raise LMError(f"sp_model_type must be 'unigram' or 'bpe', not {self.sp_model_type!r}")
        for name in ("vocab_size", "batch_tokens", "max_steps", "threads", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                raise LMError(f"{name} must be positive, not {getattr(self, name)}")
        if self.batch_tokens < self.block_size:
            raise LMError(f"batch_tokens={self.batch_tokens} is smaller than block_size={self.block_size}")
        if not 0 < self.min_lr <= self.lr:
            raise LMError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        NeuralConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                     block_size=self.block_size, dropout=self.dropout)  # validates

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise LMError(f"{source}: unknown keys: {', '.join(unknown)} (known: {', '.join(known)})")
        values = {}
        for k, v in data.items():
            default = known[k].default
            if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if type(v) is not type(default):
                raise LMError(f"{source}: {k} must be {type(default).__name__}, not {v!r}")
            values[k] = v
        return cls(**values)

    def model_config(self, tokenizer: PieceTokenizer) -> NeuralConfig:
        return NeuralConfig(
            vocab_size=len(tokenizer), block_size=self.block_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
            bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
        )


def load_train_config(path: str | Path) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file of top-level keys (unknown keys: an error)."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise LMError(f"{path}: bad TOML: {exc}") from None
    return TrainConfig.from_dict(data, source=str(path))


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    best_dev_ppl: float | None
    elapsed_s: float
    interrupted: bool
    history: list[dict[str, Any]] = field(default_factory=list)


# -- data -------------------------------------------------------------------------------


def read_sentences(path: str | Path) -> list[list[str]]:
    """Whitespace-split non-empty lines of a text file."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            words = line.split()
            if words:
                out.append(words)
    return out


def train_tokenizer(path: str | Path, cfg: TrainConfig) -> bytes:
    """Train the sentencepiece model on ``path``; returns the model's bytes."""
    import sentencepiece as spm

    spm.set_random_generator_seed(cfg.seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            input=str(path), model_writer=buf,
            model_type="char" if cfg.units == "char" else cfg.sp_model_type,
            vocab_size=cfg.vocab_size, hard_vocab_limit=False,
            character_coverage=1.0, normalization_rule_name="identity",
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            input_sentence_size=cfg.sp_max_sentences, shuffle_input_sentence=True,
            num_threads=1, minloglevel=2, train_extremely_large_corpus=False,
        )
    except RuntimeError as exc:
        raise LMError(f"{path}: cannot train the tokenizer: {exc}") from None
    return buf.getvalue()


class _Corpus:
    """Sentences as one stream ``<s> pieces </s> <s> ...`` plus training windows."""

    def __init__(self, sentences: Sequence[Sequence[str]], tok: PieceTokenizer, block: int) -> None:
        stream: list[int] = []
        ex_start, ex_len, ex_skip = [], [], []
        for words in sentences:
            s = len(stream)
            stream.append(tok.bos_id)
            stream.extend(tok.encode_words(words))
            stream.append(tok.eos_id)
            n = len(stream) - s - 1  # targets of this sentence
            if n <= block:
                ex_start.append(s), ex_len.append(n), ex_skip.append(0)
                continue
            covered, k = 0, 0
            while covered < n:  # overlapping windows, each target trained once
                st = min(k * (block // 2), n - block)
                ex_start.append(s + st), ex_len.append(block), ex_skip.append(covered - st)
                covered, k = st + block, k + 1
        self.stream = torch.tensor(stream, dtype=torch.long)
        self.start = np.asarray(ex_start, dtype=np.int64)
        self.length = np.asarray(ex_len, dtype=np.int64)
        self.skip = np.asarray(ex_skip, dtype=np.int64)
        self.n_targets = int((self.length - self.skip).sum())

    def __len__(self) -> int:
        return len(self.start)

    def plan(self, seed: int, epoch: int, batch_tokens: int) -> list[np.ndarray]:
        """The batches (example indices) of one epoch: a function of (seed, epoch) only."""
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(len(self))
        batches = []
        pool = max(1, 64 * batch_tokens // max(1, int(self.length.mean())))
        for p in range(0, len(perm), pool):
            chunk = perm[p:p + pool]
            chunk = chunk[np.argsort(self.length[chunk], kind="stable")]
            cur: list[int] = []
            for i in chunk:
                if cur and int(self.length[i]) * (len(cur) + 1) > batch_tokens:
                    batches.append(np.asarray(cur))
                    cur = []
                cur.append(int(i))
            if cur:
                batches.append(np.asarray(cur))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def collate(self, ids: np.ndarray, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = int(self.length[ids].max())
        x = torch.full((len(ids), T), pad, dtype=torch.long)  # (N, T)
        y = torch.full((len(ids), T), -1, dtype=torch.long)  # -1: no target
        for r, i in enumerate(ids):
            s, n, k = int(self.start[i]), int(self.length[i]), int(self.skip[i])
            x[r, :n] = self.stream[s:s + n]
            y[r, k:n] = self.stream[s + 1 + k:s + 1 + n]
        return x, y


# -- evaluation -------------------------------------------------------------------------


def evaluate_text(lm: NeuralLM, text: str | Path | Sequence[Sequence[str]]) -> dict[str, Any]:
    """Word-normalised perplexity of a text file (or word lists)."""
    sents = read_sentences(text) if isinstance(text, (str, Path)) else [list(s) for s in text]
    ppl, units = perplexity(lm, sents)
    return {"ppl": ppl, "units": units, "sentences": len(sents), "words": units - len(sents)}


# -- checkpoints ------------------------------------------------------------------------


def _model_ckpt(model: TransformerLM, tok_bytes: bytes, *, half: bool = False) -> dict[str, Any]:
    state = {k: (v.half() if half and v.is_floating_point() else v).clone()
             for k, v in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": asdict(model.cfg), "tokenizer": tensor_from_bytes(tok_bytes), "model": state,
    }


def _save(obj: dict[str, Any], path: Path) -> None:
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def export_neural_lm(checkpoint: str | Path, out_dir: str | Path, *, half: bool = True) -> Path:
    """Write a model-only ``model.pt`` (fp16 weights by default) from any checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    model = TransformerLM(NeuralConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    out = Path(out_dir) / MODEL_FILE
    _save(_model_ckpt(model, ckpt["tokenizer"].numpy().tobytes(), half=half), out)
    return out


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves and stops after the step in flight."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:  # a second signal: stop now
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- training ---------------------------------------------------------------------------


def train_neural_lm(
    train: str | Path,
    dev: str | Path | None,
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    progress: bool | None = None,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume training) a neural LM; see the module doc for the run directory.

    ``stop_after_steps``: stop this call at that global step (saving a checkpoint), as an
    interruption would; a later call resumes. With ``resume=False`` an existing
    checkpoint in ``out`` is an error rather than overwritten.
    """
    cfg = config or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    torch.set_num_threads(cfg.threads)
    ckpt_path, best_path, log_path = out / "checkpoint.pt", out / "best.pt", out / "log.jsonl"

    sentences = read_sentences(train)
    if not sentences:
        raise LMError(f"{train}: training text has no sentences")
    dev_sents = read_sentences(dev) if dev is not None else []
    if dev is not None and not dev_sents:
        raise LMError(f"{dev}: dev text has no sentences")
    if cfg.eval_sentences:
        dev_sents = dev_sents[: cfg.eval_sentences]

    state: dict[str, Any] | None = None
    if ckpt_path.exists():
        if not resume:
            raise LMError(f"{ckpt_path} exists: resume it, or choose another --out")
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state.get("train_config", {}), source=str(ckpt_path))
        if replace(saved, max_steps=cfg.max_steps) != cfg:
            raise LMError(f"{ckpt_path}: was trained with another config; use the same one to resume")
        tok_bytes = state["tokenizer"].numpy().tobytes()
    else:
        tok_bytes = train_tokenizer(train, cfg)
        with atomic_write(out / "tokenizer.model", "wb") as fh:
            fh.write(tok_bytes)
    tok = PieceTokenizer(tok_bytes)

    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model_config(tok))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False,
    )
    step, epoch, pos, elapsed, tokens_seen, best = 0, 0, 0, 0.0, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, epoch, pos = int(state["step"]), int(state["epoch"]), int(state["pos"])
        elapsed, tokens_seen = float(state["elapsed_s"]), int(state["tokens_seen"])
        best = state.get("best_dev_ppl")

    corpus = _Corpus(sentences, tok, cfg.block_size)
    batches = corpus.plan(cfg.seed, epoch, cfg.batch_tokens)
    scorer = NeuralLM(model, tok)
    forward = torch.compile(model, dynamic=True) if cfg.compile else model
    history: list[dict[str, Any]] = []

    def write_log(row: dict[str, Any]) -> None:
        history.append(row)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def save_checkpoint() -> None:
        _save({
            **_model_ckpt(model, tok_bytes), "train_config": asdict(cfg),
            "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
            "step": step, "epoch": epoch, "pos": pos, "elapsed_s": elapsed + (time.monotonic() - t0),
            "tokens_seen": tokens_seen, "best_dev_ppl": best,
        }, ckpt_path)

    def evaluate() -> float | None:
        nonlocal best
        if not dev_sents:
            return None
        model.eval()
        ppl = evaluate_text(scorer, dev_sents)["ppl"]
        model.train()
        if best is None or ppl < best:
            best = ppl
            _save(_model_ckpt(model, tok_bytes), best_path)
        return ppl

    write_log({"event": "resume" if state else "start", "step": step, "params": model.num_params(),
               "vocab": len(tok), "train_sentences": len(sentences), "train_targets": corpus.n_targets,
               "config": asdict(cfg)})
    say(f"neural LM: {model.num_params():,} parameters, {len(tok)} pieces, "
        f"{len(sentences):,} sentences ({corpus.n_targets:,} targets); step {step}/{cfg.max_steps}")
    t0 = time.monotonic()
    last_ckpt = t0
    interrupted = False
    model.train()
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not show, dynamic_ncols=True,
               mininterval=2.0, desc="lm-train-neural")
    losses: list[float] = []
    tok_window, t_window = 0, time.monotonic()
    with _StopFlag() as stop:
        while step < cfg.max_steps:
            if pos >= len(batches):
                epoch, pos = epoch + 1, 0
                batches = corpus.plan(cfg.seed, epoch, cfg.batch_tokens)
            x, y = corpus.collate(batches[pos], tok.eos_id)
            pos += 1
            lr = _lr(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits, _ = forward(x)  # (N, T, vocab)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            opt.step()
            step += 1
            n_tgt = int((y >= 0).sum())
            tokens_seen += n_tgt
            tok_window += n_tgt
            losses.append(loss.item())
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.monotonic()
                row = {"event": "train", "step": step, "epoch": epoch, "loss": sum(losses) / len(losses),
                       "lr": lr, "grad_norm": gnorm, "tokens_per_s": tok_window / max(1e-9, now - t_window),
                       "elapsed_s": round(elapsed + now - t0, 1)}
                write_log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
                losses, tok_window, t_window = [], 0, now
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                ppl = evaluate()
                if ppl is not None:
                    write_log({"event": "eval", "step": step, "dev_ppl": ppl,
                               "elapsed_s": round(elapsed + time.monotonic() - t0, 1)})
                    say(f"step {step}: dev perplexity {ppl:.2f} (best {best:.2f})")
                save_checkpoint()
                last_ckpt = time.monotonic()
            elif time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes:
                save_checkpoint()
                last_ckpt = time.monotonic()
            if stop.set or (stop_after_steps is not None and step >= stop_after_steps):
                interrupted = step < cfg.max_steps
                save_checkpoint()
                break
    bar.close()
    total = elapsed + time.monotonic() - t0
    if best is None and not dev_sents:  # no dev text: the final model is the one to export
        _save(_model_ckpt(model, tok_bytes), best_path)
    write_log({"event": "stop" if interrupted else "done", "step": step, "best_dev_ppl": best,
               "elapsed_s": round(total, 1)})
    return TrainResult(out, step, best, total, interrupted, history)

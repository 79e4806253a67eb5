"""Training configurations: frozen dataclasses read from TOML data (never executed).

A config file has one table per section (``[model]``, ``[optim]``, ``[batch]``,
``[specaug]``, ``[run]``, ``[tokens]`` and, for pretraining, ``[bestrq]``); every key is optional
and defaults to the dataclass field. Unknown sections or keys and values of the wrong
type are errors naming the key. Example::

    [model]
    n_layers = 6
    subsampling = 4

    [optim]
    lr = 2e-3
    total_steps = 20000

    [tokens]               # subword units instead of characters
    kind = "sentencepiece"
    vocab_size = 256
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from fusion.am.features import SpecAugmentConfig
from fusion.am.model import ModelConfig

__all__ = [
    "BatchConfig",
    "BestRQConfig",
    "ConfigError",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
    "parse_overrides",
    "to_dict",
]

T = TypeVar("T")

PRECISIONS = ("fp32", "bf16")  # run.precision: of the training forward pass


class ConfigError(ValueError):
    """A config file or dict with unknown keys, wrong types or invalid values."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at
    ``total_steps`` (``schedule = "cosine"``), inverse square-root decay (``"noam"``), or
    a constant rate (``"constant"``). Training stops after ``total_steps`` updates."""

    lr: float = 1.5e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 1e-3
    warmup_steps: int = 1000
    schedule: Literal["cosine", "noam", "constant"] = "cosine"
    total_steps: int = 20_000
    min_lr_ratio: float = 0.02
    clip_norm: float = 5.0
    #: CTC fine-tuning: the encoder stays fixed for the first this many updates (only the
    #: output layer learns), as wav2vec 2.0 fine-tuning does with a pretrained encoder
    freeze_encoder_steps: int = 0

    def __post_init__(self) -> None:
        if self.freeze_encoder_steps < 0:
            raise ConfigError("optim.freeze_encoder_steps must be >= 0")
        if self.lr <= 0 or self.total_steps <= 0 or self.warmup_steps < 0 or self.clip_norm <= 0:
            raise ConfigError("optim: lr, total_steps and clip_norm must be > 0, warmup_steps >= 0")
        if self.schedule not in ("cosine", "noam", "constant"):
            raise ConfigError(f"optim.schedule: unknown schedule {self.schedule!r}")


@dataclass(frozen=True)
class BatchConfig:
    """Batches by duration: utterances of similar length, at most ``max_frames`` padded
    10 ms feature frames (``max_frames = 16000`` is 160 s of audio) and
    ``max_utterances`` utterances per batch. Longer utterances than ``max_duration``
    seconds are left out of training. ``pool`` batches' worth of utterances are drawn
    at random, sorted by length and cut into batches; batch order is shuffled."""

    max_frames: int = 16_000
    max_utterances: int = 64
    max_duration: float = 30.0
    pool: int = 50

    def __post_init__(self) -> None:
        if self.max_frames <= 0 or self.max_utterances <= 0 or self.pool <= 0:
            raise ConfigError("batch: max_frames, max_utterances and pool must be > 0")


@dataclass(frozen=True)
class RunConfig:
    """Seeds, threads, device, checkpointing and evaluation cadence.

    ``device`` is ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), or ``"auto"`` (CUDA when
    available). ``time_budget_minutes`` (0: off) fits the schedule to a wall-clock
    budget: a fresh run times its first ``budget_probe_steps`` steps, then sets
    ``optim.total_steps`` so that the schedule ends inside the budget, and refits it
    after each evaluation (whose time then counts too). The steps chosen are saved with
    the checkpoints; a resumed run keeps them. ``keep_snapshots`` (0: none) keeps the
    model at the last that many evaluation points (every ``eval_every_steps`` steps and
    at the end, with or without a dev set) in ``out_dir/snapshots``, for checkpoint
    averaging (``fusion average``). ``precision = "bf16"`` runs the training forward pass
    under ``torch.autocast`` in bfloat16 (weights, optimizer and the CTC head stay float32):
    on a CPU with AMX or AVX-512 BF16 a step takes about 0.6 of the float32 time; on an
    AVX2-only CPU bfloat16 is emulated and a step took 9x the float32 time (the trainer
    warns there).
    """

    seed: int = 1
    num_threads: int = 2
    device: str = "cpu"
    max_epochs: int = 10_000
    checkpoint_minutes: float = 5.0
    checkpoint_every_steps: int = 0  # 0: only by time (and at the end)
    eval_every_steps: int = 500
    dev_max_utterances: int = 300
    log_every_steps: int = 1
    time_budget_minutes: float = 0.0
    budget_probe_steps: int = 50
    keep_snapshots: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"run.precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if self.num_threads <= 0 or self.eval_every_steps <= 0 or self.log_every_steps <= 0:
            raise ConfigError("run: num_threads, eval_every_steps and log_every_steps must be > 0")
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ConfigError(f"run.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', "
                              f"got {self.device!r}")
        if self.time_budget_minutes < 0 or self.budget_probe_steps < 1:
            raise ConfigError("run: time_budget_minutes must be >= 0 and budget_probe_steps >= 1")
        if self.keep_snapshots < 0:
            raise ConfigError(f"run.keep_snapshots must be >= 0, got {self.keep_snapshots}")


@dataclass(frozen=True)
class BestRQConfig:
    """BEST-RQ targets and masking. Spans are counted in encoder output frames: each
    output frame starts a masked span of ``mask_span`` frames with probability
    ``mask_prob``; masked input frames become Gaussian noise (std ``noise_std``)."""

    codebook_size: int = 1024
    codebook_dim: int = 16
    mask_prob: float = 0.05
    mask_span: int = 10
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1 or self.mask_span <= 0 or self.codebook_size < 2:
            raise ConfigError("bestrq: need 0 < mask_prob < 1, mask_span > 0, codebook_size >= 2")


@dataclass(frozen=True)
class TokensConfig:
    """Output units: ``"char"`` (blank, ``|``, a-z, apostrophe) or ``"sentencepiece"``
    (learnt from the training transcripts at the start of training: ``vocab_size``
    pieces of a ``model_type`` model, see :mod:`fusion.am.subword`). The model's
    ``vocab_size`` follows from the units."""

    kind: Literal["char", "sentencepiece"] = "char"
    vocab_size: int = 256
    model_type: Literal["unigram", "bpe"] = "unigram"

    def __post_init__(self) -> None:
        if self.kind not in ("char", "sentencepiece"):
            raise ConfigError(f"tokens.kind: expected 'char' or 'sentencepiece', got {self.kind!r}")
        if self.model_type not in ("unigram", "bpe"):
            raise ConfigError(f"tokens.model_type: expected 'unigram' or 'bpe', got {self.model_type!r}")
        if self.vocab_size < 8:
            raise ConfigError("tokens.vocab_size must be at least 8")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    specaug: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)


@dataclass(frozen=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, total_steps=10_000))
    batch: BatchConfig = field(default_factory=BatchConfig)
    bestrq: BestRQConfig = field(default_factory=BestRQConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            try:
                return _check_value(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} has the wrong type (expected {tp})")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected nothing, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls: type[T], data: Any, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from plain data; unknown keys and wrong types are errors."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _check_value(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data (dicts, lists, numbers, strings) of a config dataclass."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(config))


def load_config(cls: type[T], path: str | Path | None, overrides: dict[str, Any] | None = None
                ) -> T:
    """Read a TOML file (data only) into ``cls`` (``TrainConfig`` or ``PretrainConfig``).

    ``overrides`` (``{"section": {"key": value}}``) are applied on top of the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return from_dict(cls, data, where=str(path) if path is not None else "config")


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["optim.lr=2e-3", "model.n_layers=4"]`` -> ``{"optim": {"lr": 0.002}, ...}``.

    Values are TOML values; anything that is not valid TOML is taken as a string.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=VALUE")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare string
        out.setdefault(section, {})[name] = parsed
    return out

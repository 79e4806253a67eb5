"""A compact Transformer LM over sentencepiece pieces, behind the word-level LM interface.

The network (:class:`TransformerLM`) is a small GPT: learned token and position
embeddings, pre-norm decoder blocks with causal self-attention, an output layer tied to
the token embedding. It predicts sentencepiece pieces; :class:`NeuralLM` puts the word
interface of :mod:`lm.base` on top:

* ``level = "word"``. ``score(state, word)`` tokenises the word (with sentencepiece's
  word-initial ``▁``) and returns the sum of its pieces' log-probabilities; ``finish``
  scores ``</s>``. A sentence is always tokenised word by word, so scoring words one at a
  time gives exactly the total of scoring the whole sentence (the sentence's piece
  sequence is the same, and so is every conditional).
* A state is the tuple of piece ids so far, ``<s>`` first: immutable and hashable.
* Incremental scoring reuses key/value caches per prefix. They live in a
  :class:`NeuralSession` (``with lm.session(): ...``, or call the session's own methods),
  an LRU bounded in bytes that is dropped when the session ends: nothing stays on the
  model. Outside a session every call starts from scratch (still batched within the call).
* :meth:`NeuralLM.score_many` runs one forward over all hypotheses' new pieces (different
  prefix lengths, different numbers of new pieces), packed into one row as a tree: a piece
  sequence several hypotheses share is computed once, and nothing is padded. A word's last
  piece is read off the distribution after the others, so a one-piece word after a known
  history costs no forward; the state after a word gets its own keys and values only when
  something is scored after it. :meth:`NeuralLM.score_sentences` pads whole sentences into
  batched forwards.

Context is at most ``block_size`` pieces (``<s>`` included). A prediction whose context is
longer sees only the last ``block_size`` pieces (a sliding window, recomputed without a
cache); incremental and whole-sentence scoring apply the same rule, so they agree there too.

Unknown characters: a word with characters the tokenizer has never seen is encoded with
sentencepiece's ``<unk>`` piece for them (e.g. ``"café"`` -> ``▁caf`` ``<unk>``) and scored
with the model's ``<unk>`` probability (low: the training text has none);
:meth:`NeuralLM.contains` is false for such a word. An empty word or one with whitespace
in it is an :class:`~lm.base.LMError`.

Checkpoints are plain data only, read with ``torch.load(weights_only=True)``:
``{"format": "asrfuse.neural-lm", "version": 1, "model_config": dict, "tokenizer": uint8
tensor (the sentencepiece model's bytes), "model": state dict, ...}`` (training
checkpoints add optimizer, step, data position and RNG state). Anything else is refused.
"""

from __future__ import annotations

import contextvars
import itertools
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lm.base import LanguageModel, LMError, LMState

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_MODEL_DIR",
    "NeuralConfig",
    "NeuralLM",
    "NeuralSession",
    "PieceTokenizer",
    "TransformerLM",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "asrfuse.neural-lm"
CHECKPOINT_VERSION = 1
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "neural-default"
MODEL_FILE = "model.pt"


# -- the network ------------------------------------------------------------------------


@dataclass(frozen=True)
class NeuralConfig:
    """Architecture of :class:`TransformerLM` (stored in every checkpoint)."""

    vocab_size: int = 1000  # sentencepiece pieces, <unk> <s> </s> included
    block_size: int = 128  # longest context, in pieces (<s> included)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    bos_id: int = 1  # input at position 0; never predicted (its logit is -inf)
    eos_id: int = 2  # the end-of-sentence target

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise LMError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise LMError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise LMError(f"dropout must be in [0, 1), not {self.dropout}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuralConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LMError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


KV = tuple[torch.Tensor, torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: NeuralConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, past: KV | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KV]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, T, H, C/H) -> (B, H, T, C/H)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if past is not None:  # cached keys/values of earlier positions: (B, H, P, C/H)
            k = torch.cat([past[0], k], dim=2)  # (B, H, P+T, C/H)
            v = torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and past is None,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, C/H)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: NeuralConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout),
        )

    def forward(
        self, x: torch.Tensor, past: KV | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KV]:
        a, present = self.attn(self.ln1(x), past, mask)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


class TransformerLM(nn.Module):
    """GPT-style decoder: pre-norm blocks, causal attention, tied input/output embedding."""

    def __init__(self, cfg: NeuralConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scaled residual projections
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor | None = None,
        past: Sequence[KV] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """Logits ``(B, T, vocab)`` for pieces ``idx`` ``(B, T)`` and each layer's keys/values.

        ``pos`` ``(B, T)``: positions (default ``0..T-1``); ``past``: per layer, cached
        ``(keys, values)`` ``(B, H, P, C/H)``; ``mask`` ``(B, 1, T, P+T)`` bool, True =
        may attend (default: causal). Logits of ``<s>`` are ``-inf``.
        """
        B, T = idx.shape
        if pos is None:
            if T > self.cfg.block_size:
                raise LMError(f"sequence of {T} pieces exceeds block_size={self.cfg.block_size}")
            pos = torch.arange(T, device=idx.device).expand(B, T)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        presents = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past is None else past[i], mask)
            presents.append(kv)
        x = self.ln_f(x)
        logits = x @ self.wte.weight.t()  # tied output layer: (B, T, vocab)
        logits[..., self.cfg.bos_id] = float("-inf")
        return logits, presents


# -- checkpoints ------------------------------------------------------------------------


def _require(cond: bool, path: Path | str, what: str) -> None:
    if not cond:
        raise LMError(f"{path}: not an asrfuse neural LM checkpoint ({what})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its layout.

    Refuses (:class:`~lm.base.LMError`) anything that needs code to unpickle, and any
    dict that isn't this module's format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise LMError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LMError(
            f"{path}: refused: not a plain-data checkpoint loadable with torch.load("
            f"weights_only=True) (pickled code or a damaged file is never executed): {first}"
        ) from None
    _require(isinstance(ckpt, dict), path, "not a dict")
    _require(ckpt.get("format") == CHECKPOINT_FORMAT, path, f"format is not {CHECKPOINT_FORMAT!r}")
    _require(ckpt.get("version") == CHECKPOINT_VERSION, path, f"version {ckpt.get('version')!r}")
    _require(isinstance(ckpt.get("model_config"), dict), path, "no model_config")
    _require(isinstance(ckpt.get("model"), dict), path, "no model weights")
    tok = ckpt.get("tokenizer")
    _require(isinstance(tok, torch.Tensor) and tok.dtype == torch.uint8, path, "no tokenizer bytes")
    return ckpt


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


# -- tokenizer --------------------------------------------------------------------------


class PieceTokenizer:
    """A sentencepiece model; words are encoded one at a time (with the word-initial ``▁``)."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        if min(self.bos_id, self.eos_id, self.unk_id) < 0:
            raise LMError("the sentencepiece model needs <unk>, <s> and </s> pieces")
        self._words: dict[str, tuple[int, ...]] = {}  # memo (word -> pieces), bounded

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode_word(self, word: str) -> tuple[int, ...]:
        ids = self._words.get(word)
        if ids is None:
            if not word or any(ch.isspace() for ch in word):
                raise LMError(f"not a word: {word!r} (empty or contains whitespace)")
            ids = tuple(self.sp.encode(word))
            if len(self._words) >= 200_000:
                self._words.clear()
            self._words[word] = ids
        return ids

    def encode_words(self, words: Iterable[str]) -> list[int]:
        out: list[int] = []
        for w in words:
            out.extend(self.encode_word(w))
        return out

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]


# -- KV cache ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    """What is known about one prefix (piece ids, ``<s>`` first)."""

    lp: tuple[float, ...]  # lp[t] = log p(ids[t] | ids[:t]); lp[0] = 0 for <s>
    last: torch.Tensor  # (vocab,) log-probs of the next piece
    kv: torch.Tensor | None  # (n_layer, 2, H, len, C/H); None past block_size

    @property
    def nbytes(self) -> int:
        n = self.last.numel() * self.last.element_size() + 8 * len(self.lp) + 200
        if self.kv is not None:
            n += self.kv.numel() * self.kv.element_size()
        return n


class _PrefixCache:
    """LRU of prefix -> :class:`_Entry`, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0  # lookups found whole in the cache, and not
        self.computed = 0  # pieces run through the model (not found as a cached prefix)

    def get(self, key: tuple[int, ...]) -> _Entry | None:
        e = self.entries.get(key)
        if e is not None:
            self.entries.move_to_end(key)
        return e

    def put(self, key: tuple[int, ...], entry: _Entry) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self.entries[key] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes and len(self.entries) > 1:
            _, e = self.entries.popitem(last=False)
            self.nbytes -= e.nbytes

    def longest_prefix(self, ids: tuple[int, ...], hint: int) -> tuple[int, _Entry | None]:
        """Longest cached prefix of ``ids`` with keys/values (or ``ids`` itself).

        ``hint`` is a length likely cached (a word's history): lengths above it are
        looked up one by one, then ``ids[:hint]``, then the shorter ones.
        """
        entries = self.entries
        for n in range(len(ids), 0, -1):
            if n > hint and ids[:n] not in entries:
                continue
            e = self.get(ids[:n])
            if e is not None and (n == len(ids) or e.kv is not None):
                return n, e
        return 0, None

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


_ACTIVE: contextvars.ContextVar[tuple[NeuralSession, ...]] = contextvars.ContextVar(
    "asrfuse_neural_sessions", default=()
)


# -- the word-level model ---------------------------------------------------------------


class NeuralLM(LanguageModel):
    """Word-level facade over a piece-level :class:`TransformerLM` (see the module doc)."""

    level = "word"

    def __init__(
        self,
        model: TransformerLM,
        tokenizer: PieceTokenizer,
        *,
        batch_tokens: int = 16384,
        cache_bytes: int = 256 << 20,
    ) -> None:
        if model.cfg.vocab_size != len(tokenizer):
            raise LMError(f"model has {model.cfg.vocab_size} pieces, tokenizer {len(tokenizer)}")
        if (model.cfg.bos_id, model.cfg.eos_id) != (tokenizer.bos_id, tokenizer.eos_id):
            raise LMError("model and tokenizer disagree on <s>/</s> ids")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        self.batch_tokens = batch_tokens
        self.cache_bytes = cache_bytes

    # construction
    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> NeuralLM:
        """Load a checkpoint file (or a directory holding ``model.pt``)."""
        ckpt = load_checkpoint(path)
        cfg = NeuralConfig.from_dict(ckpt["model_config"])
        model = TransformerLM(cfg)
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise LMError(f"{path}: weights do not fit the model config: {exc}") from None
        tok = PieceTokenizer(ckpt["tokenizer"].numpy().tobytes())
        return cls(model, tok, **kwargs)

    @classmethod
    def default(cls, **kwargs: Any) -> NeuralLM:
        """The committed default model (``lm/models/neural-default/``)."""
        return cls.load(DEFAULT_MODEL_DIR / MODEL_FILE, **kwargs)

    def session(self, cache_bytes: int | None = None) -> NeuralSession:
        """A decoding session: KV caches per prefix, kept until the session ends."""
        return NeuralSession(self, self.cache_bytes if cache_bytes is None else cache_bytes)

    def _cache(self) -> _PrefixCache:
        for s in reversed(_ACTIVE.get()):
            if s.lm is self:
                return s.cache
        return _PrefixCache(self.cache_bytes)  # lives for this call only

    # LanguageModel
    def start(self) -> tuple[int, ...]:
        return (self.cfg.bos_id,)

    def contains(self, unit: str) -> bool:
        try:
            return self.tokenizer.unk_id not in self.tokenizer.encode_word(unit)
        except LMError:
            return False

    def score(self, state: LMState, unit: str) -> tuple[tuple[int, ...], float]:
        return self.score_many([state], [unit])[0]

    def score_many(
        self, states: Sequence[LMState], units: Sequence[str]
    ) -> list[tuple[tuple[int, ...], float]]:
        return self._score_many(states, units, self._cache())

    def finish(self, state: LMState) -> float:
        return self.finish_many([state])[0]

    def finish_many(self, states: Sequence[LMState]) -> list[float]:
        """``finish`` of each state, in one batched forward where needed."""
        return self._finish_many(states, self._cache())

    def next_logprobs(self, state: LMState) -> torch.Tensor:
        """``(vocab,)`` natural-log probabilities of the next piece (``</s>`` included)."""
        return self._entries([self._check_state(state)], self._cache())[0].last.clone()

    def score_sentence(self, units: Iterable[str], *, eos: bool = True) -> float:
        return self.score_sentences([list(units)], eos=eos)[0]

    def score_sentences(self, sentences: Sequence[Sequence[str]], *, eos: bool = True) -> list[float]:
        """Total log-probability of each word sequence: padded, batched forwards."""
        seqs = [[self.cfg.bos_id, *self.tokenizer.encode_words(s)] for s in sentences]
        return self._score_sequences(seqs, eos=eos)

    # internals
    def _check_state(self, state: LMState) -> tuple[int, ...]:
        if not (isinstance(state, tuple) and state and state[0] == self.cfg.bos_id):
            raise LMError(f"not a state of this model: {state!r}")
        return state

    def _score_many(
        self, states: Sequence[LMState], units: Sequence[str], cache: _PrefixCache
    ) -> list[tuple[tuple[int, ...], float]]:
        if len(states) != len(units):
            raise ValueError(f"{len(states)} states but {len(units)} units")
        fulls = [self._check_state(s) + self.tokenizer.encode_word(u) for s, u in zip(states, units)]
        # a word's last piece is read off the distribution after the others: the forward
        # runs over the history and all pieces but the last (none for a one-piece word, the
        # history's entry serving every word that follows it), and the full state's own
        # entry waits until something follows it (most words a search scores, nothing does)
        entries = self._entries([f[:-1] for f in fulls], cache, hints=[len(s) for s in states])
        lasts = torch.stack([e.last for e in entries]).gather(
            1, torch.tensor([[f[-1]] for f in fulls])).squeeze(1).tolist()
        return [
            (full, math.fsum((*e.lp[len(s):], last)))
            for full, e, s, last in zip(fulls, entries, states, lasts)
        ]

    def _finish_many(self, states: Sequence[LMState], cache: _PrefixCache) -> list[float]:
        entries = self._entries([self._check_state(s) for s in states], cache)
        return [float(e.last[self.cfg.eos_id]) for e in entries]

    @torch.inference_mode()
    def _entries(
        self, fulls: list[tuple[int, ...]], cache: _PrefixCache, hints: list[int] | None = None
    ) -> list[_Entry]:
        """Make sure every prefix in ``fulls`` has an entry (batched forwards); return them."""
        found: dict[tuple[int, ...], _Entry] = {}
        pending: dict[tuple[int, ...], tuple[int, _Entry | None]] = {}  # ids -> cached prefix
        long: list[tuple[int, ...]] = []
        for i, full in enumerate(fulls):
            if full in found or full in pending:
                continue
            e = cache.get(full)
            if e is not None:
                found[full] = e
                cache.hits += 1
                continue
            cache.misses += 1
            if len(full) > self.cfg.block_size:
                if full not in long:
                    long.append(full)
                continue
            pending[full] = cache.longest_prefix(full, hints[i] if hints else len(full) - 1)
        jobs = [(full, n, e) for full, (n, e) in pending.items()]
        # packed forwards (jobs that share a prefix side by side), a forward closing when its
        # attention (new pieces x cached and new keys) would pass the budget
        jobs.sort(key=lambda j: j[0])
        batch: list[tuple[tuple[int, ...], int, _Entry | None]] = []
        pasts: set[int] = set()
        new = keys = 0
        for job in jobs:
            full, n, e = job
            grown = keys + len(full) - n + (n if e is not None and id(e) not in pasts else 0)
            if batch and (new + len(full) - n) * grown > self.batch_tokens * self.cfg.block_size:
                self._extend(batch, cache, found)
                batch, pasts, new, grown = [], set(), 0, len(full)
            batch.append(job)
            new += len(full) - n
            keys = grown
            if e is not None:
                pasts.add(id(e))
        if batch:
            self._extend(batch, cache, found)
        if long:
            for full, (lp, last) in zip(long, self._windowed(long)):
                e = _Entry(lp=tuple(lp), last=last, kv=None)
                cache.put(full, e)
                found[full] = e
        return [found[f] for f in fulls]

    def _extend(
        self,
        jobs: list[tuple[tuple[int, ...], int, _Entry | None]],
        cache: _PrefixCache,
        found: dict[tuple[int, ...], _Entry],
    ) -> None:
        """One forward over the uncached pieces of every job, on top of its cached prefix.

        The jobs are packed into one row as a tree (tree attention): each distinct piece
        sequence is computed once however many jobs continue it (the words a frame
        completes after one history share the history's new pieces). The row's keys are
        each distinct cached prefix once, then the new pieces; the mask lets a new piece
        see its cached prefix and the new pieces on its path."""
        cfg = self.cfg
        top = cfg.block_size - 1
        segments: dict[int, tuple[int, _Entry]] = {}  # cached prefix -> (offset in keys, entry)
        P = 0
        for _, n, e in jobs:  # e: the cached prefix of n > 0 pieces, or None (n = 0)
            if e is not None and id(e) not in segments:
                segments[id(e)] = (P, e)
                P += n
        nodes: dict[tuple[int, ...], int] = {}  # piece sequence -> its new piece's index
        parent: list[int] = []  # a node's parent node, or -1 below a cached prefix (base)
        base: list[tuple[int, int]] = []  # a node's cached keys: (offset, length)
        paths = []  # per job, the nodes of its new pieces
        for full, n, e in jobs:
            path = []
            for j in range(n, len(full)):
                t = nodes.get(full[:j + 1])
                if t is None:
                    t = nodes[full[:j + 1]] = len(parent)
                    if path:
                        parent.append(path[-1])
                        base.append(base[path[-1]])
                    else:
                        parent.append(-1)
                        base.append((segments[id(e)][0], n) if e is not None else (0, 0))
                path.append(t)
            paths.append(path)
        T = len(parent)
        cache.computed += T
        mask = np.zeros((T, P + T), dtype=bool)
        for t, (p, (off, n)) in enumerate(zip(parent, base)):  # parents come first
            if p < 0:
                mask[t, off:off + n] = True
            else:
                mask[t] = mask[p]
            mask[t, P + t] = True
        keys = list(nodes)
        idx = torch.tensor([[k[-1] for k in keys]])  # (1, T)
        pos = torch.tensor([[min(len(k) - 1, top) for k in keys]])
        past = None
        if P:
            kv = torch.cat([e.kv for _, e in segments.values()], dim=3)  # (L, 2, H, P, hd)
            past = [(kv[li, 0][None], kv[li, 1][None]) for li in range(cfg.n_layer)]
        logits, presents = self.model(idx, pos, past, torch.from_numpy(mask)[None, None])
        logp = torch.log_softmax(logits[0].float(), dim=-1)  # (T, vocab)
        # presents[l] = (K, V), each (1, H, P+T, hd): keep the new positions only
        newkv = torch.stack([torch.stack((k[0, :, P:], v[0, :, P:])) for k, v in presents])
        # newkv: (L, 2, H, T, hd); lps: log p of each job's new pieces, in one gather
        # the first new piece after a cached prefix: from the prefix's next-piece row
        firsts = [e.last[full[n]] for full, n, e in jobs if e is not None]
        firsts = iter(torch.stack(firsts).tolist() if firsts else [])
        targets = [(path[i - 1], full[n + i]) for (full, n, _), path in zip(jobs, paths)
                   for i in range(1, len(path))]
        steps = iter(logp[[r for r, _ in targets], [c for _, c in targets]].tolist() if targets else [])
        for (full, n, e), path in zip(jobs, paths):
            new = newkv[:, :, :, path]
            if e is None:  # from scratch: full[0] is <s>
                lp, kv = (0.0, *itertools.islice(steps, len(path) - 1)), new
            else:
                lp = (*e.lp, next(firsts), *itertools.islice(steps, len(path) - 1))
                kv = torch.cat([e.kv, new], dim=3)
            entry = _Entry(lp=lp, last=logp[path[-1]].clone(), kv=kv)
            cache.put(full, entry)
            found[full] = entry

    @torch.no_grad()
    def _windowed(self, seqs: list[Sequence[int]]) -> list[tuple[list[float], torch.Tensor]]:
        """Per-position log-probs and next-piece log-probs of sequences of any length.

        Position ``t`` is predicted from the last ``block_size`` pieces before it.
        """
        B = self.cfg.block_size
        out = []
        for seq in seqs:
            seq = list(seq)
            head = torch.tensor(seq[:B])[None]
            logp = torch.log_softmax(self.model(head)[0][0].float(), dim=-1)  # (min(n,B), vocab)
            lp = [0.0] + logp[:-1].gather(1, head[0, 1:, None]).squeeze(1).tolist()
            last = logp[-1]
            if len(seq) > B:
                # windows ending at t-1 for targets t = B..n-1 and a last one for what follows
                wins = torch.tensor([seq[t - B:t] for t in range(B, len(seq) + 1)])  # (W, B)
                rows = []
                for chunk in wins.split(max(1, self.batch_tokens // B)):
                    rows.append(torch.log_softmax(self.model(chunk)[0][:, -1].float(), dim=-1))
                wl = torch.cat(rows)  # (W, vocab)
                targets = torch.tensor(seq[B:])
                lp += wl[:-1].gather(1, targets[:, None]).squeeze(1).tolist()
                last = wl[-1]
            out.append((lp, last.clone()))
        return out

    @torch.no_grad()
    def _score_sequences(self, seqs: list[list[int]], *, eos: bool) -> list[float]:
        B = self.cfg.block_size
        totals: list[float] = [0.0] * len(seqs)
        short = [i for i, s in enumerate(seqs) if len(s) <= B]
        for i in (i for i, s in enumerate(seqs) if len(s) > B):
            lp, last = self._windowed([seqs[i]])[0]
            totals[i] = math.fsum(lp) + (float(last[self.cfg.eos_id]) if eos else 0.0)
        short.sort(key=lambda i: len(seqs[i]))
        start = 0
        while start < len(short):
            end = start + 1
            while end < len(short) and len(seqs[short[end]]) * (end - start + 1) <= self.batch_tokens:
                end += 1
            group = short[start:end]
            T = len(seqs[group[-1]])
            idx = torch.full((len(group), T), self.cfg.eos_id, dtype=torch.long)  # (N, T)
            tgt = torch.full((len(group), T), self.cfg.eos_id, dtype=torch.long)
            valid = torch.zeros(len(group), T, dtype=torch.bool)
            for r, i in enumerate(group):
                s = seqs[i]
                idx[r, : len(s)] = torch.tensor(s)
                tgt[r, : len(s) - 1] = torch.tensor(s[1:])  # position len(s)-1 predicts </s>
                valid[r, : len(s) - (0 if eos else 1)] = True
            logp = torch.log_softmax(self.model(idx)[0].float(), dim=-1)  # (N, T, vocab)
            tok = logp.gather(2, tgt[..., None]).squeeze(2).double()  # (N, T)
            sums = (tok * valid).sum(1).tolist()
            for r, i in enumerate(group):
                totals[i] = sums[r]
            start = end
        return totals


class NeuralSession(LanguageModel):
    """A decoding session of a :class:`NeuralLM`: the same scores, with prefix KV caches.

    Use its methods directly, or ``with lm.session():`` to make the model's own methods
    use it (in this thread/context) until the block ends; the caches go with the session.
    """

    level = "word"

    def __init__(self, lm: NeuralLM, cache_bytes: int) -> None:
        self.lm = lm
        self.cache = _PrefixCache(cache_bytes)
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> NeuralSession:
        self._tokens.append(_ACTIVE.set(_ACTIVE.get() + (self,)))
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._tokens.pop())
        if not self._tokens:
            self.close()

    def close(self) -> None:
        """Drop the caches (the session stays usable; it just starts cold)."""
        self.cache.clear()

    def start(self) -> tuple[int, ...]:
        return self.lm.start()

    def contains(self, unit: str) -> bool:
        return self.lm.contains(unit)

    def score(self, state: LMState, unit: str) -> tuple[tuple[int, ...], float]:
        return self.lm._score_many([state], [unit], self.cache)[0]

    def score_many(
        self, states: Sequence[LMState], units: Sequence[str]
    ) -> list[tuple[tuple[int, ...], float]]:
        return self.lm._score_many(states, units, self.cache)

    def finish(self, state: LMState) -> float:
        return self.lm._finish_many([state], self.cache)[0]

    def finish_many(self, states: Sequence[LMState]) -> list[float]:
        return self.lm._finish_many(states, self.cache)

    def score_sentences(self, sentences: Sequence[Sequence[str]], *, eos: bool = True) -> list[float]:
        return self.lm.score_sentences(sentences, eos=eos)

    def score_sentence(self, units: Iterable[str], *, eos: bool = True) -> float:
        return self.lm.score_sentence(units, eos=eos)

"""Training data: a manifest's features in memory, and duration-bucketed batches.

:class:`FeatureSet` reads every utterance of a manifest once (``soundfile``), computes
its log-mel features and keeps them as float16 in one flat tensor; with ``cache_dir``
the result is stored on disk keyed by the manifest's content, so a resumed run starts
in seconds. Utterances whose audio cannot be read are skipped and listed in
``skipped`` with the reason.

:func:`make_batches` cuts an epoch into batches of similar-length utterances with a
cap on padded frames, deterministically from ``(seed, epoch)``: a resumed run rebuilds
the same epoch and skips the batches it has done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from fusion.am.features import CMVN, AudioError, CMVNAccumulator, LogMel, load_audio, spectral_shape
from fusion.core.manifest import ManifestError, Utterance, atomic_write, read_manifest
from fusion.core.tokens import TokenTable, TokenTableError

__all__ = ["Batch", "FeatureSet", "collate", "make_batches", "offsets_of"]

CACHE_VERSION = 2


@dataclass
class Batch:
    feats: torch.Tensor  # (B, T, F) float32, zero padded
    lengths: torch.Tensor  # (B,) valid frames
    indices: list[int]  # positions in the FeatureSet
    targets: torch.Tensor | None = None  # (sum of target lengths,) concatenated ids
    target_lengths: torch.Tensor | None = None  # (B,)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())


def offsets_of(lengths: torch.Tensor) -> torch.Tensor:
    """``(N + 1,)`` int64 offsets into a flat tensor of utterances of these frame counts."""
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return offsets


class FeatureSet:
    """Features (and token ids) of a manifest's utterances, held in memory.

    Attributes:
        ids, texts: per kept utterance.
        lengths: ``(N,)`` feature frames per utterance.
        skipped: ``(utt_id, reason)`` of utterances left out.
    """

    def __init__(self, ids: list[str], texts: list[str | None], feats: torch.Tensor,
                 offsets: torch.Tensor, skipped: list[tuple[str, str]] | None = None) -> None:
        self.ids = ids
        self.texts = texts
        self.flat = feats  # (sum T, F) float16
        self.offsets = offsets  # (N + 1,) int64
        self.lengths = offsets[1:] - offsets[:-1]  # (N,)
        self.skipped = skipped or []
        self._targets: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def total_seconds(self) -> float:
        return float(self.lengths.sum()) / 100.0

    def subset(self, indices: Sequence[int]) -> FeatureSet:
        """A new set of the utterances at ``indices`` (in that order); features are copied."""
        idx = [int(i) for i in indices]
        if any(not 0 <= i < len(self) for i in idx):
            raise IndexError(f"subset: indices must lie in [0, {len(self)})")
        chunks = [self.flat[int(self.offsets[i]): int(self.offsets[i + 1])] for i in idx]
        flat = torch.cat(chunks) if chunks else self.flat[:0].clone()
        return FeatureSet([self.ids[i] for i in idx], [self.texts[i] for i in idx], flat,
                          offsets_of(self.lengths[idx]))

    @classmethod
    def concat(cls, sets: Sequence[FeatureSet]) -> FeatureSet:
        """One set holding the utterances of ``sets``, in order (skipped lists joined; the
        token ids :meth:`targets` cached, when every set has them)."""
        if not sets:
            raise ValueError("concat: no feature sets given")
        joined = cls([i for fs in sets for i in fs.ids], [t for fs in sets for t in fs.texts],
                     torch.cat([fs.flat for fs in sets]),
                     offsets_of(torch.cat([fs.lengths for fs in sets])),
                     [s for fs in sets for s in fs.skipped])
        if all(fs._targets is not None for fs in sets):
            joined._targets = [t for fs in sets for t in fs._targets]  # type: ignore[union-attr]
        return joined

    def save(self, path: str | Path) -> None:
        """Write the set to ``path`` atomically (:meth:`load` reads it back)."""
        with atomic_write(path, "wb") as fh:
            torch.save({"ids": self.ids, "texts": self.texts, "feats": self.flat,
                        "offsets": self.offsets, "skipped": [list(s) for s in self.skipped]}, fh)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """A set that :meth:`save` wrote (plain data, loaded with ``weights_only=True``)."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(data["ids"], data["texts"], data["feats"], data["offsets"],
                   [tuple(s) for s in data["skipped"]])

    def features(self, i: int) -> torch.Tensor:
        return self.flat[int(self.offsets[i]): int(self.offsets[i + 1])].float()  # (T, F)

    @classmethod
    def from_manifest(cls, manifest: str | Path, *, require_text: bool = True,
                      cache_dir: str | Path | None = None, progress: bool = True,
                      max_utterances: int | None = None) -> FeatureSet:
        manifest = Path(manifest)
        utts = read_manifest(manifest, require=("audio", "text") if require_text else ("audio",))
        if max_utterances is not None:
            utts = utts[:max_utterances]
        cache = None
        if cache_dir is not None:
            h = hashlib.sha1(manifest.read_bytes())
            h.update(json.dumps([CACHE_VERSION, max_utterances, str(manifest.resolve())]).encode())
            cache = Path(cache_dir) / f"feats-{manifest.stem}-{h.hexdigest()[:16]}.pt"
            if cache.is_file():
                return cls.load(cache)
        fs = cls._compute(utts, progress=progress, desc=manifest.name)
        if cache is not None:
            fs.save(cache)
        return fs

    @classmethod
    def _compute(cls, utts: Sequence[Utterance], *, progress: bool, desc: str) -> FeatureSet:
        logmel = LogMel()
        ids: list[str] = []
        texts: list[str | None] = []
        chunks: list[torch.Tensor] = []
        offsets = [0]
        skipped: list[tuple[str, str]] = []
        for utt in tqdm(utts, desc=f"features {desc}", disable=not progress, mininterval=5):
            try:
                wav = load_audio(utt.audio, utt_id=utt.id)  # type: ignore[arg-type]
            except AudioError as exc:
                skipped.append((utt.id, exc.reason))
                continue
            f = logmel(torch.from_numpy(wav)).half()  # (T, F)
            ids.append(utt.id)
            texts.append(utt.text)
            chunks.append(f)
            offsets.append(offsets[-1] + f.shape[0])
        feats = torch.cat(chunks) if chunks else torch.zeros(0, logmel.n_mels, dtype=torch.float16)
        return cls(ids, texts, feats, torch.tensor(offsets, dtype=torch.int64), skipped)

    def cmvn(self) -> CMVN:
        """Global mean/std over every frame of the set."""
        acc = CMVNAccumulator(self.flat.shape[1])
        step = 200_000
        for start in range(0, self.flat.shape[0], step):
            acc.add(self.flat[start: start + step])
        return acc.finish()

    def spectral_shape_mean(self, max_utterances: int = 5000) -> torch.Tensor:
        """``(F,)`` mean :func:`~fusion.am.features.spectral_shape` of the set's utterances
        (of ``max_utterances`` spread evenly over it, when it has more): the reference a
        model with ``shape_norm`` moves every utterance's shape to."""
        if len(self) == 0:
            raise ValueError("spectral_shape_mean: the feature set is empty")
        step = max(1, -(-len(self) // max_utterances))
        shapes = [spectral_shape(self.features(i)[None])[0] for i in range(0, len(self), step)]
        return torch.stack(shapes).double().mean(0).float()

    def targets(self, table: TokenTable,
                encode: Callable[[str], list[int]] | None = None) -> list[list[int]]:
        """Token ids of every transcript, spelt by ``encode`` (subword units) or the
        table (characters); cached. Unknown characters raise."""
        if self._targets is None:
            out = []
            spell = encode or table.ids_from_text
            for utt_id, text in zip(self.ids, self.texts):
                try:
                    out.append(spell(text or ""))
                except TokenTableError as exc:
                    raise TokenTableError(f"utterance {utt_id!r}: {exc}") from None
            self._targets = out
        return self._targets

    def collate(self, indices: Sequence[int], table: TokenTable | None = None) -> Batch:
        return collate(self, indices, table)


def collate(fs: FeatureSet, indices: Sequence[int], table: TokenTable | None = None) -> Batch:
    """Pad the features of ``indices`` into a batch (with targets when ``table`` is given)."""
    lengths = fs.lengths[list(indices)]  # (B,)
    feats = torch.zeros(len(indices), int(lengths.max()), fs.flat.shape[1])  # (B, T, F)
    for b, i in enumerate(indices):
        feats[b, : int(lengths[b])] = fs.features(i)
    batch = Batch(feats, lengths.clone(), list(indices))
    if table is not None:
        targets = fs.targets(table)
        tl = [len(targets[i]) for i in indices]
        batch.targets = torch.tensor([t for i in indices for t in targets[i]], dtype=torch.long)
        batch.target_lengths = torch.tensor(tl, dtype=torch.long)
    return batch


def make_batches(lengths: Sequence[int] | torch.Tensor, *, max_frames: int, max_utterances: int,
                 seed: int, epoch: int, pool: int = 50, shuffle: bool = True) -> list[list[int]]:
    """Batches of indices for one epoch, deterministic in ``(seed, epoch)``.

    Utterances are shuffled, taken ``pool`` batches' worth at a time, sorted by length
    within the pool and cut greedily so ``len(batch) * longest <= max_frames`` (a
    single utterance longer than ``max_frames`` forms a batch of its own). Batch order
    is shuffled again. With ``shuffle=False`` the utterances are simply sorted by length.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    n = len(lengths)
    if n == 0:
        return []
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if shuffle:
        order = torch.randperm(n, generator=gen).tolist()
        mean_len = max(1.0, float(lengths.float().mean()))
        pool_size = max(1, int(pool * max(1, min(max_utterances, max_frames // mean_len))))
    else:
        order = list(range(n))
        pool_size = n
    batches: list[list[int]] = []
    for start in range(0, n, pool_size):
        chunk = sorted(order[start: start + pool_size], key=lambda i: (int(lengths[i]), i))
        current: list[int] = []
        longest = 0
        for i in chunk:
            li = int(lengths[i])
            if current and (max(longest, li) * (len(current) + 1) > max_frames
                            or len(current) >= max_utterances):
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, li)
        if current:
            batches.append(current)
    if shuffle:
        perm = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[p] for p in perm]
    return batches


def _refuse_shared_utterances(manifests: list[Path], sets: list[FeatureSet]) -> None:
    """Raise a ManifestError listing every utterance id that two shards share, per pair
    of manifests (the later one first), with up to three of the ids of each pair."""
    owner: dict[str, int] = {}
    shared: dict[tuple[int, int], list[str]] = {}
    for k, fs in enumerate(sets):
        for utt_id in [*fs.ids, *(i for i, _ in fs.skipped)]:
            first = owner.setdefault(utt_id, k)
            if first != k:
                shared.setdefault((k, first), []).append(utt_id)
    if shared:
        pairs = []
        for (k, first), ids in shared.items():
            shown = ", ".join(repr(i) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")
            noun = "utterance" if len(ids) == 1 else "utterances"
            pairs.append(f"{manifests[k]}: {len(ids)} {noun} also in {manifests[first]} ({shown})")
        raise ManifestError("; ".join(pairs) + ": a shard's utterances must be its own "
                            "(drop them from one of the manifests)")


def _check_repeats(repeats: Sequence[int] | None, n_manifests: int) -> list[int]:
    """``repeats`` checked against ``n_manifests`` (all 1 when ``None``)."""
    if repeats is None:
        return [1] * n_manifests
    repeats = list(repeats)
    if len(repeats) != n_manifests:
        raise ValueError(f"{len(repeats)} repeat count(s) for {n_manifests} training "
                         "manifest(s): give one per manifest")
    bad = [r for r in repeats
           if not isinstance(r, int) or isinstance(r, bool) or r < 1]
    if bad:
        raise ValueError(f"repeat counts must be whole numbers >= 1, got {bad}")
    return repeats


def load_feature_sets(
    train_manifest: str | Path | Sequence[str | Path],
    dev_manifest: str | Path | None,
    *,
    cache_dir: Path,
    require_text: bool = True,
    progress: bool = True,
    train_set: FeatureSet | None = None,
    dev_set: FeatureSet | None = None,
    repeats: Sequence[int] | None = None,
) -> tuple[FeatureSet, FeatureSet | None]:
    """The training and dev feature sets: those given, else read from the manifests.

    ``train_manifest`` may be several manifests (shards): each is read and cached on its
    own, so a new shard costs only its own features, and the set is their concatenation
    in the order given, as one manifest of their lines would be. An utterance id in two
    of them is an error that names both. ``repeats``, one whole number >= 1 per manifest,
    gives each shard's utterances that many times (an epoch then holds that shard that
    many times over: a weight for a small shard in a large mix). A :class:`FeatureSet`
    lays its utterances out end to end, so each repeat holds its own copy of the shard's
    features (about 230 MB per 4 h at 100 frames/s x 80 mels in float16).
    """
    if train_set is None:
        manifests = ([Path(train_manifest)] if isinstance(train_manifest, (str, Path))
                     else [Path(m) for m in train_manifest])
        if not manifests:
            raise ValueError("no training manifest given")
        repeats = _check_repeats(repeats, len(manifests))
        sets = [FeatureSet.from_manifest(m, require_text=require_text, cache_dir=cache_dir,
                                         progress=progress) for m in manifests]
        if len(sets) > 1:
            _refuse_shared_utterances(manifests, sets)
        skipped = [s for fs in sets for s in fs.skipped]
        sets = [fs for fs, n in zip(sets, repeats) for _ in range(n)]
        train_set = sets[0] if len(sets) == 1 else FeatureSet.concat(sets)
        train_set.skipped = skipped  # each once, however often its shard repeats
    elif repeats is not None:
        raise ValueError("repeats weight training manifests; a train_set given already "
                         "loaded takes none")
    if dev_set is None and dev_manifest is not None:
        dev_set = FeatureSet.from_manifest(dev_manifest, require_text=require_text,
                                           cache_dir=cache_dir, progress=progress)
    return train_set, dev_set

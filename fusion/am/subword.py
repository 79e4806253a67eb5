"""Subword units for the acoustic model: a sentencepiece model as a CTC token table.

The table is ``<blank>`` followed by the sentencepiece pieces in their own order (unit
``i + 1`` is piece ``i``), with ``boundary_style="prefix"``: a word starts with a ``▁``
piece, as sentencepiece spells it, so decoders, alignment and scoring work on it as on
any prefix table. Fewer units per second of speech than letters lets the encoder
subsample more (faster posteriors); each unit is rarer, so it wants more data.

The trained sentencepiece model travels inside the acoustic model's checkpoint (its
serialised bytes as a ``uint8`` tensor, loadable with ``weights_only=True``), so a
checkpoint alone can train on, resume and spell transcripts.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import torch

from fusion.core.tokens import TokenTable, TokenTableError

__all__ = ["BLANK", "SentencePieceUnits", "train_sentencepiece"]

BLANK = "<blank>"
MARK = "\u2581"  # sentencepiece's word-initial marker


class SentencePieceUnits:
    """A sentencepiece model and the CTC token table over its pieces."""

    def __init__(self, proto: bytes) -> None:
        self.proto = bytes(proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.proto)
        except (RuntimeError, OSError) as exc:
            raise TokenTableError(f"not a sentencepiece model: {exc}") from None
        pieces = [self._sp.IdToPiece(i) for i in range(self._sp.GetPieceSize())]
        self.table = TokenTable((BLANK, *pieces), blank_id=0, word_boundary=MARK,
                                boundary_style="prefix")

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceUnits:
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.proto)

    def encode(self, text: str) -> list[int]:
        """Unit ids of normalised text (its words split on whitespace)."""
        ids = [i + 1 for i in self._sp.EncodeAsIds(" ".join(text.split()))]
        if self._sp.unk_id() + 1 in ids:
            raise TokenTableError(f"{text!r} has characters the sentencepiece model does not know")
        return ids

    def to_tensor(self) -> torch.Tensor:
        """The model's bytes as a ``uint8`` tensor, for a checkpoint."""
        return torch.frombuffer(bytearray(self.proto), dtype=torch.uint8).clone()

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> SentencePieceUnits:
        return cls(tensor.numpy().tobytes())


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, model_type: str = "unigram",
                        seed_sentences: int = 1_000_000) -> SentencePieceUnits:
    """A sentencepiece model of ``vocab_size`` pieces learnt from normalised transcripts.

    Every character of the texts is covered (``character_coverage=1``), so no
    transcript needs ``<unk>``; one thread, so the same texts give the same model.
    """
    sentences = [" ".join(t.split()) for t in texts if t and t.strip()]
    if not sentences:
        raise ValueError("no transcripts to learn subword units from")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences), model_writer=out, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1,
            unk_id=0, num_threads=1, input_sentence_size=seed_sentences,
            shuffle_input_sentence=False, split_digits=True, minloglevel=2)
    except RuntimeError as exc:
        raise ValueError(f"sentencepiece training failed: {exc}") from None
    return SentencePieceUnits(out.getvalue())

"""The token table: what each output unit of an acoustic model means.

A CTC model emits one distribution per frame over ``V`` units. The table says which
index is the blank, which unit marks word boundaries and how pieces join into words.
Nothing is guessed from the spellings: a character table and a subword table differ in
``boundary_style``, stated by whoever builds the table.

``boundary_style="separate"``
    The boundary is a unit of its own between words (wav2vec2's ``|``):
    ``h i | t h e r e`` reads ``"hi there"``.
``boundary_style="prefix"``
    The boundary marker starts every word-initial piece (sentencepiece's ``▁``):
    ``▁hi ▁the re`` reads ``"hi there"``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["BoundaryStyle", "TokenTable", "TokenTableError", "character_table"]

BoundaryStyle = Literal["separate", "prefix"]
BOUNDARY_STYLES: tuple[BoundaryStyle, ...] = ("separate", "prefix")
FORMAT = "asrfuse-token-table"


class TokenTableError(ValueError):
    """A token table that is inconsistent, or text it cannot spell."""


@dataclass(frozen=True)
class TokenTable:
    """Immutable mapping between unit ids and their spellings.

    Args:
        tokens: spelling of every unit, index = unit id. Spellings are unique.
        blank_id: index of the CTC blank.
        word_boundary: spelling of the boundary unit (``separate``) or of the
            word-initial marker (``prefix``).
        boundary_style: ``"separate"`` or ``"prefix"`` (see the module docstring).
    """

    tokens: tuple[str, ...]
    blank_id: int
    word_boundary: str
    boundary_style: BoundaryStyle = "separate"
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if not tokens:
            raise TokenTableError("token table is empty")
        seen: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str) or tok == "":
                raise TokenTableError(f"token {i} is {tok!r}: every token must be a non-empty string")
            if tok in seen:
                raise TokenTableError(f"token {tok!r} appears twice (ids {seen[tok]} and {i})")
            seen[tok] = i
        if isinstance(self.blank_id, bool) or not isinstance(self.blank_id, int):
            raise TokenTableError(f"blank_id must be an int, got {self.blank_id!r}")
        if not 0 <= self.blank_id < len(tokens):
            raise TokenTableError(
                f"blank_id {self.blank_id} is outside the table of {len(tokens)} tokens"
            )
        if self.boundary_style not in BOUNDARY_STYLES:
            raise TokenTableError(
                f"boundary_style {self.boundary_style!r} is not one of {BOUNDARY_STYLES}"
            )
        if not self.word_boundary:
            raise TokenTableError("word_boundary must be a non-empty string")
        if self.boundary_style == "separate":
            if self.word_boundary not in seen:
                raise TokenTableError(
                    f"word boundary {self.word_boundary!r} is not a token of the table "
                    "(boundary_style='separate' needs it as a unit of its own)"
                )
            if seen[self.word_boundary] == self.blank_id:
                raise TokenTableError("the word boundary and the blank must be different units")
        elif not any(t.startswith(self.word_boundary) for t in tokens):
            raise TokenTableError(
                f"no token starts with the word-boundary marker {self.word_boundary!r} "
                "(boundary_style='prefix' marks word-initial pieces with it)"
            )
        object.__setattr__(self, "_index", seen)

    # -- lookup -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def blank(self) -> str:
        return self.tokens[self.blank_id]

    @property
    def boundary_id(self) -> int | None:
        """Id of the boundary unit for ``separate`` tables, ``None`` for ``prefix`` ones."""
        return self._index[self.word_boundary] if self.boundary_style == "separate" else None

    def id_of(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise TokenTableError(f"{token!r} is not a token of this table") from None

    def starts_word(self, token_id: int) -> bool:
        """Whether unit ``token_id`` begins a new word (``prefix`` tables only mark this)."""
        return self.boundary_style == "prefix" and self.tokens[token_id].startswith(
            self.word_boundary
        )

    # -- text <-> ids -----------------------------------------------------------------
    def words_from_ids(self, ids: Iterable[int]) -> list[list[int]]:
        """Group a blank-free sequence of unit ids into words (lists of ids).

        Boundary units (``separate``) are dropped; empty words are never returned.
        """
        words: list[list[int]] = []
        current: list[int] = []
        boundary_id = self.boundary_id
        for i in ids:
            if i == self.blank_id:
                raise TokenTableError("blank found in a collapsed token sequence")
            if i == boundary_id or (boundary_id is None and self.starts_word(i)):
                if current:
                    words.append(current)
                current = [] if i == boundary_id else [i]
            else:
                current.append(i)
        if current:
            words.append(current)
        return words

    def word_text(self, ids: Sequence[int]) -> str:
        """Spelling of one word given its unit ids."""
        text = "".join(map(self.tokens.__getitem__, ids))
        return text.replace(self.word_boundary, "") if self.boundary_style == "prefix" else text

    def text_from_ids(self, ids: Iterable[int]) -> str:
        """Text of a blank-free unit sequence, words joined by single spaces."""
        return " ".join(self.word_text(w) for w in self.words_from_ids(ids))

    def ids_from_text(self, text: str) -> list[int]:
        """Spell normalised text as unit ids (``separate`` tables of single characters).

        Words are split on whitespace and joined by the boundary unit. Subword tables
        need their tokenizer (sentencepiece) to spell text and raise here.
        """
        if self.boundary_style != "separate":
            raise TokenTableError(
                "a prefix (subword) table cannot spell text by itself: use its tokenizer"
            )
        ids: list[int] = []
        for w, word in enumerate(text.split()):
            if w:
                ids.append(self.boundary_id)  # type: ignore[arg-type]
            for ch in word:
                if ch not in self._index or self._index[ch] == self.blank_id:
                    raise TokenTableError(f"character {ch!r} in {word!r} is not in the token table")
                ids.append(self._index[ch])
        return ids

    # -- files ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "tokens": list(self.tokens),
            "blank_id": self.blank_id,
            "word_boundary": self.word_boundary,
            "boundary_style": self.boundary_style,
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "token table") -> TokenTable:
        if not isinstance(data, dict):
            raise TokenTableError(f"{source}: expected a JSON object")
        missing = [k for k in ("tokens", "blank_id", "word_boundary") if k not in data]
        if missing:
            raise TokenTableError(f"{source}: missing key(s) {', '.join(missing)}")
        unknown = set(data) - {"format", "tokens", "blank_id", "word_boundary", "boundary_style"}
        if unknown:
            raise TokenTableError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            return cls(
                tokens=tuple(data["tokens"]),
                blank_id=data["blank_id"],
                word_boundary=data["word_boundary"],
                boundary_style=data.get("boundary_style", "separate"),
            )
        except TokenTableError as exc:
            raise TokenTableError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenTableError(f"{path}: cannot read token table: {exc}") from None
        return cls.from_dict(data, source=str(path))


def character_table() -> TokenTable:
    """The default character table: blank, ``|``, ``a``-``z``, apostrophe (29 units)."""
    return TokenTable(
        tokens=("<blank>", "|", *string.ascii_lowercase, "'"),
        blank_id=0,
        word_boundary="|",
        boundary_style="separate",
    )

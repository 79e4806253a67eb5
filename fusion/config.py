"""Decoding configuration as data: TOML or JSON files, never executed.

A file has up to four tables; every key is optional and unknown keys are errors::

    [search]                 # fusion.decoder.SearchOptions
    beam_size = 32
    nbest = 1
    beam_threshold = 25.0
    token_top_k = 16
    token_min_logprob = -12.0
    blank_skip = 0.999       # or false to disable
    engine = "auto"          # "compiled" (C++), "python", or auto: C++ when it knows every scorer

    [weights]                # one per scorer in use; acoustic defaults to 1
    lm = 0.5
    word_bonus = 1.0
    oov = 5.0                # unknown-word penalty: per word outside the LM's words
    hotwords = 2.0

    [lm]
    path = "lm/word-4gram.bin"
    vocab = "lm/word-4gram.arpa"   # words for partial-word scoring (optional)

    [hotwords]
    path = "hotwords.txt"

    [lexicon]
    path = "words.txt"

    [rescore]                # N-best rescoring after the first pass (needs nbest > 1)
    nlm = "default"          # neural LM: "default" (the embedded one) or a checkpoint
    hmm = "hmm.json"         # duration model for the HMM alignment score (fusion tune)

    [rescore.weights]        # one per score: acoustic, first-pass scorers, nlm, hmm
    acoustic = 1.0
    lm = 0.4
    word_bonus = 1.5
    nlm = 0.3
    hmm = 0.1

Relative paths resolve against the file's folder. Command-line flags override the file.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fusion.decoder import SearchOptions

__all__ = ["ConfigError", "DecodeConfig"]

_TABLES = {"search", "weights", "lm", "hotwords", "lexicon", "rescore"}
_PATH_KEYS = {"lm": {"path", "vocab"}, "hotwords": {"path"}, "lexicon": {"path"}}


class ConfigError(ValueError):
    """A configuration file that is unreadable or holds unknown or ill-typed keys."""


@dataclass(frozen=True)
class DecodeConfig:
    search: SearchOptions = SearchOptions()
    weights: dict[str, float] = field(default_factory=dict)
    lm: Path | None = None
    lm_vocab: Path | None = None
    hotwords: Path | None = None
    lexicon: Path | None = None
    rescore_weights: dict[str, float] | None = None  # None: no rescoring
    rescore_nlm: str | Path | None = None  # "default" or a checkpoint
    rescore_hmm: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> DecodeConfig:
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = tomllib.loads(raw.decode("utf-8")) if path.suffix == ".toml" else json.loads(raw)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        return cls.from_dict(data, base=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: Path = Path("."),
                  source: str = "config") -> DecodeConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table at the top level")
        unknown = set(data) - _TABLES
        if unknown:
            raise ConfigError(f"{source}: unknown table(s) {sorted(unknown)}; "
                              f"known: {sorted(_TABLES)}")
        for name, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [{name}] must be a table")
        search = data.get("search", {})
        known = {f.name for f in fields(SearchOptions)}
        bad = set(search) - known
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in [search]; "
                              f"known: {sorted(known)}")
        if search.get("blank_skip") is False:
            search = {**search, "blank_skip": None}
        try:
            options = SearchOptions(**search)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: [search]: {exc}") from None
        weights = _numbers(data.get("weights", {}), "[weights]", source)
        rescore = dict(data.get("rescore", {}))
        bad = set(rescore) - {"nlm", "hmm", "weights"}
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in [rescore]; "
                              "known: ['hmm', 'nlm', 'weights']")
        if rescore and not isinstance(rescore.get("weights"), dict):
            raise ConfigError(f"{source}: [rescore] needs a [rescore.weights] table")
        for key in ("nlm", "hmm"):
            if key in rescore and not isinstance(rescore[key], str):
                raise ConfigError(f"{source}: [rescore] {key} must be a path string")
        nlm = rescore.get("nlm")
        paths: dict[str, Path | None] = {}
        for table, keys in _PATH_KEYS.items():
            section = data.get(table, {})
            bad = set(section) - keys
            if bad:
                raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in [{table}]")
            for key in keys:
                value = section.get(key)
                if value is not None and not isinstance(value, str):
                    raise ConfigError(f"{source}: [{table}] {key} must be a path string")
                paths[f"{table}_{key}"] = (base / value) if value else None
        return cls(search=options, weights=weights,
                   lm=paths["lm_path"], lm_vocab=paths["lm_vocab"],
                   hotwords=paths["hotwords_path"], lexicon=paths["lexicon_path"],
                   rescore_weights=(_numbers(rescore["weights"], "[rescore.weights]", source)
                                    if rescore else None),
                   rescore_nlm=(nlm if nlm in (None, "default") else base / nlm),
                   rescore_hmm=base / rescore["hmm"] if rescore.get("hmm") else None)

    def with_overrides(self, *, search: dict[str, Any] | None = None,
                       weights: dict[str, float] | None = None, **paths: Path | None
                       ) -> DecodeConfig:
        """A copy with the given (non-``None``) values replacing the file's."""
        search = {k: v for k, v in (search or {}).items() if v is not None}
        weights = {k: v for k, v in (weights or {}).items() if v is not None}
        paths = {k: v for k, v in paths.items() if v is not None}
        try:
            options = replace(self.search, **search)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return replace(self, search=options, weights={**self.weights, **weights}, **paths)


def _numbers(table: Any, name: str, source: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {name} must be a table")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name} {key} must be a number, got {value!r}")
    return {k: float(v) for k, v in table.items()}

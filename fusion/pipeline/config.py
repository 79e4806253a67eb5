"""Decoding configuration as data: TOML or JSON files, never executed.

:class:`DecodeConfig` is the whole decoding pipeline as data: search options, weights, the
LM, lexicon and hotword files, N-best rescoring. Its defaults (:mod:`fusion.core.defaults`) are
the default pipeline: beam search with the embedded word 3-gram at its tuned weights.
:func:`fusion.pipeline.build.build_decoder` turns one into a decoder.

A file has up to six tables; every key is optional (what a file leaves out keeps its
default) and unknown keys are errors::

    [search]                 # fusion.decoder.options.SearchOptions, and the search to run
    decoder = "beam"         # or "pyctcdecode" (its own search, with our scorers as its LM)
    beam_size = 32
    nbest = 1
    beam_threshold = 25.0
    token_top_k = 16
    token_min_logprob = -12.0
    blank_skip = 0.999       # or false to disable

    [weights]                # scorers in use without one get fusion.core.defaults' weights
                             # (lm 0.6, word_bonus 1.5, lexicon 1, hotwords 2); acoustic 1
    lm = 0.5
    word_bonus = 1.0
    oov = 5.0                # unknown-word penalty: per word outside the LM's words
    hotwords = 2.0

    [lm]                     # default: the embedded word 3-gram
    path = "lm/word-4gram.bin"     # or "none": no LM
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
Rules between settings (an unknown-word weight needs an LM, rescoring an N-best list, ...)
are checked in one place, :meth:`DecodeConfig.validate`; the rule that weights name exactly
the scores is :func:`fusion.decoder.scorers.check_weights`.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fusion.core.defaults import ACOUSTIC, DECODERS, DEFAULT_LM, DEFAULT_WEIGHTS, NO_LM, OOV
from fusion.decoder.options import SearchOptions

__all__ = ["ConfigError", "DecodeConfig"]

_TABLES = {"search", "weights", "lm", "hotwords", "lexicon", "rescore"}
_PATH_KEYS = {"lm": {"path", "vocab"}, "hotwords": {"path"}, "lexicon": {"path"}}


class ConfigError(ValueError):
    """A configuration that is unreadable, holds unknown or ill-typed keys, or whose
    settings contradict each other."""


def _lm_path(value: str | Path | None) -> Path | None:
    """``--lm`` / ``[lm] path``: ``"none"`` means no LM."""
    return None if value is None or str(value) == NO_LM else Path(value)


@dataclass(frozen=True)
class DecodeConfig:
    """The decoding pipeline as data; the defaults are the default pipeline.

    Attributes:
        decoder: the first-pass search, one of :data:`fusion.core.defaults.DECODERS`.
        search: beam-search settings (:class:`~fusion.decoder.options.SearchOptions`; the
            pyctcdecode search takes its ``beam_size`` and ``nbest``).
        weights: weights given explicitly, by score name; a scorer in use without one
            gets :data:`fusion.core.defaults.DEFAULT_WEIGHTS`' (see :meth:`weights_for`). A
            weight ``oov`` adds the unknown-word scorer.
        lm: word n-gram (ARPA, ARPA.gz or KenLM binary); ``None``: no LM.
        lm_vocab: the LM's words for partial-word scoring (default: the ARPA itself, or
            ``vocab.txt`` beside a binary).
        hotwords: phrases to bias towards, one a line, optionally TAB and a weight.
        lexicon: a word list; the output keeps to its words.
        rescore_weights: N-best rescoring weights by score name; ``None``: no rescoring.
        rescore_nlm: the rescoring neural LM: ``"default"`` (the embedded one) or a
            checkpoint.
        rescore_hmm: the duration HMM of the alignment score (``fusion tune`` writes one).
    """

    decoder: str = "beam"
    search: SearchOptions = SearchOptions()
    weights: dict[str, float] = field(default_factory=dict)
    lm: Path | None = DEFAULT_LM
    lm_vocab: Path | None = None
    hotwords: Path | None = None
    lexicon: Path | None = None
    rescore_weights: dict[str, float] | None = None  # None: no rescoring
    rescore_nlm: str | Path | None = None  # "default" or a checkpoint
    rescore_hmm: Path | None = None

    @classmethod
    def default(cls) -> DecodeConfig:
        """The default pipeline (``fusion demo``, ``fusion decode --decoder beam``,
        ``fusion transcribe``): beam search with the embedded word 3-gram at the default
        weights."""
        return cls()

    # -- rules ----------------------------------------------------------------------------
    def validate(self) -> DecodeConfig:
        """Check the rules between settings (each one here, nowhere else); returns
        ``self``. :func:`fusion.pipeline.build.build_decoder` calls it, so a config edited
        step by step (a file, then flags) is checked once, whole.

        Raises:
            ConfigError: naming the settings that disagree.
        """
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        for name, weight in {**self.weights, **(self.rescore_weights or {})}.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                    or not math.isfinite(weight):
                raise ConfigError(f"weight {name!r} is {weight}: weights must be finite numbers")
        if self.lm is None:
            if OOV in self.weights:
                raise ConfigError("an unknown-word penalty (--oov-penalty, [weights] oov) needs an LM")
            if self.lm_vocab is not None:
                raise ConfigError("the LM's words (--lm-vocab, [lm] vocab) need an LM (--lm)")
        if self.decoder == "pyctcdecode":
            if self.weights.get(ACOUSTIC, 1.0) != 1.0:
                raise ConfigError("pyctcdecode's search weighs the acoustic score 1: no "
                                  "[weights] acoustic with decoder 'pyctcdecode'")
        if self.rescore_weights is None:
            if self.rescore_nlm is not None or self.rescore_hmm is not None:
                raise ConfigError("[rescore] nlm and hmm need [rescore.weights]")
        elif self.search.nbest < 2:
            raise ConfigError("[rescore] needs an N-best list: set [search] nbest (or --nbest) "
                              "to 2 or more")
        return self

    def weights_for(self, names: Iterable[str]) -> dict[str, float]:
        """The weights of a decoder whose scorers are ``names``: the default weight of
        each that the config gives none, then the config's own."""
        return {**{n: DEFAULT_WEIGHTS[n] for n in names if n in DEFAULT_WEIGHTS},
                **{k: float(v) for k, v in self.weights.items()}}

    # -- files ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> DecodeConfig:
        """A TOML (``.toml``) or JSON file; what it leaves out keeps its default."""
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
        """A config from tables as a file holds them (see the module doc); relative paths
        resolve against ``base``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table at the top level")
        unknown = set(data) - _TABLES
        if unknown:
            raise ConfigError(f"{source}: unknown table(s) {sorted(unknown)}; "
                              f"known: {sorted(_TABLES)}")
        for name, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [{name}] must be a table")
        search = dict(data.get("search", {}))
        decoder = search.pop("decoder", cls.decoder)
        if decoder not in DECODERS:
            raise ConfigError(f"{source}: [search] decoder must be one of {DECODERS}, "
                              f"got {decoder!r}")
        known = {f.name for f in fields(SearchOptions)}
        bad = set(search) - known
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in [search]; "
                              f"known: {sorted(known | {'decoder'})}")
        if search.get("blank_skip") is False:
            search["blank_skip"] = None
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
        lm_table = data.get("lm", {})
        lm = (cls.lm if "path" not in lm_table
              else None if _lm_path(lm_table["path"]) is None else paths["lm_path"])
        return cls(decoder=decoder, search=options, weights=weights,
                   lm=lm, lm_vocab=paths["lm_vocab"],
                   hotwords=paths["hotwords_path"], lexicon=paths["lexicon_path"],
                   rescore_weights=(_numbers(rescore["weights"], "[rescore.weights]", source)
                                    if rescore else None),
                   rescore_nlm=(nlm if nlm in (None, "default") else base / nlm),
                   rescore_hmm=base / rescore["hmm"] if rescore.get("hmm") else None)

    def to_dict(self) -> dict[str, Any]:
        """The config as the tables of a file (paths as strings; ``from_dict`` reads it
        back equal), e.g. to record what a run decoded with."""
        search = {"decoder": self.decoder, **asdict(self.search)}
        if search["blank_skip"] is None:
            search["blank_skip"] = False
        out: dict[str, Any] = {"search": search, "weights": dict(self.weights),
                               "lm": {"path": str(self.lm) if self.lm is not None else NO_LM}}
        if self.lm_vocab is not None:
            out["lm"]["vocab"] = str(self.lm_vocab)
        if self.hotwords is not None:
            out["hotwords"] = {"path": str(self.hotwords)}
        if self.lexicon is not None:
            out["lexicon"] = {"path": str(self.lexicon)}
        if self.rescore_weights is not None:
            rescore: dict[str, Any] = {"weights": dict(self.rescore_weights)}
            if self.rescore_nlm is not None:
                rescore["nlm"] = str(self.rescore_nlm)
            if self.rescore_hmm is not None:
                rescore["hmm"] = str(self.rescore_hmm)
            out["rescore"] = rescore
        return out

    def with_overrides(self, *, decoder: str | None = None, search: dict[str, Any] | None = None,
                       weights: dict[str, float] | None = None, lm: str | Path | None = None,
                       **paths: Path | None) -> DecodeConfig:
        """A copy with the given (non-``None``) values replacing the file's; ``lm="none"``
        drops the LM (and its vocabulary)."""
        search = {k: v for k, v in (search or {}).items() if v is not None}
        weights = {k: v for k, v in (weights or {}).items() if v is not None}
        paths = {k: v for k, v in paths.items() if v is not None}
        try:
            options = replace(self.search, **search)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        config = replace(self, search=options, weights={**self.weights, **weights}, **paths)
        if decoder is not None:
            config = replace(config, decoder=decoder)
        if lm is not None:
            path = _lm_path(lm)
            # a file's vocabulary goes with its LM; one given with "none" is an error
            keep = path is not None or "lm_vocab" in paths
            config = replace(config, lm=path, **({} if keep else {"lm_vocab": None}))
        return config


def _numbers(table: Any, name: str, source: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {name} must be a table")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name} {key} must be a number, got {value!r}")
    return {k: float(v) for k, v in table.items()}

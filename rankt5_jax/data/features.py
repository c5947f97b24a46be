"""FiT5's ranking feature: the first-stage score written into the input as text.

Fusion-in-T5 (Yu et al., 2023) gives the re-ranker each candidate's retrieval score as a word of
its input, `Query: {q} Title: {t} Feature: {f} Passage: {d} Relevant:`. The score is min-max
normalised to [0, 1] and kept to two decimals: `f` is an integer in [0, 100].

  FeatureConfig(mode="fixed", low=165, high=190)   the paper: coCondenser scores clipped to
                                                   [165, 190] (one range for every query)
  FeatureConfig(mode="per_query")                  min and max of each query's candidates (the
                                                   default: it fits any first stage)
  FeatureConfig(mode="none")                       no feature: the template without its `{f}`
                                                   part (the paper's first training stage)

Discretisation is `floor(100 * x)` for the normalised `x` (the paper's "two decimals"; the
authors' code truncates with `int()`), computed with a 1e-9 tolerance so that a score that is
exactly on a hundredth (0.29) gives 29, not the 28 that `int(0.29 * 100)` gives in floating point.
Clipping is on both sides. Equal scores get equal features; a per-query list whose scores are all
equal (max = min) gets 100 for every candidate (each one is the list's best). Scores must be
finite.

`FeatureTemplate` builds the inputs from tokens, as `vocab.InputTemplate` does: every part of the
template is encoded on its own, so truncation is exact. The document is cut first, then the
title; the query is cut only beyond `max_query_length`; the literal words, the feature and EOS are
always kept.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rankt5_jax.errors import ConfigError

MODES = ("fixed", "per_query", "none")
FIT5_TEMPLATE = "Query: {q} Title: {t} Feature: {f} Passage: {d} Relevant:"
_FIELDS = ("q", "t", "f", "d")
_FIELD = re.compile(r"\{(\w*)\}")
_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """How first-stage scores become the template's feature, and the template itself.

    Attributes:
      mode: "fixed" (normalise over [low, high], clipping), "per_query" (over each query's
        candidates) or "none" (no feature; the template's `{f}` part is left out).
      low, high: the fixed range (the paper: 165 and 190 for coCondenser).
      template: the input text with the fields `{q}` (query), `{t}` (title), `{f}` (feature) and
        `{d}` (document text); `{q}` and `{d}` are required.
      added_tokens: words of the template that are one token id each, outside the
        SentencePiece model (the authors' `[CLS]`, id 32100: `{"[CLS]": 32100}`).
    """

    mode: str = "per_query"
    low: float = 165.0
    high: float = 190.0
    template: str = FIT5_TEMPLATE
    added_tokens: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(
            self, "added_tokens", {str(k): int(v) for k, v in dict(self.added_tokens).items()}
        )
        if self.mode not in MODES:
            raise ConfigError(f"feature mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.mode == "fixed" and not (
            math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low
        ):
            raise ConfigError(
                f"the fixed feature range needs finite low < high; got [{self.low}, {self.high}]"
            )
        fields = _FIELD.findall(self.template)
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown or len(fields) != len(set(fields)) or not {"q", "d"} <= set(fields):
            raise ConfigError(
                f"feature template {self.template!r}: fields must be some of "
                "{q} {t} {f} {d}, each at most once, with {q} and {d}"
            )
        if self.mode != "none" and "f" not in fields:
            raise ConfigError(
                f"feature template {self.template!r} has no {{f}} but the feature mode is "
                f"{self.mode!r}"
            )

    @property
    def uses_features(self) -> bool:
        return self.mode != "none"

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), added_tokens=dict(self.added_tokens))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | FeatureConfig | None) -> FeatureConfig:
        if values is None:
            return cls()
        if isinstance(values, FeatureConfig):
            return values
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown feature settings {unknown}; known: {sorted(known)}")
        return cls(**values)


def discretise(scores: Sequence[float], config: FeatureConfig) -> list[int]:
    """First-stage scores of one query's candidates -> integer features in [0, 100]."""
    values = np.asarray(scores, np.float64)
    if values.ndim != 1:
        raise ConfigError(f"scores must be one list, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ConfigError(f"first-stage score {values[bad]} of candidate {bad} is not finite")
    if not config.uses_features:
        return [0] * len(values)
    if config.mode == "fixed":
        low, high = config.low, config.high
    elif len(values):
        low, high = float(values.min()), float(values.max())
    else:
        return []
    if high <= low:  # a per-query list of equal scores: every candidate is the best
        return [100] * len(values)
    normed = (np.clip(values, low, high) - low) / (high - low)
    return [int(v) for v in np.floor(normed * 100.0 + _TOLERANCE).clip(0, 100)]


def _parts(config: FeatureConfig) -> list[tuple[str, str]]:
    """The template as `(kind, text)` parts, `("text", literal)` or `("field", name)`; with mode
    "none" the `{f}` field and the label right before it (`Feature:`) are left out."""
    parts: list[tuple[str, str]] = []
    position = 0
    for match in _FIELD.finditer(config.template):
        literal = config.template[position : match.start()].strip()
        if literal:
            parts.append(("text", literal))
        if match.group(1) == "f" and not config.uses_features:
            if parts and parts[-1][0] == "text":
                parts.pop()
        else:
            parts.append(("field", match.group(1)))
        position = match.end()
    tail = config.template[position:].strip()
    if tail:
        parts.append(("text", tail))
    return parts


class FeatureTemplate:
    """FiT5's input, `Query: {q} Title: {t} Feature: {f} Passage: {d} Relevant:` + EOS, built
    from tokens (see the module docstring for what is cut first).

    Args:
      vocab: the vocabulary (anything with `encode`, `encode_batch`, `eos_id`).
      config: the feature settings (mode, range, template).
      max_length: total tokens including EOS.
      max_query_length: tokens kept of the query text.
    """

    def __init__(
        self, vocab: Any, config: FeatureConfig, max_length: int = 512, max_query_length: int = 64
    ):
        self.vocab = vocab
        self.config = config
        self.max_length = max_length
        self.max_query_length = max_query_length
        # The template in order: ("text", encoded words) or ("field", "q" | "t" | "f" | "d").
        self.parts = [
            (kind, self._encode_words(text) if kind == "text" else text)
            for kind, text in _parts(config)
        ]
        self.fields = {value for kind, value in self.parts if kind == "field"}
        fixed = sum(len(ids) for kind, ids in self.parts if kind == "text")
        # Fixed words, a 3-token feature, EOS and one document token must fit.
        if max_length < fixed + 3 * int(config.uses_features) + 2:
            raise ConfigError(
                f"max_length={max_length} leaves no room for the template {config.template!r}"
            )

    def _encode_words(self, text: str) -> list[int]:
        """A literal part of the template; its added tokens (`[CLS]`) become their ids."""
        added = self.config.added_tokens
        if not added:
            return self.vocab.encode(text)
        pattern = "(" + "|".join(re.escape(token) for token in added) + ")"
        ids: list[int] = []
        for piece in re.split(pattern, text):
            if piece in added:
                ids.append(added[piece])
            elif piece.strip():
                ids.extend(self.vocab.encode(piece.strip()))
        return ids

    def features(self, scores: Sequence[float]) -> list[int]:
        return discretise(scores, self.config)

    def query_tokens(self, query: str) -> list[int]:
        return self.vocab.encode(query)[: self.max_query_length]

    def join(
        self,
        query_ids: Sequence[int],
        doc_ids: Sequence[int],
        title_ids: Sequence[int] = (),
        feature: int | None = None,
    ) -> list[int]:
        """One input from encoded parts: the document is cut first, then the title."""
        if self.config.uses_features and feature is None:
            raise ConfigError("this template needs a feature for every candidate")
        feature_ids = self.vocab.encode(str(feature)) if self.config.uses_features else []
        fixed = sum(len(value) for kind, value in self.parts if kind == "text")
        spare = self.max_length - fixed - len(feature_ids) - 1  # EOS
        # Space goes to the query, then the title, then the document: the document is cut first.
        fields = {"f": feature_ids}
        for name, ids in (("q", query_ids), ("t", title_ids), ("d", doc_ids)):
            # A field the template does not have (a template without `{t}`) takes no space.
            fields[name] = list(ids[: max(spare, 0)]) if name in self.fields else []
            spare -= len(fields[name])
        tokens: list[int] = []
        for kind, value in self.parts:
            tokens.extend(value if kind == "text" else fields[value])
        tokens.append(self.vocab.eos_id)
        return tokens

    def encode_list(
        self,
        query: str,
        docs: Sequence[str],
        titles: Sequence[str] | None = None,
        scores: Sequence[float] | None = None,
    ) -> list[list[int]]:
        """One query's candidates, with their titles and first-stage scores."""
        if self.config.uses_features and scores is None:
            raise ConfigError(
                "this model reads the first-stage scores as a feature: pass features= / scores"
            )
        if scores is not None and len(scores) != len(docs):
            raise ConfigError(f"{len(scores)} scores for {len(docs)} documents")
        if titles is not None and len(titles) != len(docs):
            raise ConfigError(f"{len(titles)} titles for {len(docs)} documents")
        features = self.features(scores) if scores is not None else [None] * len(docs)
        query_ids = self.query_tokens(query)
        doc_ids = self.vocab.encode_batch(list(docs))
        title_ids = self.vocab.encode_batch(list(titles)) if titles else [[] for _ in docs]
        return [
            self.join(query_ids, d, t, f if self.config.uses_features else None)
            for d, t, f in zip(doc_ids, title_ids, features)
        ]

    def text(self, query: str, doc: str, title: str = "", feature: int | None = None) -> str:
        """The untruncated input as text (what `join` encodes, before EOS)."""
        values = {"q": query, "t": title, "f": "" if feature is None else str(feature), "d": doc}
        words = [value if kind == "text" else values[value] for kind, value in _parts(self.config)]
        return " ".join(w for w in words if w)

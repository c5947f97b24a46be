"""The one table of model variants: name -> model class (and a line for `--help`).

Every place that switches on a variant reads this table: `make_model` (gin), `build_model`
(rebuilding a saved model), `Ranker.load` (specs of Hugging Face and T5X checkpoints), the
checkpoint converters (HF architecture, score head) and the CLI's `--variant` choices. What a
variant is (its options and defaults, token ids, input template, list-awareness, HF layout) is
declared once, in its family's config dataclass (`base.FamilyConfig`, the model class's
`Config`); the row's other attributes are read from there. A new model family is one module (a
config dataclass and a model class) plus one `Variant(...)` line here, or a `register(...)` call.

The table names classes by import path and resolves them on use, so importing it (the CLI does, to
list the choices) does not import JAX.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from rankt5_jax.errors import ConfigError

SCORE_TOKEN = "<extra_id_10>"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One model variant.

    Attributes:
      name: the variant's name in specs, gin (`trainer.make_model.variant`) and `--variant`.
      model_class: `module:Class` of its `BaseRankingModel` subclass (or the class itself).
      description: one line for `--help` and docs.

    Read from the model class's config dataclass (`Config`): `token_ids` (spec keys filled
    from the vocabulary, `(key, token)`; the token None stands for the configurable score
    token), `hf_architecture`, `score_head`, `global_layers` and `list_aware`.
    """

    name: str
    model_class: str | type
    description: str

    def load_class(self) -> type:
        if isinstance(self.model_class, type):
            cls = self.model_class
        else:
            module, _, name = self.model_class.partition(":")
            cls = getattr(importlib.import_module(module), name)
        if cls.variant != self.name:
            raise ConfigError(f"variant {self.name!r} names {cls.__name__}, of {cls.variant!r}")
        return cls

    @property
    def config_class(self) -> type:
        """The family's config dataclass (`base.FamilyConfig`)."""
        return self.load_class().Config

    @property
    def token_ids(self) -> tuple[tuple[str, str | None], ...]:
        return self.config_class.token_fields()

    @property
    def hf_architecture(self) -> str:
        return self.config_class.hf_architecture

    @property
    def score_head(self) -> bool:
        return self.config_class.score_head

    @property
    def global_layers(self) -> int:
        return self.config_class.global_layers

    @property
    def list_aware(self) -> bool:
        """Scores a query's candidates together (FiT5): lists are never split across calls."""
        return self.config_class.list_aware

    def spec_token_ids(self, vocab: Any, score_token: str = SCORE_TOKEN) -> dict[str, int]:
        """The spec's token ids, looked up in `vocab` (anything with `token_id(str) -> int`)."""
        return {
            key: vocab.token_id(score_token if token is None else token)
            for key, token in self.token_ids
        }


VARIANTS: dict[str, Variant] = {}
NAMES: tuple[str, ...] = ()


def register(variant: Variant) -> Variant:
    """Adds a variant to the table (a family outside the package: tests, plugins). Its name
    must be new; `NAMES` and the CLI's choices built afterwards include it."""
    global NAMES
    if variant.name in VARIANTS:
        raise ConfigError(f"variant {variant.name!r} is already registered")
    VARIANTS[variant.name] = variant
    NAMES = tuple(VARIANTS)
    return variant


def unregister(name: str) -> None:
    """Removes a variant added with `register` (tests)."""
    global NAMES
    VARIANTS.pop(name, None)
    NAMES = tuple(VARIANTS)


_M = "rankt5_jax.modeling"

for _row in (
    Variant(
        "encdec",
        f"{_M}.rankt5:RankT5EncDec",
        "RankT5-EncDec: decoder step-0 logit of <extra_id_10>",
    ),
    Variant("enc", f"{_M}.rankt5:RankT5Enc", "RankT5-Enc: Dense(Pool(Encoder))"),
    Variant(
        "monot5",
        f"{_M}.monot5:MonoT5",
        'monoT5: log-probability of "true" against "false" at decoder step 0',
    ),
    Variant(
        "fit5",
        f"{_M}.fit5:FiT5",
        "FiT5: global attention across the list, feature in the template, monoT5 output",
    ),
    Variant(
        "fit5_encdec",
        f"{_M}.fit5:FiT5EncDec",
        "FiT5 encoder with the RankT5-EncDec head (<extra_id_10> logit)",
    ),
    Variant(
        "fit5_enc",
        f"{_M}.fit5:FiT5Enc",
        "FiT5 encoder with the RankT5-Enc head (Dense(Pool(Encoder)))",
    ),
):
    register(_row)


def get(name: str | None) -> Variant:
    """The variant called `name`; a `ConfigError` listing the known names otherwise."""
    if name not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(NAMES)}; got {name!r}")
    return VARIANTS[name]


def make_spec(variant: str, config: Any, vocab: Any, score_token: str = SCORE_TOKEN) -> dict:
    """The spec of a new `variant` model over `config`: its token ids looked up in `vocab`, and
    the values a new spec records (monoT5's published template)."""
    entry = get(variant)
    return {
        "variant": variant,
        "t5": config,
        **entry.spec_token_ids(vocab, score_token),
        **entry.config_class.new_spec_values(),
    }


def build_model(spec: Mapping[str, Any]):
    """Rebuilds a model from its spec (`BaseRankingModel.spec()`, or `make_spec` + loss keys)."""
    return get(spec.get("variant")).load_class().from_spec(spec)

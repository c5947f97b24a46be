"""The one table of model variants: name -> model class, spec token ids, Hugging Face layout.

Every place that switches on a variant reads this table: `make_model` (gin), `build_model`
(rebuilding a saved model), `Ranker.load` (specs of Hugging Face and T5X checkpoints), the
checkpoint converters (HF architecture, score head) and the CLI's `--variant` choices. A new model
family is one `Variant(...)` line here plus its class.

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
      model_class: `module:Class` of its `BaseRankingModel` subclass.
      description: one line for `--help` and docs.
      token_ids: spec keys filled from the vocabulary, `(key, token)`; the token `None` stands for
        the configurable score token (`<extra_id_10>` by default).
      hf_architecture: the `architectures` entry of its Hugging Face `config.json`.
      score_head: whether its params hold a `score_head` (Dense over the pooled encoder).
      global_layers: FiT5's global attention layers by default (`num_global_layers`); a
        variant with 0 scores pairs independently and takes no global layers or features.
    """

    name: str
    model_class: str
    description: str
    token_ids: tuple[tuple[str, str | None], ...] = ()
    hf_architecture: str = "T5ForConditionalGeneration"
    score_head: bool = False
    global_layers: int = 0

    @property
    def list_aware(self) -> bool:
        """Scores a query's candidates together (FiT5): lists are never split across calls."""
        return self.global_layers > 0

    def load_class(self) -> type:
        module, _, cls = self.model_class.partition(":")
        return getattr(importlib.import_module(module), cls)

    def spec_token_ids(self, vocab: Any, score_token: str = SCORE_TOKEN) -> dict[str, int]:
        """The spec's token ids, looked up in `vocab` (anything with `token_id(str) -> int`)."""
        return {
            key: vocab.token_id(score_token if token is None else token)
            for key, token in self.token_ids
        }


_MODELS = "rankt5_jax.modeling.models"

VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            "encdec",
            f"{_MODELS}:RankT5EncDec",
            "RankT5-EncDec: decoder step-0 logit of <extra_id_10>",
            token_ids=(("score_token_id", None),),
        ),
        Variant(
            "enc",
            f"{_MODELS}:RankT5Enc",
            "RankT5-Enc: Dense(Pool(Encoder))",
            hf_architecture="T5EncoderModel",
            score_head=True,
        ),
        Variant(
            "monot5",
            f"{_MODELS}:MonoT5",
            'monoT5: log-probability of "true" against "false" at decoder step 0',
            token_ids=(("true_token_id", "true"), ("false_token_id", "false")),
        ),
        Variant(
            "fit5",
            f"{_MODELS}:FiT5",
            "FiT5: global attention across the list, feature in the template, monoT5 output",
            token_ids=(("true_token_id", "true"), ("false_token_id", "false")),
            global_layers=3,
        ),
        Variant(
            "fit5_encdec",
            f"{_MODELS}:FiT5EncDec",
            "FiT5 encoder with the RankT5-EncDec head (<extra_id_10> logit)",
            token_ids=(("score_token_id", None),),
            global_layers=3,
        ),
        Variant(
            "fit5_enc",
            f"{_MODELS}:FiT5Enc",
            "FiT5 encoder with the RankT5-Enc head (Dense(Pool(Encoder)))",
            hf_architecture="T5EncoderModel",
            score_head=True,
            global_layers=3,
        ),
    )
}

NAMES: tuple[str, ...] = tuple(VARIANTS)


def get(name: str | None) -> Variant:
    """The variant called `name`; a `ConfigError` listing the known names otherwise."""
    if name not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(NAMES)}; got {name!r}")
    return VARIANTS[name]


def make_spec(variant: str, config: Any, vocab: Any, score_token: str = SCORE_TOKEN) -> dict:
    """The spec of a `variant` model over `config`, its token ids looked up in `vocab`."""
    return {"variant": variant, "t5": config, **get(variant).spec_token_ids(vocab, score_token)}


def build_model(spec: Mapping[str, Any]):
    """Rebuilds a model from its spec (`BaseRankingModel.spec()`, or `make_spec` + loss keys)."""
    return get(spec.get("variant")).load_class().from_spec(spec)

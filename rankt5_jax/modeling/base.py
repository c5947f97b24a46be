"""The ranking-model contract and what every family shares: a family's config dataclass
(`FamilyConfig`), `BaseRankingModel`, `PairwiseModel` and `RankingLossModel`.

Batches are lists of candidates per query:

  encoder_input_tokens  int32 [B, L, T]   the family's template + EOS, 0-padded
  decoder_input_tokens  int32 [B, L, 1]   zeros (start token); optional, ignored by RankT5-Enc
  label                 float32 [B, L]    relevance grade
  mask                  bool [B, L]       False for padded list items

Scores are `[B, L]` float32. The contract (`BaseRankingModel`, as T5X's `BaseModel`):

  score_lists(params, batch, dropout_rng=None) -> scores [B, L]      the seam every model fills
  loss_fn(params, batch, dropout_rng) -> (loss, metrics)             the training objective
  get_initial_variables(rng, input_shapes, input_types=None) -> {"params", "params_axes"}
  score_batch(params, batch) -> scores [B, L]                        (T5X's name, deterministic)
  eval_fn(params, batch) -> (loss, metrics)
  predict_batch_with_aux(params, batch, rng=None) -> (scores [B, L], {"scores": scores})
  spec() / from_spec(spec)                                           saved beside checkpoints

A family declares its options once, as a `FamilyConfig` dataclass (`Config` of its model class):
every field is a spec key (`spec()` writes them, `from_spec()` reads them, unknown keys ignored),
token-id fields say which token they hold (`token_field`), and class-level facts say whether the
family is list-aware, its Hugging Face architecture and whether it has a score head. The registry
row, gin's `trainer.make_model` and the CLI's choices are derived from it.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.data.vocab import RANKT5_TEMPLATE, template_parts
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import losses as losses_lib
from rankt5_jax.modeling import ur2n
from rankt5_jax.modeling.config import T5Config
from rankt5_jax.modeling.metrics import in_graph_metrics
from rankt5_jax.modeling.network import Transformer

Batch = Mapping[str, jax.Array]


def config_from_spec(spec: Mapping[str, Any]) -> T5Config:
    config = spec["t5"]
    return config if isinstance(config, T5Config) else T5Config.from_dict(config)


def token_field(token: str | None) -> Any:
    """A required token-id field of a family config, filled from the vocabulary by
    `registry.make_spec`: the id of `token` (None: the configurable score token,
    `<extra_id_10>` by default)."""
    return dataclasses.field(metadata={"token": token})


def spec_field(default: Any, absent: Any) -> Any:
    """A field whose value for a spec without the key (written before the field existed) is
    `absent`, not `default` (what new models take)."""
    return dataclasses.field(default=default, metadata={"absent": absent})


@dataclasses.dataclass(frozen=True, kw_only=True)
class FamilyConfig:
    """A model family's options. Every field is a spec key; the class-level facts are not.

    Class attributes:
      list_aware: scores a query's candidates together (FiT5): lists are never split.
      global_layers: FiT5's global attention layers by default (`num_global_layers`).
      hf_architecture: the `architectures` entry of its Hugging Face `config.json`.
      score_head: whether its params hold a `score_head` (Dense over the pooled encoder).
    """

    list_aware: ClassVar[bool] = False
    global_layers: ClassVar[int] = 0
    hf_architecture: ClassVar[str] = "T5ForConditionalGeneration"
    score_head: ClassVar[bool] = False

    def __post_init__(self):
        """Checks and normalises the options (each subclass calls its parent's)."""

    @classmethod
    def token_fields(cls) -> tuple[tuple[str, str | None], ...]:
        """`(spec key, token)` of the token-id fields (token None: the score token)."""
        return tuple(
            (f.name, f.metadata["token"]) for f in dataclasses.fields(cls) if "token" in f.metadata
        )

    @classmethod
    def new_spec_values(cls) -> dict[str, Any]:
        """Defaults a new spec records where an old spec without the key means something else
        (`spec_field`): monoT5's template."""
        return {f.name: f.default for f in dataclasses.fields(cls) if "absent" in f.metadata}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> FamilyConfig:
        """The options in `spec` (other keys ignored; a key missing or None takes its default,
        or its `absent` value; a missing token id is an error)."""
        values = {}
        for field in dataclasses.fields(cls):
            value = spec.get(field.name)
            if value is None:
                if "absent" in field.metadata:
                    value = field.metadata["absent"]
                elif field.default is dataclasses.MISSING:
                    raise ConfigError(f"the {cls.__name__} model spec has no {field.name!r}")
                else:
                    continue
            values[field.name] = value
        return cls(**values)

    def to_spec(self) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairTemplateConfig(FamilyConfig):
    """`template`: the pair input template (`data.vocab.InputTemplate`); specs written before
    it was recorded used RankT5's."""

    template: str = spec_field(RANKT5_TEMPLATE, absent=RANKT5_TEMPLATE)

    def __post_init__(self):
        super().__post_init__()
        template_parts(self.template)  # refuses a template without {q} and {d}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankingLossConfig(FamilyConfig):
    """`loss`: a ranking loss by name (`losses.get_loss_fn`), with `loss_kwargs`."""

    loss: str = "softmax"
    loss_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "loss_kwargs", dict(self.loss_kwargs or {}))


class BaseRankingModel(abc.ABC):
    """The ranking-model contract. Subclasses fill `score_lists` and `loss_fn`.

    Args:
      config: the T5 configuration.
      module: the Flax module (default: built from `config` by `_make_module`).
      **options: the fields of the family's config dataclass (`Config`).
    """

    variant: ClassVar[str] = ""
    Config: ClassVar[type[FamilyConfig]] = FamilyConfig
    # The encoder stack of the family's network (`network.Encoder` or a family's subclass).
    encoder_cls: ClassVar[Any] = None
    with_score_head: ClassVar[bool] = False
    # The batch features `train_step` feeds `loss_fn`, with their ranks (leading axis: the
    # batch, split over the mesh's data axis).
    batch_features: ClassVar[dict[str, int]] = {
        "encoder_input_tokens": 3,
        "decoder_input_tokens": 3,
        "decoder_target_tokens": 3,
        "label": 2,
        "mask": 2,
    }
    # Params trained by `loss_fn` ('/'-joined path prefixes); None: all. The others are frozen:
    # no gradient, no optimizer state, bit-identical after training (`training.optimizers`).
    trainable_prefixes: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config: T5Config, module: Any = None, **options: Any):
        try:
            self.options = self.Config(**options)
        except TypeError as err:
            known = sorted(f.name for f in dataclasses.fields(self.Config))
            raise ConfigError(
                f"{type(self).__name__} got options {sorted(options)}; it takes {known} ({err})"
            ) from err
        for field in dataclasses.fields(self.options):
            setattr(self, field.name, getattr(self.options, field.name))
        self.config = config
        for key, _ in self.Config.token_fields():
            setattr(self, key, self.check_token_id(getattr(self, key)))
        self.module = self._make_module() if module is None else module

    @property
    def list_aware(self) -> bool:
        return self.Config.list_aware

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> BaseRankingModel:
        """Rebuilds the model from `spec()` output (unknown keys are ignored)."""
        options = cls.Config.from_spec(spec)
        values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        return cls(config_from_spec(spec), **values)

    # -- construction -----------------------------------------------------------------------
    def _make_module(self) -> Transformer:
        kwargs = dict(with_score_head=self.with_score_head, encoder_cls=self.encoder_cls)
        if self.config.xtr_dim:
            return ur2n.make_transformer(self.config, **kwargs)
        return Transformer(self.config, **kwargs)

    def check_token_id(self, token_id: int) -> int:
        if not 0 <= int(token_id) < self.config.vocab_size:
            raise ConfigError(f"token id {token_id} outside vocab {self.config.vocab_size}")
        return int(token_id)

    def spec(self) -> dict[str, Any]:
        """What is needed to rebuild this model (saved beside checkpoints as `rankt5.json`)."""
        return {"variant": self.variant, "t5": self.config.to_dict(), **self.options.to_spec()}

    def get_initial_variables(
        self,
        rng: jax.Array,
        input_shapes: Mapping[str, tuple[int, ...]],
        input_types: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Initialises params (float32) from the shape of `encoder_input_tokens` `[B, L, T]`.

        With an XTR layer (`config.xtr_dim > 0`) it starts as a copy of the last encoder layer."""
        del input_types
        tokens = self.init_pair_tokens(input_shapes)
        variables = self.module.init({"params": rng, "dropout": rng}, tokens, enable_dropout=False)
        if self.config.xtr_dim:
            params = ur2n.xtr_layer_from_last(variables["params"], self.config)
            variables = dict(variables, params=params)
        return variables

    @staticmethod
    def init_pair_tokens(input_shapes: Mapping[str, tuple[int, ...]]) -> jax.Array:
        """Ones `[B*L, T]` for initialisation, from `encoder_input_tokens` `[B, L, T]` (an
        unknown dimension, as T5X may pass, counts 1)."""
        shape = tuple(input_shapes["encoder_input_tokens"])
        pairs = int(np.prod([int(d) if d else 1 for d in shape[:-1]])) or 1
        return jnp.ones((pairs, shape[-1]), jnp.int32)

    def _apply(self, params, method, *args, dropout_rng=None):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        return self.module.apply({"params": params}, *args, method=method, rngs=rngs)

    # -- scoring ----------------------------------------------------------------------------
    @abc.abstractmethod
    def score_lists(
        self, params: Any, batch: Batch, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        """`encoder_input_tokens [B, L, T] -> scores [B, L]` float32 (dropout iff `dropout_rng`).

        Padded list items (`mask=False`) get finite, meaningless scores."""

    def score_batch(self, params: Any, batch: Batch, return_intermediates: bool = False):
        """Scores `[B, L]` float32 (deterministic)."""
        if return_intermediates:
            raise ConfigError(f"{type(self).__name__}.score_batch has no intermediates to return")
        return self.score_lists(params, batch)

    def predict_batch_with_aux(
        self, params: Any, batch: Batch, rng: jax.Array | None = None, **kwargs: Any
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Ranking models predict scores, not text: returns `(scores [B, L], {"scores": ...})`."""
        del rng
        if (
            kwargs.get("decoder_params")
            or kwargs.get("return_all_decodes")
            or kwargs.get("num_decodes", 1) != 1
            or kwargs.get("prompt_with_targets")
        ):
            raise ConfigError(
                f"{type(self).__name__} scores candidates; it does not decode text, so "
                "decoder_params, return_all_decodes, num_decodes and prompt_with_targets do "
                "not apply"
            )
        scores = self.score_batch(params, batch)
        return scores, {"scores": scores}

    # -- training ---------------------------------------------------------------------------
    @abc.abstractmethod
    def loss_fn(
        self, params: Any, batch: Batch, dropout_rng: jax.Array | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The training loss (float32) and in-graph metrics (`loss`, `mrr@10`, ...)."""

    def eval_fn(self, params: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.loss_fn(params, batch, dropout_rng=None)

    @staticmethod
    def labels_and_mask(batch: Batch) -> tuple[jax.Array, jax.Array]:
        """`label` as float32 and `mask` as bool (all True where the batch has none)."""
        mask = batch.get("mask")
        if "label" in batch:
            labels = batch["label"].astype(jnp.float32)
        else:  # scoring without labels
            labels = jnp.zeros(batch["encoder_input_tokens"].shape[:2], jnp.float32)
        mask = jnp.ones_like(labels, bool) if mask is None else mask.astype(bool)
        return labels, mask

    def metrics(self, loss: jax.Array, scores: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """`loss` and the in-graph ranking metrics of `scores` (no gradient through them)."""
        labels, mask = self.labels_and_mask(batch)
        metrics = in_graph_metrics(jax.lax.stop_gradient(scores), labels, mask)
        metrics["loss"] = loss
        return metrics


class PairwiseModel(BaseRankingModel):
    """Scores the flattened pairs in one network call: `[B, L, T] -> [B*L, T] -> [B, L]`.

    Each pair is scored on its own unless the family is list-aware (FiT5): then the network
    also gets the lists' mask `[B, L]`, and its global layers attend across each list.
    """

    @abc.abstractmethod
    def pair_scores(
        self,
        params: Any,
        tokens: jax.Array,
        dropout_rng: jax.Array | None = None,
        list_mask: jax.Array | None = None,
    ) -> jax.Array:
        """`tokens [N, T] -> scores [N]` float32; `list_mask [B, L]` (B*L = N) for list-aware
        models (None: pairs, or for a list-aware model all N rows form one list)."""

    def score_lists(self, params, batch, dropout_rng=None):
        tokens = batch["encoder_input_tokens"]
        batch_size, list_size, length = tokens.shape
        flat = tokens.reshape(batch_size * list_size, length)  # [B, L, T] -> [B*L, T]
        list_mask = self.labels_and_mask(batch)[1] if self.list_aware else None
        scores = self.pair_scores(params, flat, dropout_rng, list_mask)
        return scores.reshape(batch_size, list_size).astype(jnp.float32)


class RankingLossModel(BaseRankingModel):
    """Trained with a ranking loss on the lists' scores: the paper's PointCE, Pair, Softmax,
    Poly1 or any Rax loss by name (`losses.get_loss_fn`). Its config has `RankingLossConfig`'s
    `loss` and `loss_kwargs`."""

    def __init__(self, config: T5Config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self._loss_fn = losses_lib.get_loss_fn(self.loss, **self.loss_kwargs)

    @property
    def loss_name(self) -> str:
        return self.loss

    def compute_loss(self, scores: jax.Array, batch: Batch) -> jax.Array:
        labels, mask = self.labels_and_mask(batch)
        return self._loss_fn(scores, labels, mask)

    def loss_fn(self, params, batch, dropout_rng):
        """Rax loss of the lists' scores (float32) and the in-graph ranking metrics."""
        scores = self.score_lists(params, batch, dropout_rng)
        loss = self.compute_loss(scores, batch)
        return loss, self.metrics(loss, scores, batch)

"""RankT5 model classes with the T5X model interface.

Batches are lists of candidates per query:

  encoder_input_tokens  int32 [B, L, T]   "Query: q Document: d" + EOS, 0-padded
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

`PairwiseModel` fills `score_lists` by scoring each pair on its own (`[B, L, T] -> [B*L, T]`);
a list-aware model overrides `score_lists` itself. `RankingLossModel` trains on the scores with a
Rax loss; `MonoT5` trains with token cross-entropy instead. Variants are listed in `registry.py`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rankt5_jax.data.features import FeatureConfig
from rankt5_jax.errors import ConfigError
from rankt5_jax.modeling import losses as losses_lib
from rankt5_jax.modeling.metrics import in_graph_metrics
from rankt5_jax.modeling.network import T5Config, Transformer, xtr_layer_from_last

Batch = Mapping[str, jax.Array]


def config_from_spec(spec: Mapping[str, Any]) -> T5Config:
    config = spec["t5"]
    return config if isinstance(config, T5Config) else T5Config.from_dict(config)


class BaseRankingModel(abc.ABC):
    """The ranking-model contract. Subclasses fill `score_lists`, `loss_fn` and `from_spec`.

    Args:
      config: the T5 configuration.
      module: the Flax module (default: built from `config` by `_make_module`).
    """

    variant: ClassVar[str] = ""
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

    def __init__(self, config: T5Config, module: Any = None, **kwargs: Any):
        if kwargs:
            raise ConfigError(f"{type(self).__name__} got unexpected options {sorted(kwargs)}")
        self.config = config
        self.module = self._make_module() if module is None else module

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> BaseRankingModel:
        """Rebuilds the model from `spec()` output (unknown keys are ignored)."""

    # -- construction -----------------------------------------------------------------------
    def _make_module(self) -> Transformer:
        return Transformer(self.config)

    def spec(self) -> dict[str, Any]:
        """What is needed to rebuild this model (saved beside checkpoints as `rankt5.json`)."""
        return {"variant": self.variant, "t5": self.config.to_dict()}

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
            params = xtr_layer_from_last(variables["params"], self.config)
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

    Each pair is scored on its own unless the model is `list_aware` (FiT5): then the network
    also gets the lists' mask `[B, L]`, and its global layers attend across each list.
    """

    list_aware: ClassVar[bool] = False

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
    Poly1 or any Rax loss by name (`losses.get_loss_fn`)."""

    def __init__(
        self,
        config: T5Config,
        loss: str = "softmax",
        loss_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        self.loss_name = loss
        self.loss_kwargs = dict(loss_kwargs or {})
        self._loss_fn = losses_lib.get_loss_fn(loss, **self.loss_kwargs)
        super().__init__(config, **kwargs)

    def spec(self) -> dict[str, Any]:
        return dict(super().spec(), loss=self.loss_name, loss_kwargs=self.loss_kwargs)

    @staticmethod
    def loss_options(spec: Mapping[str, Any]) -> dict[str, Any]:
        return {"loss": spec.get("loss") or "softmax", "loss_kwargs": spec.get("loss_kwargs")}

    def compute_loss(self, scores: jax.Array, batch: Batch) -> jax.Array:
        labels, mask = self.labels_and_mask(batch)
        return self._loss_fn(scores, labels, mask)

    def loss_fn(self, params, batch, dropout_rng):
        """Rax loss of the lists' scores (float32) and the in-graph ranking metrics."""
        scores = self.score_lists(params, batch, dropout_rng)
        loss = self.compute_loss(scores, batch)
        return loss, self.metrics(loss, scores, batch)


class DecoderColumnsModel(PairwiseModel):
    """Pairs scored from decoder step 0: only the requested columns of the output projection."""

    def __init__(self, config: T5Config, **kwargs: Any):
        if not config.has_decoder:
            raise ConfigError(f"{type(self).__name__} needs a decoder (config.has_decoder=True)")
        super().__init__(config, **kwargs)

    def check_token_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.config.vocab_size:
            raise ConfigError(f"token id {token_id} outside vocab {self.config.vocab_size}")
        return int(token_id)

    def columns(self, params, tokens, token_ids, dropout_rng=None, list_mask=None) -> jax.Array:
        """`tokens [N, T] -> [N, len(token_ids)]` float32 step-0 logits of `token_ids`."""
        return self._apply(
            params,
            Transformer.encdec_score_columns,
            tokens,
            tuple(token_ids),
            dropout_rng is None,
            list_mask,
            dropout_rng=dropout_rng,
        )


class RankT5EncDec(RankingLossModel, DecoderColumnsModel):
    """RankT5-EncDec: score = decoder step-0 logit of the score token (`<extra_id_10>`).

    Only the score token's column of the output projection is computed.
    """

    variant = "encdec"

    def __init__(self, config: T5Config, score_token_id: int, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.score_token_id = self.check_token_id(score_token_id)

    @classmethod
    def from_spec(cls, spec):
        return cls(
            config_from_spec(spec),
            score_token_id=int(spec["score_token_id"]),
            **cls.loss_options(spec),
        )

    def spec(self):
        return dict(super().spec(), score_token_id=self.score_token_id)

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        return self.columns(params, tokens, (self.score_token_id,), dropout_rng, list_mask)[:, 0]


class RankT5Enc(RankingLossModel, PairwiseModel):
    """RankT5-Enc: score = Dense(Pool(Encoder(s))); pooling `first` (default) or `mean`.

    The model has no decoder parameters.
    """

    variant = "enc"

    def __init__(self, config: T5Config, **kwargs: Any):
        super().__init__(config.replace(has_decoder=False, num_decoder_layers=0), **kwargs)

    @classmethod
    def from_spec(cls, spec):
        return cls(config_from_spec(spec), **cls.loss_options(spec))

    def _make_module(self) -> Transformer:
        return Transformer(self.config, with_score_head=True)

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        return self._apply(
            params,
            Transformer.pooled_score,
            tokens,
            dropout_rng is None,
            list_mask,
            dropout_rng=dropout_rng,
        )


class MonoT5(DecoderColumnsModel):
    """monoT5 baseline: target "true" for relevant, "false" otherwise; full-vocabulary
    cross-entropy on the first decoder step (as monoT5 is trained); score = log-softmax of
    "true" over {"true", "false"}. It takes no ranking loss: its objective is the token loss.
    """

    variant = "monot5"

    def __init__(self, config: T5Config, true_token_id: int, false_token_id: int, **kwargs):
        super().__init__(config, **kwargs)
        self.true_token_id = self.check_token_id(true_token_id)
        self.false_token_id = self.check_token_id(false_token_id)

    @classmethod
    def from_spec(cls, spec):
        return cls(
            config_from_spec(spec),
            true_token_id=int(spec["true_token_id"]),
            false_token_id=int(spec["false_token_id"]),
        )

    def spec(self):
        return dict(
            super().spec(), true_token_id=self.true_token_id, false_token_id=self.false_token_id
        )

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        token_ids = (self.true_token_id, self.false_token_id)
        columns = self.columns(params, tokens, token_ids, dropout_rng, list_mask)
        return jax.nn.log_softmax(columns, axis=-1)[:, 0]

    def loss_fn(self, params, batch, dropout_rng):
        tokens = batch["encoder_input_tokens"]
        batch_size, list_size, length = tokens.shape
        flat = tokens.reshape(batch_size * list_size, length)
        labels, mask = self.labels_and_mask(batch)

        def forward(module, flat_tokens):
            deterministic = dropout_rng is None
            encoded = module.encode(flat_tokens, deterministic)
            start = jnp.zeros((flat_tokens.shape[0], 1), jnp.int32)
            hidden, kernel = module.decode_hidden(encoded, flat_tokens, start, deterministic)
            logits = module.full_logits(hidden[:, 0], kernel)  # [B*L, vocab]
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            pair = log_probs[:, (self.true_token_id, self.false_token_id)]
            return log_probs, pair

        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        log_probs, pair = self.module.apply({"params": params}, flat, method=forward, rngs=rngs)
        targets = jnp.where(labels.reshape(-1) > 0, self.true_token_id, self.false_token_id)
        token_nll = -jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
        weights = mask.reshape(-1).astype(jnp.float32)
        loss = jnp.sum(token_nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        scores = jax.nn.log_softmax(pair, axis=-1)[:, 0].reshape(batch_size, list_size)
        return loss, self.metrics(loss, scores, batch)


class FiT5Mixin:
    """Fusion-in-T5 (Yu et al., 2023): list-aware scoring and the first-stage score as a feature.

    Put before a pairwise model class in the bases: the network's global layers
    (`config.num_global_layers`, 3 by default in `registry.make_model`) attend across each
    query's candidates, so the scores of one list depend on each other. `features` (a
    `data.features.FeatureConfig` or its dict) says how the first-stage scores become the
    template's feature; it is saved in the spec, so `rerank` builds the same inputs.
    """

    list_aware: ClassVar[bool] = True

    def __init__(self, config: T5Config, features: Any = None, **kwargs: Any):
        self.features = FeatureConfig.from_dict(features)
        super().__init__(config, **kwargs)

    def spec(self) -> dict[str, Any]:
        return dict(super().spec(), features=self.features.to_dict())


class FiT5(FiT5Mixin, MonoT5):
    """FiT5 as published: the monoT5 output over the global encoder. Trained as the authors
    train it: cross-entropy over the two logits ["false", "true"] of every real candidate (padded
    candidates left out).

    `score`: "log_prob" (default), the log of the normalised probability of "true" against
    "false" (the paper's score in log space: the same ranking, and equal to `MonoT5` when
    `num_global_layers=0`); or "true_logit", the raw "true" logit, which is how the authors'
    inference script ranks (their released checkpoints load with it).
    """

    variant = "fit5"
    SCORES = ("log_prob", "true_logit")

    def __init__(self, config: T5Config, score: str = "log_prob", **kwargs: Any):
        if score not in self.SCORES:
            raise ConfigError(f"FiT5 score must be one of {self.SCORES}; got {score!r}")
        self.score = score
        super().__init__(config, **kwargs)

    @classmethod
    def from_spec(cls, spec):
        return cls(
            config_from_spec(spec),
            true_token_id=int(spec["true_token_id"]),
            false_token_id=int(spec["false_token_id"]),
            features=spec.get("features"),
            score=spec.get("score") or "log_prob",
        )

    def spec(self):
        return dict(super().spec(), score=self.score)

    def pair_scores(self, params, tokens, dropout_rng=None, list_mask=None):
        if self.score == "log_prob":
            return super().pair_scores(params, tokens, dropout_rng, list_mask)
        return self.columns(params, tokens, (self.true_token_id,), dropout_rng, list_mask)[:, 0]

    def loss_fn(self, params, batch, dropout_rng):
        tokens = batch["encoder_input_tokens"]
        batch_size, list_size, length = tokens.shape
        labels, mask = self.labels_and_mask(batch)
        flat = tokens.reshape(batch_size * list_size, length)
        token_ids = (self.true_token_id, self.false_token_id)
        columns = self.columns(params, flat, token_ids, dropout_rng, mask)  # [B*L, 2]
        log_probs = jax.nn.log_softmax(columns, axis=-1)
        relevant = labels.reshape(-1) > 0
        nll = -jnp.where(relevant, log_probs[:, 0], log_probs[:, 1])
        weights = mask.reshape(-1).astype(jnp.float32)
        loss = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        scores = log_probs[:, 0].reshape(batch_size, list_size)
        return loss, self.metrics(loss, scores, batch)


class FiT5EncDec(FiT5Mixin, RankT5EncDec):
    """FiT5's global encoder with the RankT5-EncDec head (`<extra_id_10>` logit), trained with
    any ranking loss (PointCE, Pair, Softmax, Poly1, any Rax loss)."""

    variant = "fit5_encdec"

    @classmethod
    def from_spec(cls, spec):
        return cls(
            config_from_spec(spec),
            score_token_id=int(spec["score_token_id"]),
            features=spec.get("features"),
            **cls.loss_options(spec),
        )


class FiT5Enc(FiT5Mixin, RankT5Enc):
    """FiT5's global encoder with the RankT5-Enc head (Dense over the pooled encoder), trained
    with any ranking loss."""

    variant = "fit5_enc"

    @classmethod
    def from_spec(cls, spec):
        return cls(config_from_spec(spec), features=spec.get("features"), **cls.loss_options(spec))

"""The monoT5 family (Nogueira et al., 2020): target "true" for relevant, "false" otherwise,
over monoT5's published template `Query: {q} Document: {d} Relevant:` (castorini's checkpoints;
pyterrier-t5 and rerankers build it so). Model directories written before the template was
recorded in the spec used `Query: {q} Document: {d}` and keep it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rankt5_jax.data.vocab import MONOT5_TEMPLATE, RANKT5_TEMPLATE
from rankt5_jax.modeling.base import PairTemplateConfig, spec_field, token_field
from rankt5_jax.modeling.heads import TrueFalseModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonoT5Config(PairTemplateConfig):
    true_token_id: int = token_field("true")
    false_token_id: int = token_field("false")
    template: str = spec_field(MONOT5_TEMPLATE, absent=RANKT5_TEMPLATE)


class MonoT5(TrueFalseModel):
    """monoT5 baseline: full-vocabulary cross-entropy on the first decoder step (as monoT5 is
    trained); score = log-softmax of "true" over {"true", "false"}. It takes no ranking loss:
    its objective is the token loss.
    """

    variant = "monot5"
    Config = MonoT5Config

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
        loss = self.masked_mean(token_nll, mask)
        scores = jax.nn.log_softmax(pair, axis=-1)[:, 0].reshape(batch_size, list_size)
        return loss, self.metrics(loss, scores, batch)

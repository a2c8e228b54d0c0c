"""The self-pretraining model: a classifier's encoder with a language-model output (NNX).

`encode` is exactly the task model's (`PooledEncoder`: token embedding, CLS vector,
blocks), built from the same config and initialisation key, so that its parameters carry
over to fine-tuning by name (`lra.pretraining.transplant`). The output is tied to the token
embedding (`logits = state @ embedding^T + bias`): the only parameter of its own is the
bias, and the embedding learns from both ends.

Batches (`lra.pretraining.train_iterator`) hold `inputs` and `targets` `[batch, length]` and
per-token `weights`. Objective `mlm` predicts `targets` at the token positions (after the CLS
vector) from bidirectional states; `causal` predicts token `i` from the states up to
position `i - 1` of the causal encoder, the CLS vector being position 0. Packed batches
(`pretrain.pack`) add `segment_ids` and `positions`: each row holds several sequences, each
starting with its CLS slot, and the state at every position predicts the target the packer
put there.
"""

import jax.numpy as jnp
import optax
from flax import nnx

from lra.models.classifier import PooledEncoder


class SelfPretrainingLM(nnx.Module):
  """Tokens `[batch, length]` -> logits over the vocabulary `[batch, length, vocab]`."""

  def __init__(self, config, *, vocab_size: int, num_classes: int, rngs: nnx.Rngs):
    del num_classes  # predicts tokens
    pretrain = config.pretrain
    self.encode = PooledEncoder(config, vocab_size=vocab_size, rngs=rngs,
                                max_sequences=pretrain.max_sequences if pretrain.pack else 1)
    self.output_bias = nnx.Param(jnp.zeros((vocab_size,)))
    self.causal = config.pretrain.objective == "causal"

  def __call__(self, tokens_BxL, *, deterministic: bool = True, rngs=None, segment_ids=None,
               positions=None):
    h, _ = self.encode.token_states(tokens_BxL, deterministic=deterministic, rngs=rngs,
                                    segment_ids=segment_ids, positions=positions)
    # Causal: the states of CLS, t_0 .. t_{L-2} predict t_0 .. t_{L-1}; mlm: those of the
    # tokens predict themselves. Packed: every state, against the packer's targets.
    if segment_ids is None:
      h = h[:, :-1] if self.causal else h[:, 1:]
    logits = self.encode.encoder.embed.attend(h).astype(jnp.float32)
    return logits + self.output_bias[...][None, None, :]

  def metrics(self, batch, *, deterministic: bool = True, rngs=None):
    """Summed cross-entropy and correct predictions over the weighted tokens, their count."""
    logits = self(batch["inputs"], deterministic=deterministic, rngs=rngs,
                  segment_ids=batch.get("segment_ids"), positions=batch.get("positions"))
    targets, weights = batch["targets"], batch["weights"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}

"""Sequence classifier and retrieval dual encoder on top of the shared encoder (NNX).

A learned CLS vector is prepended to every sequence. Under a mechanism with global tokens
(the registry's `uses_global`: Longformer) it is the one global token (so `max_global` is
1): it sees and is seen by every position.
Heads follow LRA: pool -> Dense(mlp_dim) -> ReLU -> Dense(num_classes); the dual encoder
pools each document and classifies `[e1, e2, e1 * e2, e1 - e2]`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lra import attention as attention_lib
from lra import errors
from lra.models.encoder import Encoder
from lra.tokens import PAD_ID

POOLINGS = ("cls", "mean", "max")


def classification_metrics(logits_BxC, targets_B, weights_B):
  """Summed cross-entropy and correct predictions, and the example count (for averaging)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32),
                                                           targets_B)
  correct = (jnp.argmax(logits_BxC, axis=-1) == targets_B).astype(jnp.float32)
  return {"loss": jnp.sum(losses * weights_B), "correct": jnp.sum(correct * weights_B),
          "count": jnp.sum(weights_B)}


class PooledEncoder(nnx.Module):
  """Tokens `[batch, length]` -> one vector per sequence `[batch, emb]`.

  `max_sequences` is the most sequences a row holds (packed rows: `token_states`), and so
  the most global tokens of a row under a mechanism with global tokens.
  """

  def __init__(self, config, *, vocab_size: int, rngs: nnx.Rngs, max_sequences: int = 1):
    model = config.model
    if model.pooling not in POOLINGS:
      raise errors.ConfigError(f"model.pooling must be one of {POOLINGS}, got {model.pooling!r}")
    attention = dict(config.attention)
    mechanism = attention_lib.get(attention.get("name"))
    self.uses_global = mechanism.uses_global
    if self.uses_global and "max_global" in mechanism.options:
      attention["max_global"] = max_sequences  # a CLS token per sequence
    self.encoder = Encoder(model, attention, vocab_size=vocab_size,
                           max_length=config.data.max_length + 1, rngs=rngs)
    self.cls = nnx.Param(jnp.zeros((model.emb_dim,)))
    self.pooling = model.pooling

  def token_states(self, tokens_BxL, *, deterministic: bool, rngs, segment_ids=None,
                   positions=None):
    """States of the CLS vector and of every token `[batch, 1 + length, emb]`, and which
    positions are real, bool `[batch, 1 + length]` (the CLS vector is).

    Packed rows (`lra.pretraining.pack`) give `segment_ids` (0: padding) and `positions`
    (each sequence's own) `[batch, length]`: each sequence already starts with a slot for
    its CLS vector (its position 0), so nothing is prepended and the states are
    `[batch, length, emb]`; sequences attend within themselves.
    """
    if segment_ids is not None:
      return self._packed_states(tokens_BxL, segment_ids, positions,
                                 deterministic=deterministic, rngs=rngs)
    batch = tokens_BxL.shape[0]
    real = jnp.concatenate([jnp.ones((batch, 1), bool), tokens_BxL != PAD_ID], axis=1)
    x = self.encoder.embed_tokens(tokens_BxL)
    cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (batch, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    global_mask = None
    if self.uses_global:
      # A numpy constant: its one global token per row is known when shapes are fixed, so
      # the budget is checked once, at trace time.
      global_mask = np.zeros(real.shape, bool)
      global_mask[:, 0] = True
    h = self.encoder(x, padding_mask=real, global_mask=global_mask,
                     deterministic=deterministic, rngs=rngs)
    return h, real

  def _packed_states(self, tokens_BxL, segment_ids_BxL, positions_BxL, *, deterministic, rngs):
    real = segment_ids_BxL > 0
    cls_slot = real & (positions_BxL == 0)
    x = self.encoder.embed_tokens(tokens_BxL)
    x = jnp.where(cls_slot[..., None], self.cls[...].astype(x.dtype), x)
    h = self.encoder(x, padding_mask=real, segment_ids=segment_ids_BxL, positions=positions_BxL,
                     global_mask=cls_slot if self.uses_global else None,
                     deterministic=deterministic, rngs=rngs)
    return h, real

  def __call__(self, tokens_BxL, *, deterministic: bool, rngs):
    h, real = self.token_states(tokens_BxL, deterministic=deterministic, rngs=rngs)
    if self.pooling == "cls":
      return h[:, 0]
    if self.pooling == "max":
      return jnp.max(jnp.where(real[..., None], h, jnp.finfo(h.dtype).min), axis=1)
    weights = real[..., None].astype(h.dtype)
    return jnp.sum(h * weights, axis=1) / jnp.sum(weights, axis=1)


class Head(nnx.Module):
  """Dense(hidden) -> ReLU -> Dense(num_classes), in float32."""

  def __init__(self, features: int, hidden: int, num_classes: int, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(features, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x.astype(jnp.float32))))


class Classifier(nnx.Module):
  """Encoder + pooling + LRA classification head; batches hold `inputs`, `targets`."""

  def __init__(self, config, *, vocab_size: int, num_classes: int, rngs: nnx.Rngs):
    self.encode = PooledEncoder(config, vocab_size=vocab_size, rngs=rngs)
    self.head = Head(config.model.emb_dim, config.model.mlp_dim, num_classes, rngs)

  def __call__(self, batch, *, deterministic: bool = True, rngs=None):
    return self.head(self.encode(batch["inputs"], deterministic=deterministic, rngs=rngs))

  def metrics(self, batch, *, deterministic: bool = True, rngs=None):
    logits = self(batch, deterministic=deterministic, rngs=rngs)
    return classification_metrics(logits, batch["targets"], batch["weights"])


class DualEncoder(nnx.Module):
  """Shared encoder over two documents, `[e1, e2, e1 * e2, e1 - e2]` head (retrieval)."""

  def __init__(self, config, *, vocab_size: int, num_classes: int, rngs: nnx.Rngs):
    self.encode = PooledEncoder(config, vocab_size=vocab_size, rngs=rngs)
    self.head = Head(4 * config.model.emb_dim, config.model.mlp_dim, num_classes, rngs)

  def __call__(self, batch, *, deterministic: bool = True, rngs=None):
    e1 = self.encode(batch["inputs1"], deterministic=deterministic, rngs=rngs)
    e2 = self.encode(batch["inputs2"], deterministic=deterministic, rngs=rngs)
    return self.head(jnp.concatenate([e1, e2, e1 * e2, e1 - e2], axis=-1))

  def metrics(self, batch, *, deterministic: bool = True, rngs=None):
    logits = self(batch, deterministic=deterministic, rngs=rngs)
    return classification_metrics(logits, batch["targets"], batch["weights"])

"""`SelfAttention`: projections -> a mechanism chosen by name -> output projection (NNX)."""

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra import attention as attention_lib
from lra import errors


def rotary(x_BxLxHxD):
  """Rotates each pair of features (i, i + D/2) of position p by p * 10000^(-2i/D) (RoPE,
  Su et al. 2021), so that q . k depends on positions only through their offset."""
  length, head_dim = x_BxLxHxD.shape[1], x_BxLxHxD.shape[-1]
  if head_dim % 2:
    raise errors.ConfigError(f"rotary positions need an even head dimension, got {head_dim}")
  frequency = 10000.0 ** (-np.arange(head_dim // 2) / (head_dim // 2))
  angle_1xLx1xD = jnp.asarray(np.arange(length)[None, :, None, None] * frequency, jnp.float32)
  cos, sin = jnp.cos(angle_1xLx1xD), jnp.sin(angle_1xLx1xD)  # D here is head_dim / 2
  x1, x2 = jnp.split(x_BxLxHxD.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin],
                         axis=-1).astype(x_BxLxHxD.dtype)


class SelfAttention(nnx.Module):
  """Multi-head self-attention whose core is any registered mechanism.

  For mechanisms with global tokens (Longformer) the module also owns the separate global
  projections `query_global/key_global/value_global`, initialised as copies of the local
  ones, as the Longformer paper prescribes.

  Parameters are float32; `dtype` is the compute dtype of the projections and of the
  attention inputs (softmax is float32 whatever it is). With `rotary_positions`, queries
  and keys carry their positions by rotation (`rotary`): relative position information,
  for models without position embeddings. The global queries and keys are rotated too, so
  every score, local or global, depends on the offset between its two positions.
  """

  def __init__(self, features: int, num_heads: int, *, attention: Mapping[str, Any],
               dropout_rate: float = 0.0, dtype=jnp.float32, rotary_positions: bool = False,
               rngs: nnx.Rngs):
    if features % num_heads:
      raise errors.ConfigError(
          f"features ({features}) must be a multiple of num_heads ({num_heads})")
    self.core = attention_lib.build(attention, num_heads)
    self.num_heads = num_heads
    self.dropout_rate = dropout_rate
    self.rotary_positions = rotary_positions
    head_dim = features // num_heads

    def projection():
      return nnx.LinearGeneral(features, (num_heads, head_dim), use_bias=True, dtype=dtype,
                               rngs=rngs)

    self.query, self.key, self.value = projection(), projection(), projection()
    if self.core.uses_global:
      self.query_global = nnx.clone(self.query)
      self.key_global = nnx.clone(self.key)
      self.value_global = nnx.clone(self.value)
    self.out = nnx.LinearGeneral((num_heads, head_dim), features, axis=(-2, -1), dtype=dtype,
                                 rngs=rngs)

  def __call__(self, x_BxLxE, *, padding_mask=None, global_mask=None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None):
    """Attends over `x` `[batch, length, features]`; returns the same shape.

    Args:
      x_BxLxE: inputs.
      padding_mask: optional bool `[batch, length]`, True for real tokens.
      global_mask: optional bool `[batch, length]` of global tokens (Longformer only).
      deterministic: disables attention dropout.
      rngs: `nnx.Rngs` with a `dropout` stream; needed when dropout is active.
    """
    if global_mask is not None and not self.core.uses_global:
      raise errors.ConfigError(
          f"attention {self.core.name!r} has no global tokens; use 'longformer' or drop "
          f"global_mask")
    dropout_rate = 0.0 if deterministic else self.dropout_rate
    dropout_rng = None
    if dropout_rate > 0:
      if rngs is None:
        raise errors.ConfigError("attention dropout needs rngs=nnx.Rngs(dropout=key)")
      dropout_rng = rngs.dropout()
    q, k, v = self.query(x_BxLxE), self.key(x_BxLxE), self.value(x_BxLxE)
    if self.rotary_positions:
      q, k = rotary(q), rotary(k)
    global_qkv = None
    if self.core.uses_global and global_mask is not None:
      global_q, global_k = self.query_global(x_BxLxE), self.key_global(x_BxLxE)
      if self.rotary_positions:
        global_q, global_k = rotary(global_q), rotary(global_k)
      global_qkv = (global_q, global_k, self.value_global(x_BxLxE))
    out_BxLxHxD = self.core(q, k, v, padding_mask=padding_mask, global_mask=global_mask,
                            global_qkv=global_qkv, dropout_rate=dropout_rate,
                            dropout_rng=dropout_rng)
    return self.out(out_BxLxHxD)

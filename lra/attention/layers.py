"""`SelfAttention`: projections -> a mechanism chosen by name -> output projection (NNX);
and `flax_attention_fn`, every mechanism without global tokens for flax's own modules."""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra import attention as attention_lib
from lra import errors
from lra.attention import decoding


def rotary(x_BxLxHxD, start=0):
  """Rotates each pair of features (i, i + D/2) of position p by p * 10000^(-2i/D) (RoPE,
  Su et al. 2021), so that q . k depends on positions only through their offset. The
  positions are `start .. start + L - 1` (`start` may be traced: decoding)."""
  length, head_dim = x_BxLxHxD.shape[1], x_BxLxHxD.shape[-1]
  if head_dim % 2:
    raise errors.ConfigError(f"rotary positions need an even head dimension, got {head_dim}")
  frequency = jnp.asarray(10000.0 ** (-np.arange(head_dim // 2) / (head_dim // 2)),
                          jnp.float32)
  positions = (start + jnp.arange(length, dtype=jnp.int32)).astype(jnp.float32)
  angle_1xLx1xD = (positions[:, None] * frequency[None, :])[None, :, None, :]
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
  attention inputs (softmax is float32 whatever it is). `num_kv_heads` (a divisor of
  `num_heads`; default `num_heads`) projects keys and values to fewer heads, each read by
  `num_heads / num_kv_heads` query heads (grouped-query attention; 1 is multi-query).
  With `rotary_positions`, queries and keys carry their positions by rotation (`rotary`):
  relative position information, for models without position embeddings. The global
  queries and keys are rotated too, so every score, local or global, depends on the offset
  between its two positions.
  """

  def __init__(self, features: int, num_heads: int, *, attention: Mapping[str, Any],
               num_kv_heads: int | None = None, dropout_rate: float = 0.0, dtype=jnp.float32,
               rotary_positions: bool = False, rngs: nnx.Rngs):
    if features % num_heads:
      raise errors.ConfigError(
          f"features ({features}) must be a multiple of num_heads ({num_heads})")
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if (isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, int)
        or num_kv_heads < 1 or num_heads % num_kv_heads):
      raise errors.ConfigError(
          f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads}): each k/v head "
          f"serves num_heads / num_kv_heads query heads")
    self.core = attention_lib.build(attention, num_heads)
    self.num_heads = num_heads
    self.dropout_rate = dropout_rate
    self.rotary_positions = rotary_positions
    head_dim = features // num_heads

    def projection(heads):
      return nnx.LinearGeneral(features, (heads, head_dim), use_bias=True, dtype=dtype,
                               rngs=rngs)

    self.query = projection(num_heads)
    self.key, self.value = projection(num_kv_heads), projection(num_kv_heads)
    if self.core.uses_global:
      self.query_global = nnx.clone(self.query)
      self.key_global = nnx.clone(self.key)
      self.value_global = nnx.clone(self.value)
    self.out = nnx.LinearGeneral((num_heads, head_dim), features, axis=(-2, -1), dtype=dtype,
                                 rngs=rngs)

  def __call__(self, x_BxLxE, *, padding_mask=None, segment_ids=None, global_mask=None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None):
    """Attends over `x` `[batch, length, features]`; returns the same shape.

    Args:
      x_BxLxE: inputs.
      padding_mask: optional bool `[batch, length]`, True for real tokens.
      segment_ids: optional int `[batch, length]`: packed sequences, each token attends
        within its own segment only.
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
    out_BxLxHxD = self.core(q, k, v, padding_mask=padding_mask, segment_ids=segment_ids,
                            global_mask=global_mask, global_qkv=global_qkv,
                            dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return self.out(out_BxLxHxD)

  def _decoding_options(self) -> dict:
    """The window options of a causal windowed mechanism, or a ConfigError."""
    options = dict(self.core.options)
    if self.core.uses_global or not options.get("causal") or "window" not in options:
      raise errors.ConfigError(
          f"decoding with a rolling cache needs causal window attention (e.g. 'local' with "
          f"causal=True), got {self.core.name!r} with {options}")
    return options

  def init_cache(self, batch: int) -> dict:
    """An empty rolling cache of this layer's keys and values (`attention.decoding`)."""
    options = self._decoding_options()
    size = decoding.cache_size(options["window"], options["dilation"], self.num_heads)
    kv_heads, head_dim = self.key.out_features
    return decoding.init_cache(batch, size, kv_heads, head_dim, self.key.dtype or jnp.float32)

  def decode(self, x_BxTxE, cache: dict, position):
    """Attends `T` new positions `position ..` over the cache; returns `[batch, T, features]`
    and the cache with their keys and values (inference: no dropout)."""
    options = self._decoding_options()
    q, k, v = self.query(x_BxTxE), self.key(x_BxTxE), self.value(x_BxTxE)
    if self.rotary_positions:
      q, k = rotary(q, position), rotary(k, position)
    if x_BxTxE.shape[1] == 1:
      out, cache = decoding.attend_step(q, k, v, cache, position, window=options["window"],
                                        dilation=options["dilation"])
    else:
      out, cache = decoding.attend_chunk(q, k, v, cache, position, window=options["window"],
                                         dilation=options["dilation"],
                                         block_size=options.get("block_size"),
                                         implementation=options.get("implementation"))
    return self.out(out), cache


def _real_tokens(mask, batch_shape: tuple[int, ...], length: int):
  """bool `[prod(batch_shape), length]` from flax's dense `[batch..., heads|1, L, L]` mask:
  its diagonal (a real query sees itself under `nnx.make_attention_mask(real, real)`).

  A concrete mask must be exactly that padding mask (or the causal one of it, for a causal
  config): the attention config, not the mask, draws the pattern.
  """
  mask = jnp.broadcast_to(mask, (*batch_shape, *mask.shape[-3:]))
  real = jnp.diagonal(mask, axis1=-2, axis2=-1)[..., 0, :].astype(bool)
  try:
    concrete, real_np = np.asarray(mask).astype(bool), np.asarray(real)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return real.reshape(-1, length)  # under jit: documented, not checked
  padding_only = real_np[..., None, None, :] & real_np[..., None, :, None]
  causal = padding_only & np.tril(np.ones((length, length), bool))
  if not (np.array_equal(concrete, np.broadcast_to(padding_only, concrete.shape))
          or np.array_equal(concrete, np.broadcast_to(causal, concrete.shape))):
    raise errors.ConfigError(
        "flax_attention_fn takes only a padding mask (nnx.make_attention_mask(real, real), "
        "or its causal combination): the attention config draws the pattern; pass "
        "mask=None or the padding mask")
  return real.reshape(-1, length)


def flax_attention_fn(config: Mapping[str, Any], *, num_heads: int):
  """An `attention_fn` for flax's `nnx.MultiHeadAttention` that runs a registry mechanism.

      layer = nnx.MultiHeadAttention(
          num_heads=8, in_features=512, decode=False, broadcast_dropout=False,
          attention_fn=flax_attention_fn({"name": "local", "window": 128}, num_heads=8),
          rngs=nnx.Rngs(0))
      y = layer(x, mask=nnx.make_attention_mask(real, real))  # real: bool [batch, length]

  The config (`name` and options, as for `SelfAttention`) draws the pattern; `mask`
  carries only padding. flax's mask is dense (`[batch..., heads | 1, L, L]`): which tokens
  are real is read from its diagonal, and a concrete mask that is anything but a padding
  mask (alone, or with `nnx.make_causal_mask` for a causal config) is an error; under
  `jax.jit` that check cannot run, so pass the padding mask only. Padded queries get
  exactly 0 (flax's dense attention averages every value there instead). `is_causal=True`
  needs a causal config; dropout (`dropout_rate` of the module) drops each weight
  independently, so the module must have `broadcast_dropout=False`. `precision` is not
  used (logits and softmax are float32), and `sow_weights` has nothing to sow: the
  `[L, L]` weights are never built.

  Mechanisms with global tokens (Longformer) cannot go through this hook: it sees only
  the projected q/k/v, with no global mask and no separate global projections. Use
  `SelfAttention`, whose module owns them.
  """
  core = attention_lib.build(config, num_heads)
  if core.uses_global:
    raise errors.ConfigError(
        f"attention {core.name!r} has global tokens, which flax's attention_fn hook cannot "
        f"carry (it sees only projected q/k/v: no global mask, no separate global "
        f"projections); use lra.attention.layers.SelfAttention")
  options = dict(core.options)

  def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                   dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
                   precision=None, module=None, is_causal=False):
    """`[batch..., L, heads, head_dim]` q/k/v -> the same shape (flax's contract)."""
    del precision  # logits and softmax are float32 whatever the precision
    if bias is not None:
      raise errors.ConfigError("flax_attention_fn takes no attention bias")
    if module is not None:
      raise errors.ConfigError("flax_attention_fn has no weights to sow: the [L, L] "
                               "attention weights are never built; drop sow_weights")
    if key.shape != query.shape or value.shape[:-1] != query.shape[:-1]:
      raise errors.ConfigError(
          f"flax_attention_fn is self-attention with {num_heads} heads: q, k, v must share "
          f"[batch..., length, heads], got {query.shape}, {key.shape}, {value.shape}")
    if is_causal and not options.get("causal"):
      raise errors.ConfigError(f"is_causal=True needs a causal attention config, got "
                               f"{dict(config)}")
    dropout = 0.0 if deterministic else dropout_rate
    if dropout and broadcast_dropout:
      raise errors.ConfigError(
          "flax_attention_fn drops each attention weight independently: build the module "
          "with broadcast_dropout=False")
    batch_shape, (length, heads, _) = query.shape[:-3], query.shape[-3:]
    if dtype is not None:
      query, key, value = (x.astype(dtype) for x in (query, key, value))
    padding_mask = None if mask is None else _real_tokens(mask, batch_shape, length)
    out = core(*(x.reshape(-1, *x.shape[-3:]) for x in (query, key, value)),
               padding_mask=padding_mask, dropout_rate=dropout, dropout_rng=dropout_rng)
    return out.reshape(*batch_shape, length, heads, out.shape[-1])

  return attention_fn

"""Pre-LN Transformer encoder whose attention comes from the registry by name (NNX)."""

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra import errors
from lra.attention.layers import SelfAttention

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise errors.ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def layer_attention(attention: Mapping[str, Any], layer: int, num_layers: int) -> dict:
  """The attention options of one layer.

  `window` may be one int or one per layer; `dilation` may be one int, one per head, or
  (nested) one entry per layer, each an int or one per head.
  """
  options = dict(attention)
  window = options.get("window")
  if isinstance(window, Sequence):
    if len(window) != num_layers:
      raise errors.ConfigError(
          f"attention.window has {len(window)} entries but the model has {num_layers} "
          f"layers: give one int or one per layer")
    options["window"] = window[layer]
  dilation = options.get("dilation")
  if isinstance(dilation, Sequence) and dilation and isinstance(dilation[0], Sequence):
    if len(dilation) != num_layers:
      raise errors.ConfigError(
          f"attention.dilation has {len(dilation)} per-layer entries but the model has "
          f"{num_layers} layers")
    options["dilation"] = dilation[layer]
  return options


def sinusoidal_positions(length: int, features: int) -> np.ndarray:
  """Fixed sin/cos position table `[length, features]` (Vaswani et al.)."""
  position = np.arange(length)[:, None]
  frequency = np.exp(-math.log(10000.0) * np.arange(0, features, 2) / features)
  table = np.zeros((length, features), np.float32)
  table[:, 0::2] = np.sin(position * frequency)
  table[:, 1::2] = np.cos(position * frequency[: features // 2])
  return table


class Mlp(nnx.Module):
  """Dense -> GELU -> dropout -> Dense."""

  def __init__(self, features: int, hidden: int, dropout_rate: float, dtype, rngs: nnx.Rngs):
    self.up = nnx.Linear(features, hidden, dtype=dtype, rngs=rngs)
    self.down = nnx.Linear(hidden, features, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(self, x, *, deterministic: bool, rngs):
    x = self.dropout(jax.nn.gelu(self.up(x)), deterministic=deterministic, rngs=rngs)
    return self.down(x)


class EncoderBlock(nnx.Module):
  """x + Attention(LN(x)), then x + Mlp(LN(x)), each with dropout on the residual branch."""

  def __init__(self, *, features: int, num_heads: int, mlp_dim: int, attention: Mapping,
               dropout_rate: float, attention_dropout_rate: float, dtype,
               rotary_positions: bool = False, rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(features, dtype=dtype, rngs=rngs)
    self.attention = SelfAttention(features, num_heads, attention=attention,
                                   dropout_rate=attention_dropout_rate, dtype=dtype,
                                   rotary_positions=rotary_positions, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(features, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(features, mlp_dim, dropout_rate, dtype, rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(self, x, *, padding_mask, global_mask, deterministic: bool, rngs,
               segment_ids=None):
    y = self.attention(self.attention_norm(x), padding_mask=padding_mask,
                       segment_ids=segment_ids, global_mask=global_mask,
                       deterministic=deterministic, rngs=rngs)
    x = x + self.dropout(y, deterministic=deterministic, rngs=rngs)
    y = self.mlp(self.mlp_norm(x), deterministic=deterministic, rngs=rngs)
    return x + self.dropout(y, deterministic=deterministic, rngs=rngs)

  def decode(self, x, cache: dict, position):
    """The block on `T` new positions `position ..`, attending over the rolling cache of a
    causal window (`SelfAttention.decode`); returns them and the updated cache."""
    y, cache = self.attention.decode(self.attention_norm(x), cache, position)
    x = x + y
    return x + self.mlp(self.mlp_norm(x), deterministic=True, rngs=None), cache


class Encoder(nnx.Module):
  """Token + position embedding, pre-LN blocks, final LayerNorm.

  `model` holds num_layers, emb_dim, num_heads, mlp_dim, dropout_rate,
  attention_dropout_rate, pos_emb ('sinusoidal' | 'learned' tables added to the embeddings,
  at most `max_length` positions; or 'rotary': relative positions inside attention, any
  length), dtype; `attention` the registry config (window and dilation may vary per layer).
  """

  def __init__(self, model, attention: Mapping[str, Any], *, vocab_size: int,
               max_length: int | None, rngs: nnx.Rngs):
    self.dtype = compute_dtype(model.dtype)
    self.embed = nnx.Embed(vocab_size, model.emb_dim, dtype=self.dtype, rngs=rngs)
    positions = None  # rotary: inside the attention layers
    if model.pos_emb == "learned":
      positions = nnx.Param(jax.random.normal(rngs.params(), (max_length, model.emb_dim)) * 0.02)
    elif model.pos_emb == "sinusoidal":
      positions = nnx.Variable(jnp.asarray(sinusoidal_positions(max_length, model.emb_dim)))
    elif model.pos_emb != "rotary":
      raise errors.ConfigError(
          f"model.pos_emb must be 'sinusoidal', 'learned' or 'rotary', got {model.pos_emb!r}")
    self.positions = positions
    self.max_length = max_length
    self.dropout = nnx.Dropout(model.dropout_rate)
    self.blocks = nnx.List([
        EncoderBlock(features=model.emb_dim, num_heads=model.num_heads,
                     mlp_dim=model.mlp_dim,
                     attention=layer_attention(attention, layer, model.num_layers),
                     dropout_rate=model.dropout_rate,
                     attention_dropout_rate=model.attention_dropout_rate, dtype=self.dtype,
                     rotary_positions=model.pos_emb == "rotary", rngs=rngs)
        for layer in range(model.num_layers)
    ])
    self.final_norm = nnx.LayerNorm(model.emb_dim, dtype=self.dtype, rngs=rngs)

  def embed_tokens(self, tokens_BxL):
    return self.embed(tokens_BxL)

  def _add_positions(self, x_BxLxE, start=0, positions_BxL=None):
    """The embeddings with the position table's rows added (rotary: none): those of
    `positions` (packed sequences: each restarts at 0), else `start ..`."""
    if self.positions is None:
      return x_BxLxE
    length = x_BxLxE.shape[1]
    if self.max_length is not None and length > self.max_length:
      raise errors.ConfigError(
          f"sequence of length {length} exceeds the model's max_length {self.max_length}")
    if positions_BxL is not None:
      return x_BxLxE + jnp.take(self.positions[...], positions_BxL, axis=0).astype(x_BxLxE.dtype)
    rows = jax.lax.dynamic_slice_in_dim(self.positions[...], start, length)
    return x_BxLxE + rows[None].astype(x_BxLxE.dtype)

  def init_cache(self, batch: int) -> list[dict]:
    """Empty rolling caches of every block (causal window attention only)."""
    return [block.attention.init_cache(batch) for block in self.blocks]

  def decode(self, x_BxTxE, caches: list[dict], position):
    """Encodes `T` new positions `position ..` over the blocks' caches (inference); returns
    the states `[batch, T, emb]` and the updated caches."""
    x = self._add_positions(x_BxTxE, position)
    updated = []
    for block, cache in zip(self.blocks, caches):
      x, cache = block.decode(x, cache, position)
      updated.append(cache)
    return self.final_norm(x), updated

  def __call__(self, x_BxLxE, *, padding_mask, global_mask=None, deterministic: bool = True,
               rngs=None, segment_ids=None, positions=None):
    """Encodes embeddings `[batch, length, emb]` (see `embed_tokens`); same shape out.

    Packed rows: `segment_ids` int `[batch, length]` (tokens attend within their segment)
    and `positions` int `[batch, length]` (each segment's own, from 0).
    """
    x = self._add_positions(x_BxLxE, positions_BxL=positions)
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    for block in self.blocks:
      x = block(x, padding_mask=padding_mask, segment_ids=segment_ids,
                global_mask=global_mask, deterministic=deterministic, rngs=rngs)
    return self.final_norm(x)

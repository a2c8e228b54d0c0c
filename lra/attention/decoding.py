"""Causal window attention, one chunk of new tokens at a time, over a rolling cache.

A causal window of `w` with dilation `d` reaches back `w * d` positions, so to attend new
tokens a layer needs the keys and values of only the last `w * max(d)` positions before
them: a ring buffer of `size = w * max(d) + 1` slots (static shapes: one compiled step
serves every position, and memory does not grow with the tokens generated). Position `p`
lives in slot `p % size`.

- `attend_chunk` runs `T > 1` new tokens (a prompt, a stretch of text being scored)
  through the same windowed core as training (`sliding.local_attention_with_lse`), on the
  cached keys in position order followed by the chunk's own;
- `attend_step` runs one new token against the ring directly: a dense `[1, size]` score row
  per head, masked to the head's dilation and window.

Both write the new keys and values into the ring and are exact: the outputs equal those of
the full causal call over the whole sequence.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from lra import errors
from lra.attention import common
from lra.attention import sliding


def cache_size(window: int, dilation: int | Sequence[int], num_heads: int) -> int:
  """Slots of the ring: the reach `window * max(dilation)` and the current position."""
  common.check_window(window)
  return window * max(common.dilation_per_head(dilation, num_heads)) + 1


def init_cache(batch: int, size: int, kv_heads: int, head_dim: int, dtype) -> dict:
  """An empty ring: keys and values `[batch, size, kv_heads, head_dim]`."""
  zeros = jnp.zeros((batch, size, kv_heads, head_dim), dtype)
  return {"k": zeros, "v": zeros}


def _slot_positions(size: int, position):
  """int32 `[size]`: the position each slot holds once positions `< position` are written
  (negative: never written)."""
  slots = jnp.arange(size, dtype=jnp.int32)
  return position - 1 - jnp.mod(position - 1 - slots, size)


def _write(cache: dict, k_BxTxKxD, v_BxTxKxD, position) -> dict:
  """The ring with the keys and values of positions `position ..` written in (only the
  last `size` of them when the chunk is longer than the ring)."""
  size, count = cache["k"].shape[1], k_BxTxKxD.shape[1]
  keep = min(count, size)
  slots = jnp.mod(position + count - keep + jnp.arange(keep), size)
  return {name: cache[name].at[:, slots].set(new[:, count - keep:].astype(cache[name].dtype))
          for name, new in (("k", k_BxTxKxD), ("v", v_BxTxKxD))}


def _check(q, k, cache):
  common.check_qkv(q, k, k)
  if cache["k"].shape[0] != q.shape[0] or cache["k"].shape[2:] != k.shape[2:]:
    raise errors.ConfigError(
        f"the cache holds [batch, slots, kv_heads, head_dim] = {cache['k'].shape}, which does "
        f"not fit keys of {k.shape}: make it with init_cache for this batch and model")


def attend_chunk(q, k, v, cache: dict, position, *, window: int, dilation=1,
                 block_size: int | None = None, implementation: str | None = None):
  """Causal window attention of `T` new tokens at positions `position .. position + T - 1`.

  Args:
    q: `[batch, T, heads, head_dim]` (rotated for their positions, if the model rotates).
    k, v: `[batch, T, kv_heads, head_dim]`.
    cache: the ring (`init_cache`) holding the positions before `position`.
    position: int32 scalar, the position of the first new token.
    window, dilation, block_size, implementation: as in `sliding_window_attention`.

  Returns:
    `(out [batch, T, heads, head_dim], the ring with the new keys and values)`.
  """
  _check(q, k, cache)
  size = cache["k"].shape[1]
  roll = lambda x: jnp.roll(x, -jnp.mod(position, size), axis=1)  # oldest slot first
  # The ring in position order: positions position - size .. position - 1.
  cached_valid = jnp.arange(size) >= size - position
  keys = jnp.concatenate([roll(cache["k"]).astype(k.dtype), k], axis=1)
  values = jnp.concatenate([roll(cache["v"]).astype(v.dtype), v], axis=1)
  batch, chunk = q.shape[:2]
  queries = jnp.concatenate([jnp.zeros((batch, size) + q.shape[2:], q.dtype), q], axis=1)
  new = jnp.ones((batch, chunk), bool)
  key_mask = jnp.concatenate([jnp.broadcast_to(cached_valid, (batch, size)), new], axis=1)
  query_mask = jnp.concatenate([jnp.zeros((batch, size), bool), new], axis=1)
  out, _ = sliding.local_attention_with_lse(
      queries, keys, values, window=window, dilation=dilation, causal=True,
      query_mask=query_mask, key_mask=key_mask, block_size=block_size,
      implementation=implementation)
  return out[:, size:], _write(cache, k, v, position)


def attend_step(q, k, v, cache: dict, position, *, window: int, dilation=1):
  """Causal window attention of one new token at `position`, against the ring directly.

  Arguments as in `attend_chunk`, with `T = 1`. Returns `(out [batch, 1, heads, head_dim],
  the ring with the new key and value)`.
  """
  _check(q, k, cache)
  cache = _write(cache, k, v, position)
  size = cache["k"].shape[1]
  heads = q.shape[2]
  held = _slot_positions(size, position + 1)  # [size]: `position` is the new token
  offset = (position - held)[None, :]
  dilations = jnp.asarray(common.dilation_per_head(dilation, heads))[:, None]  # [H, 1]
  visible = ((held[None, :] >= 0) & (offset <= window * dilations)
             & (jnp.mod(offset, dilations) == 0))  # [H, size]
  out, _ = common.attend_dense(q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype),
                               visible[None, None], 0.0, None)
  return out.astype(q.dtype), cache

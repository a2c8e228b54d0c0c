"""Dense masked attention and the boolean pattern of every mechanism: the test oracle.

Deliberately simple and slow: `pattern_mask` builds the full `[batch, heads, L, L]` pattern
and `dense_attention` evaluates it with one softmax per row. Every fast path in this package
is tested against these two functions; nothing else in the package builds an `L x L` array.
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from lra.attention import common


def dense_attention(q, k, v, *, mask=None, dropout_rate=0., dropout_rng=None):
  """Softmax attention over all keys allowed by `mask`.

  Args:
    q: queries `[batch, q_len, heads, head_dim]`.
    k: keys `[batch, k_len, kv_heads, head_dim]`, `kv_heads` dividing `heads` (query head
      h reads k/v head `h // (heads / kv_heads)`).
    v: values `[batch, k_len, kv_heads, head_dim]`.
    mask: optional bool `[batch, heads, q_len, k_len]` (broadcastable), True where the
      query may see the key. A query that sees no key gets an output of exactly 0.
    dropout_rate: attention dropout on the probabilities.
    dropout_rng: PRNG key, required when `dropout_rate > 0`.

  Returns:
    `[batch, q_len, heads, head_dim]` in the dtype of `q`.
  """
  common.check_dropout(dropout_rate, dropout_rng)
  group = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  scale = 1.0 / np.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
  logits = logits * scale
  if mask is None:
    mask = jnp.ones(logits.shape, bool)
  mask = jnp.broadcast_to(mask, logits.shape)
  probs = common.masked_softmax(logits, mask)
  probs = common.dropout(probs, dropout_rate, dropout_rng)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))
  return out.astype(q.dtype)


def pattern_mask(length: int,
                 *,
                 window: int | None = None,
                 dilation: int | Sequence[int] = 1,
                 causal: bool = False,
                 num_heads: int = 1,
                 global_mask=None,
                 padding_mask=None,
                 segment_ids=None):
  """Which keys each query sees, for every mechanism of the package.

  Args:
    length: sequence length L.
    window: one-sided window w, or None for all keys.
    dilation: int, or one int per head.
    causal: queries see only keys at or before them.
    num_heads: number of heads H.
    global_mask: optional bool `[batch, L]`: global keys are seen by every query, global
      queries see every key (padding aside). Not allowed with `causal`.
    padding_mask: optional bool `[batch, L]`, True for real tokens. Padded keys are never
      seen and padded queries see nothing.
    segment_ids: optional int `[batch, L]`: a query sees keys of its own segment only, in
      the window and through global tokens alike.

  Returns:
    bool `[batch, H, L, L]` (batch is 1 without global, padding or segment masks).
  """
  dilations = common.dilation_per_head(dilation, num_heads)
  if causal and global_mask is not None:
    raise common.causal_global_error()
  i = np.arange(length)[:, None]
  j = np.arange(length)[None, :]
  per_head = []
  for d in dilations:
    allowed = np.ones((length, length), bool)
    if window is not None:
      common.check_window(window)
      offset = j - i
      allowed &= (offset % d == 0) & (np.abs(offset) <= window * d)
    if causal:
      allowed &= j <= i
    per_head.append(allowed)
  mask = jnp.asarray(np.stack(per_head))[None]  # [1, H, L, L]
  if global_mask is not None:
    is_global = jnp.asarray(global_mask, bool)
    mask = mask | is_global[:, None, None, :] | is_global[:, None, :, None]
  if padding_mask is not None:
    real = jnp.asarray(padding_mask, bool)
    mask = mask & real[:, None, None, :] & real[:, None, :, None]
  if segment_ids is not None:
    segments = jnp.asarray(segment_ids)
    mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
  return mask


def longformer_reference(q, k, v, *, window, global_mask, dilation=1, global_q=None,
                         global_k=None, global_v=None, padding_mask=None, segment_ids=None):
  """Longformer attention from `pattern_mask` and two dense calls (the oracle).

  Rows of global queries are recomputed with the global projections when given: each
  global query sees every non-padded key of its segment, through `global_k`/`global_v`.
  """
  length, num_heads = q.shape[1], q.shape[2]
  mask = pattern_mask(length, window=window, dilation=dilation, num_heads=num_heads,
                      global_mask=global_mask, padding_mask=padding_mask,
                      segment_ids=segment_ids)
  out = dense_attention(q, k, v, mask=mask)
  if global_q is None:
    return out
  real = jnp.ones(q.shape[:2], bool) if padding_mask is None else padding_mask
  row_mask = real[:, None, None, :] & real[:, None, :, None]
  if segment_ids is not None:
    row_mask = row_mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  global_rows = dense_attention(global_q, global_k, global_v, mask=row_mask)
  is_global_row = (global_mask & real)[:, :, None, None]
  return jnp.where(is_global_row, global_rows, out)

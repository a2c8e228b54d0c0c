"""Longformer attention on one device: a sliding window plus symmetric global tokens.

Three pieces, merged exactly:
  1. every query x its window of keys, with global keys left out of the window;
  2. every query x all global keys (through the ordinary k/v), merged into the same
     softmax as (1) through the two log-sum-exps, so a global key inside a window is
     counted once;
  3. rows of global queries, recomputed against every non-padded key through the global
     projections `global_q/k/v` (q/k/v when not given) and scattered over the output.

With segment ids, a global token is global within its own segment: it sees, and is seen
by, the tokens of its segment only. Shapes stay static under `jax.jit` through a static
budget `max_global` of global tokens per row (`common.global_budget`).
"""

import jax
import jax.numpy as jnp

from lra.attention import common
from lra.attention import sliding


def attend(q, k, v, *, window: int, global_mask, dilation=1, global_q=None, global_k=None,
           global_v=None, padding_mask=None, segment_ids=None, dropout_rate: float = 0.,
           dropout_rng=None, block_size: int | None = None, max_global: int | None = None,
           implementation: str | None = None):
  """Longformer attention on one device: `lra.attention.longformer_attention` without
  `sequence_axis`. Returns `[batch, length, heads, head_dim]` in the dtype of q."""
  common.check_qkv(q, k, v)
  common.check_dropout(dropout_rate, dropout_rng)
  global_q, global_k, global_v = common.check_global_inputs(
      q, k, v, global_mask, global_q, global_k, global_v)
  segment_ids = common.check_segment_ids(segment_ids, q.shape[:2])
  real = common.real_tokens(q, padding_mask)
  is_global = jnp.asarray(global_mask, bool) & real
  budget, is_global = common.global_budget(is_global, global_mask, max_global)
  rngs = [None] * 3 if dropout_rate == 0 else list(jax.random.split(dropout_rng, 3))

  out, lse = sliding.local_attention_with_lse(
      q, k, v, window=window, dilation=dilation, causal=False, query_mask=real,
      key_mask=real & jnp.logical_not(is_global), segment_ids=segment_ids,
      dropout_rate=dropout_rate, dropout_rng=rngs[0], block_size=block_size,
      implementation=implementation)
  if budget == 0:
    return out

  positions, valid = common.global_positions(is_global, budget)
  slots = common.GlobalSlots(valid, common.gather_rows(k, positions),
                             common.gather_rows(v, positions),
                             None if segment_ids is None
                             else common.gather_rows(segment_ids, positions))
  to_globals, lse_globals = common.attend_dense(
      q, slots.keys, slots.values, slots.key_mask(segment_ids), dropout_rate, rngs[1])
  out = common.merge_softmaxes(out, lse, to_globals, lse_globals)

  global_rows, _ = common.attend_dense(
      common.gather_rows(global_q, positions), global_k, global_v,
      slots.row_mask(real, segment_ids), dropout_rate, rngs[2])
  out = common.scatter_rows(out, global_rows, positions, valid)
  return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)

"""Longformer attention: a sliding window plus symmetric global tokens, linear in length.

Three pieces, merged exactly:
  1. every query x its window of keys, with global keys left out of the window;
  2. every query x all global keys (through the ordinary k/v), merged into the same
     softmax as (1) through the two log-sum-exps, so a global key inside a window is
     counted once;
  3. rows of global queries, recomputed against every non-padded key through the global
     projections `global_q/k/v` (q/k/v when not given) and scattered over the output.

Shapes stay static under `jax.jit` through a static budget `max_global` of global tokens per
row; a row with more is an error the user sees, never a silently truncated answer.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lra import errors
from lra.attention import common
from lra.attention import sliding


def _concrete_counts(mask):
  """Global tokens per row `[B]` of a concrete mask; None when it is traced (under jit)."""
  try:
    return np.asarray(mask).astype(bool).sum(axis=1)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _global_budget(is_global, global_mask, max_global: int | None) -> int:
  """The static number of global slots per row, checked against the mask when concrete.

  `is_global` is `global_mask` less the padding. Under jit a traced padding mask makes it
  traced even when `global_mask` itself is concrete (a constant, or no global tokens at
  all): then the counts of `global_mask`, an upper bound, size the budget.
  """
  counts = _concrete_counts(is_global)
  if max_global is None:
    if counts is None:
      counts = _concrete_counts(global_mask)
    if counts is None:
      raise errors.ConfigError(
          "global_mask is traced (inside jax.jit), so the number of global tokens is not "
          "known when shapes are fixed: pass max_global=<the most global tokens of any row>")
    return int(counts.max(initial=0))
  if isinstance(max_global, bool) or not isinstance(max_global, int) or max_global < 0:
    raise errors.ConfigError(f"max_global must be an int >= 0, got {max_global!r}")
  if counts is not None:
    _raise_if_over_budget(counts, max_global)
  else:
    # The budget is bound statically: arguments of a callback arrive as device arrays, and
    # comparing one inside the callback would wait on the busy device (a deadlock).
    jax.debug.callback(functools.partial(_raise_if_over_budget, max_global=max_global),
                       jnp.sum(is_global, axis=1))
  return max_global


def _raise_if_over_budget(counts, max_global: int) -> None:
  counts = np.asarray(counts)
  if counts.size and counts.max() > max_global:
    raise errors.ConfigError(
        f"a row has {int(counts.max())} global tokens but max_global={max_global}; raise "
        f"max_global (the model's attention.max_global) to at least {int(counts.max())}")


def _global_positions(is_global, budget: int):
  """Positions of each row's global tokens, in order, `[B, budget]`, and their validity."""
  order = jnp.argsort(jnp.logical_not(is_global), axis=1, stable=True)[:, :budget]
  return order, jnp.take_along_axis(is_global, order, axis=1)


def _gather_rows(x_BxLxHxD, positions_BxG):
  return jnp.take_along_axis(x_BxLxHxD, positions_BxG[:, :, None, None], axis=1)


def _attend_dense(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask, dropout_rate, dropout_rng):
  """Small dense attention (one side has only global tokens); also returns the row lse."""
  scale = 1.0 / math.sqrt(q_BxQxHxD.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bqhk", q_BxQxHxD, k_BxKxHxD,
                      preferred_element_type=jnp.float32) * scale
  probs, lse = common.masked_softmax_with_lse(logits, mask)
  probs = common.dropout(probs, dropout_rate, dropout_rng)
  out = jnp.einsum("bqhk,bkhd->bqhd", probs.astype(v_BxKxHxD.dtype), v_BxKxHxD,
                   preferred_element_type=jnp.float32)
  return out, lse


def merge_softmaxes(out_a, lse_a, out_b, lse_b):
  """Exact softmax over the union of two disjoint key sets, from each part's output and lse.

  `out_*`: `[B, L, H, D]`, `lse_*`: `[B, L, H]`; empty parts (lse = EMPTY_ROW_LSE) get
  weight 0.
  """
  top = jax.lax.stop_gradient(jnp.maximum(lse_a, lse_b))
  weight_a, weight_b = jnp.exp(lse_a - top), jnp.exp(lse_b - top)
  total = weight_a + weight_b
  # Weighted with einsums so that the backward's sums over head_dim are dots too: XLA:CPU's
  # fused multiply-reduce over a short last axis runs ~50x slower than the equivalent dot.
  weigh = functools.partial(jnp.einsum, "blh,blhd->blhd", preferred_element_type=jnp.float32)
  return weigh(weight_a / total, out_a) + weigh(weight_b / total, out_b)


def longformer_attention(q, k, v, *, window: int, global_mask, dilation=1, global_q=None,
                         global_k=None, global_v=None, padding_mask=None,
                         dropout_rate: float = 0., dropout_rng=None,
                         block_size: int | None = None, max_global: int | None = None,
                         implementation: str | None = None,
                         sequence_axis: str | None = None):
  """Sliding-window attention plus symmetric global attention (Longformer, section 3.1).

  Args:
    q, k, v: `[batch, length, heads, head_dim]`; any length.
    window: one-sided window w of every non-global query.
    global_mask: bool `[batch, length]`; any positions, any number per row.
    dilation: int, or one int per head, for the window part.
    global_q, global_k, global_v: the separate global projections (all three or none).
    padding_mask: optional bool `[batch, length]`, True for real tokens.
    dropout_rate: attention dropout rate.
    dropout_rng: PRNG key, required when `dropout_rate > 0`.
    block_size: block size of the window part; None picks one.
    max_global: static number of global slots per row. Optional when `global_mask` is a
      concrete array (then its largest row count), even under `jax.jit`; required when
      `global_mask` is traced (an argument of a jitted function).
    implementation: of the window part, as in `sliding_window_attention`; the global
      pieces are small dense XLA computations either way.
    sequence_axis: split the length over this axis of the mesh in context, as in
      `sliding_window_attention`; global tokens travel as their `max_global` slots.

  Returns:
    `[batch, length, heads, head_dim]` in the dtype of q.
  """
  if sequence_axis is not None:
    from lra.attention import sequence_parallel  # pylint: disable=g-import-not-at-top
    return sequence_parallel.sharded_longformer_attention(
        q, k, v, sequence_axis=sequence_axis, window=window, global_mask=global_mask,
        dilation=dilation, global_q=global_q, global_k=global_k, global_v=global_v,
        padding_mask=padding_mask, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
        block_size=block_size, max_global=max_global, implementation=implementation)
  sliding.check_qkv(q, k, v)
  common.check_dropout(dropout_rate, dropout_rng)
  given = [x is not None for x in (global_q, global_k, global_v)]
  if any(given) and not all(given):
    raise errors.ConfigError("pass all of global_q, global_k, global_v, or none of them")
  if all(given):
    for x in (global_q, global_k, global_v):
      if x.shape[:3] != q.shape[:3]:
        raise errors.ConfigError(
            f"global projections must match q's [batch, length, heads]: {x.shape} vs {q.shape}")
  else:
    global_q, global_k, global_v = q, k, v
  if global_mask is None or tuple(global_mask.shape) != q.shape[:2]:
    raise errors.ConfigError(
        f"global_mask must be bool [batch, length] = {q.shape[:2]}, got "
        f"{None if global_mask is None else global_mask.shape}")
  real = jnp.ones(q.shape[:2], bool) if padding_mask is None else padding_mask.astype(bool)
  is_global = jnp.asarray(global_mask, bool) & real
  budget = _global_budget(is_global, global_mask, max_global)
  rngs = [None] * 3 if dropout_rate == 0 else list(jax.random.split(dropout_rng, 3))

  out, lse = sliding.local_attention_with_lse(
      q, k, v, window=window, dilation=dilation, causal=False, query_mask=real,
      key_mask=real & jnp.logical_not(is_global), dropout_rate=dropout_rate,
      dropout_rng=rngs[0], block_size=block_size, implementation=implementation)
  if budget == 0:
    return out

  positions, valid = _global_positions(is_global, budget)
  to_globals, lse_globals = _attend_dense(
      q, _gather_rows(k, positions), _gather_rows(v, positions),
      valid[:, None, None, :], dropout_rate, rngs[1])
  out = merge_softmaxes(out, lse, to_globals, lse_globals)

  global_rows, _ = _attend_dense(
      _gather_rows(global_q, positions), global_k, global_v, real[:, None, None, :],
      dropout_rate, rngs[2])
  batch_index = jnp.arange(q.shape[0])[:, None]
  # Unused slots point past the end and are dropped by the scatter.
  out = out.at[batch_index, jnp.where(valid, positions, q.shape[1])].set(
      global_rows, mode="drop")
  return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)

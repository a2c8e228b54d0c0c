"""Tile arithmetic shared by the GPU and TPU band kernels.

Each function works on one `[bq, bk]` tile of scores: a block of `bq` queries against a
block of `bk` keys, with queries and keys in VMEM/registers as `[rows, head_dim]`. Row
statistics are kept as `[rows, 1]` columns so that they broadcast over a tile without a
relayout on either backend. The softmax is float32 whatever the input dtype.

Masked scores are set to `MASKED_SCORE`, a finite number, never -inf: a row that has seen no
key yet keeps a running maximum of `MASKED_SCORE`, its rescale factor `exp(m - m_new)` is
`exp(0) = 1` and its probabilities are 0, so that nothing is NaN before, during or after the
first visible key.
"""

import jax
import jax.numpy as jnp

from lra.attention import common

MASKED_SCORE = -1e30


def _dot(a, b, contracting):
  # float32 operands multiply in full float32 (Triton's default for them is TF32, which
  # would make a float32 kernel only ~1e-3 exact); 16-bit ones at the native rate.
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, (contracting, ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def dot_nt(a_MxK, b_NxK):
  """`a @ b.T` with float32 accumulation."""
  return _dot(a_MxK, b_NxK, ((1,), (1,)))


def dot_nn(a_MxK, b_KxN):
  """`a @ b` with float32 accumulation."""
  return _dot(a_MxK, b_KxN, ((1,), (0,)))


def dot_tn(a_KxM, b_KxN):
  """`a.T @ b` with float32 accumulation."""
  return _dot(a_KxM, b_KxN, ((0,), (0,)))


def band_mask(query_start, key_start, shape, *, window: int, causal: bool):
  """bool `[bq, bk]`: which keys of the tile are within the window of each query.

  Query `i` sees key `j` iff `|j - i| <= window`, or `0 <= i - j <= window` when causal.
  """
  query = query_start + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  key = key_start + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  offset = key - query
  upper = 0 if causal else window
  return (offset <= upper) & (offset >= -window)


def initial_softmax_state(rows: int, head_dim: int):
  """Running maximum, running sum `[rows, 1]` and unnormalised output `[rows, D]`."""
  return (jnp.full((rows, 1), MASKED_SCORE, jnp.float32),
          jnp.zeros((rows, 1), jnp.float32),
          jnp.zeros((rows, head_dim), jnp.float32))


def softmax_step(state, q_QxD, k_KxD, v_KxD, mask_QxK, scale: float):
  """Online-softmax update of `state` with one tile of keys (FlashAttention's inner step)."""
  row_max, row_sum, acc_QxD = state
  scores = jnp.where(mask_QxK, dot_nt(q_QxD, k_KxD) * scale, MASKED_SCORE)
  new_max = jnp.maximum(row_max, jnp.max(scores, axis=1, keepdims=True))
  probs = jnp.where(mask_QxK, jnp.exp(scores - new_max), 0.0)
  rescale = jnp.exp(row_max - new_max)
  row_sum = rescale * row_sum + jnp.sum(probs, axis=1, keepdims=True)
  acc_QxD = rescale * acc_QxD + dot_nn(probs.astype(v_KxD.dtype), v_KxD)
  return new_max, row_sum, acc_QxD


def finish_softmax(state, query_valid_Qx1):
  """Normalised output `[rows, D]` (0 on padded rows and rows that saw no key) and the
  row log-sum-exp `[rows, 1]` (`common.EMPTY_ROW_LSE` for rows that saw no key)."""
  row_max, row_sum, acc_QxD = state
  nonempty = row_sum > 0
  safe_sum = jnp.where(nonempty, row_sum, 1.0)
  out = jnp.where(nonempty & query_valid_Qx1, acc_QxD / safe_sum, 0.0)
  lse = jnp.where(nonempty, row_max + jnp.log(safe_sum), common.EMPTY_ROW_LSE)
  return out, lse


def tile_gradients(q_QxD, k_KxD, v_KxD, d_out_QxD, lse_Qx1, delta_Qx1, mask_QxK,
                   scale: float):
  """Probabilities and score gradients of one tile, recomputed from the saved lse.

  `delta` is FlashAttention's row term `<dO, O>` less the cotangent of the lse output, so
  that `d scores = P * (dP - delta)` (times `scale` for the gradients of q and k). Returns
  `(probs, d_scores)`, both float32 `[bq, bk]`.
  """
  scores = dot_nt(q_QxD, k_KxD) * scale
  probs = jnp.where(mask_QxK, jnp.exp(scores - lse_Qx1), 0.0)
  d_probs = dot_nt(d_out_QxD, v_KxD)
  return probs, probs * (d_probs - delta_Qx1)

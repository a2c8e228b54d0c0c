"""Tile arithmetic shared by the GPU and TPU band kernels.

Each function works on one tile of scores: a block of queries against a block of keys, with
queries, keys and values in registers/VMEM as `[rows, head_dim]`. The backward's dK/dV side
computes the transposed tile (keys as rows) directly, so no `[queries, keys]` matrix is
transposed; the functions take the orientation from the shapes of their row statistics
(`[rows, 1]` columns for query rows, `[1, cols]` rows for query columns).

Scores live in base 2: `s * log2(e)` is folded into the scale, and the softmax uses `exp2`,
the GPU's native exponential. The log-sum-exp handed to callers stays in natural log.
Masked scores are set to `MASKED_SCORE`, a finite number, never -inf: a row that has seen no
key yet keeps a running maximum of `MASKED_SCORE`, its rescale factor `exp2(m - m_new)` is
`exp2(0) = 1` and its probabilities are 0, so that nothing is NaN before, during or after the
first visible key. Tiles that need no mask (wholly inside the window, every key valid, one
segment) skip building it (`mask=None`).
"""

import math

import jax
import jax.numpy as jnp

from lra.attention import common

MASKED_SCORE = -1e30
LOG2_E = 1.0 / math.log(2.0)


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


def positions(start, size: int, axis: int):
  """int32 positions `start .. start + size - 1` as a `[size, 1]` column (axis 0) or a
  `[1, size]` row (axis 1)."""
  shape = (size, 1) if axis == 0 else (1, size)
  return start + jax.lax.broadcasted_iota(jnp.int32, shape, axis)


def band_mask(query, key, *, window: int, causal: bool):
  """bool tile: which keys are within the window of which queries; `query` and `key` are
  position columns/rows (`positions`) that broadcast to the tile.

  Query `i` sees key `j` iff `|j - i| <= window`, or `0 <= i - j <= window` when causal.
  """
  offset = key - query
  upper = 0 if causal else window
  return (offset <= upper) & (offset >= -window)


def initial_softmax_state(rows: int, head_dim: int):
  """Running maximum, running sum `[rows, 1]` and unnormalised output `[rows, D]`."""
  return (jnp.full((rows, 1), MASKED_SCORE, jnp.float32),
          jnp.zeros((rows, 1), jnp.float32),
          jnp.zeros((rows, head_dim), jnp.float32))


def softmax_step(state, q_QxD, k_KxD, v_KxD, scale_log2: float, mask_QxK=None, keep_QxK=None):
  """Online-softmax update of `state` with one tile of keys (FlashAttention's inner step).

  `scale_log2` is `log2(e) / sqrt(head_dim)`. `keep` drops weights from the output but not
  from the normaliser (inverted dropout; `finish_softmax` rescales the kept ones).
  """
  row_max, row_sum, acc_QxD = state
  scores = dot_nt(q_QxD, k_KxD) * scale_log2
  if mask_QxK is not None:
    scores = jnp.where(mask_QxK, scores, MASKED_SCORE)
  new_max = jnp.maximum(row_max, jnp.max(scores, axis=1, keepdims=True))
  probs = jnp.exp2(scores - new_max)
  if mask_QxK is not None:
    probs = jnp.where(mask_QxK, probs, 0.0)
  rescale = jnp.exp2(row_max - new_max)
  row_sum = rescale * row_sum + jnp.sum(probs, axis=1, keepdims=True)
  if keep_QxK is not None:
    probs = jnp.where(keep_QxK, probs, 0.0)
  acc_QxD = rescale * acc_QxD + dot_nn(probs.astype(v_KxD.dtype), v_KxD)
  return new_max, row_sum, acc_QxD


def finish_softmax(state, query_valid_Qx1, dropout_rate: float = 0.0):
  """Normalised output `[rows, D]` (0 on padded rows and rows that saw no key) and the
  natural-log row log-sum-exp `[rows, 1]` (`common.EMPTY_ROW_LSE` for rows that saw no
  key). With dropout the kept weights are scaled by `1 / (1 - dropout_rate)`."""
  row_max, row_sum, acc_QxD = state
  nonempty = row_sum > 0
  norm = jnp.where(nonempty & query_valid_Qx1,
                   (1.0 / (1.0 - dropout_rate)) / jnp.where(nonempty, row_sum, 1.0), 0.0)
  lse = jnp.where(nonempty, (row_max + jnp.log2(jnp.where(nonempty, row_sum, 1.0))) / LOG2_E,
                  common.EMPTY_ROW_LSE)
  return acc_QxD * norm, lse


def tile_gradients(x_AxD, y_BxD, dx_AxE, dy_BxE, lse_log2, delta, scale_log2: float,
                   mask=None, keep=None, dropout_rate: float = 0.0):
  """Probabilities and score gradients of one tile, recomputed from the saved lse.

  Scores are `x @ y.T` and their cotangents' factor `dP = dx @ dy.T`. Query rows: `x = q`,
  `y = k`, `dx = dO`, `dy = v`, and `lse_log2`, `delta` are `[queries, 1]` columns. The
  transposed tile (keys as rows, for dK/dV): `x = k`, `y = q`, `dx = v`, `dy = dO`, with
  `[1, queries]` rows. `lse_log2` is the
  natural lse times `log2(e)`; `delta` is FlashAttention's row term `<dO, O>` less the
  cotangent of the lse output, so that `d scores = P * (dP - delta)` (times the natural
  scale for the gradients of q and k). With dropout `dP` is taken through the keep-mask.

  Returns `(dropped_probs, d_scores)`, both float32 tiles: the probabilities as the output
  used them (dropped and rescaled), for dV, and the score gradients.
  """
  probs = jnp.exp2(dot_nt(x_AxD, y_BxD) * scale_log2 - lse_log2)
  if mask is not None:
    probs = jnp.where(mask, probs, 0.0)
  d_probs = dot_nt(dx_AxE, dy_BxE)
  dropped = probs
  if keep is not None:
    scale = 1.0 / (1.0 - dropout_rate)
    d_probs = jnp.where(keep, d_probs * scale, 0.0)
    dropped = jnp.where(keep, probs * scale, 0.0)
  return dropped, probs * (d_probs - delta)


def query_hashes(seed, row, query):
  """Dropout hashes of the queries at positions `query` (a column or row) of `row`."""
  return common.dropout_query_hash(common.dropout_row_hash(seed, row), query)

"""The XLA core: blocked window attention on one sequence, exact and linear in length.

The sequence is cut into blocks of `b` positions (`common.BandPlan`). Query block `i`
computes scores against the keys of blocks `i - c .. i + c` (`i - c .. i` when causal),
`c = ceil(w / b)`, one contiguous window (shifted inwards at the ends of the sequence), and
a `[b, keys]` mask keeps exactly the keys within the window, valid and of the query's
segment. Each query thus computes `2w + b` scores when `b` divides `w` (`w + b` causal).

Memory is linear: a loop runs over the query blocks, so one block's scores exist at a time,
and a custom VJP recomputes the probabilities block by block in the backward pass from the
saved per-row log-sum-exp (as FlashAttention does) instead of keeping every block's
probabilities. Attention dropout regenerates its mask from `common.dropout_keep`, the hash
the Pallas kernels use too.

Grouped heads: q has `H = K * G` heads and k, v have `K`; query head `h` reads k/v head
`h // G`, computed as a `[K, G]` grid of heads, so k and v are never repeated.
"""

import functools
import math

import jax
import jax.numpy as jnp

from lra.attention import common


def _band_mask(plan: common.BandPlan, index, key_start):
  """bool `[b, keys]`: which keys of the window each query of block `index` sees."""
  query = index * plan.block + jnp.arange(plan.block)[:, None]
  offset = key_start + jnp.arange(plan.keys)[None, :] - query  # key minus query position
  if plan.causal:
    return (offset <= 0) & (offset >= -plan.window)
  return jnp.abs(offset) <= plan.window


# Operand layouts. The CPU matmul kernels take `[batch, M, K] @ [batch, K, N]`, so the keys
# and values, which every block's window reads, are laid out head-major once per call: k as
# `[N, K, D, L]` (the orientation q @ k^T reads), v as `[N, K, L, D]` (probs @ v). A window is
# then one contiguous slice, with no per-window gather or transpose. The backward reuses these
# two layouts rather than making k `[N, K, L, D]` and v `[N, K, D, L]` as well: two more
# whole arrays of memory, to save a transpose of each window in cache. Query-side arrays stay
# in the caller's `[N, L, H, D]`; each block's slice is transposed where it is used.


def _columns_major(x_NxLxKxD):
  """`[N, L, K, D]` -> `[N, K, D, L]`."""
  return jnp.transpose(x_NxLxKxD, (0, 2, 3, 1))


def _heads_first(x_NxLxH):
  """`[N, L, H, ...]` -> `[N, H, L, ...]` (and back: the map is its own inverse)."""
  return jnp.swapaxes(x_NxLxH, 1, 2)


class _Block:
  """Operands and scores of query block `index` (shared by forward and backward).

  Scores are `[N, K, G, b, keys]` over the block's window of keys, from
  `BandPlan.window_start` on.
  """

  def __init__(self, plan: common.BandPlan, index, q, k_columns, key_mask, segment_ids,
               seed, dropout_rate):
    """`q [N, L, H, D]`, `k_columns [N, K, D, L]`, `key_mask [N, L]`, `segment_ids [N, L]`."""
    self.plan = plan
    self.start = index * plan.block
    self.key_start = plan.window_start(index)
    n, _, heads, head_dim = q.shape
    self.kv_heads = k_columns.shape[1]
    group = heads // self.kv_heads
    self.q = _heads_first(self.rows(q)).reshape(n, self.kv_heads, group, plan.block, head_dim)
    # [N, 1, 1, b, keys]: inside the window band, the key is valid and of the query's segment.
    mask = _band_mask(plan, index, self.key_start)[None] & self.window(key_mask, 1)[:, None]
    if segment_ids is not None:
      mask &= self.rows(segment_ids)[:, :, None] == self.window(segment_ids, 1)[:, None, :]
    self.mask = mask[:, None, None]
    self.scale = 1.0 / math.sqrt(head_dim)
    self.logits = jnp.einsum("nkgqd,nkdl->nkgql", self.q, self.window(k_columns, 3),
                             preferred_element_type=jnp.float32) * self.scale
    self.keep = None
    if dropout_rate:
      row = (jnp.arange(n)[:, None, None] * heads +
             jnp.arange(heads).reshape(1, self.kv_heads, group))[..., None, None]
      query = (self.start + jnp.arange(plan.block)).reshape(1, 1, 1, -1, 1)
      key = (self.key_start + jnp.arange(plan.keys)).reshape(1, 1, 1, 1, -1)
      query_hash = common.dropout_query_hash(common.dropout_row_hash(seed, row), query)
      self.keep = common.dropout_keep(query_hash, key, dropout_rate)

  def rows(self, x_NxL):
    """This block's rows `[N, b, ...]` of a per-position array `[N, L, ...]`."""
    return jax.lax.dynamic_slice_in_dim(x_NxL, self.start, self.plan.block, axis=1)

  def write_rows(self, x_NxLxH, rows_NxKxGxb):
    """Writes grouped head-major rows `[N, K, G, b, ...]` of this block into `[N, L, H, ...]`."""
    n, k, g, b = rows_NxKxGxb.shape[:4]
    rows = _heads_first(rows_NxKxGxb.reshape(n, k * g, b, *rows_NxKxGxb.shape[4:]))
    return jax.lax.dynamic_update_slice_in_dim(x_NxLxH, rows.astype(x_NxLxH.dtype),
                                               self.start, axis=1)

  def grouped_rows(self, x_NxLxH):
    """This block's rows of `[N, L, H, ...]` as `[N, K, G, b, ...]`."""
    rows = _heads_first(self.rows(x_NxLxH))
    return rows.reshape(rows.shape[0], self.kv_heads, -1, *rows.shape[2:])

  def window(self, x, axis):
    """This block's `keys` key positions of `x` along `axis`."""
    return jax.lax.dynamic_slice_in_dim(x, self.key_start, self.plan.keys, axis=axis)

  def add_window(self, x, update, axis):
    """`x` with `update` added to this block's window along `axis`."""
    return jax.lax.dynamic_update_slice_in_dim(
        x, self.window(x, axis) + update, self.key_start, axis=axis)

  def dropped(self, x, dropout_rate):
    """`x` under the block's dropout mask, kept weights scaled by `1 / (1 - rate)`."""
    if self.keep is None:
      return x
    return jnp.where(self.keep, x / (1.0 - dropout_rate), 0.0)


def _forward(plan, dropout_rate, q, k, v, query_mask, key_mask, segment_ids, seed):
  """Forward pass; returns the output `[N, L, H, D]` and the row log-sum-exp `[N, L, H]`."""
  k_columns, v_rows = _columns_major(k), _heads_first(v)

  def body(index, carry):
    out, lse = carry
    c = _Block(plan, index, q, k_columns, key_mask, segment_ids, seed, dropout_rate)
    row_max = jnp.max(jnp.where(c.mask, c.logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    probs = jnp.where(c.mask, jnp.exp(c.logits - row_max), 0.0)  # unnormalised
    total = jnp.sum(probs, axis=-1)  # [N, K, G, b]
    block_lse = jnp.where(total > 0, row_max[..., 0] + jnp.log(total), common.EMPTY_ROW_LSE)
    block_out = jnp.einsum("nkgql,nkld->nkgqd", c.dropped(probs, dropout_rate).astype(v.dtype),
                           c.window(v_rows, 2), preferred_element_type=jnp.float32)
    query_valid = c.rows(query_mask)[:, None, None, :]
    norm = jnp.where((total > 0) & query_valid, 1.0 / total, 0.0)
    return (c.write_rows(out, block_out * norm[..., None]), c.write_rows(lse, block_lse))

  out = jnp.zeros(q.shape, q.dtype)
  lse = jnp.zeros(q.shape[:3], jnp.float32)
  return jax.lax.fori_loop(0, plan.num_blocks, body, (out, lse))


def _backward(plan, dropout_rate, residuals, cotangents):
  """Backward pass: recomputes each block's probabilities from the saved log-sum-exp."""
  q, k, v, query_mask, key_mask, segment_ids, seed, out, lse = residuals
  d_out, d_lse = cotangents
  # Row-wise <dO, O> (FlashAttention's D) minus the cotangent of the log-sum-exp output:
  # d logits = P * (dP - D + d_lse). Padded query rows get no gradient: their output is a
  # constant 0. (dO is masked block by block below, so no masked copy of it is stored.)
  # (An einsum, not sum(dO * O): XLA:CPU's fused multiply-reduce over a short last axis
  # runs ~50x slower than the equivalent dot.)
  delta = jnp.einsum("nlhd,nlhd->nlh", d_out, out, preferred_element_type=jnp.float32)
  delta = jnp.where(query_mask[..., None], delta - d_lse, 0.0)  # [N, L, H]
  k_columns, v_rows = _columns_major(k), _heads_first(v)

  def body(index, carry):
    d_q, d_k, d_v = carry
    c = _Block(plan, index, q, k_columns, key_mask, segment_ids, seed, dropout_rate)
    probs = jnp.where(c.mask, jnp.exp(c.logits - c.grouped_rows(lse)[..., None]), 0.0)
    block_d_out = jnp.where(c.rows(query_mask)[..., None, None], c.rows(d_out), 0)
    block_d_out = c.grouped_rows(block_d_out.astype(q.dtype))  # [N, K, G, b, D]
    d_probs = c.dropped(jnp.einsum("nkgqd,nkld->nkgql", block_d_out, c.window(v_rows, 2),
                                   preferred_element_type=jnp.float32), dropout_rate)
    d_logits = probs * (d_probs - c.grouped_rows(delta)[..., None]) * c.scale
    d_logits = d_logits.astype(q.dtype)
    block_d_q = jnp.einsum("nkgql,nkdl->nkgqd", d_logits, c.window(k_columns, 3),
                           preferred_element_type=jnp.float32)
    d_k_window = jnp.einsum("nkgql,nkgqd->nkld", d_logits, c.q,
                            preferred_element_type=jnp.float32)
    d_v_window = jnp.einsum("nkgql,nkgqd->nkld",
                            c.dropped(probs, dropout_rate).astype(v.dtype), block_d_out,
                            preferred_element_type=jnp.float32)
    # Windows of neighbouring blocks overlap: their key gradients add, in the caller's
    # layout (rows of D, a cheap transpose in cache), so the accumulators are the outputs.
    return (c.write_rows(d_q, block_d_q),
            c.add_window(d_k, _heads_first(d_k_window), axis=1),
            c.add_window(d_v, _heads_first(d_v_window), axis=1))

  zeros = jnp.zeros(k.shape, jnp.float32)
  d_q, d_k, d_v = jax.lax.fori_loop(0, plan.num_blocks, body,
                                    (jnp.zeros(q.shape, q.dtype), zeros, zeros))
  return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None, None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def band_attention(plan: common.BandPlan, dropout_rate: float, q, k, v, query_mask, key_mask,
                   segment_ids, seed):
  """Undilated window attention on a sequence already padded to `plan.length`.

  Args:
    plan: static shapes, from `common.plan_band`.
    dropout_rate: attention dropout rate (static).
    q: `[N, plan.length, H, D]`.
    k, v: `[N, plan.length, K, D]`, `K` dividing `H`.
    query_mask: bool `[N, plan.length]`; rows where False get an output of exactly 0.
    key_mask: bool `[N, plan.length]`; keys where False are never seen.
    segment_ids: int32 `[N, plan.length]` (a query sees keys of its own segment only), or
      None for one segment.
    seed: int32 scalar of the dropout hash (`common.dropout_seed`), or None without dropout.

  Returns:
    The output `[N, L, H, D]` (dtype of q) and the float32 log-sum-exp of each row's scores
    `[N, L, H]` (`common.EMPTY_ROW_LSE` for rows that see no key).
  """
  return _forward(plan, dropout_rate, q, k, v, query_mask, key_mask, segment_ids, seed)


def _band_attention_fwd(plan, dropout_rate, q, k, v, query_mask, key_mask, segment_ids, seed):
  out, lse = _forward(plan, dropout_rate, q, k, v, query_mask, key_mask, segment_ids, seed)
  return (out, lse), (q, k, v, query_mask, key_mask, segment_ids, seed, out, lse)


band_attention.defvjp(_band_attention_fwd, _backward)

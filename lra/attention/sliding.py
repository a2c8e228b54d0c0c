"""Blocked sliding-window attention: bidirectional, causal and dilated per head.

The sequence is cut into blocks of `b` positions. Query block `i` computes scores against
key blocks `i - c .. i + c` (`i - c .. i` when causal), `c = ceil(w / b)`, and a static
`[b, keys]` band mask keeps exactly the keys within the window. Each query thus computes
`2w + b` scores when `b` divides `w` (`w + b` causal), against HuggingFace's ~4w.

Memory is linear: a loop runs over chunks of query blocks, so at most one chunk of scores
exists at a time, and a custom VJP recomputes the probabilities chunk by chunk in the
backward pass from the saved per-row log-sum-exp (as FlashAttention does) instead of keeping
every block's probabilities.

Dilation is exact with a reshape: a window of dilation `d` on `x` is an undilated window on
each residue class `x[r::d]`, so those classes are folded into the batch and heads sharing a
dilation share one call.
"""

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lra import errors
from lra.attention import common

# Score elements one loop iteration may hold (per array); bounds the working set of a chunk.
_CHUNK_SCORE_BUDGET = 1 << 20


@dataclasses.dataclass(frozen=True)
class BandPlan:
  """Static shape plan of one banded call.

  Attributes:
    window: one-sided window w, in positions of the (undilated) sequence.
    causal: whether keys after the query are excluded.
    block: b, positions per query block and per key block.
    reach: c, key blocks on each side of a query block (left only when causal).
    num_blocks: blocks after padding; a multiple of `chunk`.
    chunk: query blocks per loop iteration.
    dropout_rate: attention dropout rate.
  """

  window: int
  causal: bool
  block: int
  reach: int
  num_blocks: int
  chunk: int
  dropout_rate: float = 0.0

  @property
  def span(self) -> int:
    """Key blocks seen by one query block."""
    return self.reach + 1 if self.causal else 2 * self.reach + 1

  @property
  def keys(self) -> int:
    """Keys scored per query."""
    return self.span * self.block

  @property
  def length(self) -> int:
    return self.num_blocks * self.block

  @property
  def num_chunks(self) -> int:
    return self.num_blocks // self.chunk


def auto_block_size(window: int, length: int) -> int:
  """Block size keeping the wasted scores near `b / 2w` while blocks stay matmul-sized.

  The largest power of two <= w / 2, within [32, 128]: at w >= 64 each query computes at
  most 1.25 x the 2w + 1 scores it needs; below, blocks of 32 waste more scores but save the
  per-block overhead, which dominates on small windows.
  """
  block = 1 << max(0, (window // 2).bit_length() - 1)
  block = min(max(block, 32), 128)
  return max(1, min(block, 1 << (length - 1).bit_length()))


def plan_band(length: int, window: int, causal: bool, block_size: int | None,
              rows: int, dropout_rate: float = 0.0) -> BandPlan:
  """Chooses block and chunk sizes for a sequence of `length` and `rows` = batch x heads."""
  if block_size is None:
    block = auto_block_size(window, length)
  elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
    raise errors.ConfigError(f"block_size must be a positive int or None, got {block_size!r}")
  else:
    block = block_size
  num_blocks = -(-length // block)
  # Key blocks further than the sequence add nothing: a window wider than the sequence
  # costs at most the full sequence.
  reach = min(-(-window // block), max(num_blocks - 1, 0))
  span = reach + 1 if causal else 2 * reach + 1
  chunk = max(1, min(num_blocks, _CHUNK_SCORE_BUDGET // (rows * block * span * block)))
  # Prefer a chunk that divides the blocks (no padding) unless that halves the chunk.
  for candidate in range(chunk, (chunk + 1) // 2 - 1, -1):
    if num_blocks % candidate == 0:
      chunk = candidate
      break
  num_blocks = -(-num_blocks // chunk) * chunk
  return BandPlan(window=window, causal=causal, block=block, reach=reach,
                  num_blocks=num_blocks, chunk=chunk, dropout_rate=dropout_rate)


def _band_mask(plan: BandPlan) -> np.ndarray:
  """bool `[b, keys]`: query offset in its block x key offset in the block's key window."""
  query = np.arange(plan.block)[:, None]
  key = np.arange(plan.keys)[None, :] - plan.reach * plan.block
  offset = key - query  # key position minus query position
  if plan.causal:
    return (offset <= 0) & (offset >= -plan.window)
  return np.abs(offset) <= plan.window


def _key_blocks(chunk_index, plan: BandPlan):
  """Key block indices `[chunk, span]` of a chunk's query blocks, clipped, and validity."""
  first = chunk_index * plan.chunk
  blocks = (first + jnp.arange(plan.chunk)[:, None] + jnp.arange(plan.span)[None, :] -
            plan.reach)
  valid = (blocks >= 0) & (blocks < plan.num_blocks)
  return jnp.clip(blocks, 0, plan.num_blocks - 1), valid


def _window(x_NxBxb, blocks_mxs):
  """Gathers key windows: `[N, nb, b, ...]` -> `[N, m, span * b, ...]`."""
  x = x_NxBxb[:, blocks_mxs]  # [N, m, span, b, ...]
  return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])


def _to_blocks(x, plan: BandPlan):
  """`[N, L, ...]` -> `[N, nb, b, ...]`."""
  return x.reshape(x.shape[0], plan.num_blocks, plan.block, *x.shape[2:])


def _heads_first(x_NxMxBxH):
  """`[N, m, b, H, ...]` -> `[N, m, H, b, ...]` (and back: the map is its own inverse)."""
  return jnp.swapaxes(x_NxMxBxH, 2, 3)


class _Chunk:
  """Inputs and scores of one chunk of query blocks (shared by forward and backward).

  Arrays keep the caller's `[N, L, H, D]` layout; scores are `[N, m, H, b, keys]`. Only the
  small per-chunk operands are laid out head-major for the matmuls, so no head-major copy
  of a whole q, k, v or gradient is ever made.
  """

  def __init__(self, plan: BandPlan, q, k_blocks, v_blocks, key_mask_blocks, chunk_index):
    b, m = plan.block, plan.chunk
    self.plan = plan
    self.start = chunk_index * m * b
    self.q = self.rows(q)  # [N, m, b, H, D]
    self.blocks, valid = _key_blocks(chunk_index, plan)
    self.k = _window(k_blocks, self.blocks)  # [N, m, keys, H, D]
    self.v = _window(v_blocks, self.blocks)
    key_valid = _window(key_mask_blocks, self.blocks) & jnp.repeat(valid, b, axis=1)[None]
    # [N, m, 1, b, keys]: inside the window band, and the key exists and is not masked.
    self.mask = _band_mask(plan)[None, None, None] & key_valid[:, :, None, None, :]
    self.scale = 1.0 / math.sqrt(q.shape[-1])
    self.logits = jnp.einsum("nmqhd,nmkhd->nmhqk", self.q, self.k,
                             preferred_element_type=jnp.float32) * self.scale

  def rows(self, x_NxL):
    """This chunk's rows of a per-position array `[N, L, ...]`, as `[N, m, b, ...]`."""
    x = jax.lax.dynamic_slice_in_dim(x_NxL, self.start, self.plan.chunk * self.plan.block,
                                     axis=1)
    return x.reshape(x.shape[0], self.plan.chunk, self.plan.block, *x.shape[2:])

  def write_rows(self, x_NxL, chunk_rows):
    """Writes `[N, m, b, ...]` rows of this chunk into the per-position array."""
    chunk_rows = chunk_rows.reshape(x_NxL.shape[0], -1, *x_NxL.shape[2:])
    return jax.lax.dynamic_update_slice_in_dim(x_NxL, chunk_rows.astype(x_NxL.dtype),
                                               self.start, axis=1)

  def keep_mask(self, rng, chunk_index, shape):
    return jax.random.bernoulli(jax.random.fold_in(rng, chunk_index),
                                1.0 - self.plan.dropout_rate, shape)


def _banded_forward(plan: BandPlan, q, k, v, query_mask, key_mask, rng):
  """Forward pass; returns the output `[N, L, H, D]` and the row log-sum-exp `[N, L, H]`."""
  k_blocks, v_blocks = _to_blocks(k, plan), _to_blocks(v, plan)
  key_mask_blocks = _to_blocks(key_mask, plan)

  def body(chunk_index, carry):
    out, lse = carry
    c = _Chunk(plan, q, k_blocks, v_blocks, key_mask_blocks, chunk_index)
    row_max = jnp.max(jnp.where(c.mask, c.logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    probs = jnp.where(c.mask, jnp.exp(c.logits - row_max), 0.0)  # unnormalised
    total = jnp.sum(probs, axis=-1)  # [N, m, H, b]
    chunk_lse = jnp.where(total > 0, row_max[..., 0] + jnp.log(total), common.EMPTY_ROW_LSE)
    if plan.dropout_rate:
      keep = c.keep_mask(rng, chunk_index, probs.shape)
      probs = jnp.where(keep, probs / (1.0 - plan.dropout_rate), 0.0)
    chunk_out = jnp.einsum("nmhqk,nmkhd->nmhqd", probs.astype(v.dtype), c.v,
                           preferred_element_type=jnp.float32)
    norm = jnp.where((total > 0) & c.rows(query_mask)[:, :, None], 1.0 / total, 0.0)
    chunk_out = _heads_first(chunk_out * norm[..., None])
    return c.write_rows(out, chunk_out), c.write_rows(lse, _heads_first(chunk_lse))

  out = jnp.zeros(q.shape, q.dtype)
  lse = jnp.zeros(q.shape[:3], jnp.float32)
  return jax.lax.fori_loop(0, plan.num_chunks, body, (out, lse))


def _banded_backward(plan: BandPlan, residuals, cotangents):
  """Backward pass: recomputes each chunk's probabilities from the saved log-sum-exp."""
  q, k, v, query_mask, key_mask, rng, out, lse = residuals
  d_out, d_lse = cotangents
  # Row-wise <dO, O> (FlashAttention's D) minus the cotangent of the log-sum-exp output:
  # d logits = P * (dP - D + d_lse). Padded query rows get no gradient: their output is a
  # constant 0. (dO is masked chunk by chunk below, so no masked copy of it is stored.)
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  delta = jnp.where(query_mask[..., None], delta - d_lse, 0.0)  # [N, L, H]
  k_blocks, v_blocks = _to_blocks(k, plan), _to_blocks(v, plan)
  key_mask_blocks = _to_blocks(key_mask, plan)
  window_shape = (q.shape[0], plan.chunk, plan.span, plan.block, *q.shape[2:])

  def body(chunk_index, carry):
    d_q, d_k_blocks, d_v_blocks = carry
    c = _Chunk(plan, q, k_blocks, v_blocks, key_mask_blocks, chunk_index)
    row_lse = _heads_first(c.rows(lse))[..., None]  # [N, m, H, b, 1]
    probs = jnp.where(c.mask, jnp.exp(c.logits - row_lse), 0.0)
    chunk_d_out = _heads_first(jnp.where(c.rows(query_mask)[..., None, None], c.rows(d_out),
                                         0).astype(q.dtype))  # [N, m, H, b, D]
    d_probs = jnp.einsum("nmhqd,nmkhd->nmhqk", chunk_d_out, c.v,
                         preferred_element_type=jnp.float32)
    dropped = probs
    if plan.dropout_rate:
      keep = c.keep_mask(rng, chunk_index, probs.shape)
      d_probs = jnp.where(keep, d_probs / (1.0 - plan.dropout_rate), 0.0)
      dropped = jnp.where(keep, probs / (1.0 - plan.dropout_rate), 0.0)
    d_logits = probs * (d_probs - _heads_first(c.rows(delta))[..., None]) * c.scale
    d_logits = d_logits.astype(q.dtype)
    # Products come out head-major (the matmuls' natural layout); only these small chunk
    # results are transposed back.
    chunk_d_q = _heads_first(jnp.einsum("nmhqk,nmkhd->nmhqd", d_logits, c.k,
                                        preferred_element_type=jnp.float32))
    d_k_window = _heads_first(jnp.einsum("nmhqk,nmhqd->nmhkd", d_logits, _heads_first(c.q),
                                         preferred_element_type=jnp.float32))
    d_v_window = _heads_first(jnp.einsum("nmhqk,nmhqd->nmhkd", dropped.astype(v.dtype),
                                         chunk_d_out, preferred_element_type=jnp.float32))
    # Windows of neighbouring query blocks overlap: add each one into its key blocks.
    # Clipped (out-of-range) key blocks receive exact zeros, since their probabilities are 0.
    d_k_blocks = d_k_blocks.at[:, c.blocks].add(d_k_window.reshape(window_shape))
    d_v_blocks = d_v_blocks.at[:, c.blocks].add(d_v_window.reshape(window_shape))
    return c.write_rows(d_q, chunk_d_q), d_k_blocks, d_v_blocks

  zeros_blocks = jnp.zeros(k_blocks.shape, jnp.float32)
  d_q, d_k, d_v = jax.lax.fori_loop(
      0, plan.num_chunks, body, (jnp.zeros(q.shape, q.dtype), zeros_blocks, zeros_blocks))
  return (d_q, d_k.reshape(k.shape).astype(k.dtype), d_v.reshape(v.shape).astype(v.dtype),
          None, None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def banded_attention(plan: BandPlan, q, k, v, query_mask, key_mask, rng):
  """Undilated window attention on a sequence already padded to `plan.length`.

  Args:
    plan: static shapes, from `plan_band`.
    q, k, v: `[N, plan.length, H, D]` (the caller's layout: no head-major copy is made).
    query_mask: bool `[N, plan.length]`; rows where False get an output of exactly 0.
    key_mask: bool `[N, plan.length]`; keys where False are never seen.
    rng: dropout PRNG key, or None when `plan.dropout_rate == 0`.

  Returns:
    The output `[N, L, H, D]` (dtype of q) and the float32 log-sum-exp of each row's scores
    `[N, L, H]` (`common.EMPTY_ROW_LSE` for rows that see no key).
  """
  return _banded_forward(plan, q, k, v, query_mask, key_mask, rng)


def _banded_fwd(plan, q, k, v, query_mask, key_mask, rng):
  out, lse = _banded_forward(plan, q, k, v, query_mask, key_mask, rng)
  return (out, lse), (q, k, v, query_mask, key_mask, rng, out, lse)


banded_attention.defvjp(_banded_fwd, _banded_backward)


def _to_residues(x, d: int):
  """`[B, L, ...]` with `L % d == 0` -> `[B * d, L / d, ...]`, row `b * d + r` = `x[b, r::d]`."""
  if d == 1:
    return x
  batch, length = x.shape[:2]
  x = x.reshape(batch, length // d, d, *x.shape[2:])
  return jnp.swapaxes(x, 1, 2).reshape(batch * d, length // d, *x.shape[3:])


def _from_residues(x, d: int):
  if d == 1:
    return x
  x = x.reshape(x.shape[0] // d, d, *x.shape[1:])
  x = jnp.swapaxes(x, 1, 2)
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def _pad_axis1(x, length: int, value=0):
  pad = length - x.shape[1]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _select_heads(x_BxLxH, heads: Sequence[int]):
  """`x[:, :, heads]`; a slice, not a gather, when the heads are consecutive (as when
  dilations are given per group of heads), so that its gradient is a pad, not a scatter."""
  heads = [int(h) for h in heads]
  if heads == list(range(heads[0], heads[0] + len(heads))):
    return x_BxLxH[:, :, heads[0]:heads[0] + len(heads)]
  return x_BxLxH[:, :, np.array(heads)]


def check_qkv(q, k, v) -> None:
  if q.ndim != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
    raise errors.ConfigError(
        f"q, k, v must be [batch, length, heads, head_dim] with equal batch, length and heads "
        f"(q and k of equal head_dim); got {q.shape}, {k.shape}, {v.shape}")


def local_attention_with_lse(q, k, v, *, window: int, dilation: int | Sequence[int],
                             causal: bool, query_mask, key_mask, dropout_rate: float,
                             dropout_rng, block_size: int | None):
  """Sliding-window attention that also returns each row's log-sum-exp.

  Heads are grouped by dilation; each group folds its residue classes into the batch and
  makes one banded call. Masks are bool `[B, L]`.

  Returns:
    `(out [B, L, H, D], lse [B, L, H])`.
  """
  check_qkv(q, k, v)
  common.check_window(window)
  common.check_dropout(dropout_rate, dropout_rng)
  batch, length, num_heads, _ = q.shape
  dilations = common.dilation_per_head(dilation, num_heads)
  groups = {}
  for head, d in enumerate(dilations):
    groups.setdefault(d, []).append(head)

  outs, lses, order = [], [], []
  for group_index, (d, heads) in enumerate(sorted(groups.items())):
    padded = -(-length // d) * d
    xs = tuple(_select_heads(x, heads) for x in (q, k, v))
    xs = [_to_residues(_pad_axis1(x, padded), d) for x in xs]  # [B * d, L / d, h, D]
    masks = [_to_residues(_pad_axis1(m, padded, False), d) for m in (query_mask, key_mask)]
    rows, sub_length = xs[0].shape[0] * len(heads), xs[0].shape[1]
    plan = plan_band(sub_length, window, causal, block_size, rows, dropout_rate)
    xs = [_pad_axis1(x, plan.length) for x in xs]
    masks = [_pad_axis1(m, plan.length, False) for m in masks]
    rng = None if dropout_rate == 0 else jax.random.fold_in(dropout_rng, group_index)
    out, lse = banded_attention(plan, *xs, *masks, rng)
    out, lse = out[:, :sub_length], lse[:, :sub_length]
    outs.append(_from_residues(out, d)[:, :length])
    lses.append(_from_residues(lse, d)[:, :length])
    order.extend(heads)

  if len(outs) == 1:
    return outs[0], lses[0]
  inverse = np.argsort(order)
  return (_select_heads(jnp.concatenate(outs, axis=2), inverse),
          _select_heads(jnp.concatenate(lses, axis=2), inverse))


def sliding_window_attention(q, k, v, *, window: int, dilation: int | Sequence[int] = 1,
                             causal: bool = False, padding_mask=None, dropout_rate: float = 0.,
                             dropout_rng=None, block_size: int | None = None):
  """Sliding-window attention, exact and linear in length.

  For head h with dilation d, query i sees key j iff `(j - i) % d == 0` and
  `|j - i| <= window * d` (`0 <= i - j <= window * d` when causal).

  Args:
    q, k, v: `[batch, length, heads, head_dim]`; any length.
    window: one-sided window w (HuggingFace's `attention_window` is 2w).
    dilation: int, or a tuple with one int per head.
    causal: see only keys at or before the query.
    padding_mask: optional bool `[batch, length]`, True for real tokens. Padded keys are
      never seen; outputs at padded queries are exactly 0.
    dropout_rate: attention dropout rate.
    dropout_rng: PRNG key, required when `dropout_rate > 0`.
    block_size: positions per block; None picks one from the window.

  Returns:
    `[batch, length, heads, head_dim]` in the dtype of q.
  """
  real = jnp.ones(q.shape[:2], bool) if padding_mask is None else padding_mask.astype(bool)
  out, _ = local_attention_with_lse(
      q, k, v, window=window, dilation=dilation, causal=causal, query_mask=real,
      key_mask=real, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
      block_size=block_size)
  return out

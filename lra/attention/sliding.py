"""Blocked sliding-window attention: bidirectional, causal and dilated per head.

The sequence is cut into blocks of `b` positions. Query block `i` computes scores against
the keys of blocks `i - c .. i + c` (`i - c .. i` when causal), `c = ceil(w / b)`, one
contiguous window (shifted inwards at the ends of the sequence), and a `[b, keys]` band mask
keeps exactly the keys within the window. Each query thus computes `2w + b` scores when `b`
divides `w` (`w + b` causal), against HuggingFace's ~4w.

Memory is linear: a loop runs over the query blocks, so one block's scores exist at a time,
and a custom VJP recomputes the probabilities block by block in the backward pass from the
saved per-row log-sum-exp (as FlashAttention does) instead of keeping every block's
probabilities.

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
from lra.attention import kernels

@dataclasses.dataclass(frozen=True)
class BandPlan:
  """Static shape plan of one banded call.

  Attributes:
    window: one-sided window w, in positions of the (undilated) sequence.
    causal: whether keys after the query are excluded.
    block: b, positions per query block and per key block.
    reach: c, key blocks on each side of a query block (left only when causal).
    num_blocks: query blocks after padding.
    dropout_rate: attention dropout rate.
  """

  window: int
  causal: bool
  block: int
  reach: int
  num_blocks: int
  dropout_rate: float = 0.0

  @property
  def span(self) -> int:
    """Key blocks seen by one query block."""
    return self.reach + 1 if self.causal else 2 * self.reach + 1

  @property
  def keys(self) -> int:
    """Keys scored per query: the span, or the whole sequence when that is shorter."""
    return min(self.span * self.block, self.length)

  @property
  def length(self) -> int:
    return self.num_blocks * self.block

  def window_start(self, index):
    """First key of query block `index`'s window: `reach` blocks back, kept inside the
    sequence, so that every window is one slice (at the ends it shifts inwards and still
    covers every key within the window of the block's queries)."""
    return jnp.clip((index - self.reach) * self.block, 0, self.length - self.keys)


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
              dropout_rate: float = 0.0) -> BandPlan:
  """Chooses the block size for a sequence of `length`."""
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
  return BandPlan(window=window, causal=causal, block=block, reach=reach,
                  num_blocks=num_blocks, dropout_rate=dropout_rate)


def _band_mask(plan: BandPlan, index, key_start):
  """bool `[b, keys]`: which keys of the window each query of block `index` sees."""
  query = index * plan.block + jnp.arange(plan.block)[:, None]
  offset = key_start + jnp.arange(plan.keys)[None, :] - query  # key minus query position
  if plan.causal:
    return (offset <= 0) & (offset >= -plan.window)
  return jnp.abs(offset) <= plan.window


# Operand layouts. The CPU matmul kernels take `[batch, M, K] @ [batch, K, N]`, so the keys
# and values, which every block's window reads, are laid out head-major once per call: k as
# `[N, H, D, L]` (the orientation q @ k^T reads), v as `[N, H, L, D]` (probs @ v). A window is
# then one contiguous slice, with no per-window gather or transpose. The backward reuses these
# two layouts rather than making k `[N, H, L, D]` and v `[N, H, D, L]` as well: two more
# whole arrays of memory, to save a transpose of each window in cache. Query-side arrays stay
# in the caller's `[N, L, H, D]`; each block's slice is transposed where it is used.


def _columns_major(x_NxLxHxD):
  """`[N, L, H, D]` -> `[N, H, D, L]`."""
  return jnp.transpose(x_NxLxHxD, (0, 2, 3, 1))


def _heads_first(x_NxLxH):
  """`[N, L, H, ...]` -> `[N, H, L, ...]` (and back: the map is its own inverse)."""
  return jnp.swapaxes(x_NxLxH, 1, 2)


class _Block:
  """Operands and scores of query block `index` (shared by forward and backward).

  Scores are `[N, H, b, keys]` over the block's window of keys, `BandPlan.window_start` onwards.
  """

  def __init__(self, plan: BandPlan, index, q, k_columns, key_mask):
    """`q [N, L, H, D]`, `k_columns [N, H, D, L]`, `key_mask [N, L]`."""
    self.plan = plan
    self.index = index
    self.start = index * plan.block
    self.key_start = plan.window_start(index)
    self.q = _heads_first(self.rows(q))  # [N, H, b, D]
    key_valid = self.window(key_mask, axis=1)  # [N, keys]
    # [N, 1, b, keys]: inside the window band, and the key is not masked.
    self.mask = (_band_mask(plan, index, self.key_start)[None, None] &
                 key_valid[:, None, None, :])
    self.scale = 1.0 / math.sqrt(q.shape[-1])
    self.logits = jnp.einsum("nhqd,nhdk->nhqk", self.q,
                             self.window(k_columns, axis=3),
                             preferred_element_type=jnp.float32) * self.scale

  def rows(self, x_NxL):
    """This block's rows `[N, b, ...]` of a per-position array `[N, L, ...]`."""
    return jax.lax.dynamic_slice_in_dim(x_NxL, self.start, self.plan.block, axis=1)

  def write_rows(self, x_NxL, rows_NxHxb):
    """Writes head-major rows `[N, H, b, ...]` of this block into `[N, L, H, ...]`."""
    return jax.lax.dynamic_update_slice_in_dim(
        x_NxL, _heads_first(rows_NxHxb).astype(x_NxL.dtype), self.start, axis=1)

  def window(self, x, axis):
    """This block's `keys` key positions of `x` along `axis`."""
    return jax.lax.dynamic_slice_in_dim(x, self.key_start, self.plan.keys, axis=axis)

  def add_window(self, x, update, axis):
    """`x` with `update` added to this block's window along `axis`."""
    return jax.lax.dynamic_update_slice_in_dim(
        x, self.window(x, axis) + update, self.key_start, axis=axis)

  def keep_mask(self, rng, shape):
    return jax.random.bernoulli(jax.random.fold_in(rng, self.index),
                                1.0 - self.plan.dropout_rate, shape)


def _banded_forward(plan: BandPlan, q, k, v, query_mask, key_mask, rng):
  """Forward pass; returns the output `[N, L, H, D]` and the row log-sum-exp `[N, L, H]`."""
  k_columns, v_rows = _columns_major(k), _heads_first(v)

  def body(index, carry):
    out, lse = carry
    c = _Block(plan, index, q, k_columns, key_mask)
    row_max = jnp.max(jnp.where(c.mask, c.logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    probs = jnp.where(c.mask, jnp.exp(c.logits - row_max), 0.0)  # unnormalised
    total = jnp.sum(probs, axis=-1)  # [N, H, b]
    block_lse = jnp.where(total > 0, row_max[..., 0] + jnp.log(total), common.EMPTY_ROW_LSE)
    if plan.dropout_rate:
      keep = c.keep_mask(rng, probs.shape)
      probs = jnp.where(keep, probs / (1.0 - plan.dropout_rate), 0.0)
    block_out = jnp.einsum("nhqk,nhkd->nhqd", probs.astype(v.dtype), c.window(v_rows, axis=2),
                           preferred_element_type=jnp.float32)
    norm = jnp.where((total > 0) & c.rows(query_mask)[:, None], 1.0 / total, 0.0)
    return (c.write_rows(out, block_out * norm[..., None]), c.write_rows(lse, block_lse))

  out = jnp.zeros(q.shape, q.dtype)
  lse = jnp.zeros(q.shape[:3], jnp.float32)
  return jax.lax.fori_loop(0, plan.num_blocks, body, (out, lse))


def _banded_backward(plan: BandPlan, residuals, cotangents):
  """Backward pass: recomputes each block's probabilities from the saved log-sum-exp."""
  q, k, v, query_mask, key_mask, rng, out, lse = residuals
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
    c = _Block(plan, index, q, k_columns, key_mask)
    row_lse = _heads_first(c.rows(lse))[..., None]  # [N, H, b, 1]
    probs = jnp.where(c.mask, jnp.exp(c.logits - row_lse), 0.0)
    block_d_out = jnp.where(c.rows(query_mask)[..., None, None], c.rows(d_out),
                            0).astype(q.dtype)  # [N, b, H, D]
    d_probs = jnp.einsum("nhqd,nhkd->nhqk", _heads_first(block_d_out),
                         c.window(v_rows, axis=2), preferred_element_type=jnp.float32)
    dropped = probs
    if plan.dropout_rate:
      keep = c.keep_mask(rng, probs.shape)
      d_probs = jnp.where(keep, d_probs / (1.0 - plan.dropout_rate), 0.0)
      dropped = jnp.where(keep, probs / (1.0 - plan.dropout_rate), 0.0)
    d_logits = probs * (d_probs - _heads_first(c.rows(delta))[..., None]) * c.scale
    d_logits = d_logits.astype(q.dtype)
    block_d_q = jnp.einsum("nhqk,nhdk->nhqd", d_logits, c.window(k_columns, axis=3),
                           preferred_element_type=jnp.float32)
    d_k_window = jnp.einsum("nhqk,nhqd->nhkd", d_logits, c.q,
                            preferred_element_type=jnp.float32)
    d_v_window = jnp.einsum("nhqk,nhqd->nhkd", dropped.astype(v.dtype),
                            _heads_first(block_d_out), preferred_element_type=jnp.float32)
    # Windows of neighbouring blocks overlap: their key gradients add, in the caller's
    # layout (rows of D, a cheap transpose in cache), so the accumulators are the outputs.
    return (c.write_rows(d_q, block_d_q),
            c.add_window(d_k, _heads_first(d_k_window), axis=1),
            c.add_window(d_v, _heads_first(d_v_window), axis=1))

  zeros = jnp.zeros(k.shape, jnp.float32)
  d_q, d_k, d_v = jax.lax.fori_loop(0, plan.num_blocks, body,
                                    (jnp.zeros(q.shape, q.dtype), zeros, zeros))
  return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def banded_attention(plan: BandPlan, q, k, v, query_mask, key_mask, rng):
  """Undilated window attention on a sequence already padded to `plan.length`.

  Args:
    plan: static shapes, from `plan_band`.
    q, k, v: `[N, plan.length, H, D]`.
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
                             dropout_rng, block_size: int | None,
                             implementation: str | None = None):
  """Sliding-window attention that also returns each row's log-sum-exp.

  Heads are grouped by dilation; each group folds its residue classes into the batch and
  makes one banded call: the XLA core of this module or the Pallas kernels of
  `lra.attention.kernels` (`implementation`, see `common.resolve_implementation`). Masks
  are bool `[B, L]`.

  Returns:
    `(out [B, L, H, D], lse [B, L, H])`.
  """
  check_qkv(q, k, v)
  common.check_window(window)
  common.check_dropout(dropout_rate, dropout_rng)
  implementation = common.resolve_implementation(implementation, dropout_rate=dropout_rate)
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
    sub_length = xs[0].shape[1]
    plan = plan_band(sub_length, window, causal, block_size, dropout_rate)
    if implementation == "pallas":
      out, lse = kernels.band_attention(*xs, *masks, window=window, causal=causal,
                                        block=plan.block)
    else:
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
                             dropout_rng=None, block_size: int | None = None,
                             implementation: str | None = None,
                             sequence_axis: str | None = None):
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
    implementation: "xla" (the blocked XLA core), "pallas" (fused kernels: Triton on GPU,
      Mosaic on TPU, interpret mode on CPU; no dropout), or None: "pallas" on GPU and TPU
      unless dropout is on, else "xla".
    sequence_axis: an axis of the mesh in context (`jax.set_mesh`) to split the length
      over, exchanging only halos of `window * dilation` keys between neighbouring shards
      (`lra.attention.sequence_parallel`); None: one device's whole sequence.

  Returns:
    `[batch, length, heads, head_dim]` in the dtype of q.
  """
  if sequence_axis is not None:
    # Imported here: the sharded path is built on this module.
    from lra.attention import sequence_parallel  # pylint: disable=g-import-not-at-top
    return sequence_parallel.sharded_sliding_window_attention(
        q, k, v, sequence_axis=sequence_axis, window=window, dilation=dilation,
        causal=causal, padding_mask=padding_mask, dropout_rate=dropout_rate,
        dropout_rng=dropout_rng, block_size=block_size, implementation=implementation)
  real = jnp.ones(q.shape[:2], bool) if padding_mask is None else padding_mask.astype(bool)
  out, _ = local_attention_with_lse(
      q, k, v, window=window, dilation=dilation, causal=causal, query_mask=real,
      key_mask=real, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
      block_size=block_size, implementation=implementation)
  return out

"""Sliding-window attention on one device: bidirectional, causal, dilated per head.

`local_attention_with_lse` is the windowed building block of every mechanism above it
(sliding windows, Longformer's window part, each shard of the sequence-parallel path): it
groups heads into banded calls (`common.head_calls`), folds each dilation's residue classes
into the batch (a window of dilation `d` on `x` is an undilated window on each residue class
`x[r::d]`), and runs each call on the XLA core (`xla_core`) or the Pallas kernels
(`kernels`).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lra.attention import common
from lra.attention import kernels
from lra.attention import xla_core


def local_attention_with_lse(q, k, v, *, window: int, dilation: int | Sequence[int],
                             causal: bool, query_mask, key_mask, segment_ids=None,
                             dropout_rate: float = 0.0, dropout_rng=None,
                             block_size: int | None = None, implementation: str | None = None):
  """Sliding-window attention that also returns each row's log-sum-exp.

  Args:
    q: `[B, L, H, D]`.
    k, v: `[B, L, K, D]`, `K` dividing `H` (query head `h` reads k/v head `h // (H / K)`).
    window, dilation, causal, block_size, implementation: as in `attend`.
    query_mask: bool `[B, L]`; rows where False get an output of exactly 0.
    key_mask: bool `[B, L]`; keys where False are never seen.
    segment_ids: int `[B, L]` or None.
    dropout_rate, dropout_rng: attention dropout.

  Returns:
    `(out [B, L, H, D], lse [B, L, H])`.
  """
  common.check_qkv(q, k, v)
  common.check_window(window)
  common.check_dropout(dropout_rate, dropout_rng)
  segment_ids = common.check_segment_ids(segment_ids, q.shape[:2])
  implementation = common.resolve_implementation(implementation)
  length, num_heads = q.shape[1], q.shape[2]
  calls = common.head_calls(common.dilation_per_head(dilation, num_heads), k.shape[2])

  outs, lses, order = [], [], []
  for index, call in enumerate(calls):
    d = call.dilation
    padded = -(-length // d) * d

    def folded(x, value=0, d=d, padded=padded):
      return common.to_residues(common.pad_axis1(x, padded, value), d)

    qkv = [folded(common.select_heads(x, heads))
           for x, heads in ((q, call.q_heads), (k, call.kv_heads), (v, call.kv_heads))]
    masks = [folded(m, False) for m in (query_mask, key_mask)]
    segments = None if segment_ids is None else folded(segment_ids)
    seed = None
    if dropout_rate:
      seed = common.dropout_seed(jax.random.fold_in(dropout_rng, index))
    sub_length = qkv[0].shape[1]
    plan = common.plan_band(sub_length, window, causal, block_size)
    if implementation == "pallas":
      out, lse = kernels.band_attention(*qkv, *masks, segments, seed, plan=plan,
                                        dropout_rate=dropout_rate)
    else:
      pad = lambda x, value=0: common.pad_axis1(x, plan.length, value)
      out, lse = xla_core.band_attention(
          plan, dropout_rate, *map(pad, qkv), *(pad(m, False) for m in masks),
          None if segments is None else pad(segments), seed)
      out, lse = out[:, :sub_length], lse[:, :sub_length]
    outs.append(common.from_residues(out, d)[:, :length])
    lses.append(common.from_residues(lse, d)[:, :length])
    order.extend(call.q_heads)

  if len(outs) == 1 and order == sorted(order):
    return outs[0], lses[0]
  inverse = np.argsort(order)
  return (common.select_heads(jnp.concatenate(outs, axis=2), inverse),
          common.select_heads(jnp.concatenate(lses, axis=2), inverse))


def attend(q, k, v, *, window: int, dilation: int | Sequence[int] = 1, causal: bool = False,
           padding_mask=None, segment_ids=None, dropout_rate: float = 0., dropout_rng=None,
           block_size: int | None = None, implementation: str | None = None):
  """Sliding-window attention on one device: `lra.attention.sliding_window_attention`
  without `sequence_axis`. Returns `[batch, length, heads, head_dim]` in the dtype of q."""
  real = common.real_tokens(q, padding_mask)
  out, _ = local_attention_with_lse(
      q, k, v, window=window, dilation=dilation, causal=causal, query_mask=real,
      key_mask=real, segment_ids=segment_ids, dropout_rate=dropout_rate,
      dropout_rng=dropout_rng, block_size=block_size, implementation=implementation)
  return out

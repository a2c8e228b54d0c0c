"""The public attention functions: each checks its call once and dispatches it.

`sliding_window_attention` and `longformer_attention` run on one device (`sliding`,
`longformer`) or, with `sequence_axis`, split over a mesh axis (`sequence_parallel`);
`full_attention` is the quadratic baseline.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from lra.attention import common
from lra.attention import longformer
from lra.attention import reference
from lra.attention import sequence_parallel
from lra.attention import sliding


def full_attention(q, k, v, *, causal: bool = False, padding_mask=None, segment_ids=None,
                   dropout_rate: float = 0., dropout_rng=None):
  """Ordinary quadratic attention (every key, or every earlier key when causal).

  Runs XLA's `jax.nn.dot_product_attention` (float32 logits and softmax), so that
  comparisons against it are fair; with attention dropout, which that function lacks, the
  masked dense path of `reference.py`. k and v may have fewer heads than q (grouped heads);
  with `segment_ids` a query sees keys of its own segment only.
  """
  common.check_qkv(q, k, v)
  segment_ids = common.check_segment_ids(segment_ids, q.shape[:2])
  if dropout_rate:
    mask = reference.pattern_mask(q.shape[1], causal=causal, padding_mask=padding_mask,
                                  segment_ids=segment_ids)
    return reference.dense_attention(q, k, v, mask=mask, dropout_rate=dropout_rate,
                                     dropout_rng=dropout_rng)
  if padding_mask is None and segment_ids is None:
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
  real = common.real_tokens(q, padding_mask)
  mask = real[:, None, None, :]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                     implementation="xla")
  # Padded queries: exactly 0 (a row with no real key would otherwise average everything;
  # a real query always sees itself).
  return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)


def sliding_window_attention(q, k, v, *, window: int, dilation: int | Sequence[int] = 1,
                             causal: bool = False, padding_mask=None, segment_ids=None,
                             dropout_rate: float = 0., dropout_rng=None,
                             block_size: int | None = None, implementation: str | None = None,
                             sequence_axis: str | None = None):
  """Sliding-window attention, exact and linear in length.

  For head h with dilation d, query i sees key j iff `(j - i) % d == 0` and
  `|j - i| <= window * d` (`0 <= i - j <= window * d` when causal), and, with segment ids,
  both are of the same segment.

  Args:
    q: `[batch, length, heads, head_dim]`; any length.
    k, v: `[batch, length, kv_heads, head_dim]`, `kv_heads` dividing `heads` (grouped
      heads: query head h reads k/v head `h // (heads / kv_heads)`; equal for ordinary
      multi-head attention).
    window: one-sided window w (HuggingFace's `attention_window` is 2w).
    dilation: int, or a tuple with one int per query head.
    causal: see only keys at or before the query.
    padding_mask: optional bool `[batch, length]`, True for real tokens. Padded keys are
      never seen; outputs at padded queries are exactly 0.
    segment_ids: optional int `[batch, length]`: packed sequences, a query sees only keys of
      its own segment (None: one segment). Padding stays `padding_mask`'s.
    dropout_rate: attention dropout rate.
    dropout_rng: PRNG key, required when `dropout_rate > 0`.
    block_size: positions per block; None picks one from the window.
    implementation: "xla" (the blocked XLA core), "pallas" (fused kernels: Triton on GPU,
      Mosaic on TPU, interpret mode on CPU), or None: "pallas" on GPU and TPU, else "xla".
      Both draw the dropout mask from the same hash of the seed and the positions.
    sequence_axis: an axis of the mesh in context (`jax.set_mesh`) to split the length
      over, exchanging only halos of `window * dilation` keys between neighbouring shards
      (`lra.attention.sequence_parallel`); None: one device's whole sequence.

  Returns:
    `[batch, length, heads, head_dim]` in the dtype of q.
  """
  options = dict(window=window, dilation=dilation, causal=causal, padding_mask=padding_mask,
                 segment_ids=segment_ids, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                 block_size=block_size, implementation=implementation)
  if sequence_axis is not None:
    return sequence_parallel.sharded_sliding_window_attention(
        q, k, v, sequence_axis=sequence_axis, **options)
  return sliding.attend(q, k, v, **options)


def longformer_attention(q, k, v, *, window: int, global_mask, dilation=1, global_q=None,
                         global_k=None, global_v=None, padding_mask=None, segment_ids=None,
                         dropout_rate: float = 0., dropout_rng=None,
                         block_size: int | None = None, max_global: int | None = None,
                         implementation: str | None = None,
                         sequence_axis: str | None = None):
  """Sliding-window attention plus symmetric global attention (Longformer, section 3.1).

  Args:
    q, k, v: as in `sliding_window_attention` (k and v may have fewer heads).
    window: one-sided window w of every non-global query.
    global_mask: bool `[batch, length]`; any positions, any number per row.
    dilation: int, or one int per query head, for the window part.
    global_q, global_k, global_v: the separate global projections, of the shapes of q, k, v
      (all three or none).
    padding_mask: optional bool `[batch, length]`, True for real tokens.
    segment_ids: optional int `[batch, length]`: a global token is global within its own
      segment (it sees, and is seen by, the tokens of its segment only).
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
  options = dict(window=window, global_mask=global_mask, dilation=dilation,
                 global_q=global_q, global_k=global_k, global_v=global_v,
                 padding_mask=padding_mask, segment_ids=segment_ids,
                 dropout_rate=dropout_rate, dropout_rng=dropout_rng, block_size=block_size,
                 max_global=max_global, implementation=implementation)
  if sequence_axis is not None:
    return sequence_parallel.sharded_longformer_attention(
        q, k, v, sequence_axis=sequence_axis, **options)
  return longformer.attend(q, k, v, **options)

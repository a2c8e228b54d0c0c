"""The bottom layer of `lra.attention`: what every implementation shares.

Argument checks, the float32 softmax numerics, the layout helpers (padding, the residue fold
of dilation, head selection), the one band plan that the XLA core and the Pallas kernels
both follow, the merge of two partial softmaxes, and the gather of global tokens into
static slots. Everything here is public to the package and imports nothing of it.
"""

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from lra import errors

# Log-sum-exp of a row that sees no key: finite, so merging two partial softmaxes of such
# a row gives weights of exactly 0 and never NaN.
EMPTY_ROW_LSE = -1e30

# `implementation=` of the windowed mechanisms; None picks one for the backend.
IMPLEMENTATIONS = ("xla", "pallas")


# ------------------------------------------------------------------------ argument checks


def check_window(window) -> None:
  if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
    raise errors.ConfigError(
        f"window must be a positive int (the one-sided window w: each query sees w keys on "
        f"each side), got {window!r}")


def dilation_per_head(dilation: int | Sequence[int], num_heads: int) -> tuple[int, ...]:
  """Returns one dilation per head, checking an int or a per-head tuple."""
  if isinstance(dilation, (list, tuple)):
    if len(dilation) != num_heads:
      raise errors.ConfigError(
          f"dilation has {len(dilation)} entries but there are {num_heads} heads: give one "
          f"int for all heads or exactly one per head")
    values = tuple(dilation)
  else:
    values = (dilation,) * num_heads
  for d in values:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
      raise errors.ConfigError(f"dilation must be an int >= 1 (1 means none), got {dilation!r}")
  return values


def causal_global_error() -> errors.ConfigError:
  return errors.ConfigError(
      "causal attention cannot have global tokens (a global key would let every query see "
      "the future); drop global_mask or use causal=False")


def check_dropout(rate: float, rng) -> None:
  if not 0.0 <= rate < 1.0:
    raise errors.ConfigError(f"dropout_rate must be in [0, 1), got {rate}")
  if rate > 0.0 and rng is None:
    raise errors.ConfigError("dropout_rate > 0 needs a dropout_rng")


def check_qkv(q, k, v) -> None:
  """q `[B, L, H, D]`, k `[B, L, K, D]`, v `[B, L, K, Dv]` with `K` dividing `H`."""
  if (q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or q.shape[:2] != k.shape[:2]
      or k.shape[:2] != v.shape[:2] or q.shape[3] != k.shape[3]):
    raise errors.ConfigError(
        f"q, k, v must be [batch, length, heads, head_dim] with equal batch and length (q and "
        f"k of equal head_dim); got {q.shape}, {k.shape}, {v.shape}")
  if k.shape[2] != v.shape[2]:
    raise errors.ConfigError(
        f"k and v must have the same number of heads, got {k.shape[2]} and {v.shape[2]}")
  if q.shape[2] % k.shape[2]:
    raise errors.ConfigError(
        f"k/v heads ({k.shape[2]}) must divide q's heads ({q.shape[2]}): query head h reads "
        f"k/v head h // (heads / kv_heads); use a divisor of {q.shape[2]} k/v heads")


def check_segment_ids(segment_ids, shape):
  """int32 `[batch, length]` segment ids, or None; checks an integer array of `shape`."""
  if segment_ids is None:
    return None
  segment_ids = jnp.asarray(segment_ids)
  if (tuple(segment_ids.shape) != tuple(shape)
      or not jnp.issubdtype(segment_ids.dtype, jnp.integer)):
    raise errors.ConfigError(
        f"segment_ids must be an int array [batch, length] = {tuple(shape)} (equal ids attend "
        f"to each other), got {getattr(segment_ids, 'dtype', None)} {tuple(segment_ids.shape)}")
  return jnp.asarray(segment_ids, jnp.int32)


def check_global_inputs(q, k, v, global_mask, global_q, global_k, global_v):
  """Checks Longformer's global arguments; returns the global q, k, v (q, k, v themselves
  when the separate projections are not given)."""
  given = [x is not None for x in (global_q, global_k, global_v)]
  if any(given) and not all(given):
    raise errors.ConfigError("pass all of global_q, global_k, global_v, or none of them")
  if all(given):
    if (global_q.shape != q.shape or global_k.shape != k.shape
        or global_v.shape != v.shape):
      raise errors.ConfigError(
          f"global_q, global_k, global_v must have the shapes of q, k, v {q.shape}, "
          f"{k.shape}, {v.shape}; got {global_q.shape}, {global_k.shape}, {global_v.shape}")
  else:
    global_q, global_k, global_v = q, k, v
  if global_mask is None or tuple(global_mask.shape) != q.shape[:2]:
    raise errors.ConfigError(
        f"global_mask must be bool [batch, length] = {q.shape[:2]}, got "
        f"{None if global_mask is None else global_mask.shape}")
  return global_q, global_k, global_v


def resolve_implementation(implementation: str | None) -> str:
  """The implementation a windowed call runs: the one asked for, or for None the Pallas
  kernels on GPU and TPU (XLA on CPU, where Pallas only interprets)."""
  if implementation is None:
    return "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla"
  if implementation not in IMPLEMENTATIONS:
    raise errors.ConfigError(
        f"unknown implementation {implementation!r}; choose one of: "
        f"{', '.join(IMPLEMENTATIONS)}, or None for the best on this backend")
  return implementation


def real_tokens(q, padding_mask):
  """bool `[batch, length]`: True for real tokens (every token without a padding mask)."""
  return jnp.ones(q.shape[:2], bool) if padding_mask is None else padding_mask.astype(bool)


# ------------------------------------------------------------------------------- numerics


def masked_softmax_with_lse(logits, mask):
  """Float32 softmax over the last axis restricted to `mask`, and each row's log-sum-exp.

  Rows with no allowed entry get probabilities 0 and lse `EMPTY_ROW_LSE`. Masked entries
  are replaced by the row maximum before `exp`, never by -inf, so that neither the values
  nor the gradients can be NaN.
  """
  row_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  unnormalized = jnp.where(mask, jnp.exp(jnp.where(mask, logits, row_max) - row_max), 0.0)
  total = jnp.sum(unnormalized, axis=-1, keepdims=True)
  nonempty = total > 0
  probs = unnormalized / jnp.where(nonempty, total, 1.0)
  lse = jnp.where(nonempty, row_max + jnp.log(jnp.where(nonempty, total, 1.0)), EMPTY_ROW_LSE)
  return probs, lse[..., 0]


def masked_softmax(logits, mask):
  """`masked_softmax_with_lse` without the log-sum-exp."""
  return masked_softmax_with_lse(logits, mask)[0]


def dropout(probs, rate: float, rng):
  """Inverted dropout on attention probabilities (identity when `rate == 0`)."""
  if rate == 0.0:
    return probs
  keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
  return jnp.where(keep, probs / (1.0 - rate), 0.0)


def merge_softmaxes(out_a, lse_a, out_b, lse_b):
  """Exact softmax over the union of two disjoint key sets, from each part's output and lse.

  `out_*`: `[B, L, H, D]`, `lse_*`: `[B, L, H]`; empty parts (lse = EMPTY_ROW_LSE) get
  weight 0.
  """
  top = jax.lax.stop_gradient(jnp.maximum(lse_a, lse_b))
  weight_a, weight_b = jnp.exp(lse_a - top), jnp.exp(lse_b - top)
  total = weight_a + weight_b
  return weigh_rows(weight_a / total, out_a) + weigh_rows(weight_b / total, out_b)


def weigh_rows(weight_BxLxH, x_BxLxHxD):
  """`weight[..., None] * x` in float32, as an einsum: the backward's sums over head_dim are
  then dots too (XLA:CPU's fused multiply-reduce over a short last axis is far slower)."""
  return jnp.einsum("blh,blhd->blhd", weight_BxLxH, x_BxLxHxD,
                    preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------- layout


def pad_axis1(x, length: int, value=0):
  """`[B, L, ...]` -> `[B, length, ...]`, padded at the end with `value`."""
  pad = length - x.shape[1]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def to_residues(x, d: int):
  """`[B, L, ...]` with `L % d == 0` -> `[B * d, L / d, ...]`, row `b * d + r` = `x[b, r::d]`.

  A dilated window on `x` is an undilated window on each residue class (the fold of
  dilation); `from_residues` is its inverse.
  """
  if d == 1:
    return x
  batch, length = x.shape[:2]
  x = x.reshape(batch, length // d, d, *x.shape[2:])
  return jnp.swapaxes(x, 1, 2).reshape(batch * d, length // d, *x.shape[3:])


def from_residues(x, d: int):
  """The inverse of `to_residues`."""
  if d == 1:
    return x
  x = x.reshape(x.shape[0] // d, d, *x.shape[1:])
  x = jnp.swapaxes(x, 1, 2)
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def select_heads(x_BxLxH, heads: Sequence[int]):
  """`x[:, :, heads]`; a slice, not a gather, when the heads are consecutive (as when
  dilations are given per group of heads), so that its gradient is a pad, not a scatter."""
  heads = [int(h) for h in heads]
  if heads == list(range(heads[0], heads[0] + len(heads))):
    return x_BxLxH[:, :, heads[0]:heads[0] + len(heads)]
  return x_BxLxH[:, :, np.array(heads)]


@dataclasses.dataclass(frozen=True)
class HeadCall:
  """The heads of one banded call: query heads `q_heads` (grouped by their k/v head, in
  order) read k/v heads `kv_heads`, each k/v head serving `len(q_heads) / len(kv_heads)`
  consecutive query heads, all with dilation `dilation`."""

  dilation: int
  q_heads: tuple[int, ...]
  kv_heads: tuple[int, ...]


def head_calls(dilations: Sequence[int], num_kv_heads: int) -> list[HeadCall]:
  """The banded calls of a multi-head call, in increasing dilation.

  Query head `h` reads k/v head `h // (H / K)`. Heads sharing a dilation share a call when
  every k/v head they read serves the same number of them; otherwise they are split by that
  number, so that each call is a `[K', G']` grid of heads with k and v never repeated.
  """
  group = len(dilations) // num_kv_heads
  calls = []
  by_dilation = {}
  for head, d in enumerate(dilations):
    by_dilation.setdefault(d, []).append(head)
  for d, heads in sorted(by_dilation.items()):
    served = {}
    for head in heads:
      served.setdefault(head // group, []).append(head)
    by_count = {}
    for kv_head, its_heads in served.items():
      by_count.setdefault(len(its_heads), []).append(kv_head)
    for count, kv_heads in sorted(by_count.items()):
      q_heads = tuple(h for kv_head in kv_heads for h in served[kv_head])
      calls.append(HeadCall(d, q_heads, tuple(kv_heads)))
  return calls


# -------------------------------------------------------------------------- the band plan


@dataclasses.dataclass(frozen=True)
class BandPlan:
  """Static shape plan of one banded call, shared by the XLA core and the Pallas kernels.

  The sequence (padded to `length = num_blocks * block`) is cut into blocks of `block`
  positions; query block `i` meets key blocks `i - reach .. i + reach` (`.. i` causal).

  Attributes:
    window: one-sided window w, in positions of the (undilated) sequence.
    causal: whether keys after the query are excluded.
    block: b, positions per query block and per key block.
    num_blocks: blocks after padding.
  """

  window: int
  causal: bool
  block: int
  num_blocks: int

  @property
  def length(self) -> int:
    return self.num_blocks * self.block

  @property
  def reach(self) -> int:
    """c: key blocks on each side of a query block that hold keys within its window. Key
    blocks further than the sequence add nothing: a window wider than the sequence costs at
    most the whole sequence."""
    return min(-(-self.window // self.block), max(self.num_blocks - 1, 0))

  @property
  def span(self) -> int:
    """Key blocks a query block meets (and query blocks a key block meets)."""
    return self.reach + 1 if self.causal else 2 * self.reach + 1

  @property
  def keys(self) -> int:
    """Keys scored per query by the XLA core: the span, or the whole sequence if shorter."""
    return min(self.span * self.block, self.length)

  def window_start(self, index):
    """First key of query block `index`'s window in the XLA core: `reach` blocks back,
    kept inside the sequence, so that every window is one slice (at the ends it shifts
    inwards and still covers every key within the window of the block's queries)."""
    return jnp.clip((index - self.reach) * self.block, 0, self.length - self.keys)

  def reblocked(self, block: int) -> "BandPlan":
    """The same padded sequence in blocks of `block`, a divisor of `block` (both are powers
    of two), so that it divides `length` too."""
    return dataclasses.replace(self, block=block, num_blocks=self.length // block)

  def key_blocks_of(self, query_block):
    """First and last key block (inclusive) within reach of `query_block`."""
    first = jnp.maximum(query_block - self.reach, 0)
    last = query_block if self.causal else jnp.minimum(query_block + self.reach,
                                                       self.num_blocks - 1)
    return first, last

  def query_blocks_of(self, key_block):
    """First and last query block (inclusive) whose windows reach `key_block`."""
    first = key_block if self.causal else jnp.maximum(key_block - self.reach, 0)
    return first, jnp.minimum(key_block + self.reach, self.num_blocks - 1)

  def key_block_at(self, query_block, step):
    """Key block of step `step` of `query_block`'s walk (may fall outside the sequence)."""
    return query_block - self.reach + step

  def query_block_at(self, key_block, step):
    """Query block of step `step` of `key_block`'s walk (may fall outside the sequence)."""
    return key_block + step if self.causal else key_block - self.reach + step


def auto_block_size(window: int, length: int) -> int:
  """Block size keeping the wasted scores near `b / 2w` while blocks stay matmul-sized.

  The largest power of two <= w / 2, within [32, 128]: at w >= 64 each query computes at
  most 1.25 x the 2w + 1 scores it needs; below, blocks of 32 waste more scores but save the
  per-block overhead, which dominates on small windows.
  """
  block = 1 << max(0, (window // 2).bit_length() - 1)
  block = min(max(block, 32), 128)
  return max(1, min(block, 1 << (length - 1).bit_length()))


def plan_band(length: int, window: int, causal: bool, block_size: int | None) -> BandPlan:
  """The band plan of a sequence of `length`: `block_size`, or one chosen from the window."""
  if block_size is None:
    block = auto_block_size(window, length)
  elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
    raise errors.ConfigError(f"block_size must be a positive int or None, got {block_size!r}")
  else:
    block = block_size
  return BandPlan(window=window, causal=causal, block=block, num_blocks=-(-length // block))


# ------------------------------------------------------------------------- global tokens


def _concrete_counts(mask):
  """Global tokens per row `[B]` of a concrete mask; None when it is traced (under jit)."""
  try:
    return np.asarray(mask).astype(bool).sum(axis=1)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def global_budget(is_global, global_mask, max_global: int | None):
  """The static number of global slots per row, and the global tokens that get one.

  `is_global` is `global_mask` less the padding. Where a mask is concrete (a constant, even
  under jit) its counts are checked here, on the host, before anything runs: the counts of
  `is_global`, or of `global_mask` (an upper bound) when only the padding is traced. A
  traced mask cannot be checked without a device-to-host round trip in every step, so none
  is made: each row's first `max_global` global tokens are global and any later ones
  attend as ordinary window tokens (`dropped_global_tokens` counts them; under
  `jax.experimental.checkify.checkify` a row over the budget is an error).

  Returns:
    `(budget, is_global)`, the second limited to the budget where the mask is traced.
  """
  counts = _concrete_counts(is_global)
  if counts is None:
    counts = _concrete_counts(global_mask)
  if max_global is None:
    if counts is None:
      raise errors.ConfigError(
          "global_mask is traced (inside jax.jit), so the number of global tokens is not "
          "known when shapes are fixed: pass max_global=<the most global tokens of any row>")
    return int(counts.max(initial=0)), is_global
  if isinstance(max_global, bool) or not isinstance(max_global, int) or max_global < 0:
    raise errors.ConfigError(f"max_global must be an int >= 0, got {max_global!r}")
  if counts is not None:
    if counts.size and counts.max() > max_global:
      raise errors.ConfigError(
          f"a row has {int(counts.max())} global tokens but max_global={max_global}; raise "
          f"max_global (the model's attention.max_global) to at least {int(counts.max())}")
    return max_global, is_global
  checkify.debug_check(
      jnp.all(jnp.sum(is_global, axis=1) <= max_global),
      f"a row has more global tokens than max_global={max_global}; raise max_global (the "
      f"model's attention.max_global)")
  return max_global, is_global & (jnp.cumsum(is_global, axis=1) <= max_global)


def dropped_global_tokens(global_mask, padding_mask=None, *, max_global: int):
  """int32 `[B]`: global tokens of each row beyond `max_global`, which attend as ordinary
  tokens when the mask is traced (`global_budget`); 0 for every row within budget."""
  is_global = jnp.asarray(global_mask, bool)
  if padding_mask is not None:
    is_global &= jnp.asarray(padding_mask, bool)
  return jnp.maximum(jnp.sum(is_global, axis=1, dtype=jnp.int32) - max_global, 0)


def global_positions(is_global, budget: int):
  """Positions of each row's global tokens, in order, `[B, budget]`, and their validity."""
  order = jnp.argsort(jnp.logical_not(is_global), axis=1, stable=True)[:, :budget]
  return order, jnp.take_along_axis(is_global, order, axis=1)


def gather_rows(x_BxLx, positions_BxG):
  """`x[b, positions[b]]` for every row: `[B, L, ...]` -> `[B, G, ...]`."""
  index = positions_BxG.reshape(positions_BxG.shape + (1,) * (x_BxLx.ndim - 2))
  return jnp.take_along_axis(x_BxLx, index, axis=1)


def scatter_rows(x_BxLxHxD, rows_BxGxHxD, positions_BxG, valid_BxG):
  """`x` with `rows` written at `positions`; slots that are not `valid` are dropped."""
  batch_index = jnp.arange(x_BxLxHxD.shape[0])[:, None]
  # Unused slots point past the end and are dropped by the scatter.
  return x_BxLxHxD.at[batch_index, jnp.where(valid_BxG, positions_BxG, x_BxLxHxD.shape[1])].set(
      rows_BxGxHxD.astype(x_BxLxHxD.dtype), mode="drop")


@dataclasses.dataclass(frozen=True)
class GlobalSlots:
  """Global tokens gathered into `G` static slots per row.

  Attributes:
    valid: bool `[B, G]`: the slot holds a global token (unused slots are False).
    keys, values: `[B, G, K, D]`, the slots' keys and values.
    segment_ids: int32 `[B, G]` of the slots, or None without segments.
  """

  valid: jax.Array
  keys: jax.Array
  values: jax.Array
  segment_ids: jax.Array | None

  def key_mask(self, segment_ids_BxL):
    """bool `[B, L, 1, G]`: which slots each query sees (valid, and of its segment)."""
    mask = self.valid[:, None, :]
    if self.segment_ids is not None:
      mask = mask & (segment_ids_BxL[:, :, None] == self.segment_ids[:, None, :])
    return mask[:, :, None, :]

  def row_mask(self, real_BxL, segment_ids_BxL):
    """bool `[B, G, 1, L]`: which keys each slot's global query sees (the real tokens of
    its segment)."""
    mask = real_BxL[:, None, :]
    if self.segment_ids is not None:
      mask = mask & (self.segment_ids[:, :, None] == segment_ids_BxL[:, None, :])
    return mask[:, :, None, :]


def attend_dense(q_BxQxHxD, k_BxSxKxD, v_BxSxKxD, mask, dropout_rate, dropout_rng):
  """Small dense attention (one side holds only global tokens), with each row's lse.

  k and v have `K` heads dividing q's `H` (query head `h` reads k/v head `h // (H / K)`);
  `mask` broadcasts to `[B, Q, H, S]`. Returns float32 `(out [B, Q, H, D], lse [B, Q, H])`.
  """
  batch, queries, heads, head_dim = q_BxQxHxD.shape
  kv_heads = k_BxSxKxD.shape[2]
  q = q_BxQxHxD.reshape(batch, queries, kv_heads, heads // kv_heads, head_dim)
  logits = jnp.einsum("bqkgd,bskd->bqkgs", q, k_BxSxKxD, preferred_element_type=jnp.float32)
  logits = logits.reshape(batch, queries, heads, -1) * (1.0 / math.sqrt(head_dim))
  probs, lse = masked_softmax_with_lse(logits, mask)
  probs = dropout(probs, dropout_rate, dropout_rng)
  probs = probs.reshape(batch, queries, kv_heads, heads // kv_heads, -1)
  out = jnp.einsum("bqkgs,bskd->bqkgd", probs.astype(v_BxSxKxD.dtype), v_BxSxKxD,
                   preferred_element_type=jnp.float32)
  return out.reshape(batch, queries, heads, -1), lse


# ---------------------------------------------------------------------- dropout by hash
#
# Attention dropout draws its keep-mask from a counter-based hash of (seed, row, query
# position, key position), so that the forward and the backward regenerate the same mask
# from the seed alone and nothing of size `[queries, keys]` is stored (as FlashAttention-2
# does with Philox). The XLA core and the Pallas kernels hash the same coordinates, so they
# draw the same mask. Integers are int32 with wrapping multiplies and logical shifts, which
# every backend lowers (Triton, Mosaic, XLA).

_GOLDEN = -1640531527  # 0x9E3779B9 as int32


def _mix(x):
  """A 32-bit avalanche mix (the lowbias32 finaliser) of int32 `x`."""
  shift = jax.lax.shift_right_logical
  x = x ^ shift(x, jnp.int32(16))
  x = x * jnp.int32(0x7FEB352D)
  x = x ^ shift(x, jnp.int32(15))
  x = x * jnp.int32(-2073450869)  # 0x846CA68B
  return x ^ shift(x, jnp.int32(16))


def dropout_seed(rng):
  """int32 scalar seed of a dropout PRNG key."""
  return jax.lax.bitcast_convert_type(jax.random.bits(rng, (), jnp.uint32), jnp.int32)


def dropout_row_hash(seed, row):
  """Hash of (seed, row); `row` indexes a (batch row, head) pair of the call."""
  return _mix(seed + row * jnp.int32(_GOLDEN))


def dropout_query_hash(row_hash, query):
  """Hash of (row, query position), from `dropout_row_hash`."""
  return _mix(row_hash ^ query)


def dropout_threshold(rate: float) -> int:
  """Keep a weight when its 31-bit hash is at least this: probability `1 - rate`."""
  return min(int(round(rate * 2 ** 31)), 2 ** 31 - 1)


def dropout_keep(query_hash, key, rate: float):
  """bool: whether the weight of (row, query, key) survives dropout at `rate`."""
  bits = jax.lax.shift_right_logical(_mix(query_hash ^ key), jnp.int32(1))
  return bits >= jnp.int32(dropout_threshold(rate))

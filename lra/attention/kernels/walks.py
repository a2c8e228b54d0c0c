"""Which tiles each kernel program visits, and which it may run without a mask.

A program walks the `span` blocks within reach of its own block: the key blocks of a query
block (forward, dQ) or the query blocks of a key block (dK/dV). Every tile it meets is one
of three kinds, computed once per call from per-block statistics (as TPU splash attention's
mask info does):

- skipped (0): no pair of the tile can attend: every key is padding, or the query and key
  blocks' segment ranges `[first, last]` do not overlap;
- masked (1): some pair is outside the window, a key is padding, or more than one segment
  meets the tile: the kernel builds the mask;
- full (2): wholly inside the window, every key valid, one segment: no mask at all.

The TPU kernels read the kinds per step. The GPU kernels loop over key (or query) blocks in
three ranges instead, `[first, full_first)` masked, `[full_first, full_end)` full and
`[full_end, end)` masked, where the full range is the band's interior when every tile in it
is full, and empty otherwise; skipped tiles at either end fall outside `[first, end)`.
"""

import jax.numpy as jnp
import numpy as np

from lra.attention import common

SKIPPED, MASKED, FULL = 0, 1, 2


def _block_stats(plan: common.BandPlan, key_valid_NxL, segment_ids_NxL):
  """Per block `[N, nb]`: every key valid, any key valid, first and last segment id."""
  blocks = key_valid_NxL.reshape(key_valid_NxL.shape[0], plan.num_blocks, plan.block)
  all_valid, any_valid = jnp.all(blocks, axis=-1), jnp.any(blocks, axis=-1)
  if segment_ids_NxL is None:
    return all_valid, any_valid, None, None
  segments = segment_ids_NxL.reshape(blocks.shape)
  return all_valid, any_valid, jnp.min(segments, axis=-1), jnp.max(segments, axis=-1)


def _walk(plan: common.BandPlan, over_keys: bool):
  """Static `[nb, span]` indices of the tiles of each program's walk.

  Returns `(own, other, in_range, interior)`: the program's block and the block it meets at
  each step (clipped into the sequence), whether that block exists, and the steps whose
  tiles lie wholly inside the window (`[span]`, the same for every program).
  """
  own = np.arange(plan.num_blocks)[:, None]
  step = np.arange(plan.span)[None, :]
  other = plan.key_block_at(own, step) if over_keys else plan.query_block_at(own, step)
  offset = other - own if over_keys else own - other  # key block minus query block
  b, w = plan.block, plan.window
  if plan.causal:
    interior = (offset[0] < 0) & (-offset[0] * b + b - 1 <= w)
  else:
    interior = np.abs(offset[0]) * b + b - 1 <= w
  in_range = (other >= 0) & (other < plan.num_blocks)
  return own, np.clip(other, 0, plan.num_blocks - 1), in_range, interior


def tile_kinds(plan: common.BandPlan, key_valid_NxL, segment_ids_NxL, *, over_keys: bool):
  """int32 `[N, nb, span]`: the kind of each tile of each program's walk.

  Args:
    plan: the kernels' band plan (`plan.length` positions).
    key_valid_NxL: bool, the keys that may be seen.
    segment_ids_NxL: int32 segment ids, or None for one segment.
    over_keys: the walk of a query block over key blocks (forward, dQ); else the walk of a
      key block over query blocks (dK/dV).
  """
  all_valid, any_valid, first, last = _block_stats(plan, key_valid_NxL, segment_ids_NxL)
  own, other, in_range, interior = _walk(plan, over_keys)
  query, key = (own, other) if over_keys else (other, own)
  seen = any_valid[:, key] & in_range[None]
  full = all_valid[:, key] & interior[None, None]
  if first is not None:
    seen &= (first[:, query] <= last[:, key]) & (first[:, key] <= last[:, query])
    full &= ((first[:, query] == last[:, query]) & (first[:, key] == last[:, key])
             & (first[:, query] == first[:, key]))
  return jnp.where(seen, jnp.where(full, FULL, MASKED), SKIPPED).astype(jnp.int32)


def loop_ranges(plan: common.BandPlan, kinds_NxBxS, *, over_keys: bool):
  """int32 `[4, N, nb]`: each program's `first, full_first, full_end, end` blocks.

  Blocks `[first, full_first)` and `[full_end, end)` run masked, `[full_first, full_end)`
  unmasked; the tiles outside `[first, end)` are skipped.
  """
  own, _, in_range, interior = _walk(plan, over_keys)
  base = (plan.key_block_at(own, 0) if over_keys else plan.query_block_at(own, 0))[None, :, 0]
  seen = kinds_NxBxS > SKIPPED
  any_seen = jnp.any(seen, axis=-1)
  first = jnp.where(any_seen, base + jnp.argmax(seen, axis=-1), 0)
  end = jnp.where(any_seen, base + plan.span - jnp.argmax(seen[..., ::-1], axis=-1), 0)
  steps = np.flatnonzero(interior)
  if steps.size == 0:
    return jnp.stack([first, end, end, end]).astype(jnp.int32)
  inner = slice(steps[0], steps[-1] + 1)
  full = jnp.all((kinds_NxBxS[..., inner] == FULL) | ~in_range[None, :, inner], axis=-1)
  full_first = np.clip(base + steps[0], 0, plan.num_blocks)
  full_end = np.clip(base + steps[-1] + 1, 0, plan.num_blocks)
  full &= full_first < full_end
  return jnp.stack([first, jnp.where(full, full_first, end), jnp.where(full, full_end, end),
                    end]).astype(jnp.int32)

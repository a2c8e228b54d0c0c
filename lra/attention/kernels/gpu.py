"""Band attention kernels for GPUs (Pallas' Triton backend; also run in interpret mode on CPU).

The kernels read the caller's `[N, L, H, D]` arrays through their BlockSpecs (the head axis
squeezed), so nothing is transposed around them. One program per (batch row, query head,
block of `b` queries) loops over the key blocks within its window in three ranges
(`walks.loop_ranges`): masked edges, an unmasked interior and masked edges. Keys and values
stay in HBM and are read one `[b, D]` block at a time, so no band and no `L x L` array exists
anywhere. Grouped heads: query head `h` reads k/v head `h // G` through the index map, so
k and v are never repeated.

The backward pass is two kernels, as in FlashAttention-2: one program per query block
accumulates dQ over its key blocks; one program per (k/v head, key block) accumulates dK and
dV over the query blocks that reach it and over the `G` query heads that read it, computing
the transposed scores `K Q^T` directly. With `BACKWARD = "fused"` one kernel does both and
adds each tile's dQ into a float32 buffer with atomic adds: fewer matmuls, but the order of
the additions, and so the last bits of dQ, varies from run to run.

Dropout regenerates its keep-mask from the seed in every kernel (`common.dropout_keep`), so
nothing of size `[b, keys]` is stored. Arrays: `q [N, L, H, D]`, `k, v [N, L, K, D]`; `lse`
and `delta` `[N, L, H]` float32; `query_valid`, `key_valid` and `segment_ids` `[N, L]`
int32; `L` is a multiple of the block and `D` a power of two >= 16 (the caller pads).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lra.attention import common
from lra.attention.kernels import call as call_lib
from lra.attention.kernels import launch
from lra.attention.kernels import tiles
from lra.attention.kernels import walks

# "split": a dQ kernel and a dK/dV kernel (deterministic); "fused": one kernel with an
# atomic float32 dQ (nondeterministic in the last bits). Read when a call is traced.
BACKWARD = "split"
BACKWARDS = ("split", "fused")
# The backward kernels take each block they walk over in this many parts: `[b, b / n]`
# tiles keep the scores, their gradients and the dropout mask of a tile in registers without
# spilling (ptxas' figures in docs/kernels.md).
SUBTILES = 4


class _Inputs:
  """The optional inputs of a kernel, named: segment ids, loop ranges, the dropout seed."""

  def __init__(self, call: call_lib.BandCall, refs):
    refs = list(refs)
    self.segments = refs.pop(0) if call.segmented else None
    self.ranges = [refs.pop(0) for _ in range(4)]
    self.seed = refs.pop(0)[...] if call.dropout_rate else None
    self.rest = refs

  def loop(self, body, init, masked_body):
    """Runs `body` over the unmasked range and `masked_body` over the two masked ones."""
    first, full_first, full_end, end = (ref[...] for ref in self.ranges)
    state = jax.lax.fori_loop(first, full_first, masked_body, init)
    state = jax.lax.fori_loop(full_first, full_end, body, state)
    return jax.lax.fori_loop(full_end, end, masked_body, state)


def _mask(call, inputs, query, key, key_valid, query_start, key_start):
  """The tile's mask: band, valid keys and, with segments, equal segment ids. `query` and
  `key` are position columns/rows (their sizes are the tile's); `key_valid` broadcasts like
  `key`."""
  mask = tiles.band_mask(query, key, window=call.plan.window, causal=call.plan.causal)
  mask &= key_valid > 0
  if inputs.segments is not None:
    transposed = query.shape[0] == 1  # queries along the columns
    query_segments = inputs.segments[pl.ds(query_start, query.size)]
    key_segments = inputs.segments[pl.ds(key_start, key.size)]
    if transposed:
      mask &= query_segments[None, :] == key_segments[:, None]
    else:
      mask &= query_segments[:, None] == key_segments[None, :]
  return mask


def _forward_kernel(q_ref, k_ref, v_ref, query_valid_ref, key_valid_ref, *refs,
                    call: call_lib.BandCall):
  inputs = _Inputs(call, refs)
  out_ref, lse_ref = inputs.rest
  b = call.plan.block
  n, head, index = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  query_start = index * b
  query = tiles.positions(query_start, b, 0)
  q = q_ref[...]
  query_hash = None
  if inputs.seed is not None:
    query_hash = tiles.query_hashes(inputs.seed, n * call.heads + head, query)

  def step(key_block, state, masked):
    key_start = pl.multiple_of(key_block * b, b)
    key = tiles.positions(key_start, b, 1)
    mask = None
    if masked:
      key_valid = key_valid_ref[pl.ds(key_start, b)][None, :]
      mask = _mask(call, inputs, query, key, key_valid, query_start, key_start)
    keep = None
    if query_hash is not None:
      keep = common.dropout_keep(query_hash, key, call.dropout_rate)
    return tiles.softmax_step(state, q, k_ref[pl.ds(key_start, b), :],
                              v_ref[pl.ds(key_start, b), :], call.scale_log2, mask, keep)

  state = inputs.loop(functools.partial(step, masked=False),
                      tiles.initial_softmax_state(b, q.shape[-1]),
                      functools.partial(step, masked=True))
  query_valid = query_valid_ref[pl.ds(query_start, b)][:, None] > 0
  out, lse = tiles.finish_softmax(state, query_valid, call.dropout_rate)
  out_ref[...] = out.astype(out_ref.dtype)
  lse_ref[...] = lse[:, 0]


def _d_query_kernel(q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, query_valid_ref,
                    key_valid_ref, *refs, call: call_lib.BandCall):
  inputs = _Inputs(call, refs)
  (d_q_ref,) = inputs.rest
  b = call.plan.block
  n, head, index = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  query_start = index * b
  query = tiles.positions(query_start, b, 0)
  q = q_ref[...]
  query_valid = query_valid_ref[pl.ds(query_start, b)][:, None] > 0
  d_out = jnp.where(query_valid, d_out_ref[...], 0).astype(q.dtype)
  lse_log2 = lse_ref[...][:, None] * tiles.LOG2_E
  delta = delta_ref[...][:, None]
  query_hash = None
  if inputs.seed is not None:
    query_hash = tiles.query_hashes(inputs.seed, n * call.heads + head, query)

  sub = max(b // SUBTILES, 16)

  def sub_step(key_start, d_q, masked):
    """One `[b, sub]` tile: the query block against `sub` keys."""
    key = tiles.positions(key_start, sub, 1)
    k = k_ref[pl.ds(key_start, sub), :]
    mask = None
    if masked:
      key_valid = key_valid_ref[pl.ds(key_start, sub)][None, :]
      mask = _mask(call, inputs, query, key, key_valid, query_start, key_start)
    keep = None
    if query_hash is not None:
      keep = common.dropout_keep(query_hash, key, call.dropout_rate)
    _, d_scores = tiles.tile_gradients(q, k, d_out, v_ref[pl.ds(key_start, sub), :],
                                       lse_log2, delta, call.scale_log2, mask, keep,
                                       call.dropout_rate)
    return d_q + tiles.dot_nn(d_scores.astype(k.dtype), k)

  def step(key_block, d_q, masked):
    start = pl.multiple_of(key_block * b, b)
    for part in range(b // sub):
      d_q = sub_step(start + part * sub, d_q, masked)
    return d_q

  d_q = inputs.loop(functools.partial(step, masked=False), jnp.zeros(q.shape, jnp.float32),
                    functools.partial(step, masked=True))
  d_q_ref[...] = (d_q * call.scale).astype(d_q_ref.dtype)


def _d_key_value_kernel(q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, query_valid_ref,
                        key_valid_ref, *refs, call: call_lib.BandCall, fused: bool):
  """dK and dV of one key block of one k/v head, over its `G` query heads; with `fused`,
  also each tile's dQ, added atomically into a float32 `[N, L, H, D]` buffer."""
  inputs = _Inputs(call, refs)
  b = call.plan.block
  sub = max(b // SUBTILES, 16)
  n, kv_head, index = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  key_start = index * b
  key = tiles.positions(key_start, b, 0)  # keys along the rows
  k, v = k_ref[...], v_ref[...]
  key_valid = key_valid_ref[pl.ds(key_start, b)][:, None]

  def head_step(g, grads):
    head = kv_head * call.group + g
    row_hash = None
    if inputs.seed is not None:
      row_hash = common.dropout_row_hash(inputs.seed, n * call.heads + head)

    def sub_step(query_start, grads, masked):
      """One `[b, sub]` tile: the key block against `sub` queries of one head."""
      d_k, d_v = grads
      query = tiles.positions(query_start, sub, 1)  # queries along the columns
      q = q_ref[pl.ds(query_start, sub), g, :]
      query_valid = query_valid_ref[pl.ds(query_start, sub)][:, None] > 0
      d_out = jnp.where(query_valid, d_out_ref[pl.ds(query_start, sub), g, :], 0)
      d_out = d_out.astype(q.dtype)
      mask = None
      if masked:
        mask = _mask(call, inputs, query, key, key_valid, query_start, key_start)
      keep = None
      if row_hash is not None:
        keep = common.dropout_keep(common.dropout_query_hash(row_hash, query), key,
                                   call.dropout_rate)
      lse_log2 = lse_ref[pl.ds(query_start, sub), g][None, :] * tiles.LOG2_E
      dropped, d_scores_t = tiles.tile_gradients(
          k, q, v, d_out, lse_log2, delta_ref[pl.ds(query_start, sub), g][None, :],
          call.scale_log2, mask, keep, call.dropout_rate)
      if fused:
        plgpu.atomic_add(inputs.rest[-1], (pl.ds(query_start, sub), g, slice(None)),
                         tiles.dot_tn(d_scores_t.astype(k.dtype), k) * call.scale)
      return (d_k + tiles.dot_nn(d_scores_t.astype(q.dtype), q),
              d_v + tiles.dot_nn(dropped.astype(d_out.dtype), d_out))

    def step(query_block, grads, masked):
      start = pl.multiple_of(query_block * b, b)
      for part in range(b // sub):
        grads = sub_step(start + part * sub, grads, masked)
      return grads

    return inputs.loop(functools.partial(step, masked=False), grads,
                       functools.partial(step, masked=True))

  zeros = jnp.zeros(k.shape, jnp.float32)
  d_k, d_v = jax.lax.fori_loop(0, call.group, head_step, (zeros, zeros))
  d_k_ref, d_v_ref = inputs.rest[-3:-1] if fused else inputs.rest
  d_k_ref[...] = (d_k * call.scale).astype(d_k_ref.dtype)
  d_v_ref[...] = d_v.astype(d_v_ref.dtype)


def _block(call, width):
  """The program's own block of `[N, L, heads, width]` (head axis squeezed)."""
  return pl.BlockSpec((None, call.plan.block, None, width),
                      lambda n, head, index: (n, index, head, 0))


def _kv_row(call, width):
  """All `L` positions of the k/v head that query head `head` reads."""
  group = call.group
  return pl.BlockSpec((None, call.plan.length, None, width),
                      lambda n, head, index: (n, 0, head // group, 0))


def _group_rows(call, width):
  """All `L` positions of the `G` query heads of k/v head `kv_head`: `[L, G, width]`."""
  return pl.BlockSpec((None, call.plan.length, call.group, width),
                      lambda n, kv_head, index: (n, 0, kv_head, 0))


def _row_stat(call):
  """The program's block of a per-row statistic `[N, L, H]`."""
  return pl.BlockSpec((None, call.plan.block, None), lambda n, head, index: (n, index, head))


def _group_stat(call):
  return pl.BlockSpec((None, call.plan.length, call.group),
                      lambda n, kv_head, index: (n, 0, kv_head))


def _sequence(call):
  """The whole `[L]` row of batch row `n` of an `[N, L]` array."""
  return pl.BlockSpec((None, call.plan.length), lambda n, head, index: (n, 0))


def _optional_inputs(call, segment_ids, ranges, seed):
  """Specs and arrays of the segment ids, the four loop ranges and the seed."""
  specs = [_sequence(call)] if call.segmented else []
  arrays = [segment_ids] if call.segmented else []
  for which in range(4):
    specs.append(pl.BlockSpec((None, None, None),
                              lambda n, head, index, which=which: (which, n, index)))
    arrays.append(ranges)
  if call.dropout_rate:
    specs.append(pl.BlockSpec((None,), lambda n, head, index: (0,)))
    arrays.append(seed.reshape(1))
  return specs, arrays


def _launch(kernel_name, interpret):
  if interpret:
    return None
  settings = launch.settings(kernel_name)
  return plgpu.CompilerParams(num_warps=settings.num_warps, num_stages=settings.num_stages)


def forward(call, q, k, v, query_valid, key_valid, segment_ids, seed, *,
            interpret: bool = False):
  """Returns `out [N, L, H, D]` (dtype of q) and `lse [N, L, H]` float32."""
  n, length, heads, head_dim = q.shape
  kinds = walks.tile_kinds(call.plan, key_valid > 0, segment_ids, over_keys=True)
  specs, arrays = _optional_inputs(call, segment_ids,
                                   walks.loop_ranges(call.plan, kinds, over_keys=True), seed)
  return pl.pallas_call(
      functools.partial(_forward_kernel, call=call),
      grid=(n, heads, call.plan.num_blocks),
      in_specs=[_block(call, head_dim), _kv_row(call, head_dim), _kv_row(call, head_dim),
                _sequence(call), _sequence(call), *specs],
      out_specs=[_block(call, head_dim), _row_stat(call)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((n, length, heads), jnp.float32)],
      compiler_params=_launch("forward", interpret),
      interpret=interpret,
      name="band_attention_forward",
  )(q, k, v, query_valid, key_valid, *arrays)


def backward(call, q, k, v, d_out, lse, delta, query_valid, key_valid, segment_ids, seed, *,
             interpret: bool = False):
  """Returns `(d_q, d_k, d_v)` in the dtypes and shapes of q, k, v."""
  if BACKWARD not in BACKWARDS:
    raise ValueError(f"gpu.BACKWARD must be one of {BACKWARDS}, got {BACKWARD!r}")
  n, _, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  valid = key_valid > 0
  common_inputs = (q, k, v, d_out, lse, delta, query_valid, key_valid)
  key_kinds = walks.tile_kinds(call.plan, valid, segment_ids, over_keys=False)
  key_specs, key_arrays = _optional_inputs(
      call, segment_ids, walks.loop_ranges(call.plan, key_kinds, over_keys=False), seed)
  fused = BACKWARD == "fused"
  kv_outputs = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  kv_out_specs = [_block(call, head_dim)] * 2
  aliases = {}
  if fused:  # the dQ buffer starts at zero: an input aliased to the output
    aliases = {len(common_inputs) + len(key_arrays): 2}
    key_specs.append(_group_rows(call, head_dim))
    key_arrays.append(jnp.zeros(q.shape, jnp.float32))
    kv_outputs.append(jax.ShapeDtypeStruct(q.shape, jnp.float32))
    kv_out_specs.append(_group_rows(call, head_dim))
  results = pl.pallas_call(
      functools.partial(_d_key_value_kernel, call=call, fused=fused),
      grid=(n, kv_heads, call.plan.num_blocks),
      in_specs=[_group_rows(call, head_dim), _block(call, head_dim), _block(call, head_dim),
                _group_rows(call, head_dim), _group_stat(call), _group_stat(call),
                _sequence(call), _sequence(call), *key_specs],
      out_specs=kv_out_specs,
      out_shape=kv_outputs,
      input_output_aliases=aliases,
      compiler_params=_launch("d_key_value", interpret),
      interpret=interpret,
      name="band_attention_d_key_value",
  )(*common_inputs, *key_arrays)
  if fused:
    d_k, d_v, d_q = results
    return d_q.astype(q.dtype), d_k, d_v
  d_k, d_v = results
  query_kinds = walks.tile_kinds(call.plan, valid, segment_ids, over_keys=True)
  query_specs, query_arrays = _optional_inputs(
      call, segment_ids, walks.loop_ranges(call.plan, query_kinds, over_keys=True), seed)
  d_q = pl.pallas_call(
      functools.partial(_d_query_kernel, call=call),
      grid=(n, heads, call.plan.num_blocks),
      in_specs=[_block(call, head_dim), _kv_row(call, head_dim), _kv_row(call, head_dim),
                _block(call, head_dim), _row_stat(call), _row_stat(call), _sequence(call),
                _sequence(call), *query_specs],
      out_specs=_block(call, head_dim),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_launch("d_query", interpret),
      interpret=interpret,
      name="band_attention_d_query",
  )(*common_inputs, *query_arrays)
  return d_q, d_k, d_v

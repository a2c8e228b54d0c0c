"""Band attention kernels for TPUs (Pallas' Mosaic TPU backend; also interpretable on CPU).

The grid is `(row, block, step)`: for query block `i` the last, sequential axis walks the
`span` key blocks `i - c .. i + c` (`i - c .. i` causal), and a block index map hands each
step its key block, so the pipeline's DMAs fetch exactly the window's k and v blocks into
VMEM, one step ahead of the compute. Each step reads the kind of its tile (`walks`) from
SMEM (scalar prefetch): skipped tiles compute nothing, full tiles run without a mask. Steps
that fall off either end of the sequence are clamped to a block already fetched (no new
DMA). Running softmax statistics and the output accumulator live in VMEM scratch across
steps (FlashAttention's online softmax). The backward pass is a dQ kernel on the same grid
and a dK/dV kernel whose steps walk, for each of the `G` query heads of a k/v head, the
query blocks that reach each key block.

Arrays are head-major: `q, d_out [N * H, L, D]`, `k, v [N * K, L, D]` (query head `h` of
batch row `n` is row `n * H + h` and reads k/v row `n * K + h // G`); `lse` and `delta` are
`[N * H, L, 1]`; `query_valid` and segment ids of queries `[N, L, 1]` int32; `key_valid` and
segment ids of keys `[N, L / b, 1, b]` int32 (the last two dimensions of every block must be
multiples of 8 x 128 or the array's own).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lra.attention import common
from lra.attention.kernels import call as call_lib
from lra.attention.kernels import tiles
from lra.attention.kernels import walks


def _clamped(call, block):
  return jnp.clip(block, 0, call.plan.num_blocks - 1)


class _Tile:
  """The tile of one grid step: its kind, positions, and (when masked) its mask."""

  def __init__(self, call, kinds_ref, n, query_block, key_block, step, over_keys: bool):
    b = call.plan.block
    self.call = call
    self.kind = kinds_ref[n, query_block if over_keys else key_block, step]
    self.query_start, self.key_start = query_block * b, key_block * b
    self.query = tiles.positions(self.query_start, b, 0)
    self.key = tiles.positions(self.key_start, b, 1)

  def mask(self, key_valid_ref, segment_refs):
    mask = tiles.band_mask(self.query, self.key, window=self.call.plan.window,
                           causal=self.call.plan.causal) & (key_valid_ref[...] > 0)
    if segment_refs:
      query_segments, key_segments = segment_refs
      mask &= query_segments[...] == key_segments[...]
    return mask

  def keep(self, seed_ref, row):
    if not self.call.dropout_rate:
      return None
    return common.dropout_keep(tiles.query_hashes(seed_ref[0], row, self.query), self.key,
                               self.call.dropout_rate)

  def run(self, accumulate, key_valid_ref, segment_refs):
    """Runs `accumulate(mask)` on a masked tile, `accumulate(None)` on a full one."""

    @pl.when(self.kind == walks.MASKED)
    def _masked():
      accumulate(self.mask(key_valid_ref, segment_refs))

    @pl.when(self.kind == walks.FULL)
    def _full():
      accumulate(None)


def _split(call, refs, inputs):
  """`inputs` leading refs, then segment refs (2 when segmented), then the rest."""
  segments = 2 if call.segmented else 0
  return refs[:inputs], refs[inputs:inputs + segments], refs[inputs + segments:]


def _forward_kernel(kinds_ref, seed_ref, *refs, call: call_lib.BandCall):
  (q_ref, k_ref, v_ref, query_valid_ref, key_valid_ref), segment_refs, rest = _split(
      call, refs, 5)
  out_ref, lse_ref, max_ref, sum_ref, acc_ref = rest
  row, index, step = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  tile = _Tile(call, kinds_ref, jax.lax.div(row, call.heads), index,
               call.plan.key_block_at(index, step), step, over_keys=True)

  @pl.when(step == 0)
  def _start():
    max_ref[...], sum_ref[...], acc_ref[...] = tiles.initial_softmax_state(*acc_ref.shape)

  def accumulate(mask):
    state = tiles.softmax_step((max_ref[...], sum_ref[...], acc_ref[...]), q_ref[...],
                               k_ref[...], v_ref[...], call.scale_log2, mask,
                               tile.keep(seed_ref, row))
    max_ref[...], sum_ref[...], acc_ref[...] = state

  tile.run(accumulate, key_valid_ref, segment_refs)

  @pl.when(step == call.plan.span - 1)
  def _finish():
    out, lse = tiles.finish_softmax((max_ref[...], sum_ref[...], acc_ref[...]),
                                    query_valid_ref[...] > 0, call.dropout_rate)
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse


def _d_query_kernel(kinds_ref, seed_ref, *refs, call: call_lib.BandCall):
  inputs, segment_refs, (d_q_ref, d_q_acc_ref) = _split(call, refs, 8)
  q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, query_valid_ref, key_valid_ref = inputs
  row, index, step = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  tile = _Tile(call, kinds_ref, jax.lax.div(row, call.heads), index,
               call.plan.key_block_at(index, step), step, over_keys=True)

  @pl.when(step == 0)
  def _start():
    d_q_acc_ref[...] = jnp.zeros(d_q_acc_ref.shape, jnp.float32)

  def accumulate(mask):
    q, k = q_ref[...], k_ref[...]
    d_out = jnp.where(query_valid_ref[...] > 0, d_out_ref[...], 0).astype(q.dtype)
    _, d_scores = tiles.tile_gradients(
        q, k, d_out, v_ref[...], lse_ref[...] * tiles.LOG2_E, delta_ref[...],
        call.scale_log2, mask, tile.keep(seed_ref, row), call.dropout_rate)
    d_q_acc_ref[...] += tiles.dot_nn(d_scores.astype(k.dtype), k)

  tile.run(accumulate, key_valid_ref, segment_refs)

  @pl.when(step == call.plan.span - 1)
  def _finish():
    d_q_ref[...] = (d_q_acc_ref[...] * call.scale).astype(d_q_ref.dtype)


def _d_key_value_kernel(kinds_ref, seed_ref, *refs, call: call_lib.BandCall):
  inputs, segment_refs, rest = _split(call, refs, 8)
  q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, query_valid_ref, key_valid_ref = inputs
  d_k_ref, d_v_ref, d_k_acc_ref, d_v_acc_ref = rest
  kv_row, index, step = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n = jax.lax.div(kv_row, call.kv_heads)
  head_step, walk_step = jax.lax.div(step, call.plan.span), jax.lax.rem(step, call.plan.span)
  row = n * call.heads + jax.lax.rem(kv_row, call.kv_heads) * call.group + head_step
  tile = _Tile(call, kinds_ref, n, call.plan.query_block_at(index, walk_step), index,
               walk_step, over_keys=False)

  @pl.when(step == 0)
  def _start():
    d_k_acc_ref[...] = jnp.zeros(d_k_acc_ref.shape, jnp.float32)
    d_v_acc_ref[...] = jnp.zeros(d_v_acc_ref.shape, jnp.float32)

  def accumulate(mask):
    q = q_ref[...]
    d_out = jnp.where(query_valid_ref[...] > 0, d_out_ref[...], 0).astype(q.dtype)
    dropped, d_scores = tiles.tile_gradients(
        q, k_ref[...], d_out, v_ref[...], lse_ref[...] * tiles.LOG2_E, delta_ref[...],
        call.scale_log2, mask, tile.keep(seed_ref, row), call.dropout_rate)
    d_k_acc_ref[...] += tiles.dot_tn(d_scores.astype(q.dtype), q)
    d_v_acc_ref[...] += tiles.dot_tn(dropped.astype(d_out.dtype), d_out)

  tile.run(accumulate, key_valid_ref, segment_refs)

  @pl.when(step == call.group * call.plan.span - 1)
  def _finish():
    d_k_ref[...] = (d_k_acc_ref[...] * call.scale).astype(d_k_ref.dtype)
    d_v_ref[...] = d_v_acc_ref[...].astype(d_v_ref.dtype)


# Block index maps: `(row, index, step, kinds_ref, seed_ref) -> block indices`.


def _own_block(call, width):
  """The grid program's own block of a head-major `[R, L, width]` array."""
  return pl.BlockSpec((None, call.plan.block, width), lambda row, index, step, *_: (row, index, 0))


def _query_side(call, width, *, keys_walk: bool):
  """The query-side block a step meets, of a head-major `[N * H, L, width]` array: the
  program's own (forward, dQ) or, for dK/dV, that of the step's query head and block."""
  if not keys_walk:
    return _own_block(call, width)
  span = call.plan.span

  def index_map(kv_row, index, step, *_):
    n, kv_head = jax.lax.div(kv_row, call.kv_heads), jax.lax.rem(kv_row, call.kv_heads)
    row = n * call.heads + kv_head * call.group + jax.lax.div(step, span)
    block = _clamped(call, call.plan.query_block_at(index, jax.lax.rem(step, span)))
    return row, block, 0
  return pl.BlockSpec((None, call.plan.block, width), index_map)


def _key_side(call, width, *, keys_walk: bool):
  """The k/v block a step meets, of a head-major `[N * K, L, width]` array."""
  if keys_walk:
    return _own_block(call, width)

  def index_map(row, index, step, *_):
    n, head = jax.lax.div(row, call.heads), jax.lax.rem(row, call.heads)
    kv_row = n * call.kv_heads + jax.lax.div(head, call.group)
    return kv_row, _clamped(call, call.plan.key_block_at(index, step)), 0
  return pl.BlockSpec((None, call.plan.block, width), index_map)


def _batch_of(call, row, keys_walk):
  return jax.lax.div(row, call.kv_heads if keys_walk else call.heads)


def _query_column(call, *, keys_walk: bool):
  """The query-side block `[b, 1]` of a per-position `[N, L, 1]` array."""
  span = call.plan.span

  def index_map(row, index, step, *_):
    block = index
    if keys_walk:
      block = _clamped(call, call.plan.query_block_at(index, jax.lax.rem(step, span)))
    return _batch_of(call, row, keys_walk), block, 0
  return pl.BlockSpec((None, call.plan.block, 1), index_map)


def _key_row(call, *, keys_walk: bool):
  """The key-side block `[1, b]` of a per-position `[N, L / b, 1, b]` array."""

  def index_map(row, index, step, *_):
    block = index
    if not keys_walk:
      block = _clamped(call, call.plan.key_block_at(index, step))
    return _batch_of(call, row, keys_walk), block, 0, 0
  return pl.BlockSpec((None, None, 1, call.plan.block), index_map)


def _segment_specs(call, keys_walk):
  if not call.segmented:
    return []
  return [_query_column(call, keys_walk=keys_walk), _key_row(call, keys_walk=keys_walk)]


def _call(kernel, call, grid, in_specs, out_specs, out_shape, scratch, interpret):
  return pl.pallas_call(
      functools.partial(kernel, call=call),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=grid, in_specs=in_specs, out_specs=out_specs,
          scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch]),
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name=kernel.__name__.strip("_"),
  )


def _key_blocks(call, x_NxL):
  """`[N, L]` -> `[N, L / b, 1, b]`."""
  return x_NxL.reshape(x_NxL.shape[0], call.plan.num_blocks, 1, call.plan.block)


def _prefetch(call, key_valid, segment_ids, seed, *, over_keys: bool):
  kinds = walks.tile_kinds(call.plan, key_valid > 0, segment_ids, over_keys=over_keys)
  return kinds, jnp.zeros((1,), jnp.int32) if seed is None else seed.reshape(1)


def _masks(call, query_valid, key_valid, segment_ids):
  """The per-position arrays in the kernels' layouts: query-side columns, key-side rows."""
  masks = [query_valid[..., None], _key_blocks(call, key_valid)]
  if call.segmented:
    masks += [segment_ids[..., None], _key_blocks(call, segment_ids)]
  return masks


def forward(call, q, k, v, query_valid, key_valid, segment_ids, seed, *,
            interpret: bool = False):
  """Returns `out [N * H, L, D]` (dtype of q) and `lse [N * H, L, 1]` float32."""
  rows, length, head_dim = q.shape
  b = call.plan.block
  in_specs = [_own_block(call, head_dim), _key_side(call, head_dim, keys_walk=False),
              _key_side(call, head_dim, keys_walk=False),
              _query_column(call, keys_walk=False), _key_row(call, keys_walk=False),
              *_segment_specs(call, keys_walk=False)]
  masks = _masks(call, query_valid, key_valid, segment_ids)
  return _call(
      _forward_kernel, call, (rows, call.plan.num_blocks, call.plan.span), in_specs,
      out_specs=[_own_block(call, head_dim), _own_block(call, 1)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((rows, length, 1), jnp.float32)],
      scratch=[(b, 1), (b, 1), (b, head_dim)], interpret=interpret,
  )(*_prefetch(call, key_valid, segment_ids, seed, over_keys=True), q, k, v, *masks[:2],
    *masks[2:])


def backward(call, q, k, v, d_out, lse, delta, query_valid, key_valid, segment_ids, seed, *,
             interpret: bool = False):
  """Returns `(d_q, d_k, d_v)` in the dtypes and shapes of q, k, v."""
  head_dim = q.shape[-1]
  b, span = call.plan.block, call.plan.span
  masks = _masks(call, query_valid, key_valid, segment_ids)
  operands = (q, k, v, d_out, lse, delta, *masks[:2], *masks[2:])

  def specs(keys_walk):
    query_side = functools.partial(_query_side, call, keys_walk=keys_walk)
    key_side = functools.partial(_key_side, call, keys_walk=keys_walk)
    return [query_side(head_dim), key_side(head_dim), key_side(head_dim), query_side(head_dim),
            query_side(1), query_side(1), _query_column(call, keys_walk=keys_walk),
            _key_row(call, keys_walk=keys_walk), *_segment_specs(call, keys_walk)]

  d_q = _call(
      _d_query_kernel, call, (q.shape[0], call.plan.num_blocks, span), specs(False),
      out_specs=_own_block(call, head_dim), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      scratch=[(b, head_dim)], interpret=interpret,
  )(*_prefetch(call, key_valid, segment_ids, seed, over_keys=True), *operands)
  d_k, d_v = _call(
      _d_key_value_kernel, call, (k.shape[0], call.plan.num_blocks, call.group * span),
      specs(True), out_specs=[_own_block(call, head_dim)] * 2,
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      scratch=[(b, head_dim), (b, head_dim)], interpret=interpret,
  )(*_prefetch(call, key_valid, segment_ids, seed, over_keys=False), *operands)
  return d_q, d_k, d_v

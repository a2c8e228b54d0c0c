"""Band attention kernels for TPUs (Pallas' Mosaic TPU backend; also interpretable on CPU).

The grid is `(batch x head, block, step)`: for query block `i` the last, sequential axis
walks the `span` key blocks `i - c .. i + c` (`i - c .. i` causal), and a block index map
hands each step its key block, so the pipeline's DMAs fetch exactly the window's k and v
blocks into VMEM, one step ahead of the compute. Steps that fall off either end of the
sequence are clamped to a block already fetched (no new DMA) and skipped with `pl.when`.
Running softmax statistics and the output accumulator live in VMEM scratch across steps
(FlashAttention's online softmax). The backward pass is a dQ kernel on the same grid and a
dK/dV kernel whose steps walk the query blocks that reach each key block.

Arrays are head-major: `q, k, v, d_out [R, L, D]` with `R = batch x heads`; `lse` and
`delta` are `[R, L, 1]`; `query_valid [batch, L, 1]` and `key_valid [batch, L]` are int32
(1 = real). Every block's last two dimensions must be multiples of 8 x 128 or the array's
own, so the key mask is viewed as `[batch, L / b, 1, b]` and `b` must be a multiple of 8.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lra.attention.kernels import geometry as geometry_lib
from lra.attention.kernels import tiles


def _in_sequence(geometry, block):
  return (block >= 0) & (block < geometry.num_blocks)


def _clamped(geometry, block):
  return jnp.clip(block, 0, geometry.num_blocks - 1)


def _tile_mask(geometry, query_block, key_block, key_valid_ref):
  b = geometry.block
  return (tiles.band_mask(query_block * b, key_block * b, (b, b), window=geometry.window,
                          causal=geometry.causal) & (key_valid_ref[...] > 0))


def _forward_kernel(q_ref, k_ref, v_ref, query_valid_ref, key_valid_ref, out_ref, lse_ref,
                    max_ref, sum_ref, acc_ref, *, geometry: geometry_lib.BandGeometry):
  index, step = pl.program_id(1), pl.program_id(2)
  key_block = geometry.key_block_at(index, step)

  @pl.when(step == 0)
  def _start():
    max_ref[...], sum_ref[...], acc_ref[...] = tiles.initial_softmax_state(*acc_ref.shape)

  @pl.when(_in_sequence(geometry, key_block))
  def _accumulate():
    state = tiles.softmax_step((max_ref[...], sum_ref[...], acc_ref[...]), q_ref[...],
                               k_ref[...], v_ref[...],
                               _tile_mask(geometry, index, key_block, key_valid_ref),
                               geometry.scale)
    max_ref[...], sum_ref[...], acc_ref[...] = state

  @pl.when(step == geometry.span - 1)
  def _finish():
    out, lse = tiles.finish_softmax((max_ref[...], sum_ref[...], acc_ref[...]),
                                    query_valid_ref[...] > 0)
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse


def _d_query_kernel(q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, key_valid_ref,
                    d_q_ref, d_q_acc_ref, *, geometry: geometry_lib.BandGeometry):
  index, step = pl.program_id(1), pl.program_id(2)
  key_block = geometry.key_block_at(index, step)

  @pl.when(step == 0)
  def _start():
    d_q_acc_ref[...] = jnp.zeros(d_q_acc_ref.shape, jnp.float32)

  @pl.when(_in_sequence(geometry, key_block))
  def _accumulate():
    k = k_ref[...]
    _, d_scores = tiles.tile_gradients(
        q_ref[...], k, v_ref[...], d_out_ref[...], lse_ref[...], delta_ref[...],
        _tile_mask(geometry, index, key_block, key_valid_ref), geometry.scale)
    d_q_acc_ref[...] += tiles.dot_nn(d_scores.astype(k.dtype), k)

  @pl.when(step == geometry.span - 1)
  def _finish():
    d_q_ref[...] = (d_q_acc_ref[...] * geometry.scale).astype(d_q_ref.dtype)


def _d_key_value_kernel(q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, key_valid_ref,
                        d_k_ref, d_v_ref, d_k_acc_ref, d_v_acc_ref, *,
                        geometry: geometry_lib.BandGeometry):
  index, step = pl.program_id(1), pl.program_id(2)
  query_block = geometry.query_block_at(index, step)

  @pl.when(step == 0)
  def _start():
    d_k_acc_ref[...] = jnp.zeros(d_k_acc_ref.shape, jnp.float32)
    d_v_acc_ref[...] = jnp.zeros(d_v_acc_ref.shape, jnp.float32)

  @pl.when(_in_sequence(geometry, query_block))
  def _accumulate():
    q, d_out = q_ref[...], d_out_ref[...]
    probs, d_scores = tiles.tile_gradients(
        q, k_ref[...], v_ref[...], d_out, lse_ref[...], delta_ref[...],
        _tile_mask(geometry, query_block, index, key_valid_ref), geometry.scale)
    d_k_acc_ref[...] += tiles.dot_tn(d_scores.astype(q.dtype), q)
    d_v_acc_ref[...] += tiles.dot_tn(probs.astype(d_out.dtype), d_out)

  @pl.when(step == geometry.span - 1)
  def _finish():
    d_k_ref[...] = (d_k_acc_ref[...] * geometry.scale).astype(d_k_ref.dtype)
    d_v_ref[...] = d_v_acc_ref[...].astype(d_v_ref.dtype)


def _own_block(geometry, width):
  """The grid program's own block of a head-major `[R, L, width]` array."""
  return pl.BlockSpec((None, geometry.block, width), lambda row, index, step: (row, index, 0))


def _other_block(geometry, width, block_at):
  """The block that grid step `step` meets, of a head-major `[R, L, width]` array."""
  return pl.BlockSpec(
      (None, geometry.block, width),
      lambda row, index, step: (row, _clamped(geometry, block_at(index, step)), 0))


def _query_valid_spec(geometry):
  return pl.BlockSpec((None, geometry.block, 1),
                      lambda row, index, step: (geometry.batch_of(row), index, 0))


def _key_valid_spec(geometry, block_at=None):
  def index_map(row, index, step):
    block = index if block_at is None else _clamped(geometry, block_at(index, step))
    return geometry.batch_of(row), block, 0, 0
  return pl.BlockSpec((None, None, 1, geometry.block), index_map)


def _call(kernel, geometry, in_specs, out_specs, out_shape, scratch, interpret):
  return pl.pallas_call(
      functools.partial(kernel, geometry=geometry),
      grid=(jax.tree.leaves(out_shape)[0].shape[0], geometry.num_blocks, geometry.span),
      in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name=kernel.__name__.strip("_"),
  )


def _blocked_key_valid(geometry, key_valid):
  """`[batch, L]` -> `[batch, L / b, 1, b]`."""
  return key_valid.reshape(key_valid.shape[0], geometry.num_blocks, 1, geometry.block)


def forward(geometry, q, k, v, query_valid, key_valid, *, interpret: bool = False):
  """Returns `out [R, L, D]` (dtype of q) and `lse [R, L, 1]` float32."""
  rows, length, head_dim = q.shape
  b = geometry.block
  key_at = geometry.key_block_at
  return _call(
      _forward_kernel, geometry,
      in_specs=[_own_block(geometry, head_dim), _other_block(geometry, head_dim, key_at),
                _other_block(geometry, head_dim, key_at), _query_valid_spec(geometry),
                _key_valid_spec(geometry, key_at)],
      out_specs=[_own_block(geometry, head_dim), _own_block(geometry, 1)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((rows, length, 1), jnp.float32)],
      scratch=[(b, 1), (b, 1), (b, head_dim)], interpret=interpret,
  )(q, k, v, query_valid, _blocked_key_valid(geometry, key_valid))


def backward(geometry, q, k, v, d_out, lse, delta, key_valid, *, interpret: bool = False):
  """Returns `(d_q, d_k, d_v)`, each `[R, L, D]` in the dtype of its input."""
  head_dim = q.shape[-1]
  b = geometry.block
  key_valid = _blocked_key_valid(geometry, key_valid)
  key_at, query_at = geometry.key_block_at, geometry.query_block_at
  own, own_row = _own_block(geometry, head_dim), _own_block(geometry, 1)
  d_q = _call(
      _d_query_kernel, geometry,
      in_specs=[own, _other_block(geometry, head_dim, key_at),
                _other_block(geometry, head_dim, key_at), own, own_row, own_row,
                _key_valid_spec(geometry, key_at)],
      out_specs=own, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      scratch=[(b, head_dim)], interpret=interpret,
  )(q, k, v, d_out, lse, delta, key_valid)
  query_side, query_row = (_other_block(geometry, head_dim, query_at),
                           _other_block(geometry, 1, query_at))
  d_k, d_v = _call(
      _d_key_value_kernel, geometry,
      in_specs=[query_side, own, own, query_side, query_row, query_row,
                _key_valid_spec(geometry)],
      out_specs=[own, own],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      scratch=[(b, head_dim), (b, head_dim)], interpret=interpret,
  )(q, k, v, d_out, lse, delta, key_valid)
  return d_q, d_k, d_v

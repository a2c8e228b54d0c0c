"""Band attention kernels for GPUs (Pallas' Triton backend; also run in interpret mode on CPU).

One program per (batch x head, block of `b` queries) loops over only the key blocks within
its window: `[i - c, i + c]` (`[i - c, i]` causal), `c = ceil(w / b)`. Keys and values of
the program's row stay in HBM and are read one `[b, D]` block at a time, so no band and no
`L x L` array exists anywhere. The backward pass is two kernels, as in FlashAttention-2: one
program per query block accumulates dQ over its key blocks, one per key block accumulates
dK and dV over the query blocks that reach it.

Arrays are head-major: `q, k, v, d_out [R, L, D]` with `R = batch x heads`; `lse` and
`delta` are `[R, L, 1]`; `query_valid [batch, L, 1]` and `key_valid [batch, L]` are int32
(1 = real). `L` is a multiple of the block and `D` a power of two >= 16 (the caller pads).

Roofline per program (b = 128, D = 64, w = 256, bf16): the forward runs 21 MFLOP of
matmuls against 200 KB of HBM reads without cache reuse (105 FLOP/byte, under the H200's
ridge of 165), but neighbouring programs share their k and v blocks through L2; see
docs/kernels.md for all three kernels and the whole-call estimate.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lra.attention.kernels import geometry as geometry_lib
from lra.attention.kernels import tiles


# Triton's launch configuration of every kernel. The default measured against (8, 3) and
# others on an H100 by `python -m experiments.bench_gpu --kernel_configs=...`
# (docs/kernels.md); the benchmark tables there are of this default.
NUM_WARPS = 4
NUM_STAGES = 2


def _compiler_params(interpret: bool):
  return None if interpret else plgpu.CompilerParams(num_warps=NUM_WARPS,
                                                      num_stages=NUM_STAGES)


def _forward_kernel(q_ref, k_ref, v_ref, query_valid_ref, key_valid_ref, out_ref, lse_ref, *,
                    geometry: geometry_lib.BandGeometry):
  block = geometry.block
  index = pl.program_id(1)
  q = q_ref[...]

  def body(key_block, state):
    start = pl.multiple_of(key_block * block, block)
    mask = (tiles.band_mask(index * block, start, (block, block), window=geometry.window,
                            causal=geometry.causal) &
            (key_valid_ref[:, pl.ds(start, block)] > 0))
    return tiles.softmax_step(state, q, k_ref[pl.ds(start, block), :],
                              v_ref[pl.ds(start, block), :], mask, geometry.scale)

  first, last = geometry.key_blocks_of(index)
  state = jax.lax.fori_loop(first, last + 1, body,
                            tiles.initial_softmax_state(block, q.shape[-1]))
  out, lse = tiles.finish_softmax(state, query_valid_ref[...] > 0)
  out_ref[...] = out.astype(out_ref.dtype)
  lse_ref[...] = lse


def _d_query_kernel(q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, key_valid_ref,
                    d_q_ref, *, geometry: geometry_lib.BandGeometry):
  block = geometry.block
  index = pl.program_id(1)
  q, d_out, lse, delta = q_ref[...], d_out_ref[...], lse_ref[...], delta_ref[...]

  def body(key_block, d_q):
    start = pl.multiple_of(key_block * block, block)
    k = k_ref[pl.ds(start, block), :]
    mask = (tiles.band_mask(index * block, start, (block, block), window=geometry.window,
                            causal=geometry.causal) &
            (key_valid_ref[:, pl.ds(start, block)] > 0))
    _, d_scores = tiles.tile_gradients(q, k, v_ref[pl.ds(start, block), :], d_out, lse,
                                       delta, mask, geometry.scale)
    return d_q + tiles.dot_nn(d_scores.astype(k.dtype), k)

  first, last = geometry.key_blocks_of(index)
  d_q = jax.lax.fori_loop(first, last + 1, body, jnp.zeros(q.shape, jnp.float32))
  d_q_ref[...] = (d_q * geometry.scale).astype(d_q_ref.dtype)


def _d_key_value_kernel(q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, key_valid_ref,
                        d_k_ref, d_v_ref, *, geometry: geometry_lib.BandGeometry):
  block = geometry.block
  index = pl.program_id(1)
  k, v = k_ref[...], v_ref[...]
  key_valid = key_valid_ref[...] > 0

  def body(query_block, grads):
    d_k, d_v = grads
    start = pl.multiple_of(query_block * block, block)
    q, d_out = q_ref[pl.ds(start, block), :], d_out_ref[pl.ds(start, block), :]
    mask = (tiles.band_mask(start, index * block, (block, block), window=geometry.window,
                            causal=geometry.causal) & key_valid)
    probs, d_scores = tiles.tile_gradients(q, k, v, d_out, lse_ref[pl.ds(start, block), :],
                                           delta_ref[pl.ds(start, block), :], mask,
                                           geometry.scale)
    return (d_k + tiles.dot_tn(d_scores.astype(q.dtype), q),
            d_v + tiles.dot_tn(probs.astype(d_out.dtype), d_out))

  first, last = geometry.query_blocks_of(index)
  zeros = jnp.zeros(k.shape, jnp.float32)
  d_k, d_v = jax.lax.fori_loop(first, last + 1, body, (zeros, zeros))
  d_k_ref[...] = (d_k * geometry.scale).astype(d_k_ref.dtype)
  d_v_ref[...] = d_v.astype(d_v_ref.dtype)


def _block_spec(geometry, head_dim):
  """One block of `b` rows of a head-major `[R, L, D]` array."""
  return pl.BlockSpec((None, geometry.block, head_dim), lambda row, index: (row, index, 0))


def _row_spec(geometry, head_dim):
  """All `L` rows of a head-major `[R, L, D]` array (read block by block in the kernel)."""
  return pl.BlockSpec((None, geometry.length, head_dim), lambda row, index: (row, 0, 0))


def _query_valid_spec(geometry):
  return pl.BlockSpec((None, geometry.block, 1),
                      lambda row, index: (geometry.batch_of(row), index, 0))


def _key_valid_spec(geometry):
  return pl.BlockSpec((None, 1, geometry.length),
                      lambda row, index: (geometry.batch_of(row), 0, 0))


def forward(geometry, q, k, v, query_valid, key_valid, *, interpret: bool = False):
  """Returns `out [R, L, D]` (dtype of q) and `lse [R, L, 1]` float32."""
  rows, length, head_dim = q.shape
  kernel = functools.partial(_forward_kernel, geometry=geometry)
  return pl.pallas_call(
      kernel,
      grid=(rows, geometry.num_blocks),
      in_specs=[_block_spec(geometry, head_dim), _row_spec(geometry, head_dim),
                _row_spec(geometry, head_dim), _query_valid_spec(geometry),
                _key_valid_spec(geometry)],
      out_specs=[_block_spec(geometry, head_dim), _block_spec(geometry, 1)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((rows, length, 1), jnp.float32)],
      compiler_params=_compiler_params(interpret),
      interpret=interpret,
      name="band_attention_forward",
  )(q, k, v, query_valid, key_valid.reshape(key_valid.shape[0], 1, length))


def backward(geometry, q, k, v, d_out, lse, delta, key_valid, *, interpret: bool = False):
  """Returns `(d_q, d_k, d_v)`, each `[R, L, D]` in the dtype of its input."""
  head_dim = q.shape[-1]
  key_valid = key_valid.reshape(key_valid.shape[0], 1, geometry.length)
  common = dict(grid=(q.shape[0], geometry.num_blocks), compiler_params=_compiler_params(interpret),
                interpret=interpret)
  d_q = pl.pallas_call(
      functools.partial(_d_query_kernel, geometry=geometry),
      in_specs=[_block_spec(geometry, head_dim), _row_spec(geometry, head_dim),
                _row_spec(geometry, head_dim), _block_spec(geometry, head_dim),
                _block_spec(geometry, 1), _block_spec(geometry, 1), _key_valid_spec(geometry)],
      out_specs=_block_spec(geometry, head_dim),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      name="band_attention_d_query", **common,
  )(q, k, v, d_out, lse, delta, key_valid)
  d_k, d_v = pl.pallas_call(
      functools.partial(_d_key_value_kernel, geometry=geometry),
      in_specs=[_row_spec(geometry, head_dim), _block_spec(geometry, head_dim),
                _block_spec(geometry, head_dim), _row_spec(geometry, head_dim),
                _row_spec(geometry, 1), _row_spec(geometry, 1),
                pl.BlockSpec((None, 1, geometry.block),
                             lambda row, index: (geometry.batch_of(row), 0, index))],
      out_specs=[_block_spec(geometry, head_dim)] * 2,
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      name="band_attention_d_key_value", **common,
  )(q, k, v, d_out, lse, delta, key_valid)
  return d_q, d_k, d_v

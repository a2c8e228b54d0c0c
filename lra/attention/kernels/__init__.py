"""Fused Pallas kernels for the sliding-window band, forward and backward.

`band_attention` is the Pallas counterpart of `lra.attention.sliding.banded_attention`:
undilated window attention with a query and a key mask, returning the output and each row's
log-sum-exp (so that Longformer's global merge and the residue fold of dilation sit on top
of it unchanged). Its custom VJP recomputes probabilities tile by tile from the saved
log-sum-exp (FlashAttention-2): no `[b, keys]` probabilities are kept between passes.

The kernel is picked where the program is lowered, not where it is traced
(`jax.lax.platform_dependent`): the Triton-backend kernels of `gpu.py` on CUDA and ROCm, the
Mosaic kernels of `tpu.py` on TPU, and elsewhere (CPU) the GPU kernels in Pallas interpret
mode, which is exact but slow. So `jax.export` for `cuda` or `tpu` from a CPU-only machine
lowers the real kernels. Tests pick a kernel explicitly with `target`.
"""

import functools

import jax
import jax.numpy as jnp

from lra import errors
from lra.attention.kernels import geometry as geometry_lib
from lra.attention.kernels import gpu
from lra.attention.kernels import tpu

# target -> (kernel module, interpret mode); None = chosen by the lowering platform.
TARGETS = {
    "gpu": (gpu, False),
    "tpu": (tpu, False),
    "gpu_interpret": (gpu, True),
    "tpu_interpret": (tpu, True),
}
# What runs where neither a GPU nor a TPU lowers the program (CPU): the GPU kernels in
# interpret mode. The contract tests set it to "tpu_interpret" to run the TPU kernels.
CPU_TARGET = "gpu_interpret"
# Triton's smallest matmul tile is 16 and its blocks are powers of two.
MIN_BLOCK = 16


def kernel_block(block: int) -> int:
  """The kernels' block for a requested one: a power of two, at least `MIN_BLOCK`."""
  return max(MIN_BLOCK, 1 << (block - 1).bit_length())


def _gpu_head_dim(head_dim: int) -> int:
  """Triton loads power-of-two widths, and its matmuls contract over at least 16."""
  return max(MIN_BLOCK, 1 << (head_dim - 1).bit_length())


# The most bytes one `[block, head_dim]` tile of the GPU kernels may hold. Measured on an
# H100 (227 KB of shared memory for a block of threads): the three kernels fit at 128 x 64
# in bfloat16, 64 x 64 in float32 and 64 x 128 in bfloat16, all 16 KB tiles, while float32
# at 128 x 64 asks for 257 KB whatever the pipeline depth (docs/kernels.md).
MAX_GPU_TILE_BYTES = 16 * 1024


def gpu_block(block: int, head_dim: int, itemsize: int) -> int:
  """The GPU kernels' block for a power-of-two `block` (`kernel_block`'s): `block`, halved
  until a `[block, head_dim]` tile of `itemsize` bytes fits `MAX_GPU_TILE_BYTES` (head_dim
  counted as at least 64: the `block x block` score tiles take their room whatever the head
  width), but never below `MIN_BLOCK` (float32 heads wider than 256 keep 16 x D tiles over
  16 KB). A power of two dividing `block`."""
  largest = MAX_GPU_TILE_BYTES // (max(_gpu_head_dim(head_dim), 64) * itemsize)
  return max(MIN_BLOCK, min(block, largest))


def _pad_last(x, width: int):
  pad = width - x.shape[-1]
  return x if pad == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


# Per stage: how many leading inputs and outputs are `[R, L, D]` (q, k, v[, d_out] in;
# out, or d_q, d_k, d_v out); the rest are masks and row statistics.
_HEAD_DIM_ARRAYS = {"forward": (3, 1), "backward": (4, 3)}


def _run(stage: str, target: str, geometry, *args):
  """Runs `stage` ('forward' or 'backward') of one target's kernels on `args`."""
  module, interpret = TARGETS[target]
  if module is gpu:  # compiled or interpreted: smaller blocks over the same padded length
    geometry = geometry.reblocked(gpu_block(geometry.block, geometry.head_dim,
                                            args[0].dtype.itemsize))
  function = functools.partial(getattr(module, stage), geometry, interpret=interpret)
  width = _gpu_head_dim(geometry.head_dim)
  if module is not gpu or width == geometry.head_dim:
    return function(*args)
  # Zero columns of q and k add nothing to a score, and those of v nothing to the output.
  inputs, outputs = _HEAD_DIM_ARRAYS[stage]
  results = function(*[_pad_last(x, width) for x in args[:inputs]], *args[inputs:])
  return tuple(x[..., :geometry.head_dim] if i < outputs else x
               for i, x in enumerate(results))


def _dispatch(stage: str, target: str | None, geometry, *args):
  if target is not None:
    return _run(stage, target, geometry, *args)
  run = functools.partial(_run, stage)
  return jax.lax.platform_dependent(
      *args,
      cuda=functools.partial(run, "gpu", geometry),
      rocm=functools.partial(run, "gpu", geometry),
      tpu=functools.partial(run, "tpu", geometry),
      default=functools.partial(run, CPU_TARGET, geometry))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _band_rows(geometry, target, q, k, v, query_valid, key_valid):
  return _dispatch("forward", target, geometry, q, k, v, query_valid, key_valid)


def _band_rows_forward(geometry, target, q, k, v, query_valid, key_valid):
  out, lse = _dispatch("forward", target, geometry, q, k, v, query_valid, key_valid)
  return (out, lse), (q, k, v, query_valid, key_valid, out, lse)


def _band_rows_backward(geometry, target, residuals, cotangents):
  q, k, v, query_valid, key_valid, out, lse = residuals
  d_out, d_lse = cotangents
  # Padded query rows get no gradient: their output is a constant 0.
  valid_rows = jnp.repeat(query_valid, geometry.heads, axis=0) > 0  # [R, L, 1]
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                  keepdims=True) - d_lse
  delta = jnp.where(valid_rows, delta, 0.0)
  d_out = jnp.where(valid_rows, d_out, 0).astype(q.dtype)
  d_q, d_k, d_v = _dispatch("backward", target, geometry, q, k, v, d_out, lse, delta,
                            key_valid)
  return d_q, d_k, d_v, None, None


_band_rows.defvjp(_band_rows_forward, _band_rows_backward)


def _to_rows(x_NxLxHxD):
  """`[N, L, H, D]` -> head-major `[N * H, L, D]`."""
  n, length, heads, head_dim = x_NxLxHxD.shape
  return jnp.swapaxes(x_NxLxHxD, 1, 2).reshape(n * heads, length, head_dim)


def _from_rows(x_RxLxD, heads: int):
  """`[N * H, L, D]` -> `[N, L, H, D]`."""
  rows, length, width = x_RxLxD.shape
  return jnp.swapaxes(x_RxLxD.reshape(rows // heads, heads, length, width), 1, 2)


def band_attention(q, k, v, query_mask, key_mask, *, window: int, causal: bool, block: int,
                   target: str | None = None):
  """Undilated window attention on the Pallas kernels; any length.

  Args:
    q, k, v: `[N, L, H, D]`.
    query_mask: bool `[N, L]`; rows where False get an output of exactly 0.
    key_mask: bool `[N, L]`; keys where False are never seen.
    window: one-sided window w.
    causal: see only keys at or before the query.
    block: positions per query and key block (rounded up by `kernel_block`).
    target: a key of `TARGETS`, or None for the kernel of the lowering platform.

  Returns:
    `(out [N, L, H, D] in the dtype of q, lse [N, L, H] float32)`, the lse being
    `common.EMPTY_ROW_LSE` for rows that see no key.
  """
  if target is not None and target not in TARGETS:
    raise errors.ConfigError(
        f"unknown Pallas target {target!r}; choose one of: {', '.join(TARGETS)} or None")
  n, length, heads, head_dim = q.shape
  block = kernel_block(block)
  num_blocks = -(-length // block)
  geometry = geometry_lib.BandGeometry(window=window, causal=causal, block=block,
                                       num_blocks=num_blocks, heads=heads, head_dim=head_dim)
  pad = geometry.length - length
  rows = [jnp.pad(_to_rows(x), ((0, 0), (0, pad), (0, 0))) for x in (q, k, v)]
  query_valid, key_valid = (jnp.pad(m.astype(jnp.int32), ((0, 0), (0, pad)))
                            for m in (query_mask, key_mask))
  out, lse = _band_rows(geometry, target, *rows, query_valid[:, :, None], key_valid)
  return (_from_rows(out[:, :length], heads),
          _from_rows(lse[:, :length], heads)[..., 0])

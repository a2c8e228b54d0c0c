"""Fused Pallas kernels for the sliding-window band, forward and backward.

`band_attention` is the Pallas counterpart of `lra.attention.xla_core.band_attention`:
undilated window attention with a query mask, a key mask, segment ids, grouped k/v heads
and attention dropout, returning the output and each row's log-sum-exp (so that Longformer's
global merge and the residue fold of dilation sit on top of it unchanged). Its custom VJP
recomputes probabilities tile by tile from the saved log-sum-exp (FlashAttention-2): no
`[b, keys]` probabilities are kept between passes, and the dropout mask is regenerated from
the seed by the same hash the XLA core uses.

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
from lra.attention import common
from lra.attention.kernels import call as call_lib
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


def _to_rows(x_NxLxHxD):
  """`[N, L, H, D]` -> head-major `[N * H, L, D]` (the TPU kernels' layout)."""
  n, length, heads, width = x_NxLxHxD.shape
  return jnp.swapaxes(x_NxLxHxD, 1, 2).reshape(n * heads, length, width)


def _from_rows(x_RxLxD, heads: int):
  """`[N * H, L, D]` -> `[N, L, H, D]`."""
  rows, length, width = x_RxLxD.shape
  return jnp.swapaxes(x_RxLxD.reshape(rows // heads, heads, length, width), 1, 2)


def _run_gpu(stage, call, interpret, *args):
  """The GPU kernels: smaller blocks where float32 tiles would overflow shared memory,
  head_dim padded to a power of two (zero columns of q and k add nothing to a score, and
  those of v nothing to the output)."""
  q = args[0]
  call = call.reblocked(gpu_block(call.plan.block, call.head_dim, q.dtype.itemsize))
  width = _gpu_head_dim(call.head_dim)
  function = functools.partial(getattr(gpu, stage), call, interpret=interpret)
  wide = 3 if stage == "forward" else 4  # q, k, v (and d_out) carry head_dim
  if width == call.head_dim:
    return function(*args)
  results = function(*[_pad_last(x, width) for x in args[:wide]], *args[wide:])
  outputs = 1 if stage == "forward" else 3
  return tuple(x[..., :call.head_dim] if i < outputs else x for i, x in enumerate(results))


def _run_tpu(stage, call, interpret, *args):
  """The TPU kernels, on head-major copies of the `[N, L, heads, ...]` arrays."""
  arrays = 3 if stage == "forward" else 6  # q, k, v (and d_out, lse, delta)
  rows = [_to_rows(x if x.ndim == 4 else x[..., None]) for x in args[:arrays]]
  results = getattr(tpu, stage)(call, *rows, *args[arrays:], interpret=interpret)
  if stage == "forward":
    out, lse = results
    return _from_rows(out, call.heads), _from_rows(lse, call.heads)[..., 0]
  d_q, d_k, d_v = results
  return (_from_rows(d_q, call.heads), _from_rows(d_k, call.kv_heads),
          _from_rows(d_v, call.kv_heads))


def _run(stage: str, target: str, call, *args):
  """Runs `stage` ('forward' or 'backward') of one target's kernels on `args`."""
  module, interpret = TARGETS[target]
  run = _run_gpu if module is gpu else _run_tpu
  return run(stage, call, interpret, *args)


def _dispatch(stage: str, target: str | None, call, *args):
  if target is not None:
    return _run(stage, target, call, *args)
  run = functools.partial(_run, stage)
  return jax.lax.platform_dependent(
      *args,
      cuda=functools.partial(run, "gpu", call),
      rocm=functools.partial(run, "gpu", call),
      tpu=functools.partial(run, "tpu", call),
      default=functools.partial(run, CPU_TARGET, call))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _band(call, target, q, k, v, query_valid, key_valid, segment_ids, seed):
  return _dispatch("forward", target, call, q, k, v, query_valid, key_valid, segment_ids, seed)


def _band_forward(call, target, q, k, v, query_valid, key_valid, segment_ids, seed):
  out, lse = _band(call, target, q, k, v, query_valid, key_valid, segment_ids, seed)
  return (out, lse), (q, k, v, query_valid, key_valid, segment_ids, seed, out, lse)


def _band_backward(call, target, residuals, cotangents):
  q, k, v, query_valid, key_valid, segment_ids, seed, out, lse = residuals
  d_out, d_lse = cotangents
  # Padded query rows get no gradient (their output is a constant 0): delta is 0 there and
  # the kernels read their d_out as 0.
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - d_lse
  delta = jnp.where(query_valid[..., None] > 0, delta, 0.0)
  d_q, d_k, d_v = _dispatch("backward", target, call, q, k, v, d_out, lse, delta, query_valid,
                            key_valid, segment_ids, seed)
  return d_q, d_k, d_v, None, None, None, None


_band.defvjp(_band_forward, _band_backward)


def band_attention(q, k, v, query_mask, key_mask, segment_ids, seed, *,
                   plan: common.BandPlan, dropout_rate: float = 0.0,
                   target: str | None = None):
  """Undilated window attention on the Pallas kernels; any length.

  Args:
    q: `[N, L, H, D]`.
    k, v: `[N, L, K, D]`, `K` dividing `H` (query head `h` reads k/v head `h // (H / K)`).
    query_mask: bool `[N, L]`; rows where False get an output of exactly 0.
    key_mask: bool `[N, L]`; keys where False are never seen.
    segment_ids: int32 `[N, L]` (a query sees keys of its own segment only), or None.
    seed: int32 scalar of the dropout hash (`common.dropout_seed`), or None.
    plan: the band plan of the caller (its window, causality and block; the kernels use a
      power-of-two block, `kernel_block`, on GPUs one that fits shared memory).
    dropout_rate: attention dropout rate.
    target: a key of `TARGETS`, or None for the kernel of the lowering platform.

  Returns:
    `(out [N, L, H, D] in the dtype of q, lse [N, L, H] float32)`, the lse being
    `common.EMPTY_ROW_LSE` for rows that see no key.
  """
  if target is not None and target not in TARGETS:
    raise errors.ConfigError(
        f"unknown Pallas target {target!r}; choose one of: {', '.join(TARGETS)} or None")
  n, length, heads, head_dim = q.shape
  plan = common.plan_band(length, plan.window, plan.causal, kernel_block(plan.block))
  call = call_lib.BandCall(plan=plan, heads=heads, kv_heads=k.shape[2], head_dim=head_dim,
                           dropout_rate=dropout_rate, segmented=segment_ids is not None)
  # Padded only when the length is not a multiple of the block.
  pad = lambda x: common.pad_axis1(x, plan.length)
  masks = [pad(m.astype(jnp.int32)) for m in (query_mask, key_mask)]
  out, lse = _band(call, target, pad(q), pad(k), pad(v), *masks,
                   None if segment_ids is None else pad(segment_ids), seed)
  if plan.length == length:
    return out, lse
  return out[:, :length], lse[:, :length]

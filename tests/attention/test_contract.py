"""The attention contract, checked for every windowed mechanism on every implementation.

Two base classes hold the checks (small cases for `make test`, realistic shapes for
`make test-slow`); each implementation is a mixin that only says how to run: the blocked
XLA core, the Pallas GPU kernels and the Pallas TPU kernels (both in interpret mode on this
CPU). Every check compares against the dense oracle of
`reference.py` in outputs and gradients, through the registry (`attention.build`), with
XLA's optimizations on (the suite's conftest turns most of them off elsewhere, to save
compile time), with and without jit.

The default cases are small but cross blocks and residue classes; the `slow` ones have the
shapes of real runs (head_dim 64, blocks of 128, windows up to 1024, lengths to 4K).
"""

import contextlib
import functools
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lra import attention
from lra import errors
from lra.attention import common
from lra.attention import kernels
from lra.attention import reference
from lra.attention.kernels import launch
from tests.attention import cases

# (length, window, dilation, causal, block_size, kv_heads, packed); batch 2 (row 1 padded,
# maybe empty). kv_heads None: as many as the query heads; packed: uneven segment ids with a
# one-token document (`cases.segments`).
LOCAL_CASES = [
    (1, 8, 1, False, None, None, False),  # shorter than any block
    (45, 3, (1, 2, 4, 8), False, 16, 2, True),  # dilation up to 8: residue classes of 5, 6
    (150, 62, 1, True, 32, 1, True),  # one k/v head; w = 2b - 2: the last tile a mask
                                      # needs
    (203, 37, (1, 3), False, 16, None, False),  # w > 2 x block, no multiple of anything
    (96, 30, (3, 1, 2, 1), False, 16, 2, True),  # head order by dilation not self-inverse
]
# Eagerly (op by op, which is slow on a custom VJP): one small case per mechanism.
LOCAL_EAGER_CASE = (20, 3, (1, 2), True, 8, None, False)
LOCAL_SLOW_CASES = [
    (1000, 300, 1, False, 128, None, False),
    (1500, 8, 1, True, None, None, True),
    (2100, 1024, (1, 2), False, 128, 1, False),
    (4001, 256, (1, 2, 4, 8), True, 128, 2, True),
]
# (length, window, dilation, global tokens, separate global projections, block_size,
#  kv_heads, packed)
LONGFORMER_CASES = [
    (37, 5, (1, 2), "scattered", True, 16, None, False),
    (130, 40, 1, "first", True, 32, 1, True),
    (90, 8, 2, "per_row", False, None, None, True),
]
LONGFORMER_EAGER_CASE = (21, 3, 1, "first", True, 8, None, False)
LONGFORMER_SLOW_CASES = [
    (1000, 300, (1, 2), "scattered", True, 128, None, True),
    (2048, 256, 1, "first", True, 128, 1, False),
]
HEAD_DIM = {False: 16, True: 64}  # fast cases, slow (realistic) cases


def _padding(length, empty_row):
  """Row 0 all real; row 1 padded at random, or all padding."""
  return cases.padding(length, 2, length, empty_row=empty_row).at[0].set(True)


@functools.partial(jax.jit, static_argnames=("window", "dilation", "causal"))
def _local_oracle(q, k, v, padding_mask, segment_ids=None, *, window, dilation, causal):
  def dense(q, k, v):
    mask = reference.pattern_mask(q.shape[1], window=window, dilation=dilation,
                                  causal=causal, num_heads=q.shape[2],
                                  padding_mask=padding_mask, segment_ids=segment_ids)
    return reference.dense_attention(q, k, v, mask=mask)
  return cases.grads(dense, [x.astype(jnp.float32) for x in (q, k, v)])


@functools.partial(jax.jit, static_argnames=("window", "dilation"))
def _longformer_oracle(qkv, global_mask, padding_mask, segment_ids, *, window, dilation):
  def dense(*qkv):
    projections = dict(zip(("global_q", "global_k", "global_v"), qkv[3:]))
    return reference.longformer_reference(*qkv[:3], window=window, dilation=dilation,
                                          global_mask=global_mask, padding_mask=padding_mask,
                                          segment_ids=segment_ids, **projections)
  return cases.grads(dense, [x.astype(jnp.float32) for x in qkv])


def _inputs(length, heads, kv_heads, head_dim, dtype, separate=False):
  """q (and global_q) with `heads` heads; k, v (and global_k, global_v) with `kv_heads`."""
  kv_heads = kv_heads or heads
  q, global_q = cases.random_qkv(length, 2, length, heads, head_dim, dtype, count=2)
  kv = cases.random_kv(length, 2, length, kv_heads, head_dim, dtype, count=4)
  return [q, *kv[:2], global_q, *kv[2:]] if separate else [q, *kv[:2]]


class _Checks(chex.TestCase):
  """How an implementation runs, and the comparisons against the oracle."""

  __test__ = False  # only the concrete subclasses below are collected

  implementation = "xla"
  cpu_target = None  # for "pallas": which kernels interpret mode runs

  def setUp(self):
    super().setUp()
    stack = contextlib.ExitStack()
    self.addCleanup(stack.close)
    disabled = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    stack.callback(jax.config.update, "jax_disable_most_optimizations", disabled)
    if self.cpu_target:
      stack.enter_context(mock.patch.object(kernels, "CPU_TARGET", self.cpu_target))

  def _build(self, name, num_heads, **options):
    return attention.build({"name": name, "implementation": self.implementation, **options},
                           num_heads)

  def _assert_matches(self, out, grads, expected_out, expected_grads, shape, dtype, tol):
    chex.assert_shape(out, shape)
    chex.assert_type(out, dtype)
    chex.assert_tree_all_finite((out, grads))
    chex.assert_trees_all_close(out.astype(jnp.float32), expected_out, **tol)
    chex.assert_trees_all_close([g.astype(jnp.float32) for g in grads],
                                list(expected_grads), **tol)

  def _check_local(self, length, window, dilation, causal, block_size, kv_heads, packed, dtype,
                   tol, realistic=False):
    heads = len(dilation) if isinstance(dilation, tuple) else 2
    q, k, v = _inputs(length, heads, kv_heads, HEAD_DIM[realistic], dtype)
    padding_mask = _padding(length, empty_row=not causal)
    segment_ids = cases.segments(length, 2, length) if packed else None
    core = self._build("local", heads, window=window, dilation=dilation, causal=causal,
                       block_size=block_size)
    fast = functools.partial(core, padding_mask=padding_mask, segment_ids=segment_ids)
    out, grads = self.variant(lambda *qkv: cases.grads(fast, qkv))(q, k, v)
    expected_out, expected_grads = _local_oracle(q, k, v, padding_mask, segment_ids,
                                                 window=window, dilation=dilation,
                                                 causal=causal)
    self._assert_matches(out, grads, expected_out, expected_grads, q.shape, dtype, tol)

  def _check_longformer(self, length, window, dilation, global_kind, separate, block_size,
                        kv_heads, packed, dtype, tol, realistic=False):
    heads = len(dilation) if isinstance(dilation, tuple) else 2
    qkv = _inputs(length, heads, kv_heads, HEAD_DIM[realistic], dtype, separate)
    padding_mask = _padding(length, empty_row=True)
    segment_ids = cases.segments(length, 2, length) if packed else None
    global_mask = cases.global_tokens(global_kind, length, 2, length)
    core = self._build("longformer", heads, window=window, dilation=dilation,
                       block_size=block_size, max_global=int(global_mask.sum(1).max()))

    def fast(*qkv):
      return core(*qkv[:3], padding_mask=padding_mask, segment_ids=segment_ids,
                  global_mask=global_mask, global_qkv=qkv[3:] or None)

    out, grads = self.variant(lambda *qkv: cases.grads(fast, qkv))(*qkv)
    expected_out, expected_grads = _longformer_oracle(qkv, global_mask, padding_mask,
                                                      segment_ids, window=window,
                                                      dilation=dilation)
    self._assert_matches(out, grads, expected_out, expected_grads, qkv[0].shape, dtype, tol)

  def _check_dropout_mask(self, name):
    """Dropout inside the kernels: the same keep-mask as the XLA core (the hash of the seed
    and the positions), so outputs and gradients are equal; a mask that differs between the
    forward and the backward, or from the XLA core's, fails. (The XLA core itself is checked
    against the dense oracle under the same mask in test_sliding.py.)"""
    if self.implementation == "xla":
      self.skipTest("the reference of this check")
    length, heads = 70, 4
    qkv = _inputs(length, heads, 2, 16, jnp.float32, separate=name == "longformer")
    options = dict(padding_mask=_padding(length, empty_row=False), dropout_rate=0.3,
                   dropout_rng=jax.random.key(4), segment_ids=cases.segments(4, 2, length))
    window = dict(window=6, block_size=16, dilation=(1, 2, 1, 3))
    if name == "local":
      window["causal"] = True
    else:
      options["global_mask"] = cases.global_tokens("scattered", 4, 2, length)
      window["max_global"] = int(options["global_mask"].sum(1).max())

    def run(implementation):
      core = attention.build({"name": name, "implementation": implementation, **window},
                             heads)
      fast = lambda *qkv: core(*qkv[:3], global_qkv=qkv[3:] or None, **options)
      return jax.jit(lambda *qkv: cases.grads(fast, qkv))(*qkv)

    chex.assert_trees_all_close(run(self.implementation), run("xla"), **cases.F32_TOL)


class _Contract(_Checks):
  """The contract on small cases that cross blocks and residue classes (in `make test`)."""

  @chex.variants(with_jit=True)
  @parameterized.parameters(*LOCAL_CASES)
  def test_local_float32(self, *case):
    self._check_local(*case, jnp.float32, cases.F32_TOL)

  @chex.variants(without_jit=True)
  @parameterized.parameters(LOCAL_EAGER_CASE)
  def test_local_float32_eagerly(self, *case):
    self._check_local(*case, jnp.float32, cases.F32_TOL)

  @chex.variants(with_jit=True)
  @parameterized.parameters(LOCAL_CASES[4])
  def test_local_bfloat16(self, *case):
    self._check_local(*case, jnp.bfloat16, cases.BF16_TOL)

  @chex.variants(with_jit=True)
  @parameterized.parameters(*LONGFORMER_CASES)
  def test_longformer_float32(self, *case):
    self._check_longformer(*case, jnp.float32, cases.F32_TOL)

  @chex.variants(without_jit=True)
  @parameterized.parameters(LONGFORMER_EAGER_CASE)
  def test_longformer_float32_eagerly(self, *case):
    self._check_longformer(*case, jnp.float32, cases.F32_TOL)

  @chex.variants(with_jit=True)
  @parameterized.parameters(LONGFORMER_CASES[1])
  def test_longformer_bfloat16(self, *case):
    self._check_longformer(*case, jnp.bfloat16, cases.BF16_TOL)

  @parameterized.parameters((1,), ((1, 3),))
  def test_future_and_padded_keys_get_no_gradient(self, dilation):
    """Causality and padding through gradients: output row `query` depends on no key
    after it and on no padded key (exactly: the gradient is 0, not small)."""
    length, query, real = 70, 41, 60
    q, k, v = cases.random_qkv(0, 1, length, 2, 16)
    padding_mask = jnp.arange(length)[None] < real
    core = self._build("local", 2, window=9, dilation=dilation, causal=True, block_size=16)

    def output_at(k, v, row):
      return jnp.sum(core(q, k, v, padding_mask=padding_mask)[:, row])

    grad_k, grad_v = jax.jit(jax.grad(output_at, argnums=(0, 1)), static_argnums=2)(
        k, v, query)
    for grad in (grad_k, grad_v):
      np.testing.assert_array_equal(grad[:, query + 1:], 0.0)
      self.assertGreater(float(jnp.abs(grad[:, query]).sum()), 0.0)
    grad_k = jax.jit(jax.grad(output_at), static_argnums=2)(k, v, real - 1)
    np.testing.assert_array_equal(grad_k[:, real:], 0.0)

  def test_padded_rows_are_zero_without_nan(self):
    q, k, v = cases.random_qkv(1, 2, 40, 2, 16)
    padding_mask = jnp.zeros((2, 40), bool).at[0, :25].set(True)
    core = self._build("local", 2, window=5, block_size=16)
    out, grads = jax.jit(lambda *qkv: cases.grads(
        functools.partial(core, padding_mask=padding_mask), qkv))(q, k, v)
    chex.assert_tree_all_finite((out, grads))
    np.testing.assert_array_equal(out[0, 25:], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)
    for grad in grads:
      np.testing.assert_array_equal(grad[1], 0.0)

  def test_dropout_is_unbiased(self):
    """The mean over dropout draws is the exact output: a 5% bias (e.g. rescaling kept
    probabilities by 1/(1 - 0.95 rate)) fails."""
    q, k, v = cases.random_qkv(3, 2, 40, 2, 16)
    core = self._build("local", 2, window=4, block_size=16)
    exact = core(q, k, v)
    draws = jax.jit(jax.vmap(lambda key: core(q, k, v, dropout_rate=0.2, dropout_rng=key)))(
        jax.random.split(jax.random.key(1), 400))
    # Regress the mean draw on the exact output: slope 1 when unbiased. Its spread over
    # 400 draws of 6400 outputs is ~0.002; a 5% bias moves it by 0.05.
    slope = float(jnp.vdot(draws.mean(0), exact) / jnp.vdot(exact, exact))
    self.assertAlmostEqual(slope, 1.0, delta=0.015)

  @parameterized.parameters("local", "longformer")
  def test_dropout_draws_the_xla_cores_mask(self, name):
    self._check_dropout_mask(name)


class _RealisticContract(_Checks):
  """The contract at the shapes of real runs (`make test-slow`)."""

  @chex.variants(with_jit=True)
  @parameterized.parameters(*LOCAL_SLOW_CASES)
  def test_local_realistic_float32(self, *case):
    self._check_local(*case, jnp.float32, cases.F32_TOL, realistic=True)

  @chex.variants(with_jit=True)
  @parameterized.parameters(LOCAL_SLOW_CASES[0], LOCAL_SLOW_CASES[3])
  def test_local_realistic_bfloat16(self, *case):
    self._check_local(*case, jnp.bfloat16, cases.BF16_TOL, realistic=True)

  @chex.variants(with_jit=True)
  @parameterized.parameters(*LONGFORMER_SLOW_CASES)
  def test_longformer_realistic_float32(self, *case):
    self._check_longformer(*case, jnp.float32, cases.F32_TOL, realistic=True)


class _Xla:
  implementation = "xla"


class _PallasGpuKernels:
  implementation = "pallas"
  cpu_target = "gpu_interpret"


class _PallasTpuKernels:
  implementation = "pallas"
  cpu_target = "tpu_interpret"


class XlaContractTest(_Xla, _Contract):
  __test__ = True


class PallasGpuKernelsContractTest(_PallasGpuKernels, _Contract):
  __test__ = True


@pytest.mark.slow
class PallasTpuKernelsContractTest(_PallasTpuKernels, _Contract):
  """Every case (`make test-slow`); `make test` runs the subset below."""
  __test__ = True


class PallasTpuKernelsSubsetTest(_PallasTpuKernels, _Checks):
  """The TPU kernels in `make test`: packed rows with grouped heads (a window of the last
  tile a mask needs, heads regrouped by dilation), a packed Longformer case and the dropout
  mask; the Mosaic and Triton kernels share their tile walks (`kernels.walks`)."""
  __test__ = True

  @chex.variants(with_jit=True)
  @parameterized.parameters(LOCAL_CASES[2], LOCAL_CASES[4])
  def test_local_float32(self, *case):
    self._check_local(*case, jnp.float32, cases.F32_TOL)

  @chex.variants(with_jit=True)
  @parameterized.parameters(LONGFORMER_CASES[1])
  def test_longformer_float32(self, *case):
    self._check_longformer(*case, jnp.float32, cases.F32_TOL)

  def test_dropout_draws_the_xla_cores_mask(self):
    self._check_dropout_mask("local")


@pytest.mark.slow
class XlaRealisticContractTest(_Xla, _RealisticContract):
  __test__ = True


@pytest.mark.slow
class PallasGpuKernelsRealisticContractTest(_PallasGpuKernels, _RealisticContract):
  __test__ = True


@pytest.mark.slow
class PallasTpuKernelsRealisticContractTest(_PallasTpuKernels, _RealisticContract):
  __test__ = True


class ImplementationSwitchTest(parameterized.TestCase):

  def test_unknown_implementation(self):
    with pytest.raises(errors.ConfigError, match="unknown implementation 'cuda'"):
      attention.build({"name": "local", "window": 4, "implementation": "cuda"}, 2)(
          *cases.random_qkv(0, 1, 8, 2, 4))

  def test_none_is_xla_on_cpu(self):
    self.assertEqual(common.resolve_implementation(None), "xla")
    self.assertEqual(common.resolve_implementation("pallas"), "pallas")

  def test_pallas_runs_the_kernels(self):
    q, k, v = cases.random_qkv(0, 1, 40, 2, 16)
    jaxpr = jax.make_jaxpr(functools.partial(
        attention.sliding_window_attention, window=4, implementation="pallas"))(q, k, v)
    self.assertIn("pallas_call", str(jaxpr))
    jaxpr = jax.make_jaxpr(functools.partial(
        attention.sliding_window_attention, window=4, implementation="xla"))(q, k, v)
    self.assertNotIn("pallas_call", str(jaxpr))


class GpuKernelsTest(parameterized.TestCase):
  """What only the GPU kernels have: a block that keeps their tiles within an H100's shared
  memory, launch settings from a table, and the fused backward with an atomic dQ."""

  @parameterized.parameters(
      (128, 64, 2, 128),  # bfloat16, head_dim 64: fits (measured)
      (128, 64, 4, 64),  # float32 at 128 x 64 asks for 257 KB of 227 (measured)
      (128, 128, 2, 64),  # bfloat16, head_dim 128 (fits at 64, measured)
      (128, 16, 4, 64),  # narrow heads still have 128 x 128 float32 score tiles
      (32, 64, 4, 32),  # a smaller requested block is kept
  )
  def test_gpu_block(self, block, head_dim, itemsize, expected):
    self.assertEqual(kernels.gpu_block(block, head_dim, itemsize), expected)

  def test_float32_runs_in_smaller_blocks_and_stays_exact(self):
    """float32 asked for blocks of 128: the GPU kernels run the same padded length (384) in
    blocks of 64, and outputs and gradients still equal the oracle's."""
    length, window = 300, 40
    q, k, v = cases.random_qkv(5, 1, length, 2, 16)
    padding_mask = jnp.arange(length)[None] < 270

    def fast(q, k, v):
      out, _ = kernels.band_attention(q, k, v, padding_mask, padding_mask, None, None,
                                      plan=common.plan_band(length, window, False, 128),
                                      target="gpu_interpret")
      return out

    self.assertIn("grid=(1, 2, 6)", str(jax.make_jaxpr(fast)(q, k, v)))
    out, grads = jax.jit(lambda *qkv: cases.grads(fast, qkv))(q, k, v)
    expected_out, expected_grads = _local_oracle(q, k, v, padding_mask, window=window,
                                                 dilation=1, causal=False)
    chex.assert_trees_all_close((out, list(grads)), (expected_out, list(expected_grads)),
                                **cases.F32_TOL)

  def test_fused_backward_equals_the_split_kernels(self):
    """`gpu.BACKWARD = "fused"` (one kernel, dQ added atomically) gives the gradients of the
    dQ and dK/dV kernels: causal, grouped heads, packed, padded, with dropout."""
    q = cases.random_qkv(6, 2, 90, 4, 16)[0]
    k, v = cases.random_kv(6, 2, 90, 2, 16)
    options = dict(window=9, causal=True, padding_mask=_padding(90, empty_row=False),
                   segment_ids=cases.segments(6, 2, 90), dropout_rate=0.2,
                   dropout_rng=jax.random.key(2), block_size=16, implementation="pallas")

    def run(backward):
      with mock.patch.object(kernels.gpu, "BACKWARD", backward):
        fast = functools.partial(attention.sliding_window_attention, **options)
        return jax.jit(lambda *qkv: cases.grads(fast, qkv))(q, k, v)

    chex.assert_trees_all_close(run("fused"), run("split"), **cases.F32_TOL)

  def test_launch_settings_reach_the_kernels(self):
    """The settings of `kernels.launch`'s table are read when a call is traced (what
    `experiments.bench.gpu --sweep_launch` relies on)."""
    q = jnp.zeros((1, 64, 2, 16), jnp.bfloat16)
    mask = jnp.ones((1, 64), bool)

    def trace():
      return str(jax.make_jaxpr(lambda q: kernels.band_attention(
          q, q, q, mask, mask, None, None, plan=common.plan_band(64, 8, False, 16),
          target="gpu"))(q))

    self.assertIn("num_warps=8, num_stages=3", trace())
    table = {"default": {name: {"num_warps": 4, "num_stages": 5}
                         for name in launch.KERNELS}}
    with mock.patch.object(kernels.launch, "_read", lambda path: table):
      self.assertIn("num_warps=4, num_stages=5", trace())

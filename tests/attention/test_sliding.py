"""Sliding-window attention against the dense oracle: outputs, gradients, masks, memory."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lra import attention
from lra import errors
from lra.attention import common
from lra.attention import reference
from tests.attention import cases

# (length, window, dilation, causal, block_size); 4 heads.
CASES = [
    (1, 1, 1, False, None),
    (1, 3, 2, True, None),
    (7, 1, 1, False, None),
    (13, 2, 1, True, None),
    (13, 40, 1, False, None),  # window wider than the sequence
    (37, 5, 1, False, 4),
    (37, 5, (1, 2, 3, 4), False, 4),
    (37, 3, (1, 1, 2, 2), True, 8),
    (61, 4, 3, False, None),
    (64, 8, 1, False, 16),  # exact multiple of the block
    (64, 16, 2, True, 16),
    (32, 7, 4, False, 8),
]


# Cases that also run eagerly (without jit): dilation mixed per head and causal, several
# dilations with a length no block divides, and a window wider than the sequence. Every
# case has padding with one row that is all padding.
EAGER_CASES = [CASES[7], CASES[8], CASES[4]]
BF16_CASES = [CASES[5], CASES[7], CASES[10]]


def _dense(q, k, v, *, window, dilation, causal, padding_mask):
  mask = reference.pattern_mask(q.shape[1], window=window, dilation=dilation, causal=causal,
                                num_heads=q.shape[2], padding_mask=padding_mask)
  return reference.dense_attention(q, k, v, mask=mask)


@functools.partial(jax.jit, static_argnames=("window", "dilation", "causal"))
def _dense_output_and_grads(q, k, v, padding_mask, *, window, dilation, causal):
  """The oracle's output and gradients, in float32 (jitted only to save test time)."""
  dense = functools.partial(_dense, window=window, dilation=dilation, causal=causal,
                            padding_mask=padding_mask)
  return cases.grads(dense, [x.astype(jnp.float32) for x in (q, k, v)])


@pytest.mark.slow  # the XLA core's cases in make test: tests/attention/test_contract.py
class SlidingVsDenseTest(chex.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.parameters(*CASES)
  def test_matches_dense_float32(self, length, window, dilation, causal, block_size):
    self._check(length, window, dilation, causal, block_size, jnp.float32, cases.F32_TOL)

  @chex.variants(without_jit=True)
  @parameterized.parameters(*EAGER_CASES)
  def test_matches_dense_float32_eagerly(self, length, window, dilation, causal, block_size):
    self._check(length, window, dilation, causal, block_size, jnp.float32, cases.F32_TOL)

  @chex.variants(with_jit=True)
  @parameterized.parameters(*BF16_CASES)
  def test_matches_dense_bfloat16(self, length, window, dilation, causal, block_size):
    self._check(length, window, dilation, causal, block_size, jnp.bfloat16, cases.BF16_TOL)

  @chex.variants(without_jit=True)
  @parameterized.parameters(BF16_CASES[2])
  def test_matches_dense_bfloat16_eagerly(self, length, window, dilation, causal,
                                          block_size):
    self._check(length, window, dilation, causal, block_size, jnp.bfloat16, cases.BF16_TOL)

  def _check(self, length, window, dilation, causal, block_size, dtype, tol):
    q, k, v = cases.random_qkv(length, 3, length, 4, 8, dtype)
    padding_mask = cases.padding(length, 3, length, empty_row=True)
    options = dict(window=window, dilation=dilation, causal=causal)
    fast = functools.partial(attention.sliding_window_attention, block_size=block_size,
                             padding_mask=padding_mask, **options)
    out, grads = self.variant(lambda q, k, v: cases.grads(fast, (q, k, v)))(q, k, v)
    expected_out, expected_grads = _dense_output_and_grads(q, k, v, padding_mask, **options)
    self.assertEqual(out.dtype, dtype)
    chex.assert_tree_all_finite((out, grads))
    chex.assert_trees_all_close(out.astype(jnp.float32), expected_out, **tol)
    chex.assert_trees_all_close(
        [g.astype(jnp.float32) for g in grads], list(expected_grads), **tol)


class MaskThroughGradientTest(chex.TestCase):

  @parameterized.parameters((1,), (2,), ((1, 3),))
  def test_future_and_padded_keys_have_zero_gradient(self, dilation):
    length, query = 29, 11
    q, k, v = cases.random_qkv(0, 1, length, 2, 4)
    padding_mask = jnp.arange(length)[None] < 20

    def output_at_query(k, v):
      out = attention.sliding_window_attention(q, k, v, window=4, dilation=dilation,
                                             causal=True, padding_mask=padding_mask,
                                             block_size=4)
      return jnp.sum(out[:, query])

    grad_k, grad_v = jax.jit(jax.grad(output_at_query, argnums=(0, 1)))(k, v)
    for grad in (grad_k, grad_v):
      np.testing.assert_array_equal(grad[:, query + 1:], 0.0)  # the future
      self.assertGreater(float(jnp.abs(grad[:, query]).sum()), 0.0)
    np.testing.assert_array_equal(
        jax.jit(jax.grad(lambda k: jnp.sum(attention.sliding_window_attention(
            q, k, v, window=30, padding_mask=padding_mask))))(k)[:, 20:], 0.0)

  def test_padded_queries_output_zero_and_no_nan(self):
    q, k, v = cases.random_qkv(1, 2, 17, 2, 4)
    padding_mask = jnp.zeros((2, 17), bool).at[0, :5].set(True)
    out, grads = jax.jit(lambda q, k, v: cases.grads(
        lambda q, k, v: attention.sliding_window_attention(q, k, v, window=3,
                                                         padding_mask=padding_mask),
        (q, k, v)))(q, k, v)
    chex.assert_tree_all_finite((out, grads))
    np.testing.assert_array_equal(out[0, 5:], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)
    for grad in grads:
      np.testing.assert_array_equal(grad[1], 0.0)


class DropoutTest(chex.TestCase):

  @parameterized.parameters((False, 4), (True, 2))
  def test_matches_the_dense_oracle_under_the_same_mask(self, causal, kv_heads):
    """The keep-mask is a hash of (seed, row, query, key): the dense oracle under the same
    mask gives the same outputs and gradients. Six blocks, so that masks of different blocks
    and the key gradients of overlapping windows are both exercised; grouped heads too."""
    q = cases.random_qkv(2, 2, 23, 4, 4)[0]
    k, v = cases.random_qkv(3, 2, 23, kv_heads, 4, count=2)
    padding_mask = cases.padding(2, 2, 23)
    rng, rate = jax.random.key(0), 0.3
    fast = functools.partial(attention.sliding_window_attention, window=3, causal=causal,
                             padding_mask=padding_mask, dropout_rate=rate, dropout_rng=rng,
                             block_size=4)
    dense = functools.partial(cases.dense_with_dropout, window=3, causal=causal,
                              padding_mask=padding_mask, rate=rate,
                              seed=common.dropout_seed(jax.random.fold_in(rng, 0)))
    out, grads = jax.jit(lambda *xs: cases.grads(fast, xs))(q, k, v)
    expected_out, expected_grads = jax.jit(lambda *xs: cases.grads(dense, xs))(q, k, v)
    chex.assert_trees_all_close((out, grads), (expected_out, expected_grads), **cases.F32_TOL)
    self.assertFalse(np.allclose(out, attention.sliding_window_attention(
        q, k, v, window=3, causal=causal, padding_mask=padding_mask)))

  def test_dropout_is_unbiased(self):
    q, k, v = cases.random_qkv(3, 1, 16, 1, 4)
    exact = attention.sliding_window_attention(q, k, v, window=3)
    draws = jax.jit(jax.vmap(lambda key: attention.sliding_window_attention(
        q, k, v, window=3, dropout_rate=0.5, dropout_rng=key)))(
            jax.random.split(jax.random.key(1), 2000))
    np.testing.assert_allclose(draws.mean(0), exact, atol=0.1)

  def test_keep_rate(self):
    """The hash keeps a fraction 1 - rate of the weights, independently of position."""
    row = jnp.arange(64)[:, None, None]
    query = common.dropout_query_hash(common.dropout_row_hash(jnp.int32(7), row),
                                      jnp.arange(64)[None, :, None])
    keep = np.asarray(common.dropout_keep(query, jnp.arange(256)[None, None, :], 0.2))
    self.assertAlmostEqual(keep.mean(), 0.8, delta=0.005)
    for axis in range(3):  # no row, query or key position is favoured
      self.assertLess(np.abs(keep.mean(axis=tuple(a for a in range(3) if a != axis))
                             - 0.8).max(), 0.06)


class LinearMemoryTest(chex.TestCase):

  @parameterized.parameters((1, False), ((1, 2), False), (1, True))
  def test_no_length_squared_intermediate(self, dilation, causal):
    length = 4096
    q, k, v = [jax.ShapeDtypeStruct((1, length, 2, 8), jnp.float32)] * 3
    loss = lambda q, k, v: jnp.sum(attention.sliding_window_attention(
        q, k, v, window=64, dilation=dilation, causal=causal))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    largest = max(cases.all_intermediate_sizes(jaxpr))
    self.assertLess(largest[0], length * length // 16, largest)

  def test_one_trace_per_shape(self):

    @jax.jit
    @chex.assert_max_traces(n=1)
    def attend(q, k, v):
      return attention.sliding_window_attention(q, k, v, window=3)

    chex.clear_trace_counter()
    q, k, v = cases.random_qkv(4, 2, 19, 2, 4)
    for scale in (1.0, 2.0, 3.0):
      attend(q * scale, k, v)


class BlockPlanTest(parameterized.TestCase):

  @parameterized.parameters((256, 4096), (64, 4096), (32, 512), (3, 100), (500, 8192))
  def test_auto_block_wastes_little(self, window, length):
    plan = common.plan_band(length, window, False, None)
    needed = 2 * window + 1
    self.assertLessEqual(plan.keys, max(1.3 * needed, 3 * 32))
    self.assertEqual(plan.length % plan.block, 0)
    self.assertGreaterEqual(plan.length, length)

  # Windows that are a multiple of the block leave no slack: an off-by-one start shows.
  @parameterized.parameters((29, 5, 4, False), (29, 5, 4, True), (32, 8, 4, False),
                            (32, 8, 4, True), (64, 3, 8, False), (10, 40, 4, False))
  def test_each_block_window_holds_every_key_its_queries_see(self, length, window, block,
                                                             causal):
    plan = common.plan_band(length, window, causal, block)
    seen = np.asarray(reference.pattern_mask(length, window=window, causal=causal))[0, 0]
    for index in range(plan.num_blocks):
      start = int(plan.window_start(index))
      self.assertGreaterEqual(start, 0)
      self.assertLessEqual(start + plan.keys, plan.length)
      rows = seen[index * block:(index + 1) * block]
      keys = np.flatnonzero(rows.any(axis=0))
      self.assertTrue((keys >= start).all() and (keys < start + plan.keys).all(), index)


class ErrorTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(window=0), "window must be a positive int"),
      (dict(window=-3), "window must be a positive int"),
      (dict(window=2.5), "window must be a positive int"),
      (dict(window=2, dilation=(1, 2)), "dilation has 2 entries but there are 4 heads"),
      (dict(window=2, dilation=0), "dilation must be an int >= 1"),
      (dict(window=2, block_size=0), "block_size must be a positive int"),
      (dict(window=2, dropout_rate=0.1), "needs a dropout_rng"),
  )
  def test_bad_arguments(self, kwargs, message):
    q, k, v = cases.random_qkv(5, 1, 9, 4, 4)
    with pytest.raises(errors.ConfigError, match=message):
      attention.sliding_window_attention(q, k, v, **kwargs)

  def test_mismatched_shapes(self):
    q, k, v = cases.random_qkv(5, 1, 9, 4, 4)
    with pytest.raises(errors.ConfigError, match="q, k, v must be"):
      attention.sliding_window_attention(q, k[:, :5], v, window=2)

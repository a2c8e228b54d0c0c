"""`attention.build`: every registered name against the oracle, and config errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized

from lra import attention
from lra import errors
from lra.attention import reference
from tests.attention import cases

LENGTH, HEADS = 11, 4


def _inputs(seed=0, count=3):
  qkv = cases.random_qkv(seed, 2, LENGTH, HEADS, 4, count=count)
  return qkv, cases.padding(seed, 2, LENGTH, empty_row=True)


class BuildMatchesReferenceTest(chex.TestCase):

  def test_every_mechanism_is_registered(self):
    self.assertEqual(set(attention.MECHANISMS), {"full", "local", "longformer"})

  @parameterized.parameters((False, False), (False, True), (True, False), (True, True))
  def test_full(self, causal, padded):
    (q, k, v), padding_mask = _inputs()
    padding_mask = padding_mask if padded else None
    fn = attention.build({"name": "full", "causal": causal}, num_heads=HEADS)
    mask = reference.pattern_mask(LENGTH, causal=causal, padding_mask=padding_mask)
    expected = reference.dense_attention(q, k, v, mask=mask)
    chex.assert_trees_all_close(fn(q, k, v, padding_mask=padding_mask), expected,
                                **cases.F32_TOL)

  @parameterized.parameters((False,), (True,))
  def test_local(self, causal):
    (q, k, v), padding_mask = _inputs(1)
    config = {"name": "local", "window": 2, "dilation": [1, 2, 1, 3], "causal": causal}
    fn = attention.build(config, num_heads=HEADS)
    out = jax.jit(functools.partial(fn, padding_mask=padding_mask))(q, k, v)
    mask = reference.pattern_mask(LENGTH, window=2, dilation=(1, 2, 1, 3), causal=causal,
                                  num_heads=HEADS, padding_mask=padding_mask)
    chex.assert_trees_all_close(out, reference.dense_attention(q, k, v, mask=mask),
                                **cases.F32_TOL)

  def test_longformer(self):
    qkv, padding_mask = _inputs(2, count=6)
    # Row 0 has 7 real tokens: positions 0 and 3 are global, 9 is global but padding.
    global_mask = jnp.zeros((2, LENGTH), bool).at[0, jnp.array([0, 3, 9])].set(True)
    fn = attention.build({"name": "longformer", "window": 2, "dilation": 2, "max_global": 2},
                         num_heads=HEADS)
    out = jax.jit(lambda padding_mask, global_mask, q, k, v, *global_qkv: fn(
        q, k, v, padding_mask=padding_mask, global_mask=global_mask, global_qkv=global_qkv))(
            padding_mask, global_mask, *qkv)
    expected = reference.longformer_reference(
        *qkv[:3], window=2, dilation=2, global_mask=global_mask, padding_mask=padding_mask,
        global_q=qkv[3], global_k=qkv[4], global_v=qkv[5])
    chex.assert_trees_all_close(out, expected, **cases.F32_TOL)

  def test_bound_attention_is_hashable(self):
    """A module holding it may be a static jit argument; lists become tuples."""
    config = {"name": "local", "window": 2, "dilation": [1, 2, 1, 2]}
    bound = attention.build(config, num_heads=HEADS)
    self.assertEqual(hash(bound), hash(attention.build(config, num_heads=HEADS)))
    self.assertEqual(dict(bound.options)["dilation"], (1, 2, 1, 2))
    self.assertFalse(bound.uses_global)
    self.assertTrue(attention.build({"name": "longformer", "window": 1}, 1).uses_global)


class FullAttentionTest(chex.TestCase):
  """`full` runs XLA's fused path without dropout: outputs and gradients vs the oracle."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((False, jnp.float32), (True, jnp.float32), (False, jnp.bfloat16),
                            (True, jnp.bfloat16))
  def test_outputs_and_gradients_match_dense(self, causal, dtype):
    q, k, v = cases.random_qkv(3, 3, 13, HEADS, 8, dtype)
    padding_mask = cases.padding(3, 3, 13, empty_row=True)
    fast = functools.partial(attention.full_attention, causal=causal, padding_mask=padding_mask)
    mask = reference.pattern_mask(13, causal=causal, padding_mask=padding_mask)
    dense = functools.partial(reference.dense_attention, mask=mask)
    out, grads = self.variant(lambda *qkv: cases.grads(fast, qkv))(q, k, v)
    expected_out, expected_grads = cases.grads(
        dense, [x.astype(jnp.float32) for x in (q, k, v)])
    tol = cases.F32_TOL if dtype == jnp.float32 else cases.BF16_TOL
    self.assertEqual(out.dtype, dtype)
    chex.assert_tree_all_finite((out, grads))
    chex.assert_trees_all_close(out.astype(jnp.float32), expected_out, **tol)
    chex.assert_trees_all_close([g.astype(jnp.float32) for g in grads], list(expected_grads),
                                **tol)

  def test_padded_and_future_keys_have_zero_gradient(self):
    q, k, v = cases.random_qkv(4, 1, 12, 2, 4)
    padding_mask = jnp.arange(12)[None] < 9
    query = 5

    def loss(k, v):
      out = attention.full_attention(q, k, v, causal=True, padding_mask=padding_mask)
      return jnp.sum(out[:, query])

    for grad in jax.grad(loss, argnums=(0, 1))(k, v):
      self.assertTrue(jnp.all(grad[:, query + 1:] == 0))
      self.assertTrue(jnp.any(grad[:, :query + 1] != 0))


class BuildErrorTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("unknown_name", {"name": "flash", "window": 2},
       r"unknown attention 'flash'; choose one of: full, local, longformer"),
      ("no_name", {"window": 2}, r"unknown attention None; choose one of: full, local"),
      ("unknown_option", {"name": "local", "windw": 4},
       r"attention 'local' has no option 'windw'; its options are: block_size, causal, "
       r"dilation, implementation, window"),
      ("option_of_another_mechanism", {"name": "longformer", "window": 2, "causal": True},
       r"attention 'longformer' has no option 'causal'; its options are: .*max_global"),
      ("missing_window", {"name": "local"}, r"attention 'local' needs a window \(one-sided"),
      ("missing_window_longformer", {"name": "longformer", "max_global": 1},
       r"attention 'longformer' needs a window"),
      ("window_zero", {"name": "local", "window": 0},
       r"window must be a positive int \(the one-sided window w.*got 0"),
      ("window_negative", {"name": "longformer", "window": -1},
       r"window must be a positive int.*got -1"),
      ("dilation_length", {"name": "local", "window": 2, "dilation": (1, 2)},
       r"dilation has 2 entries but there are 4 heads: give one int for all heads or "
       r"exactly one per head"),
      ("dilation_zero", {"name": "longformer", "window": 2, "dilation": 0},
       r"dilation must be an int >= 1"),
  )
  def test_bad_config(self, config, message):
    with pytest.raises(errors.ConfigError, match=message):
      attention.build(config, num_heads=HEADS)

  def test_error_is_a_user_error(self):
    with pytest.raises(errors.UserError):
      attention.build({"name": "local"}, num_heads=HEADS)

  def test_config_is_not_modified(self):
    config = {"name": "local", "window": 2, "dilation": [1, 2, 1, 2]}
    attention.build(config, num_heads=HEADS)
    self.assertEqual(config, {"name": "local", "window": 2, "dilation": [1, 2, 1, 2]})

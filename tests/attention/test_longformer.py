"""Longformer attention against the dense oracle: outputs, gradients, masks, budget, memory."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.experimental import checkify

from lra import errors
from lra import attention
from lra.attention import reference
from tests.attention import cases

# (length, window, dilation, global tokens, separate global projections, block_size,
# padded); 4 heads, batch 3. Padded cases have no padding in row 0, random padding in row 1
# and row 2 all padding, so that global tokens survive the padding.
CASES = [
    (1, 1, 1, "all", True, None, True),
    (7, 1, 1, "none", False, None, True),
    (5, 8, 2, "scattered", True, None, True),  # window wider than the sequence
    (37, 5, (1, 2, 3, 4), "scattered", True, 4, True),
    (61, 4, 3, "per_row", True, None, True),
    (64, 8, 1, "scattered", True, 16, True),  # exact multiple of the block
    (64, 16, 2, "all", False, 16, True),
    (32, 7, 4, "first", False, 8, False),
]
# Also run eagerly, with the budget of global slots inferred from the concrete mask:
# dilation, separate projections, scattered global tokens, padding.
EAGER_CASES = [CASES[2]]
BF16_CASES = [CASES[5], CASES[6]]


def _inputs(length, global_kind, separate, padded, dtype=jnp.float32):
  """q, k, v (and the global projections), the global mask and the padding mask."""
  qkv = cases.random_qkv(length, 3, length, 4, 8, dtype, count=6 if separate else 3)
  global_mask = cases.global_tokens(global_kind, length, 3, length)
  padding_mask = None
  if padded:
    padding_mask = cases.padding(length, 3, length, empty_row=True).at[0].set(True)
  return qkv, global_mask, padding_mask


def _attention(function, window, dilation, global_mask, padding_mask, *qkv, **options):
  """`function(q, k, v, ...)` with the global projections in `qkv[3:]`, if any."""
  projections = dict(zip(("global_q", "global_k", "global_v"), qkv[3:]))
  return function(*qkv[:3], window=window, dilation=dilation, global_mask=global_mask,
                  padding_mask=padding_mask, **projections, **options)


@functools.partial(jax.jit, static_argnames=("window", "dilation"))
def _reference_output_and_grads(qkv, global_mask, padding_mask, *, window, dilation):
  """The oracle's output and gradients in float32 (jitted only to save test time)."""
  oracle = functools.partial(_attention, reference.longformer_reference, window, dilation,
                             global_mask, padding_mask)
  return cases.grads(oracle, [x.astype(jnp.float32) for x in qkv])


# The oracle under jit, for single comparisons (eagerly it takes seconds per new shape).
_reference = jax.jit(reference.longformer_reference, static_argnames=("window", "dilation"))


def _budget(global_mask, padding_mask, spare=0):
  real = np.ones(global_mask.shape, bool) if padding_mask is None else np.asarray(padding_mask)
  return int((np.asarray(global_mask) & real).sum(axis=1).max()) + spare


@pytest.mark.slow  # the XLA core's cases in make test: tests/attention/test_contract.py
class LongformerVsReferenceTest(chex.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.parameters(*CASES)
  def test_matches_reference_float32(self, *case):
    self._check(*case, dtype=jnp.float32, tol=cases.F32_TOL)

  @chex.variants(without_jit=True)
  @parameterized.parameters(*EAGER_CASES)
  def test_matches_reference_float32_eagerly(self, *case):
    self._check(*case, dtype=jnp.float32, tol=cases.F32_TOL, infer_budget=True)

  @chex.variants(with_jit=True)
  @parameterized.parameters(*BF16_CASES)
  def test_matches_reference_bfloat16(self, *case):
    self._check(*case, dtype=jnp.bfloat16, tol=cases.BF16_TOL)

  def _check(self, length, window, dilation, global_kind, separate, block_size, padded, *,
             dtype, tol, infer_budget=False):
    qkv, global_mask, padding_mask = _inputs(length, global_kind, separate, padded, dtype)
    if global_kind != "none":
      self.assertGreater(_budget(global_mask, padding_mask), 0)  # not all lost to padding
    # Under jit the masks are traced, so the budget is static: one slot more than needed,
    # so that unused slots are exercised too.
    max_global = None if infer_budget else _budget(global_mask, padding_mask, spare=1)
    fast = functools.partial(attention.longformer_attention, block_size=block_size,
                             max_global=max_global)

    def output_and_grads(global_mask, padding_mask, *qkv):
      attend = functools.partial(_attention, fast, window, dilation, global_mask,
                                 padding_mask)
      return cases.grads(attend, qkv)

    out, grads = self.variant(output_and_grads)(global_mask, padding_mask, *qkv)
    expected_out, expected_grads = _reference_output_and_grads(
        qkv, global_mask, padding_mask, window=window, dilation=dilation)
    self.assertEqual(out.dtype, dtype)
    self.assertLen(grads, len(qkv))
    chex.assert_tree_all_finite((out, grads))
    chex.assert_trees_all_close(out.astype(jnp.float32), expected_out, **tol)
    chex.assert_trees_all_close(
        [g.astype(jnp.float32) for g in grads], list(expected_grads), **tol)

  def test_budget_from_a_constant_mask_under_jit(self):
    """A constant global mask needs no max_global, even when the padding is traced."""
    (q, k, v), global_mask, padding_mask = _inputs(11, "per_row", False, True)
    constant_mask = np.asarray(global_mask)
    out = jax.jit(lambda q, k, v, padding_mask: attention.longformer_attention(
        q, k, v, window=2, global_mask=constant_mask, padding_mask=padding_mask))(
            q, k, v, padding_mask)
    expected = _reference(q, k, v, window=2, global_mask=global_mask,
                          padding_mask=padding_mask)
    chex.assert_trees_all_close(out, expected, **cases.F32_TOL)

  def test_global_key_inside_a_window_is_counted_once(self):
    length, window = 9, 3
    q, k, v = cases.random_qkv(6, 1, length, 2, 4)
    # Position 4 lies inside the windows of queries 1..7.
    global_mask = jnp.zeros((1, length), bool).at[0, 4].set(True)
    out = jax.jit(lambda q, k, v: attention.longformer_attention(
        q, k, v, window=window, global_mask=global_mask, max_global=1))(q, k, v)
    expected = _reference(q, k, v, window=window, global_mask=global_mask)
    chex.assert_trees_all_close(out, expected, **cases.F32_TOL)
    # The same key twice in one softmax (the window's and the global copy) gives a
    # visibly different answer, so the comparison above can tell the two apart.
    mask = reference.pattern_mask(length, window=window, num_heads=2, global_mask=global_mask)
    twice = jax.jit(reference.dense_attention)(
        q, jnp.concatenate([k, k[:, 4:5]], axis=1), jnp.concatenate([v, v[:, 4:5]], axis=1),
        mask=jnp.concatenate([mask, jnp.ones(mask.shape[:-1] + (1,), bool)], axis=-1))
    self.assertGreater(float(jnp.abs(twice - expected).max()), 1e-2)


class MaskTest(chex.TestCase):

  def test_padded_and_all_global_rows_have_no_nan(self):
    """Row 0 all padding, row 1 all global, row 2 with globals on padding too."""
    length = 19
    qkv = cases.random_qkv(7, 3, length, 2, 4, count=6)
    padding_mask = np.ones((3, length), bool)
    padding_mask[0] = False
    padding_mask[2, 12:] = False
    global_mask = np.zeros((3, length), bool)
    global_mask[1] = True
    global_mask[2, [0, 5, 13, 18]] = True
    global_mask[0, 3] = True
    out, grads = jax.jit(lambda *qkv: cases.grads(functools.partial(
        _attention, attention.longformer_attention, 2, (1, 2), global_mask, padding_mask,
        max_global=length), qkv))(*qkv)
    chex.assert_tree_all_finite((out, grads))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[2, 12:], 0.0)
    self.assertGreater(float(jnp.abs(out[1]).min()), 0.0)
    for grad in grads:
      np.testing.assert_array_equal(grad[0], 0.0)
      np.testing.assert_array_equal(grad[2, 12:], 0.0)
    expected_out, expected_grads = _reference_output_and_grads(
        qkv, global_mask, padding_mask, window=2, dilation=(1, 2))
    chex.assert_trees_all_close(out, expected_out, **cases.F32_TOL)
    chex.assert_trees_all_close(list(grads), list(expected_grads), **cases.F32_TOL)

  @parameterized.parameters((False,), (True,))
  def test_padded_keys_have_exactly_zero_gradient(self, separate):
    """Through the window, the global keys and the global rows alike."""
    length, real_length = 23, 15
    qkv = cases.random_qkv(8, 1, length, 2, 4, count=6 if separate else 3)
    padding_mask = jnp.arange(length)[None] < real_length
    global_mask = jnp.zeros((1, length), bool).at[0, jnp.array([0, 7, 14, 16, 20])].set(True)

    def real_outputs(*qkv):
      out = _attention(attention.longformer_attention, 30, 1, global_mask, padding_mask,
                       *qkv, max_global=5)
      return jnp.sum(out[:, :real_length])

    grads = jax.jit(jax.grad(real_outputs, argnums=tuple(range(len(qkv)))))(*qkv)
    for grad in grads:
      np.testing.assert_array_equal(grad[:, real_length:], 0.0)
      self.assertGreater(float(jnp.abs(grad[:, :real_length]).sum()), 0.0)


class GlobalBudgetTest(chex.TestCase):

  def _inputs(self):
    q, k, v = cases.random_qkv(9, 2, 10, 2, 4)
    global_mask = jnp.zeros((2, 10), bool).at[:, 0].set(True).at[1, 6].set(True)
    return q, k, v, global_mask

  def test_over_budget_eagerly(self):
    q, k, v, global_mask = self._inputs()
    with pytest.raises(errors.ConfigError, match="2 global tokens but max_global=1"):
      attention.longformer_attention(q, k, v, window=2, global_mask=global_mask,
                                      max_global=1)

  def test_over_budget_under_jit(self):
    """A traced mask is not checked on the host (no callback in the step): each row's first
    `max_global` global tokens are global and later ones attend as window tokens, which
    `dropped_global_tokens` counts; under checkify a row over the budget is an error."""
    q, k, v, global_mask = self._inputs()
    call = lambda q, k, v, global_mask: attention.longformer_attention(
        q, k, v, window=2, global_mask=global_mask, max_global=1)
    self.assertNotIn("callback", str(jax.make_jaxpr(call)(q, k, v, global_mask)))
    out = jax.jit(call)(q, k, v, global_mask)
    within = global_mask.at[1, 6].set(False)
    chex.assert_trees_all_close(out, attention.longformer_attention(
        q, k, v, window=2, global_mask=within), **cases.F32_TOL)
    np.testing.assert_array_equal(
        attention.dropped_global_tokens(global_mask, max_global=1), [0, 1])
    checked = jax.jit(checkify.checkify(call))
    checked(q, k, v, within)[0].throw()  # within budget
    with pytest.raises(checkify.JaxRuntimeError, match="more global tokens than max_global=1"):
      checked(q, k, v, global_mask)[0].throw()

  def test_traced_mask_needs_max_global(self):
    q, k, v, global_mask = self._inputs()
    attend = jax.jit(lambda q, k, v, global_mask: attention.longformer_attention(
        q, k, v, window=2, global_mask=global_mask))
    with pytest.raises(errors.ConfigError, match="global_mask is traced.*pass max_global="):
      attend(q, k, v, global_mask)

  def test_one_trace_per_shape(self):

    @functools.partial(jax.jit, static_argnames="max_global")
    @chex.assert_max_traces(n=1)
    def attend(q, k, v, global_mask, padding_mask, max_global):
      return attention.longformer_attention(q, k, v, window=3, global_mask=global_mask,
                                             padding_mask=padding_mask, max_global=max_global)

    chex.clear_trace_counter()
    q, k, v = cases.random_qkv(4, 2, 19, 2, 4)
    padding_mask = cases.padding(4, 2, 19)
    for kind in ("first", "scattered", "none"):
      global_mask = cases.global_tokens(kind, 4, 2, 19)
      attend(q, k, v, global_mask, padding_mask, max_global=19)


class ErrorTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("partial_projections", lambda q, k: dict(global_q=q),
       "pass all of global_q, global_k, global_v, or none of them"),
      ("two_projections", lambda q, k: dict(global_q=q, global_k=k), "pass all of global_q"),
      ("mismatched_projection", lambda q, k: dict(global_q=q, global_k=k[:, :5], global_v=k),
       r"global_q, global_k, global_v must have the shapes of q, k, v"),
      ("negative_budget", lambda q, k: dict(max_global=-1), "max_global must be an int >= 0"),
      ("no_global_mask", lambda q, k: dict(global_mask=None),
       r"global_mask must be bool \[batch, length\]"),
      ("global_mask_shape", lambda q, k: dict(global_mask=jnp.ones((1, 5), bool)),
       r"global_mask must be bool \[batch, length\] = \(1, 9\)"),
      ("window", lambda q, k: dict(window=0), "window must be a positive int"),
      ("dilation", lambda q, k: dict(dilation=(1, 2, 3)),
       "dilation has 3 entries but there are 2 heads"),
      ("dropout", lambda q, k: dict(dropout_rate=0.1), "needs a dropout_rng"),
  )
  def test_bad_arguments(self, overrides, message):
    q, k, v = cases.random_qkv(10, 1, 9, 2, 4)
    kwargs = dict(window=2, global_mask=jnp.zeros((1, 9), bool).at[:, 0].set(True))
    with pytest.raises(errors.ConfigError, match=message):
      attention.longformer_attention(q, k, v, **{**kwargs, **overrides(q, k)})


class LinearMemoryTest(chex.TestCase):

  @parameterized.parameters((1, True), ((1, 2), False))
  def test_no_length_squared_intermediate(self, dilation, separate):
    length = 4096
    count = 6 if separate else 3
    qkv = [jax.ShapeDtypeStruct((1, length, 2, 8), jnp.float32)] * count
    masks = [jax.ShapeDtypeStruct((1, length), jnp.bool_)] * 2

    def loss(global_mask, padding_mask, *qkv):
      return jnp.sum(_attention(attention.longformer_attention, 64, dilation, global_mask,
                                padding_mask, *qkv, max_global=8))

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=tuple(range(2, 2 + count))))(
        *masks, *qkv)
    largest = max(cases.all_intermediate_sizes(jaxpr))
    self.assertLess(largest[0], length * length // 16, largest)


class DropoutTest(chex.TestCase):

  def _inputs(self, length=16, heads=1):
    qkv = cases.random_qkv(11, 2, length, heads, 4, count=6)
    global_mask = cases.global_tokens("per_row", 11, 2, length)
    padding_mask = jnp.ones((2, length), bool).at[1, length - 3:].set(False)
    return qkv, global_mask, padding_mask

  def test_keyed_finite_and_differentiable(self):
    qkv, global_mask, padding_mask = self._inputs(length=21, heads=2)

    @jax.jit
    def output_and_grads(key, *qkv):
      attend = functools.partial(_attention, attention.longformer_attention, 2, 2,
                                 global_mask, padding_mask, dropout_rate=0.3,
                                 dropout_rng=key, max_global=2)
      return cases.grads(attend, qkv)

    out, grads = output_and_grads(jax.random.key(0), *qkv)
    again, _ = output_and_grads(jax.random.key(0), *qkv)
    other, _ = output_and_grads(jax.random.key(1), *qkv)
    chex.assert_tree_all_finite((out, grads))
    np.testing.assert_array_equal(out, again)
    self.assertFalse(np.allclose(out, other))
    np.testing.assert_array_equal(out[1, -3:], 0.0)

  def test_dropout_is_unbiased(self):
    qkv, global_mask, padding_mask = self._inputs()
    attend = functools.partial(_attention, attention.longformer_attention, 3, 1,
                               global_mask, padding_mask, *qkv, max_global=2)
    exact = jax.jit(attend)()
    draws = jax.jit(jax.vmap(lambda key: attend(dropout_rate=0.5, dropout_rng=key)))(
        jax.random.split(jax.random.key(2), 2000))
    np.testing.assert_allclose(draws.mean(0), exact, atol=0.1)

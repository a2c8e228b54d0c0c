"""`SelfAttention` (NNX): projections and the oracle by hand, dtypes, masks, transforms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from lra import errors
from lra.attention import reference
from lra.attention.layers import SelfAttention
from lra.attention.layers import rotary

BATCH, LENGTH, FEATURES, HEADS = 2, 11, 16, 4
CONFIGS = {
    "full": {"name": "full"},
    "local": {"name": "local", "window": 2, "dilation": (1, 1, 2, 3)},
    "longformer": {"name": "longformer", "window": 2, "dilation": (1, 2, 1, 2),
                   "max_global": 3},
}


def _layer(name, seed=0, **kwargs):
  return SelfAttention(FEATURES, HEADS, attention=CONFIGS[name], rngs=nnx.Rngs(seed), **kwargs)


def _inputs(seed=0):
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(BATCH, LENGTH, FEATURES)),
                  jnp.float32)
  padding_mask = jnp.arange(LENGTH)[None] < jnp.array([[LENGTH], [7]])
  global_mask = jnp.zeros((BATCH, LENGTH), bool).at[:, 0].set(True).at[1, [4, 9]].set(True)
  return x, padding_mask, global_mask  # row 1 has a global token on padding (position 9)


def _masks(name, padding_mask, global_mask):
  return dict(padding_mask=padding_mask,
              global_mask=global_mask if name == "longformer" else None)


def _randomize(layer, seed):
  """Random values for every parameter, biases included (they start at zero)."""
  state = nnx.state(layer, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(seed)
  nnx.update(layer, jax.tree.unflatten(
      treedef, [jnp.asarray(rng.normal(size=x.shape) * 0.5, x.dtype) for x in leaves]))


def _project(linear, x_BxLxE):
  return jnp.einsum("ble,ehd->blhd", x_BxLxE, linear.kernel[...]) + linear.bias[None, None]


def _output(layer, out_BxLxHxD):
  return (jnp.einsum("blhd,hde->ble", out_BxLxHxD, layer.out.kernel[...]) +
          layer.out.bias[None, None])


def _by_hand(layer, name, x, padding_mask, global_mask, rotary_positions=False):
  """The layer's output through its own parameters and the dense oracle."""
  rotate = rotary if rotary_positions else lambda t: t
  q, k = rotate(_project(layer.query, x)), rotate(_project(layer.key, x))
  v = _project(layer.value, x)
  config = CONFIGS[name]
  if name == "longformer":
    out = reference.longformer_reference(
        q, k, v, window=config["window"], dilation=config["dilation"],
        global_mask=global_mask, padding_mask=padding_mask,
        global_q=rotate(_project(layer.query_global, x)),
        global_k=rotate(_project(layer.key_global, x)),
        global_v=_project(layer.value_global, x))
  else:
    mask = reference.pattern_mask(LENGTH, window=config.get("window"),
                                  dilation=config.get("dilation", 1), num_heads=HEADS,
                                  padding_mask=padding_mask)
    out = reference.dense_attention(q, k, v, mask=mask)
  return _output(layer, out)


class SelfAttentionTest(chex.TestCase):

  @parameterized.product(name=tuple(CONFIGS), rotary_positions=(False, True))
  def test_split_merge_jit_matches_hand_computation(self, name, rotary_positions):
    layer = _layer(name, rotary_positions=rotary_positions)
    _randomize(layer, 1)
    x, padding_mask, global_mask = _inputs()
    graphdef, state = nnx.split(layer)

    @jax.jit
    def apply(state, x, padding_mask, global_mask):
      return nnx.merge(graphdef, state)(x, **_masks(name, padding_mask, global_mask))

    out = apply(state, x, padding_mask, global_mask)
    self.assertEqual(out.shape, (BATCH, LENGTH, FEATURES))
    self.assertEqual(out.dtype, jnp.float32)
    chex.assert_trees_all_close(
        out, _by_hand(layer, name, x, padding_mask, global_mask, rotary_positions),
        atol=1e-4, rtol=1e-4)

  @parameterized.parameters(*CONFIGS)
  def test_float32_params_with_bfloat16_compute(self, name):
    layer = _layer(name, dtype=jnp.bfloat16)
    x, padding_mask, global_mask = _inputs()
    out = nnx.jit(lambda layer, x: layer(x.astype(jnp.bfloat16),
                                         **_masks(name, padding_mask, global_mask)))(layer, x)
    self.assertEqual(out.shape, (BATCH, LENGTH, FEATURES))
    self.assertEqual(out.dtype, jnp.bfloat16)
    chex.assert_tree_all_finite(out)
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(layer, nnx.Param))}
    self.assertEqual(dtypes, {jnp.dtype(jnp.float32)})

  def test_longformer_global_projections_are_separate_copies(self):
    layer = _layer("longformer")
    for local, name in ((layer.query, "query"), (layer.key, "key"), (layer.value, "value")):
      copy = getattr(layer, name + "_global")
      for param in ("kernel", "bias"):
        self.assertIsNot(getattr(copy, param), getattr(local, param))
        np.testing.assert_array_equal(getattr(copy, param)[...], getattr(local, param)[...])
    self.assertGreater(float(jnp.abs(layer.query.kernel[...]).max()), 0.0)
    self.assertLen(nnx.state(layer, nnx.Param), 7)  # q, k, v, their copies, out
    before = np.asarray(layer.query.kernel[...])
    layer.query_global.kernel[...] = layer.query_global.kernel[...] + 1.0
    np.testing.assert_array_equal(layer.query.kernel[...], before)
    np.testing.assert_array_equal(layer.query_global.kernel[...], before + 1.0)
    self.assertFalse(hasattr(_layer("local"), "query_global"))

  @parameterized.parameters(*CONFIGS)
  def test_padded_tokens_get_no_gradient(self, name):
    layer = _layer(name)
    _randomize(layer, 2)
    x, padding_mask, global_mask = _inputs(3)
    graphdef, state = nnx.split(layer)

    def real_outputs(x):
      out = nnx.merge(graphdef, state)(x, **_masks(name, padding_mask, global_mask))
      return jnp.sum(jnp.where(padding_mask[..., None], out, 0.0))

    grad = jax.jit(jax.grad(real_outputs))(x)
    np.testing.assert_array_equal(grad[1, 7:], 0.0)
    self.assertGreater(float(jnp.abs(grad[1, :7]).min()), 0.0)
    self.assertGreater(float(jnp.abs(grad[0]).min()), 0.0)

  @parameterized.parameters(({"name": "local", "window": 3, "dilation": (1, 2, 1, 2),
                              "causal": True},),
                            ({"name": "full", "causal": True},))
  def test_causal_output_does_not_see_the_future(self, config):
    layer = SelfAttention(FEATURES, HEADS, attention=config, rngs=nnx.Rngs(0))
    x, _, _ = _inputs(4)
    graphdef, state = nnx.split(layer)
    query = 5

    def output_at_query(x):
      return jnp.sum(nnx.merge(graphdef, state)(x)[:, query])

    grad = jax.jit(jax.grad(output_at_query))(x)
    np.testing.assert_array_equal(grad[:, query + 1:], 0.0)
    self.assertGreater(float(jnp.abs(grad[:, query]).min()), 0.0)

  def test_longformer_without_global_tokens_under_jit(self):
    """No global_mask: the window alone, and no max_global needed for it."""
    config = {"name": "longformer", "window": 2}
    layer = SelfAttention(FEATURES, HEADS, attention=config, rngs=nnx.Rngs(0))
    _randomize(layer, 5)
    x, padding_mask, _ = _inputs(5)
    out = nnx.jit(lambda layer, x, padding_mask: layer(x, padding_mask=padding_mask))(
        layer, x, padding_mask)
    q, k, v = (_project(p, x) for p in (layer.query, layer.key, layer.value))
    mask = reference.pattern_mask(LENGTH, window=2, num_heads=HEADS,
                                  padding_mask=padding_mask)
    expected = _output(layer, reference.dense_attention(q, k, v, mask=mask))
    chex.assert_trees_all_close(out, expected, atol=1e-4, rtol=1e-4)

  def test_dropout(self):
    layer = SelfAttention(FEATURES, HEADS, attention=CONFIGS["full"], dropout_rate=0.5,
                          rngs=nnx.Rngs(0))
    x, padding_mask, _ = _inputs(6)
    with pytest.raises(errors.ConfigError,
                       match=r"attention dropout needs rngs=nnx.Rngs\(dropout=key\)"):
      layer(x, padding_mask=padding_mask, deterministic=False)
    exact = layer(x, padding_mask=padding_mask)
    np.testing.assert_array_equal(
        layer(x, padding_mask=padding_mask, rngs=nnx.Rngs(dropout=1)), exact)
    dropped = layer(x, padding_mask=padding_mask, deterministic=False,
                    rngs=nnx.Rngs(dropout=1))
    again = layer(x, padding_mask=padding_mask, deterministic=False,
                  rngs=nnx.Rngs(dropout=1))
    chex.assert_tree_all_finite(dropped)
    np.testing.assert_array_equal(dropped, again)
    self.assertFalse(np.allclose(dropped, exact))

  @parameterized.parameters("full", "local")
  def test_global_mask_needs_a_global_mechanism(self, name):
    x, padding_mask, global_mask = _inputs()
    with pytest.raises(errors.ConfigError,
                       match=f"attention '{name}' has no global tokens; use 'longformer'"):
      _layer(name)(x, padding_mask=padding_mask, global_mask=global_mask)

  def test_features_must_divide_into_heads(self):
    with pytest.raises(errors.ConfigError, match=r"features \(10\) must be a multiple"):
      SelfAttention(10, 4, attention=CONFIGS["full"], rngs=nnx.Rngs(0))

  def test_bad_attention_config(self):
    with pytest.raises(errors.ConfigError, match="has no option 'windw'"):
      SelfAttention(FEATURES, HEADS, attention={"name": "local", "windw": 2},
                    rngs=nnx.Rngs(0))

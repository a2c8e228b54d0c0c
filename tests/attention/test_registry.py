"""The attention registry: every registered name against the oracle, config errors, and
the flax `attention_fn` adapter against flax's own dense attention."""

import functools
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from configs import common as config_common
from experiments.bench import harness
from lra import attention
from lra import errors
from lra import train
from lra.attention import layers
from lra.attention import reference
from tests import entry_points
from tests.attention import cases
from tests.attention import toy_mechanism

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

  def test_variants_and_presets(self):
    self.assertEqual(list(attention.variants()), ["full", "local", "dilated", "longformer"])
    for heads, dilation in ((4, (1, 1, 2, 2)), (3, (1, 2, 2)), (1, (2,))):
      self.assertEqual(attention.variant_config("dilated", num_heads=heads, window=3),
                       {"name": "local", "window": 3, "dilation": dilation, "causal": False,
                        "sequence_axis": None,
                        "block_size": None, "implementation": None})
    # An option given wins over the preset's; one the mechanism lacks is left out.
    self.assertEqual(attention.variant_config("dilated", num_heads=2, window=3,
                                              dilation=(3, 1))["dilation"], (3, 1))
    self.assertEqual(attention.variant_config("full", num_heads=2, window=3),
                     {"name": "full", "causal": False})
    self.assertTrue(attention.get("longformer").uses_global)
    self.assertEqual(attention.get("local").implementations, ("xla", "pallas"))
    self.assertEqual([n for n, m in attention.MECHANISMS.items() if m.quadratic], ["full"])

  def test_task_configs_resolve_to_the_registry_config_of_a_variant(self):
    spec = os.path.join(entry_points.REPO, "configs/listops.py:size=tiny,window=5,attention=")
    for variant in attention.variants():
      config = train.resolve(config_common.load_config(spec + variant))
      expected = attention.variant_config(variant, num_heads=2, window=5)
      self.assertEqual(config.attention.to_dict(), expected)
    dilated = train.resolve(config_common.load_config(spec + "dilated,dilation=3/1"))
    self.assertEqual(dilated.attention.dilation, (3, 1))
    # The options a task sets for every variant are fields: the implementation too, typed,
    # so that an override parses.
    with pytest.raises(TypeError):
      config_common.load_config(spec + "local").attention.implementation = 3

  def test_implementation_is_bound_and_names_are_unique(self):
    for implementation in (None, "xla", "pallas"):
      bound = attention.build({"name": "local", "window": 2,
                               "implementation": implementation}, HEADS)
      self.assertEqual(dict(bound.options)["implementation"], implementation)
    with pytest.raises(errors.ConfigError, match="already registered"):
      attention.register(attention.Mechanism("dilated", attention.full_attention, {}))

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
       r"unknown attention 'flash'; choose one of: full, local, dilated, longformer"),
      ("no_name", {"window": 2}, r"unknown attention None; choose one of: full, local"),
      ("unknown_option", {"name": "local", "windw": 4},
       r"attention 'local' has no option 'windw'; its options are: block_size, causal, "
       r"dilation, implementation, sequence_axis, window"),
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

  @parameterized.named_parameters(
      ("unknown", {"name": "local", "window": 2, "implementation": "cuda"},
       r"attention 'local': unknown implementation 'cuda'; choose one of: xla, pallas"),
      ("not_an_option_of_full", {"name": "full", "implementation": "xla"},
       r"attention 'full' has no option 'implementation'"),
  )
  def test_bad_implementation(self, config, message):
    with pytest.raises(errors.ConfigError, match=message):
      attention.build(config, num_heads=HEADS)

  def test_error_is_a_user_error(self):
    with pytest.raises(errors.UserError):
      attention.build({"name": "local"}, num_heads=HEADS)

  def test_config_is_not_modified(self):
    config = {"name": "local", "window": 2, "dilation": [1, 2, 1, 2]}
    attention.build(config, num_heads=HEADS)
    self.assertEqual(config, {"name": "local", "window": 2, "dilation": [1, 2, 1, 2]})


def _flax_layers(config, dropout_rate=0.0, broadcast_dropout=False):
  """Two `nnx.MultiHeadAttention` with the same parameters: one through the adapter, one
  through flax's own dense attention."""
  make = functools.partial(nnx.MultiHeadAttention, num_heads=HEADS, in_features=FEATURES,
                           decode=False, dropout_rate=dropout_rate,
                           broadcast_dropout=broadcast_dropout)
  adapted = make(attention_fn=layers.flax_attention_fn(config, num_heads=HEADS),
                 rngs=nnx.Rngs(0))
  return adapted, make(rngs=nnx.Rngs(0))


FEATURES = 16


class FlaxAdapterTest(parameterized.TestCase):
  """`flax_attention_fn` in flax's own module against flax's dense attention given the
  registry's pattern: every mechanism without global tokens, and every preset."""

  @parameterized.parameters(((2,), False), ((2,), True), ((2, 3), False))
  def test_every_variant_matches_flax_dense_attention(self, batch_shape, causal):
    x = jax.random.normal(jax.random.key(0), (*batch_shape, LENGTH, FEATURES))
    lengths = np.arange(np.prod(batch_shape)).reshape(batch_shape) % 3 + LENGTH - 4
    real = np.arange(LENGTH)[None] < lengths[..., None]
    checked = 0
    for name, (mechanism, _) in attention.variants().items():
      if mechanism.uses_global or (causal and "causal" not in mechanism.options):
        continue
      config = attention.variant_config(name, num_heads=HEADS, window=2,
                                        causal=causal or None)
      adapted, dense = _flax_layers(config)
      pattern = attention.build(config, HEADS).pattern(LENGTH, padding_mask=real.reshape(
          -1, LENGTH)).reshape(*batch_shape, HEADS, LENGTH, LENGTH)

      def loss(layer, mask):
        # Real rows only: flax's dense attention averages every value at padded queries.
        return jnp.sum(jnp.where(real[..., None], layer(x, mask=mask), 0) ** 2)

      out, grads = nnx.value_and_grad(loss)(adapted, nnx.make_attention_mask(real, real))
      expected, expected_grads = nnx.value_and_grad(loss)(dense, pattern)
      chex.assert_trees_all_close(out, expected, **cases.F32_TOL)
      chex.assert_trees_all_close(nnx.state(grads), nnx.state(expected_grads),
                                  **cases.F32_TOL)
      checked += 1
    self.assertGreaterEqual(checked, 2 if causal else 3)

  def test_no_mask_means_every_token_is_real(self):
    config = {"name": "local", "window": 2, "dilation": (1, 2, 1, 2)}
    adapted, dense = _flax_layers(config)
    x = jax.random.normal(jax.random.key(1), (2, LENGTH, FEATURES))
    pattern = attention.build(config, HEADS).pattern(LENGTH)
    chex.assert_trees_all_close(adapted(x), dense(x, mask=pattern), **cases.F32_TOL)

  def test_runs_under_jit_and_with_dropout(self):
    config = {"name": "local", "window": 2}
    adapted, _ = _flax_layers(config, dropout_rate=0.5)
    x = jax.random.normal(jax.random.key(2), (2, LENGTH, FEATURES))
    mask = nnx.make_attention_mask(jnp.ones((2, LENGTH), bool), jnp.ones((2, LENGTH), bool))
    step = nnx.jit(lambda layer, x, mask, rngs: layer(x, mask=mask, deterministic=False,
                                                      rngs=rngs))
    first = step(adapted, x, mask, nnx.Rngs(dropout=0))
    second = step(adapted, x, mask, nnx.Rngs(dropout=1))
    chex.assert_tree_all_finite((first, second))
    self.assertFalse(jnp.allclose(first, second))  # dropout is on, and draws anew

  def test_global_tokens_cannot_go_through_the_hook(self):
    with pytest.raises(errors.ConfigError, match="global tokens, which flax's attention_fn "
                                                  "hook cannot carry.*SelfAttention"):
      layers.flax_attention_fn({"name": "longformer", "window": 2}, num_heads=HEADS)

  @parameterized.named_parameters(
      ("pattern_mask", {}, lambda real: attention.pattern_mask(LENGTH, window=1),
       "takes only a padding mask"),
      ("is_causal", {"is_causal": True}, lambda real: None, "is_causal=True needs a causal"),
  )
  def test_bad_call(self, kwargs, mask, message):
    adapted, _ = _flax_layers({"name": "local", "window": 2})
    x = jnp.ones((1, LENGTH, FEATURES))
    with pytest.raises(errors.ConfigError, match=message):
      adapted(x, mask=mask(None), **kwargs)

  def test_broadcast_dropout_is_refused(self):
    adapted, _ = _flax_layers({"name": "local", "window": 2}, dropout_rate=0.1,
                              broadcast_dropout=True)
    with pytest.raises(errors.ConfigError, match="broadcast_dropout=False"):
      adapted(jnp.ones((1, LENGTH, FEATURES)), deterministic=False, rngs=nnx.Rngs(0))


def _run_with_toy(module: str, *args: str):
  """Runs an entry point in a fresh process with the toy mechanism registered."""
  return subprocess.run([sys.executable, "-m", "tests.attention.toy_mechanism", module, *args],
                        cwd=entry_points.REPO, text=True, capture_output=True, timeout=300,
                        env=entry_points.ENV)


def test_one_registry_entry_reaches_every_consumer(tmp_path):
  """One registry entry (`toy_mechanism.BLOCKED`) reaches the configs, the model, the
  trainer, the benchmark, `compare` and the pattern plots; leaving the `with` removes it."""
  run = tmp_path / "sweep" / "blocked_pairs_seed0"
  with attention.registered(toy_mechanism.BLOCKED):
    assert list(attention.variants())[-2:] == ["blocked", "blocked_pairs"]
    config = config_common.load_config(os.path.join(
        entry_points.REPO, "configs/listops.py:attention=blocked_pairs,size=tiny"))
    assert dict(train.resolve(config).attention) == {"name": "blocked", "block": 2}
    with config.unlocked():
      config.data_cache_dir = str(tmp_path / "cache")
      config.num_train_steps = 2
      config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 2
    results = train.train_and_evaluate(config, str(run))
    assert (results["attention"], results["best_val_step"]) == ("blocked", 2)

    assert "blocked_pairs" in harness.row_names()
    setup = harness.Setup(window=3, heads=2, head_dim=4, batch=1, dtype="float32")
    row = harness.rows(setup)["blocked_pairs"]
    assert row.count_pairs(9) == 2 * (4 * 2 * 2 + 1)  # 2 heads: 4 blocks of 2, 1 of 1
    q, k, v = cases.random_qkv(0, 1, 9, 2, 4)
    expected = reference.dense_attention(
        q, k, v, mask=toy_mechanism.blocked_pattern(9, {"block": 2}, num_heads=2))
    chex.assert_trees_all_close(row.attend(q, k, v), expected, **cases.F32_TOL)
  assert "blocked" not in attention.variants()
  with pytest.raises(errors.ConfigError, match="unknown attention 'blocked'"):
    attention.build({"name": "blocked"}, num_heads=2)

  # The entry points, each in a process that registers the toy first. compare reuses the
  # finished run above (its config is what compare makes of `blocked_pairs`).
  completed = _run_with_toy("compare", "--config=configs/listops.py", "--size=tiny",
                            "--attention=blocked_pairs", f"--workdir={tmp_path}/sweep")
  assert completed.returncode == 0, completed.stderr
  assert "reusing the finished run" in completed.stdout
  assert "| blocked_pairs | none | 1 |" in (tmp_path / "sweep" / "comparison.md").read_text()
  completed = _run_with_toy("plot_patterns", f"--out={tmp_path}", "--length=12")
  assert completed.returncode == 0, completed.stderr
  assert (tmp_path / "attention_patterns.png").exists()

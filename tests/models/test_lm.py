"""Causal LM: causality through gradients for every layer configuration, the attention each
layer gets from the config (windows per layer and phase, dilation on the last heads), and
relative (rotary) positions."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common as config_common
from configs import enwik8
from lra import errors
from lra.attention.layers import rotary
from lra.models.lm import CausalLM
from lra.models.lm import layer_attention_configs
from tests.entry_points import REPO

# The paper's schedule at a test's scale: windows 2 -> 32 with depth, dilation (gaps 1-3,
# strides 2-4) on 2 of 8 heads of the upper half.
_PAPER_WINDOWS = tuple(max(1, w // 16) for w in enwik8.PRESETS["paper"].model["windows"])
_PAPER_DILATION = enwik8.PRESETS["paper"].model["layer_dilation"]


def _config(**model):
  config = config_common.load_config(os.path.join(REPO, "configs/enwik8.py:size=tiny"))
  with config.unlocked():
    config.model.update(model)
  return config


def _options(model: CausalLM) -> list[dict]:
  return [dict(block.attention.core.options) for block in model.encoder.blocks]


@pytest.mark.parametrize("model", [
    dict(windows=(1, 1), layer_dilation=(1, 1), dilated_heads=0),
    dict(windows=(2, 5), layer_dilation=(1, 2), dilated_heads=1),
    dict(windows=(3, 2), layer_dilation=(3, 2), dilated_heads=2),
    dict(windows=(4, 4), layer_dilation=(4, 1), dilated_heads=1, window_scale=2),
    pytest.param(dict(num_layers=12, num_heads=8, windows=_PAPER_WINDOWS,
                      layer_dilation=_PAPER_DILATION, dilated_heads=2), marks=pytest.mark.slow),
], ids=["window1", "dilated_one_head", "dilated_all_heads", "scaled", "paper_schedule"])
def test_loss_at_t_has_zero_gradient_from_inputs_after_t(model):
  config = _config(**model)
  lm = CausalLM(config, vocab_size=256, num_classes=0, rngs=nnx.Rngs(0))
  length = 29
  x = jax.random.normal(jax.random.key(1), (1, length, config.model.emb_dim))
  targets = jax.random.randint(jax.random.key(2), (length,), 0, 256)

  def losses(x):  # [length]: the loss at every position
    log_probs = jax.nn.log_softmax(lm.logits_from_embeddings(x)[0])
    return -jnp.take_along_axis(log_probs, targets[:, None], axis=1)[:, 0]

  jacobian = jax.jit(jax.jacrev(losses))(x)[:, 0]  # [loss position t, input position s, emb]
  depends = np.asarray(jnp.any(jacobian != 0, axis=-1))
  # Exactly zero above the diagonal (no later input reaches the loss at t), non-zero on it.
  np.testing.assert_array_equal(np.triu(depends, 1), False)
  assert np.diag(depends).all()


def test_each_layer_gets_its_window_and_dilated_heads():
  config = _config(num_layers=3, num_heads=4, windows=(2, 4, 8), layer_dilation=(1, 2, 3),
                   dilated_heads=2, window_scale=3)
  options = _options(CausalLM(config, vocab_size=256, num_classes=0, rngs=nnx.Rngs(0)))
  assert [o["window"] for o in options] == [6, 12, 24]
  assert [tuple(np.broadcast_to(o["dilation"], 4)) for o in options] == [
      (1, 1, 1, 1), (1, 1, 2, 2), (1, 1, 3, 3)]
  assert all(o["causal"] for o in options)


def test_per_layer_lists_must_match_the_depth():
  config = _config(windows=(2, 4, 8))
  with pytest.raises(errors.ConfigError, match="model.windows has 3 entries"):
    layer_attention_configs(config.model)
  config = _config(dilated_heads=3)
  with pytest.raises(errors.ConfigError, match="dilated_heads"):
    layer_attention_configs(config.model)


def test_rotary_scores_depend_on_the_offset_alone():
  y = jax.random.normal(jax.random.key(0), (1, 9, 2, 8))
  shifted = jnp.concatenate([jax.random.normal(jax.random.key(1), (1, 5, 2, 8)), y], axis=1)
  scores = jnp.einsum("bihd,bjhd->hij", rotary(y), rotary(y))
  scores_shifted = jnp.einsum("bihd,bjhd->hij", rotary(shifted), rotary(shifted))[:, 5:, 5:]
  np.testing.assert_allclose(scores_shifted, scores, rtol=1e-5, atol=1e-5)
  # Not a no-op: the same vector at two positions gives different scores.
  assert not jnp.allclose(scores, jnp.einsum("bihd,bjhd->hij", y, y), atol=1e-3)


def test_predictions_do_not_depend_on_where_the_window_starts():
  """With relative positions, the last prediction sees the same characters the same way
  whether or not the window has 7 more characters in front (beyond its receptive field)."""
  config = _config()
  lm = CausalLM(config, vocab_size=256, num_classes=0, rngs=nnx.Rngs(0))
  receptive = sum(w * d for w, d in zip(config.model.windows, config.model.layer_dilation))
  tokens = jax.random.randint(jax.random.key(3), (1, receptive + 8), 0, 256)
  short = lm(tokens[:, 7:])[0, -1]
  np.testing.assert_allclose(lm(tokens)[0, -1], short, rtol=1e-4, atol=1e-4)


def test_the_lm_takes_rotary_positions_only():
  with pytest.raises(errors.ConfigError, match="pos_emb='rotary'"):
    CausalLM(_config(pos_emb="sinusoidal"), vocab_size=256, num_classes=0, rngs=nnx.Rngs(0))

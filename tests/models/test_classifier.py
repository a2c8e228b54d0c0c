"""Pooling of the classifier's encoder: every pooling ignores padding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common as config_common
from lra import attention
from lra import train
from lra.data import PAD_ID
from lra.models.classifier import POOLINGS
from lra.models.classifier import Classifier
from lra.models.classifier import PooledEncoder
from tests.attention import test_kernel_export
from tests.entry_points import REPO

VOCAB = 20


@pytest.mark.parametrize("variant", ("full", "local", "longformer"))
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_does_not_change_the_pooled_vector(pooling, variant):
  config = train.resolve(config_common.load_config(
      f"{REPO}/configs/listops.py:attention={variant},size=tiny"))
  with config.unlocked():
    config.model.pooling = pooling
  encoder = PooledEncoder(config, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(0).integers(PAD_ID + 1, VOCAB, size=(1, 11))
  padded = np.concatenate([tokens, np.full((1, 6), PAD_ID)], axis=1)
  pooled = encoder(tokens, deterministic=True, rngs=None)
  pooled_padded = encoder(padded, deterministic=True, rngs=None)
  np.testing.assert_allclose(pooled_padded, pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(attention.variants()))
def test_cls_is_global_exactly_under_mechanisms_with_global_tokens(variant):
  """One layer, window 1, CLS pooling: the CLS vector depends on the last token exactly
  where the registry's pattern lets CLS see it (a global CLS, or full attention)."""
  config = train.resolve(config_common.load_config(
      f"{REPO}/configs/listops.py:attention={variant},size=tiny,window=1"))
  with config.unlocked():
    config.model.pooling = "cls"
  encoder = PooledEncoder(config, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(0).integers(PAD_ID + 1, VOCAB, size=(1, 12))
  changed = tokens.copy()
  changed[0, -1] = tokens[0, -1] % (VOCAB - 1) + 1  # another real token
  moved = not np.allclose(encoder(tokens, deterministic=True, rngs=None),
                          encoder(changed, deterministic=True, rngs=None))
  # The registry's pattern of the 13 positions, CLS (global where the mechanism has them)
  # first: does CLS see the last one?
  cls_global = np.zeros((1, 13), bool)
  cls_global[0, 0] = True
  pattern = attention.build(config.attention, config.model.num_heads).pattern(
      13, global_mask=cls_global)
  assert moved == bool(np.any(np.asarray(pattern)[0, :, 0, -1]))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_longformer_train_step_exports_without_host_work(platform):
  """A Longformer classifier's train step (attention dropout on, the Pallas kernels, an
  AdamW update) lowers for GPUs and TPUs with no host callback in it."""
  config = train.resolve(config_common.load_config(
      f"{REPO}/configs/listops.py:attention=longformer,size=tiny"))
  with config.unlocked():
    config.attention.implementation = "pallas"
  model = Classifier(config, vocab_size=VOCAB, num_classes=10, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tx = optax.adamw(1e-3)

  def train_step(params, opt_state, batch, rng):
    def loss(params):
      sums = nnx.merge(graphdef, params).metrics(batch, deterministic=False,
                                                 rngs=nnx.Rngs(dropout=rng))
      return sums["loss"] / sums["count"]
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  length = config.data.max_length
  batch = {"inputs": jax.ShapeDtypeStruct((4, length), jnp.int32),
           "targets": jax.ShapeDtypeStruct((4,), jnp.int32),
           "weights": jax.ShapeDtypeStruct((4,), jnp.float32)}
  module = test_kernel_export.export_module(platform, train_step, params, tx.init(params),
                                            batch, jax.random.key(0))
  assert test_kernel_export.KERNEL_CALLS[platform] in module
  assert "callback" not in module

"""Pooling of the classifier's encoder: every pooling ignores padding."""

import numpy as np
import pytest
from flax import nnx

from configs import common as config_common
from lra import attention
from lra import train
from lra.data import PAD_ID
from lra.models.classifier import POOLINGS
from lra.models.classifier import PooledEncoder
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

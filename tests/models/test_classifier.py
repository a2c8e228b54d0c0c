"""Pooling of the classifier's encoder: every pooling ignores padding."""

import numpy as np
import pytest
from flax import nnx

from lra import config_utils
from lra.data import PAD_ID
from lra.models.classifier import POOLINGS
from lra.models.classifier import PooledEncoder
from tests.entry_points import REPO

VOCAB = 20


@pytest.mark.parametrize("variant", ("full", "local", "longformer"))
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_does_not_change_the_pooled_vector(pooling, variant):
  config = config_utils.load_config(f"{REPO}/configs/listops.py:attention={variant},size=tiny")
  with config.unlocked():
    config.model.pooling = pooling
  encoder = PooledEncoder(config, vocab_size=VOCAB, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(0).integers(PAD_ID + 1, VOCAB, size=(1, 11))
  padded = np.concatenate([tokens, np.full((1, 6), PAD_ID)], axis=1)
  pooled = encoder(tokens, deterministic=True, rngs=None)
  pooled_padded = encoder(padded, deterministic=True, rngs=None)
  np.testing.assert_allclose(pooled_padded, pooled, atol=1e-5, rtol=1e-5)

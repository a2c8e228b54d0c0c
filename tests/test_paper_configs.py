"""Every `paper` config trains on the Pallas kernels on a GPU or TPU, attention dropout on."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common as config_common
from lra import models
from lra import train
from lra.attention import kernels
from lra.attention.layers import SelfAttention
from tests.entry_points import REPO

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
LENGTH = 64  # the kernels' choice does not depend on it: a short trace


def _attention_layers(config):
  """The model's attention layers, built on abstract parameters."""
  model = nnx.eval_shape(lambda: models.build(config, vocab_size=300, num_classes=10,
                                              rngs=nnx.Rngs(0)))
  return [node for _, node in nnx.iter_graph(model) if isinstance(node, SelfAttention)]


@pytest.mark.parametrize("spec", [f"{task}.py:attention={variant}" for task in TASKS
                                  for variant in ("local", "dilated", "longformer")]
                         + ["enwik8.py", "text8.py"])
def test_paper_configs_run_on_the_kernels(spec):
  """Every layer's attention of the model, called as in training (its dropout rate, a
  dropout key), runs the Pallas kernels when the backend is a GPU or a TPU. (The kernels'
  entry point is replaced by a recorder, so that nothing is compiled: the contract suite
  checks what they compute.)"""
  config = train.resolve(config_common.load_config(f"{REPO}/configs/{spec}"))
  assert config.size == "paper"
  layers = _attention_layers(config)
  assert layers
  calls = []

  def recorder(q, k, v, *masks, plan, dropout_rate, target=None):
    del k, v, masks, plan, target
    calls.append(dropout_rate)
    return jnp.zeros(q.shape, q.dtype), jnp.zeros(q.shape[:3], jnp.float32)

  for layer in layers:
    core = layer.core
    assert dict(core.options).get("implementation") is None  # chosen for the backend
    if config.model.kind != "causal_lm":
      assert layer.dropout_rate > 0
    head_dim = layer.query.out_features[-1]
    q = jax.ShapeDtypeStruct((2, LENGTH, layer.num_heads, head_dim), jnp.float32)
    global_mask = np.zeros((2, LENGTH), bool) if core.uses_global else None
    for backend in ("gpu", "tpu"):
      # A new function each time: a traced one is cached.
      call = lambda q, core=core, rate=layer.dropout_rate or 0.1: core(
          q, q, q, global_mask=global_mask, dropout_rate=rate, dropout_rng=jax.random.key(0))
      calls.clear()
      with mock.patch.object(jax, "default_backend", lambda b=backend: b), \
           mock.patch.object(kernels, "band_attention", recorder):
        jax.eval_shape(call, q)
      assert calls and all(rate == (layer.dropout_rate or 0.1) for rate in calls), calls

"""Decoding a causal windowed LM over rolling caches equals its full forward pass."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common as config_common
from lra import errors
from lra import generation
from lra import train
from lra.attention import decoding
from lra.models.lm import CausalLM
from tests.entry_points import REPO

VOCAB = 40


def _model(dtype="float32", implementation=None, layer_dilation=(1, 2)):
  config = train.resolve(config_common.load_config(f"{REPO}/configs/enwik8.py:size=tiny"))
  with config.unlocked():
    # Windows 4 and 8: reaches of 4 and 16 positions with the second layer's dilation.
    config.model.layer_dilation = layer_dilation
    config.model.dtype = dtype
    config.attention.implementation = implementation
  return CausalLM(config, vocab_size=VOCAB, num_classes=0, rngs=nnx.Rngs(0))


def _text(model, seed=0):
  """A text 4 windows longer than the largest reach (and an odd length)."""
  largest = max(cache["k"].shape[1] - 1 for cache in model.init_cache(1)["layers"])
  return np.random.default_rng(seed).integers(0, VOCAB, (2, 5 * largest + 3)).astype(np.int32)


def _decoded(model, tokens, prompt):
  """Logits of a prefill of `prompt` tokens, then one token at a time."""
  decode = nnx.jit(lambda model, tokens, cache: model.decode(tokens, cache))
  logits, cache = decode(model, tokens[:, :prompt], model.init_cache(tokens.shape[0]))
  outputs = [logits]
  for position in range(prompt, tokens.shape[1]):
    logits, cache = decode(model, tokens[:, position:position + 1], cache)
    outputs.append(logits)
  return jnp.concatenate(outputs, axis=1)


@pytest.mark.parametrize("layer_dilation,implementation", [
    ((1, 1), None),  # causal local, a window per layer
    ((1, 2), None),  # and dilation on one head of the second layer
    ((1, 2), "pallas"),  # the prefill on the kernels (interpret mode)
])
def test_prefill_then_steps_equal_the_full_forward(layer_dilation, implementation):
  model = _model(implementation=implementation, layer_dilation=layer_dilation)
  tokens = _text(model)
  np.testing.assert_allclose(_decoded(model, tokens, prompt=37), model(tokens),
                             atol=1e-5, rtol=1e-5)


def test_bfloat16_within_its_tolerance():
  model = _model(dtype="bfloat16")
  tokens = _text(model, seed=1)
  np.testing.assert_allclose(_decoded(model, tokens, prompt=37), model(tokens),
                             atol=5e-2, rtol=5e-2)


def test_streaming_bits_equal_one_pass_over_the_text():
  """Any number of streams and any chunk: the bits of a full forward over the text."""
  model = _model()
  text = _text(model)[0]
  log_probs = jax.nn.log_softmax(model(text[None])[0], axis=-1)
  exact = -float(jnp.sum(jnp.take_along_axis(log_probs[:-1], text[1:, None], axis=-1)))
  exact /= math.log(2.0)
  for streams, chunk in ((1, 64), (3, 16)):
    result = generation.streaming_bits(model, text, streams=streams, chunk=chunk)
    assert result["count"] == len(text) - 1
    np.testing.assert_allclose(result["bits"], exact, rtol=1e-5)


def test_greedy_generation_is_the_argmax_of_the_full_forward():
  model = _model()
  prompt = _text(model)[:, :30]
  generated = generation.generate(model, prompt, num_tokens=12, temperature=0,
                                  chunk=16)["tokens"]
  # The full forward recomputed on the growing text (padded at the end: causal).
  forward = nnx.jit(lambda model, tokens: model(tokens))
  text = np.concatenate([prompt, np.zeros((2, 12), np.int32)], axis=1)
  for position in range(30, 42):
    text[:, position] = np.argmax(forward(model, text)[:, position - 1], axis=-1)
  np.testing.assert_array_equal(generated, text[:, 30:])


def test_sampling_is_seeded_and_top_k_bounded():
  model = _model()
  prompt = _text(model)[:, :10]
  draw = lambda seed, top_k: generation.generate(model, prompt, num_tokens=20, seed=seed,
                                                 temperature=1.0, top_k=top_k)["tokens"]
  np.testing.assert_array_equal(draw(3, 0), draw(3, 0))
  assert not np.array_equal(draw(3, 0), draw(4, 0))
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, VOCAB)))
  allowed = np.argsort(np.asarray(logits), axis=1)[:, -3:]
  for seed in range(20):
    token = generation.sample(logits, jax.random.key(seed), temperature=1.5, top_k=3)
    assert all(int(t) in row for t, row in zip(token, allowed))


def test_step_memory_does_not_grow_with_position():
  """The compiled step's temporaries and the cache are the same at position 1,000 and
  100,000: the cache is a ring of fixed size."""
  model = _model()
  cache = model.init_cache(1)
  step = nnx.jit(lambda model, tokens, cache: model.decode(tokens, cache))
  token = jnp.zeros((1, 1), jnp.int32)
  temps = []
  for position in (1_000, 100_000):
    at = dict(cache, position=jnp.asarray(position, jnp.int32))
    compiled = step.lower(model, token, at).compile()
    temps.append(compiled.memory_analysis().temp_size_in_bytes)
    _, after = step(model, token, at)
    assert jax.tree.map(jnp.shape, after) == jax.tree.map(jnp.shape, cache)
  assert temps[0] == temps[1]


def test_only_causal_windows_decode():
  config = train.resolve(config_common.load_config(
      f"{REPO}/configs/listops.py:attention=local,size=tiny"))
  from lra.attention.layers import SelfAttention  # pylint: disable=g-import-not-at-top
  layer = SelfAttention(16, 2, attention=dict(config.attention), rngs=nnx.Rngs(0))
  with pytest.raises(errors.ConfigError, match="needs causal window attention"):
    layer.init_cache(1)
  with pytest.raises(errors.ConfigError, match="the prompt is empty"):
    generation.generate(_model(), np.zeros((1, 0), np.int32), num_tokens=3)


def test_cache_size_is_the_reach_and_the_current_position():
  assert decoding.cache_size(16, (1, 1, 2, 4), 4) == 65
  with pytest.raises(errors.ConfigError, match="window must be a positive int"):
    decoding.cache_size(0, 1, 1)

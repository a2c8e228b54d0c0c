"""The attention functions against oracles that are not the package's own.

- HuggingFace's `LongformerSelfAttention` (PyTorch), through a committed fixture of its
  weights, inputs, outputs and input gradients (`tests/fixtures/make_hf_fixtures.py`
  regenerates it; this test needs neither torch nor transformers).
- `jax.nn.dot_product_attention(local_window_size=...)`, XLA's banded attention, for the
  undilated sliding window, bidirectional and causal.

HF's semantics, and how they map onto `longformer_attention`:
- `attention_window` is HF's total window; the layer halves it: `window = attention_window
  // 2`, each query seeing keys `i - window .. i + window`, as ours.
- HF divides the projected query by `sqrt(head_dim)` before the product; we scale the
  scores. The same numbers, up to float32 rounding.
- Local (non-global) queries see the global keys through the local `key`/`value`
  projections, in one softmax with the window, the global keys left out of the window
  (HF's `attention_mask != 0` removes them), so counted once: our global part.
- Global queries see every non-padded key through `query_global`/`key_global`/
  `value_global`: our `global_q/k/v`.
- Padded queries: HF zeroes their probabilities, so their output is exactly 0, as ours.
- The layer asserts that the length is a multiple of `attention_window` (LongformerModel
  pads inside); ours takes any length, and on the unpadded prefix of a row it must give
  HF's values, which the prefix case checks.
"""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lra.attention import longformer_attention
from lra.attention import sliding_window_attention
from tests.attention import cases

FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "hf_longformer",
                       "self_attention.npz")
HF_WINDOW = 8  # the fixture's attention_window (total)
NUM_HEADS = 4
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def hf():
  with np.load(FIXTURE) as data:
    return dict(data)


def _project(hf, name, hidden_BxLxE):
  """torch's `nn.Linear` (`x @ W.T + b`), split into heads: `[B, L, H, D]`."""
  out = hidden_BxLxE @ hf[f"{name}.weight"].T + hf[f"{name}.bias"][None, None]
  return out.reshape(*out.shape[:2], NUM_HEADS, -1)


def _ours(hf, hidden_BxLxE, padding, global_mask):
  """Our Longformer attention with the fixture's six projections: `[B, L, E]`."""
  q, k, v, global_q, global_k, global_v = (
      _project(hf, name, hidden_BxLxE)
      for name in ("query", "key", "value", "query_global", "key_global", "value_global"))
  out = longformer_attention(q, k, v, window=HF_WINDOW // 2, global_mask=global_mask,
                             global_q=global_q, global_k=global_k, global_v=global_v,
                             padding_mask=padding)
  return out.reshape(hidden_BxLxE.shape)


class HuggingFaceLongformerTest(parameterized.TestCase):

  @pytest.fixture(autouse=True)
  def _fixture(self, hf):
    self.hf = hf

  @parameterized.named_parameters(("global", ""), ("no_global", "_no_global"))
  def test_outputs_and_input_gradients(self, suffix):
    hf = self.hf
    global_mask = hf["global_mask"] if not suffix else np.zeros_like(hf["global_mask"])
    attend = functools.partial(_ours, hf, padding=hf["padding"], global_mask=global_mask)
    out, pullback = jax.vjp(attend, jnp.asarray(hf["hidden"]))
    (grad_hidden,) = pullback(jnp.asarray(hf["cotangent"]))
    chex.assert_shape(out, hf["hidden"].shape)
    np.testing.assert_allclose(out, hf["out" + suffix], **TOL)
    np.testing.assert_allclose(grad_hidden, hf["grad_hidden" + suffix], atol=2e-5, rtol=1e-5)
    # Padded rows are exactly 0 on both sides.
    assert not np.any(out[~hf["padding"]])

  def test_length_not_a_multiple_of_the_window(self):
    """The first 37 of HF's 40 positions (the rest padding in every row) on their own."""
    hf, length = self.hf, 37
    assert not hf["padding"][:, length:].any()
    out = _ours(hf, jnp.asarray(hf["hidden"][:, :length]), hf["padding"][:, :length],
                hf["global_mask"][:, :length])
    np.testing.assert_allclose(out, hf["out"][:, :length], **TOL)

  def test_fixture_exercises_the_global_paths(self):
    """Globals at the first position, adjacent, at a row's last real token, and none."""
    hf = self.hf
    counts = hf["global_mask"].sum(axis=1)
    assert hf["global_mask"][:, 0].any() and (counts == 0).any() and counts.max() >= 4
    # Global rows differ from what local attention alone would give.
    local = _ours(hf, jnp.asarray(hf["hidden"]), hf["padding"],
                  np.zeros_like(hf["global_mask"]))
    assert np.abs(np.asarray(local) - hf["out"])[hf["global_mask"]].min() > 1e-3


def _banded_oracle(q, k, v, *, window, causal):
  """XLA's banded attention: keys `i - window .. i + window` (`.. i` when causal)."""
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                      local_window_size=(window, 0 if causal else window),
                                      implementation="xla")


class JaxBandedAttentionTest(parameterized.TestCase):
  """The undilated sliding window against `jax.nn.dot_product_attention`."""

  @parameterized.product(
      (dict(length=1, window=1, block_size=None), dict(length=37, window=5, block_size=None),
       dict(length=100, window=8, block_size=None),
       dict(length=130, window=64, block_size=None),  # a window wider than most rows
       dict(length=203, window=20, block_size=8)),  # several blocks, w > 2 x block
      causal=(False, True))
  def test_outputs_and_gradients(self, length, window, block_size, causal):
    qkv = cases.random_qkv(length + window, 2, length, 4, 16)
    ours = functools.partial(sliding_window_attention, window=window, causal=causal,
                             block_size=block_size)
    oracle = functools.partial(_banded_oracle, window=window, causal=causal)
    out, grads = jax.jit(functools.partial(cases.grads, ours))(qkv)
    expected, expected_grads = jax.jit(functools.partial(cases.grads, oracle))(qkv)
    chex.assert_shape(out, (2, length, 4, 16))
    np.testing.assert_allclose(out, expected, **cases.F32_TOL)
    for grad, expected_grad in zip(grads, expected_grads):
      np.testing.assert_allclose(grad, expected_grad, atol=5e-5, rtol=5e-5)

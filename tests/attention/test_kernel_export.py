"""The Pallas kernels lower for CUDA and TPU from this CPU-only machine (`jax.export`).

Exporting traces and lowers the program for the named platform, kernels included (Triton
IR for CUDA, Mosaic for TPU), without a device: every lowering error a GPU or TPU user
would hit at their first call shows here. The shapes are those of a real run.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax import export

from lra import attention

LENGTH, HEADS, HEAD_DIM, WINDOW = 8192, 8, 64, 256
# The kernels' custom calls: XLA keeps no compatibility promise for them, so exporting
# (for serialisation) must name them; lowering is what is tested here.
KERNEL_CALLS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def _export(platform, function, *shapes):
  exported = export.export(
      jax.jit(function), platforms=(platform,),
      disabled_checks=[export.DisabledSafetyCheck.custom_call(KERNEL_CALLS[platform])])(*shapes)
  return exported.mlir_module()


def _forward_and_backward(core, q, k, v, padding_mask):
  # Global tokens as a constant (the first 16 positions): their budget is then known when
  # shapes are fixed. (A traced global mask checks its budget in a host callback, which
  # runs on a device but cannot be exported.)
  global_mask = np.zeros(padding_mask.shape, bool)
  global_mask[:, :16] = True

  def loss(q, k, v):
    kwargs = dict(global_mask=global_mask) if core.uses_global else {}
    out = core(q, k, v, padding_mask=padding_mask, **kwargs)
    return jnp.sum(out.astype(jnp.float32) ** 2)
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


class KernelExportTest(parameterized.TestCase):

  @parameterized.product(
      platform=("cuda", "tpu"),
      mechanism=(dict(name="local", dilation=1, causal=False),
                 dict(name="local", dilation=(1, 1, 1, 1, 2, 2, 4, 4), causal=True),
                 dict(name="longformer", dilation=1)))
  def test_forward_and_backward_lower(self, platform, mechanism):
    core = attention.build({**mechanism, "window": WINDOW, "block_size": 128,
                            "implementation": "pallas"}, HEADS)
    qkv = [jax.ShapeDtypeStruct((1, LENGTH, HEADS, HEAD_DIM), jnp.bfloat16)] * 3
    padding_mask = jax.ShapeDtypeStruct((1, LENGTH), jnp.bool_)
    module = _export(platform, functools.partial(_forward_and_backward, core), *qkv,
                     padding_mask)
    # A forward, a dQ and a dK/dV kernel per dilation group, and no interpret-mode loop.
    groups = 1 if isinstance(mechanism["dilation"], int) else len(set(mechanism["dilation"]))
    self.assertEqual(module.count(KERNEL_CALLS[platform]), 3 * groups)
    self.assertNotIn(f"{LENGTH}x{LENGTH}", module)  # no L x L array anywhere

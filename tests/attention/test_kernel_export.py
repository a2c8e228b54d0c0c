"""The Pallas kernels lower for CUDA and TPU from this CPU-only machine (`jax.export`).

Exporting traces and lowers the program for the named platform, kernels included (Triton
IR for CUDA, Mosaic for TPU), without a device: every lowering error a GPU or TPU user
would hit at their first call shows here. The shapes are those of a real run.
"""

import functools

import jax
import jax.numpy as jnp
from absl.testing import parameterized
from jax import export

from lra import attention

LENGTH, HEADS, HEAD_DIM, WINDOW = 8192, 8, 64, 256
# The kernels' custom calls: XLA keeps no compatibility promise for them, so exporting
# (for serialisation) must name them; lowering is what is tested here.
KERNEL_CALLS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def export_module(platform, function, *shapes):
  exported = export.export(
      jax.jit(function), platforms=(platform,),
      disabled_checks=[export.DisabledSafetyCheck.custom_call(KERNEL_CALLS[platform])])(*shapes)
  return exported.mlir_module()


def _shapes(length, heads=HEADS, kv_heads=HEADS):
  return (jax.ShapeDtypeStruct((1, length, heads, HEAD_DIM), jnp.bfloat16),
          *[jax.ShapeDtypeStruct((1, length, kv_heads, HEAD_DIM), jnp.bfloat16)] * 2)


def _forward_and_backward(core, q, k, v, padding_mask, segment_ids, global_mask, rng):
  """Every input but the projections traced: masks, segment ids and the dropout key."""

  def loss(q, k, v):
    kwargs = dict(global_mask=global_mask) if core.uses_global else {}
    out = core(q, k, v, padding_mask=padding_mask, segment_ids=segment_ids, dropout_rate=0.1,
               dropout_rng=rng, **kwargs)
    return jnp.sum(out.astype(jnp.float32) ** 2)
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


class KernelExportTest(parameterized.TestCase):

  @parameterized.product(
      platform=("cuda", "tpu"),
      mechanism=(dict(name="local", dilation=1, causal=False),
                 dict(name="local", dilation=(1, 1, 1, 1, 2, 2, 4, 4), causal=True),
                 dict(name="longformer", dilation=1, max_global=16)))
  def test_forward_and_backward_lower(self, platform, mechanism):
    """Grouped heads (2 k/v heads), segment ids, padding, dropout and, for Longformer,
    traced global tokens under `max_global`: no host callback in the program."""
    core = attention.build({**mechanism, "window": WINDOW, "block_size": 128,
                            "implementation": "pallas"}, HEADS)
    masks = [jax.ShapeDtypeStruct((1, LENGTH), dtype) for dtype in (jnp.bool_, jnp.int32,
                                                                       jnp.bool_)]
    module = export_module(platform, functools.partial(_forward_and_backward, core),
                           *_shapes(LENGTH, kv_heads=2), *masks, jax.random.key(0))
    # A forward, a dQ and a dK/dV kernel per dilation group, and no interpret-mode loop.
    groups = 1 if isinstance(mechanism["dilation"], int) else len(set(mechanism["dilation"]))
    self.assertEqual(module.count(KERNEL_CALLS[platform]), 3 * groups)
    self.assertNotIn(f"{LENGTH}x{LENGTH}", module)  # no L x L array anywhere
    self.assertNotIn("callback", module)

  @parameterized.parameters(False, True)
  def test_no_layout_copies_around_the_gpu_kernels(self, causal):
    """The GPU kernels read `[batch, length, heads, head_dim]` as it is: the exported CUDA
    program of a forward and backward pass has no transpose and no pad outside them."""
    length = 16384
    core = attention.build({"name": "local", "window": WINDOW, "causal": causal,
                            "implementation": "pallas"}, HEADS)
    loss = lambda q, k, v: jnp.sum(core(q, k, v).astype(jnp.float32) ** 2)
    module = export_module("cuda", jax.value_and_grad(loss, argnums=(0, 1, 2)),
                           *_shapes(length))
    self.assertEqual(module.count(KERNEL_CALLS["cuda"]), 3)
    for op in ("stablehlo.transpose", "stablehlo.pad"):
      self.assertNotIn(op, module)

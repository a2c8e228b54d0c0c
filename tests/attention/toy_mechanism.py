"""A toy mechanism added with one registry entry, for tests that every consumer sees it.

`blocked`: each query sees the keys of its own block of `block` positions (dense, for tests
only), with a preset `blocked_pairs` (blocks of 2). Run as a script, it registers the toy
and then runs an entry point: `python -m tests.attention.toy_mechanism plot_patterns ARGS`.
"""

import importlib
import sys

import jax.numpy as jnp

from lra import attention
from lra.attention import reference


def blocked_pattern(length, options, *, num_heads, global_mask=None, padding_mask=None):
  """bool `[batch, heads, L, L]`: query i sees key j iff they share a block."""
  del global_mask  # no global tokens
  block = jnp.arange(length) // options["block"]
  mask = jnp.broadcast_to(block[:, None] == block[None, :], (1, num_heads, length, length))
  if padding_mask is not None:
    real = jnp.asarray(padding_mask, bool)
    mask = mask & real[:, None, None, :] & real[:, None, :, None]
  return mask


def blocked_attention(q, k, v, *, block, padding_mask=None, dropout_rate=0., dropout_rng=None):
  mask = blocked_pattern(q.shape[1], {"block": block}, num_heads=q.shape[2],
                         padding_mask=padding_mask)
  return reference.dense_attention(q, k, v, mask=mask, dropout_rate=dropout_rate,
                                   dropout_rng=dropout_rng)


# The one registry entry.
BLOCKED = attention.Mechanism(
    "blocked", blocked_attention, {"block": attention.Option(4, int, "positions per block")},
    pattern=blocked_pattern, presets={"blocked_pairs": lambda num_heads: {"block": 2}})


if __name__ == "__main__":
  from experiments import cli  # pylint: disable=g-import-not-at-top
  attention.register(BLOCKED)
  module = importlib.import_module(f"experiments.{sys.argv[1]}")
  sys.argv = [module.__file__, *sys.argv[2:]]
  cli.run(module.main)

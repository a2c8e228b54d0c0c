"""Attention mechanisms behind one contract, and the registry that picks them by name.

Arrays are `[batch, length, heads, head_dim]`. Every mechanism is a pure, jit-able,
differentiable function; `reference` holds the dense oracle they are all tested against.

    from lra import attention
    out = attention.sliding_window_attention(q, k, v, window=128, dilation=(1, 1, 2, 2))
    fn = attention.build({"name": "longformer", "window": 64}, num_heads=4)
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lra import errors
from lra.attention import common
from lra.attention.longformer import longformer_attention
from lra.attention.reference import dense_attention
from lra.attention.reference import longformer_reference
from lra.attention.reference import pattern_mask
from lra.attention.sliding import sliding_window_attention

__all__ = [
    "MECHANISMS", "Mechanism", "build", "dense_attention", "full_attention",
    "longformer_attention", "longformer_reference", "pattern_mask",
    "sliding_window_attention",
]


def full_attention(q, k, v, *, causal: bool = False, padding_mask=None,
                   dropout_rate: float = 0., dropout_rng=None):
  """Ordinary quadratic attention (every key, or every earlier key when causal).

  Runs XLA's `jax.nn.dot_product_attention` (float32 logits and softmax, no boolean
  `[L, L]` pattern), so that comparisons against it are fair; with attention dropout,
  which that function lacks, the masked dense path of `reference.py`.
  """
  if dropout_rate:
    mask = pattern_mask(q.shape[1], causal=causal, padding_mask=padding_mask)
    return dense_attention(q, k, v, mask=mask, dropout_rate=dropout_rate,
                           dropout_rng=dropout_rng)
  if padding_mask is None:
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
  real = padding_mask.astype(bool)
  out = jax.nn.dot_product_attention(q, k, v, mask=real[:, None, None, :], is_causal=causal,
                                     implementation="xla")
  # Padded queries: exactly 0 (a row with no real key would otherwise average everything).
  return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class Mechanism:
  """A registered attention mechanism.

  Attributes:
    function: the attention function of the contract.
    defaults: the options a config may set, with their defaults (None = required).
    uses_global: takes `global_mask` and separate global projections.
  """

  function: Callable[..., Any]
  defaults: Mapping[str, Any]
  uses_global: bool = False


MECHANISMS: dict[str, Mechanism] = {
    "full": Mechanism(full_attention, {"causal": False}),
    "local": Mechanism(sliding_window_attention,
                       {"window": None, "dilation": 1, "causal": False, "block_size": None,
                        "implementation": None}),
    "longformer": Mechanism(
        longformer_attention,
        {"window": None, "dilation": 1, "block_size": None, "max_global": None,
         "implementation": None},
        uses_global=True),
}


@dataclasses.dataclass(frozen=True)
class BoundAttention:
  """A mechanism with its options checked and bound; call it like the mechanism."""

  name: str
  mechanism: Mechanism
  options: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs: hashable, so that a
                                        # module holding it can be a static jit argument

  @property
  def uses_global(self) -> bool:
    return self.mechanism.uses_global

  def __call__(self, q, k, v, *, padding_mask=None, global_mask=None, global_qkv=None,
               dropout_rate: float = 0., dropout_rng=None):
    kwargs = dict(dict(self.options), padding_mask=padding_mask, dropout_rate=dropout_rate,
                  dropout_rng=dropout_rng)
    if self.uses_global:
      if global_mask is None:
        # numpy, not jnp: a constant stays concrete under jit, so no max_global is needed.
        global_mask = np.zeros(q.shape[:2], bool)
      kwargs["global_mask"] = global_mask
      if global_qkv is not None:
        kwargs.update(zip(("global_q", "global_k", "global_v"), global_qkv))
    return self.mechanism.function(q, k, v, **kwargs)


def build(config: Mapping[str, Any], num_heads: int) -> BoundAttention:
  """Checks an attention config (`name` plus that mechanism's options) and binds it.

  Raises `lra.errors.ConfigError` naming the problem: an unknown name or option, a
  missing window, window <= 0, a dilation tuple of the wrong length.
  """
  config = dict(config)
  name = config.pop("name", None)
  if name not in MECHANISMS:
    raise errors.ConfigError(
        f"unknown attention {name!r}; choose one of: {', '.join(sorted(MECHANISMS))}")
  mechanism = MECHANISMS[name]
  unknown = sorted(set(config) - set(mechanism.defaults))
  if unknown:
    raise errors.ConfigError(
        f"attention {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
        f"{', '.join(sorted(mechanism.defaults))}")
  options = {**mechanism.defaults, **{k: v for k, v in config.items() if v is not None}}
  if "window" in options:
    if options["window"] is None:
      raise errors.ConfigError(f"attention {name!r} needs a window (one-sided, > 0)")
    common.check_window(options["window"])
  if "dilation" in options:
    dilation = options["dilation"]
    if isinstance(dilation, (list, tuple)):
      dilation = tuple(dilation)
    common.dilation_per_head(dilation, num_heads)
    options["dilation"] = dilation
  return BoundAttention(name, mechanism, tuple(sorted(options.items())))

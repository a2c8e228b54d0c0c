"""Argument checks and numerics shared by the attention mechanisms."""

from typing import Sequence

import jax
import jax.numpy as jnp

from lra import errors

# Log-sum-exp of a row that sees no key: finite, so merging two partial softmaxes of such
# a row gives weights of exactly 0 and never NaN.
EMPTY_ROW_LSE = -1e30


def check_window(window) -> None:
  if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
    raise errors.ConfigError(
        f"window must be a positive int (the one-sided window w: each query sees w keys on "
        f"each side), got {window!r}")


def dilation_per_head(dilation: int | Sequence[int], num_heads: int) -> tuple[int, ...]:
  """Returns one dilation per head, checking an int or a per-head tuple."""
  if isinstance(dilation, (list, tuple)):
    if len(dilation) != num_heads:
      raise errors.ConfigError(
          f"dilation has {len(dilation)} entries but there are {num_heads} heads: give one "
          f"int for all heads or exactly one per head")
    values = tuple(dilation)
  else:
    values = (dilation,) * num_heads
  for d in values:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
      raise errors.ConfigError(f"dilation must be an int >= 1 (1 means none), got {dilation!r}")
  return values


def causal_global_error() -> errors.ConfigError:
  return errors.ConfigError(
      "causal attention cannot have global tokens (a global key would let every query see "
      "the future); drop global_mask or use causal=False")


# `implementation=` of the windowed mechanisms; None picks one for the backend.
IMPLEMENTATIONS = ("xla", "pallas")


def resolve_implementation(implementation: str | None, *, dropout_rate: float) -> str:
  """The implementation a windowed call runs: the one asked for, or for None the Pallas
  kernels on GPU and TPU (XLA on CPU, where Pallas only interprets, and under attention
  dropout, which the kernels do not implement)."""
  if implementation is None:
    accelerated = jax.default_backend() in ("gpu", "tpu")
    return "pallas" if accelerated and not dropout_rate else "xla"
  if implementation not in IMPLEMENTATIONS:
    raise errors.ConfigError(
        f"unknown implementation {implementation!r}; choose one of: "
        f"{', '.join(IMPLEMENTATIONS)}, or None for the best on this backend")
  if implementation == "pallas" and dropout_rate:
    raise errors.ConfigError(
        "implementation='pallas' has no attention dropout; set the attention dropout rate "
        "to 0, or use implementation='xla' (None picks it when dropout is on)")
  return implementation


def check_dropout(rate: float, rng) -> None:
  if not 0.0 <= rate < 1.0:
    raise errors.ConfigError(f"dropout_rate must be in [0, 1), got {rate}")
  if rate > 0.0 and rng is None:
    raise errors.ConfigError("dropout_rate > 0 needs a dropout_rng")


def masked_softmax_with_lse(logits, mask):
  """Float32 softmax over the last axis restricted to `mask`, and each row's log-sum-exp.

  Rows with no allowed entry get probabilities 0 and lse `EMPTY_ROW_LSE`. Masked entries
  are replaced by the row maximum before `exp`, never by -inf, so that neither the values
  nor the gradients can be NaN.
  """
  row_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  unnormalized = jnp.where(mask, jnp.exp(jnp.where(mask, logits, row_max) - row_max), 0.0)
  total = jnp.sum(unnormalized, axis=-1, keepdims=True)
  nonempty = total > 0
  probs = unnormalized / jnp.where(nonempty, total, 1.0)
  lse = jnp.where(nonempty, row_max + jnp.log(jnp.where(nonempty, total, 1.0)), EMPTY_ROW_LSE)
  return probs, lse[..., 0]


def masked_softmax(logits, mask):
  """`masked_softmax_with_lse` without the log-sum-exp."""
  return masked_softmax_with_lse(logits, mask)[0]


def dropout(probs, rate: float, rng):
  """Inverted dropout on attention probabilities (identity when `rate == 0`)."""
  if rate == 0.0:
    return probs
  keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
  return jnp.where(keep, probs / (1.0 - rate), 0.0)

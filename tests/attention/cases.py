"""Random attention inputs and the comparison against the dense oracle."""

import jax
import jax.numpy as jnp
import numpy as np

F32_TOL = dict(atol=2e-5, rtol=2e-5)
BF16_TOL = dict(atol=3e-2, rtol=3e-2)


def random_qkv(seed, batch, length, heads, head_dim, dtype=jnp.float32, count=3):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype)
          for _ in range(count)]


def padding(seed, batch, length, *, empty_row=False):
  """Right padding of random lengths; optionally the last row is all padding."""
  rng = np.random.default_rng(seed + 1000)
  lengths = rng.integers(1, length + 1, size=batch)
  if empty_row:
    lengths[-1] = 0
  return jnp.asarray(np.arange(length)[None, :] < lengths[:, None])


def global_tokens(kind, seed, batch, length):
  """Global masks: none, first token, scattered, all, or a different count per row."""
  mask = np.zeros((batch, length), bool)
  rng = np.random.default_rng(seed + 2000)
  if kind == "first":
    mask[:, 0] = True
  elif kind == "scattered":
    mask |= rng.random((batch, length)) < 0.2
  elif kind == "all":
    mask[:] = True
  elif kind == "per_row":
    for row in range(batch):
      mask[row, rng.choice(length, size=min(row + 1, length), replace=False)] = True
  elif kind != "none":
    raise ValueError(kind)
  return jnp.asarray(mask)


def grads(fn, inputs, cotangent_seed=99):
  """Output and gradients of <fn(*inputs), random cotangent> w.r.t. every input.

  One forward pass (through `jax.vjp`), and traceable: the cotangent depends only on the
  static output shape, so the whole computation can be wrapped in one `jax.jit`.
  """
  out, pullback = jax.vjp(fn, *inputs)
  cotangent = np.random.default_rng(cotangent_seed).normal(size=out.shape)
  return out, pullback(jnp.asarray(cotangent, jnp.float32).astype(out.dtype))


def all_intermediate_sizes(jaxpr):
  """Element counts of every variable in a closed jaxpr, sub-jaxprs included."""
  sizes = []

  def visit(jx):
    for eqn in jx.eqns:
      for var in list(eqn.outvars) + list(eqn.invars):
        shape = getattr(getattr(var, "aval", None), "shape", None)
        if shape is not None:
          sizes.append((int(np.prod(shape)), shape, eqn.primitive.name))
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else [param]:
          inner = getattr(sub, "jaxpr", None)
          if inner is not None:
            visit(inner if hasattr(inner, "eqns") else inner.jaxpr)
          elif hasattr(sub, "eqns"):
            visit(sub)

  visit(jaxpr.jaxpr)
  return sizes

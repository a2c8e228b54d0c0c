"""Random attention inputs and the comparison against the dense oracle."""

import jax
import jax.numpy as jnp
import numpy as np

from lra.attention import common
from lra.attention import reference

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


def segments(seed, batch, length):
  """Packed documents: int32 segment ids `[batch, length]` of uneven lengths, each row with
  a one-token document, the rows cut differently."""
  rng = np.random.default_rng(seed + 3000)
  ids = np.zeros((batch, length), np.int32)
  for row in range(batch):
    cuts = set(rng.choice(np.arange(1, length), size=min(3, length - 1), replace=False))
    single = int(rng.integers(0, length))
    cuts |= {single, single + 1}
    boundaries = np.zeros(length + 1, bool)
    boundaries[sorted(c for c in cuts if 0 < c < length)] = True
    ids[row] = np.cumsum(boundaries[:length])
  return jnp.asarray(ids)


def random_kv(seed, batch, length, kv_heads, head_dim, dtype=jnp.float32, count=2):
  """k and v (and further k/v-shaped arrays) with `kv_heads` heads."""
  return random_qkv(seed + 500, batch, length, kv_heads, head_dim, dtype, count)


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


def dense_with_dropout(q, k, v, *, window, causal, padding_mask, rate, seed):
  """The dense oracle of undilated window attention with the kernels' hashed dropout mask:
  weight (batch b, query head h, query i, key j) is kept iff
  `common.dropout_keep(query_hash(row_hash(seed, b * H + h), i), j, rate)`."""
  batch, length, heads, _ = q.shape
  mask = reference.pattern_mask(length, window=window, causal=causal, num_heads=heads,
                                padding_mask=padding_mask)
  group = heads // k.shape[2]
  k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  probs = common.masked_softmax(logits, jnp.broadcast_to(mask, logits.shape))
  row = (jnp.arange(batch)[:, None] * heads + jnp.arange(heads)[None, :])[..., None, None]
  query_hash = common.dropout_query_hash(common.dropout_row_hash(seed, row),
                                         jnp.arange(length).reshape(1, 1, -1, 1))
  keep = common.dropout_keep(query_hash, jnp.arange(length).reshape(1, 1, 1, -1), rate)
  probs = jnp.where(keep, probs / (1 - rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v).astype(q.dtype)


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

"""Sequence-parallel attention on simulated CPU devices: outputs and gradients equal the
unsharded call and the dense oracle; only halos and global slots cross devices."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from experiments.bench import harness
from lra import attention
from lra import errors
from lra.attention import reference
from lra.attention import sequence_parallel
from lra.attention import sliding
from tests.attention import cases

AXIS = "seq"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sequence_mesh(shards, axis=AXIS):
  return jax.make_mesh((shards,), (axis,), devices=jax.devices()[:shards],
                       axis_types=(jax.sharding.AxisType.Auto,))


def right_padding(length, *, empty_row):
  """bool `[3 or 2, length]`: a full row (whose windows cross every shard boundary), a row
  two thirds real, and optionally a row of padding alone."""
  lengths = [length, 2 * length // 3 + 1] + ([0] if empty_row else [])
  return jnp.asarray(np.arange(length)[None, :] < np.array(lengths)[:, None])


def outputs_and_grads(fn, inputs, mesh=None):
  """`cases.grads` of `fn`, jitted, under `mesh` when given."""
  step = jax.jit(lambda *xs: cases.grads(fn, xs))
  if mesh is None:
    return step(*inputs)
  with jax.set_mesh(mesh):
    return step(*inputs)


def assert_all_close(actual, expected, tol=cases.F32_TOL):
  out, grads = actual
  want_out, want_grads = expected
  np.testing.assert_allclose(out, want_out, **tol)
  assert len(grads) == len(want_grads)
  for grad, want in zip(grads, want_grads):
    np.testing.assert_allclose(grad, want, **tol)


# (shards, length, window, dilation, causal, padding, block_size, kv_heads, packed); 4 query
# heads of 8; packed: uneven segments whose ids travel with the halos.
SLIDING_CASES = [
    (2, 64, 4, 1, False, True, 8, 4, False),
    (4, 50, 3, (1, 1, 2, 2), False, True, 8, 2, True),  # 50 is no multiple of 4, nor of 32
    (4, 64, 4, (1, 3, 1, 3), True, False, None, 4, False),  # dilation per head, not grouped
    (2, 37, 5, 2, True, True, 4, 1, True),
    (4, 32, 4, 2, False, True, 4, 4, False),  # the halo is exactly one shard
    (2, 37, 30, 1, False, True, None, 4, False),  # a window wider than a shard
    (4, 32, 3, 3, False, True, 4, 4, True),  # a halo of 9 over shards of 8: two hops
    (4, 30, 10, 1, True, False, None, 4, False),  # causal, two hops, 30 no multiple of 4
    (4, 26, 9, (1, 1, 2, 2), False, True, None, 4, False),  # shards of 7, halo 18: 3 hops
    (1, 20, 3, 1, True, False, None, 4, False),
]


def _inputs(seed, batch, length, kv_heads, count=3):
  """q (and global_q) with 4 heads, k and v (and global_k, global_v) with `kv_heads`."""
  queries = cases.random_qkv(seed, batch, length, 4, 8, count=count // 3)
  keys = cases.random_kv(seed, batch, length, kv_heads, 8, count=2 * (count // 3))
  if count == 3:
    return [queries[0], *keys]
  return [queries[0], *keys[:2], queries[1], *keys[2:]]


@pytest.mark.parametrize("shards,length,window,dilation,causal,padding,block_size,kv_heads,"
                         "packed", SLIDING_CASES)
def test_sliding_equals_unsharded_and_oracle(shards, length, window, dilation, causal,
                                             padding, block_size, kv_heads, packed):
  inputs = _inputs(shards, 3, length, kv_heads)
  padding_mask = right_padding(length, empty_row=True) if padding else None
  segment_ids = cases.segments(shards, 3, length) if packed else None
  options = dict(window=window, dilation=dilation, causal=causal, padding_mask=padding_mask,
                 segment_ids=segment_ids)
  sharded = outputs_and_grads(
      functools.partial(sequence_parallel.sharded_sliding_window_attention,
                        sequence_axis=AXIS, block_size=block_size, **options),
      inputs, sequence_mesh(shards))
  unsharded = outputs_and_grads(
      functools.partial(attention.sliding_window_attention, block_size=block_size, **options),
      inputs)
  mask = reference.pattern_mask(length, window=window, dilation=dilation, causal=causal,
                                num_heads=4, padding_mask=padding_mask,
                                segment_ids=segment_ids)
  oracle = outputs_and_grads(functools.partial(reference.dense_attention, mask=mask), inputs)
  assert_all_close(sharded, unsharded)
  assert_all_close(sharded, oracle)


# (shards, length, window, dilation, global kind, separate global q/k/v, padding, kv_heads,
#  packed).
LONGFORMER_CASES = [
    (2, 64, 4, 1, "first", True, True, 4, False),
    (4, 50, 3, (1, 1, 2, 2), "per_row", False, True, 2, True),
    (4, 64, 2, 2, "scattered", True, False, 1, True),
    (4, 48, 3, 1, "none", False, True, 4, False),
    (4, 24, 5, (1, 1, 2, 2), "scattered", True, True, 4, True),  # halo 10 over shards of 6
]


@pytest.mark.parametrize("shards,length,window,dilation,kind,projections,padding,kv_heads,"
                         "packed", LONGFORMER_CASES)
def test_longformer_equals_unsharded_and_oracle(shards, length, window, dilation, kind,
                                                projections, padding, kv_heads, packed):
  inputs = _inputs(shards, 2, length, kv_heads, count=6 if projections else 3)
  padding_mask = right_padding(length, empty_row=False) if padding else None
  global_mask = cases.global_tokens(kind, length, 2, length)
  options = dict(window=window, dilation=dilation, global_mask=global_mask,
                 padding_mask=padding_mask,
                 segment_ids=cases.segments(length, 2, length) if packed else None)

  def with_globals(fn):
    def call(q, k, v, *global_qkv):
      return fn(q, k, v, **dict(zip(("global_q", "global_k", "global_v"), global_qkv)),
                **options)
    return call

  sharded = outputs_and_grads(
      with_globals(functools.partial(sequence_parallel.sharded_longformer_attention,
                                     sequence_axis=AXIS, block_size=8)),
      inputs, sequence_mesh(shards))
  unsharded = outputs_and_grads(
      with_globals(functools.partial(attention.longformer_attention, block_size=8)), inputs)
  oracle = outputs_and_grads(with_globals(reference.longformer_reference), inputs)
  assert_all_close(sharded, unsharded)
  assert_all_close(sharded, oracle)


def test_each_shard_runs_the_chosen_implementation():
  """`implementation` reaches each shard's core (both functions run it through one path):
  the Pallas kernels, interpreted on CPU, give the XLA core's unsharded result."""
  inputs = cases.random_qkv(0, 1, 64, 2, 8)
  options = dict(window=4, dilation=(1, 2), causal=True, block_size=16)
  sharded = outputs_and_grads(
      functools.partial(sequence_parallel.sharded_sliding_window_attention, sequence_axis=AXIS,
                        implementation="pallas", **options), inputs, sequence_mesh(2))
  unsharded = outputs_and_grads(
      functools.partial(attention.sliding_window_attention, implementation="xla", **options),
      inputs)
  assert_all_close(sharded, unsharded)


def test_longformer_traced_global_mask_needs_and_checks_max_global():
  q, k, v = cases.random_qkv(0, 2, 32, 2, 8)
  global_mask = cases.global_tokens("per_row", 0, 2, 32)  # rows of 1 and 2 global tokens
  call = functools.partial(sequence_parallel.sharded_longformer_attention,
                           sequence_axis=AXIS, window=2)
  with jax.set_mesh(sequence_mesh(2)):
    with pytest.raises(errors.ConfigError, match="pass max_global"):
      jax.jit(lambda g: call(q, k, v, global_mask=g))(global_mask)
    out = jax.jit(lambda g: call(q, k, v, global_mask=g, max_global=2))(global_mask)
  want = attention.longformer_attention(q, k, v, window=2, global_mask=global_mask)
  np.testing.assert_allclose(out, want, **cases.F32_TOL)


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Auto,
                                       jax.sharding.AxisType.Explicit])
def test_batch_stays_sharded_over_a_data_axis(axis_type):
  """On a (data, seq) mesh only the sequence axis is manual: the batch stays split."""
  mesh = jax.make_mesh((2, 2), ("data", AXIS), axis_types=(axis_type,) * 2)
  inputs = [jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", AXIS)))
            for x in cases.random_qkv(0, 4, 64, 2, 8)]
  call = functools.partial(sequence_parallel.sharded_sliding_window_attention,
                           sequence_axis=AXIS, window=4, dilation=(1, 2))
  with jax.set_mesh(mesh):
    sharded = outputs_and_grads(call, inputs)
  assert sharded[0].sharding.spec[0] == "data"
  unsharded = outputs_and_grads(
      functools.partial(attention.sliding_window_attention, window=4, dilation=(1, 2)),
      [np.asarray(x) for x in inputs])
  assert_all_close(sharded, unsharded)


def test_dropout_draws_each_shard_from_its_own_key():
  """Shard p's rows equal the core on its stretch `[halo | own | halo]` with key
  `fold_in(rng, p)` (the halo cut from the whole sequence here, not exchanged)."""
  shards, length, window, rate = 2, 32, 4, 0.3
  q, k, v = cases.random_qkv(0, 1, length, 2, 8)
  rng = jax.random.key(7)
  with jax.set_mesh(sequence_mesh(shards)):
    out = jax.jit(functools.partial(
        sequence_parallel.sharded_sliding_window_attention, sequence_axis=AXIS,
        window=window, dropout_rate=rate, dropout_rng=rng))(q, k, v)
  no_dropout = attention.sliding_window_attention(q, k, v, window=window)
  assert np.all(np.isfinite(out)) and not np.allclose(out, no_dropout)

  shard, halo = length // shards, window
  padded = [jnp.pad(x, ((0, 0), (halo, halo), (0, 0), (0, 0))) for x in (q, k, v)]
  real = jnp.pad(jnp.ones((1, length), bool), ((0, 0), (halo, halo)))
  for p in range(shards):
    stretch = slice(p * shard, (p + 1) * shard + 2 * halo)
    query_mask = real[:, stretch].at[:, :halo].set(False).at[:, -halo:].set(False)
    want, _ = sliding.local_attention_with_lse(
        *(x[:, stretch] for x in padded), window=window, dilation=1, causal=False,
        query_mask=query_mask, key_mask=real[:, stretch], dropout_rate=rate,
        dropout_rng=jax.random.fold_in(rng, p), block_size=None)
    np.testing.assert_allclose(out[:, p * shard:(p + 1) * shard], want[:, halo:-halo],
                               **cases.F32_TOL)


def test_only_halos_and_global_slots_cross_devices():
  """The compiled forward + backward moves halos and global slots, never the sequence."""
  shards, batch, length, heads, head_dim, window = 4, 1, 1024, 2, 8, 4
  dilation, max_global = (1, 2), 3
  halo = window * max(dilation)
  global_mask = np.zeros((batch, length), bool)
  global_mask[:, [0, 300, 700]] = True
  mesh = sequence_mesh(shards)
  spec = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.float32,
                              sharding=NamedSharding(mesh, PartitionSpec(None, AXIS)))
  calls = {
      "local": functools.partial(sequence_parallel.sharded_sliding_window_attention,
                                 sequence_axis=AXIS, window=window, dilation=dilation),
      "causal": functools.partial(sequence_parallel.sharded_sliding_window_attention,
                                  sequence_axis=AXIS, window=window, dilation=dilation,
                                  causal=True),
      "longformer": functools.partial(sequence_parallel.sharded_longformer_attention,
                                      sequence_axis=AXIS, window=window, dilation=dilation,
                                      global_mask=global_mask, max_global=max_global),
  }
  shard_elements = batch * length // shards * heads * head_dim
  received = {}
  for name, call in calls.items():
    with jax.set_mesh(mesh):
      compiled = jax.jit(lambda *xs, call=call: cases.grads(call, xs)).lower(
          spec, spec, spec).compile()
    found = harness.hlo_collectives(compiled.as_text())
    ops = {op for op, _, _ in found}
    assert "collective-permute" in ops, found
    # The largest message: a halo, or every shard's global slots; 1/16 of a shard here.
    largest = batch * max(halo, shards * max_global) * heads * head_dim
    assert max(np.prod(shape) for _, shape, _ in found) <= largest < shard_elements // 16, (
        name, found)
    if name != "longformer":
      assert ops == {"collective-permute"}, found
    received[name] = sum(size for _, _, size in found)
  # Causal windows take the left halo alone.
  assert received["causal"] * 2 == received["local"]


def test_errors_name_the_fix():
  q, k, v = cases.random_qkv(0, 1, 32, 2, 8)
  call = functools.partial(sequence_parallel.sharded_sliding_window_attention, q, k, v,
                           window=4)
  with pytest.raises(errors.ConfigError, match="no mesh is in context"):
    call(sequence_axis=AXIS)
  with jax.set_mesh(sequence_mesh(4)):
    with pytest.raises(errors.ConfigError, match=r"not an axis of the mesh.*\('seq',\)"):
      call(sequence_axis="sequence")
    with pytest.raises(errors.ConfigError, match="name of a mesh axis"):
      call(sequence_axis=1)
    with pytest.raises(errors.ConfigError, match="global_q, global_k, global_v"):
      sequence_parallel.sharded_longformer_attention(
          q, k, v, sequence_axis=AXIS, window=2, global_mask=np.ones((1, 32), bool),
          global_q=q)


EIGHT_DEVICES = textwrap.dedent("""
    import functools
    import jax
    import numpy as np
    from lra import attention
    from lra.attention import sequence_parallel
    from tests.attention import cases

    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("seq",), axis_types=(jax.sharding.AxisType.Auto,))
    inputs = cases.random_qkv(8, 2, 200, 4, 8)
    padding_mask = cases.padding(8, 2, 200)
    global_mask = cases.global_tokens("scattered", 8, 2, 200)
    runs = [
        (attention.sliding_window_attention, sequence_parallel.sharded_sliding_window_attention,
         dict(window=3, dilation=(1, 2, 4, 8), causal=True, padding_mask=padding_mask)),
        (attention.longformer_attention, sequence_parallel.sharded_longformer_attention,
         dict(window=5, dilation=(1, 1, 2, 2), global_mask=global_mask,
              padding_mask=padding_mask)),
    ]
    for fn, sharded_fn, kwargs in runs:
      step = lambda f: jax.jit(lambda *xs: cases.grads(f, xs))
      with jax.set_mesh(mesh):
        got = step(functools.partial(sharded_fn, sequence_axis="seq", **kwargs))(*inputs)
      want = step(functools.partial(fn, **kwargs))(*inputs)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, **cases.F32_TOL)
    print("8 shards: equal")
""")


def test_eight_devices_equal_unsharded():
  """P = 8 in a fresh process (the suite simulates 4 devices)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  completed = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
  assert completed.returncode == 0, completed.stderr
  assert "8 shards: equal" in completed.stdout

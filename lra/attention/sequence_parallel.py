"""Sequence parallelism: one sequence split over devices, exact, by halo exchange.

The length axis of q/k/v is split over one axis of the mesh in context (`jax.set_mesh`):
with P shards of S positions, shard p holds positions `[p*S, (p+1)*S)`. A query's window
reaches at most `window * max(dilation)` positions to each side, so a shard needs only that
many keys (a halo) from each neighbour, never the rest of the sequence. Under `jax.shard_map`
each shard receives its halos of k, v, the key mask and the segment ids through
`jax.lax.ppermute` (only the left one when causal), runs the single-device core
`sliding.local_attention_with_lse` on `[left halo | own | right halo]` and keeps its own
rows. Gradients flow back through the
same permutes (a ppermute's transpose is the reverse ppermute), so they are exact too.

Why the stretch is exact: the core's pattern depends only on key-minus-query offsets
(`(j - i) % d == 0`, `|j - i| <= w*d`), which are the same in shard-local and global
positions, so the core is exact for every row whose whole window lies in the stretch, which
the halos guarantee for the own rows. The residue fold of dilation composes with this: the
core folds the residues of the stretch, each class of which is a class of the sequence. One
halo of the largest reach serves every head: a head of smaller dilation has its extra keys
outside its window, masked by the core's band. Halo keys that lie outside the sequence (left
of shard 0, right of the last shard) arrive as zeros with a False mask: a ppermute leaves
the shards that nobody sends to with zeros.

Global tokens (Longformer): each shard puts its own global tokens into `max_global` slots
and all-gathers the slots (keys, values, global queries, validity, segment ids): P *
max_global slots, never the sequence. Every query merges its window with the gathered global
keys through the two log-sum-exps, as `longformer.attend` does; each shard attends the
gathered global queries to its own keys, and the partial softmaxes of the shards are merged
exactly by their log-sum-exps (a max and two sums over the axis, scattered so that each
shard receives only its own slots).

Bytes exchanged per shard and step are independent of the length: two halos of k and v
(`2 * window * max(d) * H * D` values each way, half when causal), their masks, and the
`P * max_global` global slots.

Lengths: a length that is not a multiple of P is padded at the end to one (padded positions
are masked keys and their rows are dropped); the core pads each shard's stretch to a multiple
of its block size itself, so no multiple of P * block is needed. A halo wider than a shard
(`window * max(dilation) > ceil(length / P)`, as for the short batches of a trainer) is
gathered in several hops: shard p receives whole shards from p - 1, p - 2, ... and the part
within reach from the farthest, one `ppermute` per hop and side. The bytes are those of the
halo, whatever the number of hops; a halo is never longer than the rest of the sequence.

Dropout is supported: shard p draws its masks from `fold_in(dropout_rng, p)`, so they differ
from the unsharded call's (same rate, independent masks); without dropout the result equals
the unsharded call.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from lra import errors
from lra.attention import common
from lra.attention import sliding


@dataclasses.dataclass(frozen=True)
class SequenceSplit:
  """How a sequence is cut over a mesh axis.

  Attributes:
    axis: the mesh axis the length is split over.
    shards: P, the size of that axis.
    length: the caller's length L.
    halo: keys taken from each neighbour, `window * max(dilation)`.
    causal: only the left halo is needed.
  """

  axis: str
  shards: int
  length: int
  halo: int
  causal: bool

  @property
  def shard_length(self) -> int:
    """S, the positions each shard owns (the padded length over P)."""
    return -(-self.length // self.shards)

  @property
  def padded_length(self) -> int:
    return self.shard_length * self.shards


def split_sequence(sequence_axis: str, length: int, halo: int, causal: bool) -> SequenceSplit:
  """Checks the mesh in context against the split; raises `ConfigError` naming the fix."""
  if not isinstance(sequence_axis, str):
    raise errors.ConfigError(
        f"sequence_axis must be the name of a mesh axis (a str), got {sequence_axis!r}")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    raise errors.ConfigError(
        f"sequence_axis={sequence_axis!r} splits the length over a mesh axis, but no mesh is "
        f"in context: call it under `with jax.set_mesh(mesh):`, e.g. mesh = "
        f"jax.make_mesh((jax.device_count(),), ({sequence_axis!r},))")
  if sequence_axis not in mesh.axis_names:
    raise errors.ConfigError(
        f"sequence_axis={sequence_axis!r} is not an axis of the mesh in context, whose axes "
        f"are {tuple(mesh.axis_names)}")
  shards = mesh.shape[sequence_axis]
  # Keys farther than the other shards hold lie outside the sequence.
  halo = min(halo, (shards - 1) * -(-length // shards))
  return SequenceSplit(sequence_axis, shards, length, halo, causal)


def _with_halos(x_BxSx, split: SequenceSplit):
  """A shard's `[B, S, ...]` -> `[left halo | own | right halo]` (no right halo if causal).

  A halo wider than a shard comes in hops: whole shards from the nearer neighbours, the
  part within reach from the farthest one.
  """
  halo, shard, shards = split.halo, split.shard_length, split.shards
  left, right = [], []
  for hop in range(1, -(-halo // shard) + 1):
    width = min(shard, halo - (hop - 1) * shard)
    pairs = [(p, p + hop) for p in range(shards - hop)]
    left.insert(0, jax.lax.ppermute(x_BxSx[:, shard - width:], split.axis, pairs))
    if not split.causal:
      reversed_pairs = [(later, earlier) for earlier, later in pairs]
      right.append(jax.lax.ppermute(x_BxSx[:, :width], split.axis, reversed_pairs))
  return jnp.concatenate(left + [x_BxSx] + right, axis=1)


def _shard_rng(rng, split: SequenceSplit):
  return None if rng is None else jax.random.fold_in(rng, jax.lax.axis_index(split.axis))


def _local_part(split: SequenceSplit, q, k, v, query_mask, key_mask, segment_ids, *, rng,
                **core_options):
  """Inside `shard_map`: the core on a shard's stretch; returns its own rows' output
  `[B, S, H, D]` and log-sum-exp `[B, S, H]`. Halo rows are computed masked and dropped."""
  h = split.halo
  widths = ((0, 0), (h, 0 if split.causal else h))
  stretch_q = jnp.pad(q, widths + ((0, 0),) * (q.ndim - 2))
  stretch_query_mask = jnp.pad(query_mask, widths, constant_values=False)
  out, lse = sliding.local_attention_with_lse(
      stretch_q, _with_halos(k, split), _with_halos(v, split), causal=split.causal,
      query_mask=stretch_query_mask, key_mask=_with_halos(key_mask, split),
      segment_ids=None if segment_ids is None else _with_halos(segment_ids, split),
      dropout_rng=rng, **core_options)
  own = slice(h, h + split.shard_length)
  return out[:, own], lse[:, own]


def _sharded(split: SequenceSplit, shard_fn, arrays, rng):
  """Runs `shard_fn(*arrays, rng)` under `shard_map` over `split.axis`.

  Arrays are `[B, L, ...]` (padded to the split here) or None, and split on their length;
  `rng` is replicated. Mesh axes other than `split.axis` stay automatic, so a batch sharded
  over a data axis stays sharded. Returns the output `[B, L, H, D]`.
  """
  present = [i for i, x in enumerate(arrays) if x is not None]
  inputs = [common.pad_axis1(arrays[i], split.padded_length,
                             False if arrays[i].dtype == bool else 0) for i in present]
  spec = PartitionSpec(None, split.axis)

  def fn(*xs):
    full = [None] * len(arrays)
    for i, x in zip(present, xs):
      full[i] = x
    return shard_fn(*full, xs[len(present)] if rng is not None else None)

  in_specs = (spec,) * len(inputs)
  if rng is not None:
    in_specs += (PartitionSpec(),)
    inputs.append(rng)
  # check_vma=False: the core starts its loops from fresh (shard-invariant) zeros, which
  # varying-value checking rejects. The collectives used here (ppermute, all_gather,
  # psum_scatter, and pmax on a stop_gradient) transpose exactly without it.
  run = jax.shard_map(fn, in_specs=in_specs, out_specs=spec, axis_names={split.axis},
                      check_vma=False)
  mesh = jax.sharding.get_abstract_mesh()
  explicit = tuple(name for name, kind in zip(mesh.axis_names, mesh.axis_types)
                   if kind == jax.sharding.AxisType.Explicit)
  if explicit:
    # The core is written for automatic axes (its accumulators carry no sharding): explicit
    # axes are made automatic inside, and the output takes the sharding of q.
    run = jax.sharding.auto_axes(run, axes=explicit,
                                 out_sharding=jax.typeof(inputs[0]).sharding.spec)
  return run(*inputs)[:, :split.length]


def _split_of(q, sequence_axis, window, dilation, causal) -> SequenceSplit:
  common.check_window(window)
  reach = window * max(common.dilation_per_head(dilation, q.shape[2]))
  return split_sequence(sequence_axis, q.shape[1], reach, causal)


def sharded_sliding_window_attention(q, k, v, *, sequence_axis: str, window: int,
                                     dilation=1, causal: bool = False, padding_mask=None,
                                     segment_ids=None, dropout_rate: float = 0.,
                                     dropout_rng=None, block_size: int | None = None,
                                     implementation: str | None = None):
  """Sliding-window attention with the length split over `sequence_axis`.

  Called under a mesh in context (`with jax.set_mesh(mesh):`) that has `sequence_axis`;
  arguments and result are as in `lra.attention.sliding_window_attention` (global arrays
  `[batch, length, heads, head_dim]`, any length), and so is the result, up to float
  rounding, except that dropout masks are drawn per shard. `implementation` picks the core
  each shard runs on its stretch.
  """
  common.check_qkv(q, k, v)
  common.check_dropout(dropout_rate, dropout_rng)
  segment_ids = common.check_segment_ids(segment_ids, q.shape[:2])
  split = _split_of(q, sequence_axis, window, dilation, causal)
  options = dict(window=window, dilation=dilation, dropout_rate=dropout_rate,
                 block_size=block_size, implementation=implementation)

  def shard_fn(q, k, v, real, segment_ids, rng):
    out, _ = _local_part(split, q, k, v, real, real, segment_ids,
                         rng=_shard_rng(rng, split), **options)
    return out

  return _sharded(split, shard_fn,
                  [q, k, v, common.real_tokens(q, padding_mask), segment_ids], dropout_rng)


def _merge_over_shards(out_BxGxHxD, lse_BxGxH, split: SequenceSplit):
  """Softmax over the keys of every shard from each shard's part; scattered over the slots.

  Every shard holds a partial output and log-sum-exp for all `P * G` gathered global rows;
  each receives the exact merged output of its own `G` rows `[B, G, H, D]`.
  """
  top = jax.lax.pmax(jax.lax.stop_gradient(lse_BxGxH), split.axis)
  weight = jnp.exp(lse_BxGxH - top)
  scatter = functools.partial(jax.lax.psum_scatter, axis_name=split.axis, scatter_dimension=1,
                              tiled=True)
  return common.weigh_rows(1.0 / scatter(weight),
                           scatter(common.weigh_rows(weight, out_BxGxHxD)))


def sharded_longformer_attention(q, k, v, *, sequence_axis: str, window: int, global_mask,
                                 dilation=1, global_q=None, global_k=None, global_v=None,
                                 padding_mask=None, segment_ids=None, dropout_rate: float = 0.,
                                 dropout_rng=None, block_size: int | None = None,
                                 max_global: int | None = None,
                                 implementation: str | None = None):
  """Longformer attention with the length split over `sequence_axis`.

  Arguments and result as in `lra.attention.longformer_attention`, under a mesh in context
  that has `sequence_axis` (see `sharded_sliding_window_attention`). Each shard sends its
  neighbours a halo and all shards the `max_global` slots of their own global tokens.
  """
  common.check_qkv(q, k, v)
  common.check_dropout(dropout_rate, dropout_rng)
  global_qkv = common.check_global_inputs(q, k, v, global_mask, global_q, global_k, global_v)
  segment_ids = common.check_segment_ids(segment_ids, q.shape[:2])
  split = _split_of(q, sequence_axis, window, dilation, causal=False)
  real = common.real_tokens(q, padding_mask)
  is_global = jnp.asarray(global_mask, bool) & real
  budget, is_global = common.global_budget(is_global, global_mask, max_global)
  options = dict(window=window, dilation=dilation, dropout_rate=dropout_rate,
                 block_size=block_size, implementation=implementation)
  gather = functools.partial(jax.lax.all_gather, axis_name=split.axis, axis=1, tiled=True)

  def shard_fn(q, k, v, global_q, global_k, global_v, real, is_global, segment_ids, rng):
    rngs = [None] * 3 if rng is None else list(jax.random.split(_shard_rng(rng, split), 3))
    out, lse = _local_part(split, q, k, v, real, real & jnp.logical_not(is_global),
                           segment_ids, rng=rngs[0], **options)
    if budget == 0:
      return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)
    # This shard's global tokens in `budget` slots; every shard's slots, gathered.
    positions, valid = common.global_positions(is_global, budget)
    own = [common.gather_rows(x, positions) for x in (k, v, global_q)]
    slot_segments = None
    if segment_ids is not None:
      slot_segments = gather(common.gather_rows(segment_ids, positions))
    slots = common.GlobalSlots(gather(valid), gather(own[0]),
                               gather(own[1]), slot_segments)  # [B, P * budget, ...]
    to_globals, lse_globals = common.attend_dense(
        q, slots.keys, slots.values, slots.key_mask(segment_ids), dropout_rate, rngs[1])
    out = common.merge_softmaxes(out, lse, to_globals, lse_globals)

    partial_rows, partial_lse = common.attend_dense(
        gather(own[2]), global_k, global_v, slots.row_mask(real, segment_ids),
        dropout_rate, rngs[2])
    global_rows = _merge_over_shards(partial_rows, partial_lse, split)  # [B, budget, H, D]
    out = common.scatter_rows(out, global_rows, positions, valid)
    return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)

  return _sharded(split, shard_fn, [q, k, v, *global_qkv, real, is_global, segment_ids],
                  dropout_rng)

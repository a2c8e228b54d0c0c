"""Where a run computes: the `(data, sequence)` device mesh of `config.mesh`, and batches on it.

The batch splits over `data` (examples) and, on a mesh whose `sequence` axis has several
devices, the length of every sequence splits over `sequence`: the parameters are replicated,
XLA propagates the batch's sharding through the position-wise layers, and the attention
exchanges halos between neighbouring shards (`lra.attention.sequence_parallel`).

With several processes (`lra.distributed`) the mesh spans the devices of all of them, a
process's devices forming whole rows of it (the `sequence` axis stays inside a host, where
the halos are cheap); each process makes the batch rows of its devices
(`process_shard`), and `batch_placement` assembles them into global arrays.
"""

import copy
import math
from typing import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lra import attention as attention_lib
from lra import errors
from lra import input_pipeline

MESH_AXES = ("data", "sequence")  # the axes of `config.mesh`


def make_mesh(config) -> jax.sharding.Mesh:
  """The `(data, sequence)` mesh of `config.mesh` (default: every device on data).

  A size of -1 takes the devices the other axis leaves; sizes that multiply to fewer than
  the devices use the first ones. Raises `ConfigError` for sizes that do not fit.
  """
  sizes = dict(config.get("mesh", {}))
  shape = [sizes.get(axis, 1) for axis in MESH_AXES]
  count = jax.device_count()
  if any(size == 0 or size < -1 for size in shape) or shape.count(-1) > 1:
    raise errors.ConfigError(
        f"config.mesh sizes must be positive, with at most one -1 (the devices left); got "
        f"{sizes}")
  if -1 in shape:
    given = -math.prod(shape)  # the product of the sizes given
    if count % given:
      raise errors.ConfigError(
          f"config.mesh {sizes}: -1 takes the devices the other axis leaves, but the "
          f"{count} device(s) do not divide by {given}")
    shape[shape.index(-1)] = count // given
  if math.prod(shape) > count:
    raise errors.ConfigError(
        f"config.mesh {sizes} asks for {math.prod(shape)} devices; there are {count}")
  if jax.process_count() > 1:
    _check_processes(sizes, shape)
  devices = np.array(jax.devices()[:math.prod(shape)]).reshape(shape)
  return jax.sharding.Mesh(devices, MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _check_processes(sizes: dict, shape: list[int]) -> None:
  """Raises `ConfigError` for a mesh shape that several processes cannot share: one that
  leaves devices out, or whose `sequence` axis spans the devices of several processes."""
  processes, local = jax.process_count(), jax.local_device_count()
  if math.prod(shape) != jax.device_count():
    raise errors.ConfigError(
        f"config.mesh {sizes} uses {math.prod(shape)} of the {jax.device_count()} devices of "
        f"{processes} processes; with several processes the mesh uses every device")
  if local % shape[1]:
    raise errors.ConfigError(
        f"config.mesh.sequence={shape[1]} spans the devices of several processes ({local} "
        f"each); the sequence axis stays inside a host: use a size that divides {local}")


def process_shard(mesh) -> input_pipeline.Shard:
  """The rows of every batch that this process makes: those of its devices on the mesh's
  `data` axis, a run of them (devices are numbered process by process)."""
  mine = [row for row, devices in enumerate(mesh.devices)
          if devices[0].process_index == jax.process_index()]
  if mine != list(range(mine[0], mine[0] + len(mine))):
    raise errors.UserError(
        f"the devices of process {jax.process_index()} are rows {mine} of the mesh's data "
        f"axis, not consecutive ones; each process makes a run of consecutive batch rows")
  count = mesh.shape["data"] // len(mine)
  return input_pipeline.Shard(index=mine[0] // len(mine), count=count)


def check_batch_sizes(batch_sizes: dict[str, int], mesh) -> None:
  """Raises `ConfigError` for a batch size (by the config field that sets it) that does
  not divide over the devices of the mesh's `data` axis."""
  data_devices, processes = mesh.shape["data"], jax.process_count()
  for key, size in batch_sizes.items():
    if size % processes:
      raise errors.ConfigError(
          f"config.{key}={size} does not divide over the {processes} processes, each of "
          f"which makes an equal share of every batch; use a multiple of {data_devices} (the "
          f"devices of the mesh's data axis)")
    if size % data_devices:
      raise errors.ConfigError(
          f"config.{key}={size} does not divide over the {data_devices} devices of the mesh's "
          f"data axis; use a multiple of {data_devices}")


def split_over_sequence(config, mesh):
  """`config` whose attention splits the length over the mesh's `sequence` axis (itself on
  a mesh without one); raises `ConfigError` for attention that cannot."""
  if mesh.shape.get("sequence", 1) == 1:
    return config
  attention = config.attention
  if "sequence_axis" not in attention_lib.get(attention.name).options:
    raise errors.ConfigError(
        f"config.mesh.sequence={mesh.shape['sequence']} splits every sequence, which "
        f"{attention.name!r} attention cannot attend over; use local or longformer "
        f"attention, or config.mesh.sequence=1")
  if attention.get("sequence_axis") not in (None, "sequence"):
    raise errors.ConfigError(
        f"config.attention.sequence_axis={attention.sequence_axis!r}: the trainer splits "
        f"the length over its mesh axis 'sequence'; set config.mesh.sequence instead")
  config = copy.deepcopy(config)
  with config.unlocked():
    config.attention.sequence_axis = "sequence"
  return config


def batch_placement(mesh) -> Callable:
  """`batch -> global batch on the mesh`, from this process's rows of it (`process_shard`;
  all of them in one process): examples over `data`; the length axis of `[batch, length,
  ...]` arrays over `sequence`, where the length divides over it (the bucketed lengths do;
  the attention pads any other, which the rest of the model then computes whole on every
  device of the axis)."""
  shards, processes = mesh.shape["sequence"], process_shard(mesh).count

  def place(x):
    split_length = shards > 1 and x.ndim >= 2 and x.shape[1] % shards == 0
    sharding = NamedSharding(mesh, P("data", "sequence") if split_length else P("data"))
    return jax.make_array_from_process_local_data(sharding, x,
                                                  (len(x) * processes, *x.shape[1:]))

  return lambda batch: jax.tree.map(place, batch)

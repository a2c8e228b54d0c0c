"""Where a run computes: the `(data, sequence)` device mesh of `config.mesh`, and batches on it.

The batch splits over `data` (examples) and, on a mesh whose `sequence` axis has several
devices, the length of every sequence splits over `sequence`: the parameters are replicated,
XLA propagates the batch's sharding through the position-wise layers, and the attention
exchanges halos between neighbouring shards (`lra.attention.sequence_parallel`).
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
  devices = np.array(jax.devices()[:math.prod(shape)]).reshape(shape)
  return jax.sharding.Mesh(devices, MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def check_batch_sizes(batch_sizes: dict[str, int], mesh) -> None:
  """Raises `ConfigError` for a batch size (by the config field that sets it) that does
  not divide over the devices of the mesh's `data` axis."""
  data_devices = mesh.shape["data"]
  for key, size in batch_sizes.items():
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
  """`batch -> batch on the mesh`: examples over `data`; the length axis of `[batch,
  length, ...]` arrays over `sequence`, where the length divides over it (the bucketed
  lengths do; the attention pads any other, which the rest of the model then computes
  whole on every device of the axis)."""
  shards = mesh.shape["sequence"]

  def sharding(x):
    split_length = shards > 1 and x.ndim >= 2 and x.shape[1] % shards == 0
    return NamedSharding(mesh, P("data", "sequence") if split_length else P("data"))

  return lambda batch: jax.device_put(batch, jax.tree.map(sharding, batch))

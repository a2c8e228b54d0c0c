"""Several processes, one per host: when to start JAX's multi-controller runtime, and
starting it with one clear line where the coordinator cannot be reached.

One process is the default, and starts nothing. `initialize` starts the runtime
(`jax.distributed.initialize`) where a `Launch` names the processes (the flags of an entry
point) or asks for it, or where the environment is a cluster of several processes that JAX
knows (`CLUSTER_VARIABLES`); JAX fills in what the launch leaves out. Every process then
runs the same program on its own devices: it makes its share of every batch
(`lra.sharding.process_shard`), joins the same checkpoints, and process 0 alone writes the
other files (`is_primary`).

JAX aborts a process whose coordinator does not answer within the timeout, with a stack
trace and no Python error; so a process other than 0 first waits for the coordinator's port
itself, and gives up with a `UserError` naming the address and the timeout.
"""

import dataclasses
import os
import socket
import time

import jax

from lra import errors

# Variables of the clusters JAX detects, and the count of processes each says: one is none.
CLUSTER_VARIABLES = {
    "JAX_COORDINATOR_ADDRESS": lambda value: 2,  # the address of process 0: several
    "SLURM_NTASKS": int,
    "OMPI_COMM_WORLD_SIZE": int,
    "TPU_WORKER_HOSTNAMES": lambda value: len(value.split(",")),
    "TPU_PROCESS_ADDRESSES": lambda value: len(value.split(",")),
}
# The id of this process in those clusters.
PROCESS_ID_VARIABLES = ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "TPU_WORKER_ID")


@dataclasses.dataclass(frozen=True)
class Launch:
  """How the processes of a run find each other (the flags of `experiments.cli`); None:
  JAX reads it from the cluster."""

  distributed: bool = False  # start the runtime even where nothing says several processes
  coordinator_address: str | None = None  # host:port of process 0
  num_processes: int | None = None
  process_id: int | None = None
  coordinator_timeout_s: int = 300

  def reason(self) -> str | None:
    """Why this launch has several processes (a flag or a variable), or None."""
    if self.distributed:
      return "--distributed"
    for name in ("coordinator_address", "num_processes", "process_id"):
      if getattr(self, name) is not None:
        return f"--{name}"
    for name, count in CLUSTER_VARIABLES.items():
      if os.environ.get(name) and count(os.environ[name]) > 1:
        return f"${name}"
    return None

  def process_id_before_start(self) -> int:
    """This process's id as the flags or the cluster's variables give it (0 where neither
    does), for a program that does not start the runtime itself (`experiments.compare`)."""
    if self.process_id is not None:
      return self.process_id
    return next((int(os.environ[name]) for name in PROCESS_ID_VARIABLES
                 if os.environ.get(name, "").isdigit()), 0)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once `address` (host:port) accepts a connection; raises `UserError` after
  `timeout_s` seconds."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except (OSError, ValueError) as e:
      problem = e
    if time.monotonic() >= deadline:
      raise errors.UserError(
          f"the coordinator at {address} cannot be reached within {timeout_s:g} s "
          f"({problem}); start process 0 there, check --coordinator_address and that its "
          f"port is open to this host, or raise --coordinator_timeout_s")
    time.sleep(0.5)


def initialize(launch: Launch) -> str | None:
  """Starts JAX's runtime of several processes where `launch` or the cluster says so
  (module docstring); returns the reason, or None for one process. Call it before JAX
  touches a device."""
  reason = launch.reason()
  if reason is None:
    return None
  address = launch.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address and launch.process_id:
    wait_for_coordinator(address, launch.coordinator_timeout_s)
  try:
    jax.distributed.initialize(
        coordinator_address=launch.coordinator_address, num_processes=launch.num_processes,
        process_id=launch.process_id, initialization_timeout=launch.coordinator_timeout_s)
  except (ValueError, TypeError, RuntimeError) as e:  # what JAX could not find or accept
    raise errors.UserError(
        f"cannot start several processes ({reason}): {str(e).strip().splitlines()[0]}; "
        f"give --coordinator_address, --num_processes and --process_id") from e
  return reason


def is_primary() -> bool:
  """Whether this process writes the run's files other than checkpoints (process 0)."""
  return jax.process_index() == 0


def describe() -> str:
  """`process i of n, k of m devices`: where this process computes."""
  return (f"process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.local_device_count()} of {jax.device_count()} devices")

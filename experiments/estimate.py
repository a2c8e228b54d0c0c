"""Wall-time estimates of training runs from one measured train step, and how many runs of a
list fit a time budget: what `experiments.reproduce` decides with before it starts a run.

A run of `python -m experiments.train` is modelled as: the process starting (imports and the
backend), compiling its steps, its optimizer steps (pretraining's included), and its
evaluations (every `eval_every_steps` on the validation split, and the test split once).
Runs side by side share the device: the device's work per step adds up across them, the
host's does not, so a step takes the longer of the two. They share the host's cores too:
starting and compiling slow down once the processes want more cores than there are.
"""

import dataclasses
import math
from typing import Callable, Sequence

# The train step's compile times per evaluated stage: its own, the evaluation step's (a
# forward, cheaper), and the checkpoints and closing figure of a run, about as much again. A
# pretraining stage adds its train step's.
COMPILES_PER_STAGE = 2.0
# An evaluation example costs about a third of a training one: the forward pass of a step
# whose backward pass is about twice the forward.
EVAL_COST = 1 / 3


@dataclasses.dataclass(frozen=True)
class StepCost:
  """What one process measured of a config's train step, the device to itself."""

  setup_s: float  # building the model and compiling its train step
  step_s: float  # the host's seconds per step, each waited for
  device_s: float  # the device's seconds per step (the host's where there is no device timer)
  host_cores: float  # the cores the process kept busy meanwhile (its CPU time over wall time)
  cores: int  # the cores of the host

  def shared_step_s(self, processes: int) -> float:
    """Seconds per step while `processes` runs share the device."""
    return max(self.step_s, processes * self.device_s)

  def host_slowdown(self, processes: int) -> float:
    """How much longer the host's work takes while `processes` runs share its cores."""
    return max(1.0, processes * self.host_cores / self.cores)


def run_seconds(config, cost: StepCost, *, startup_s: float, eval_examples: tuple[int, int],
                processes: int = 1) -> dict[str, float]:
  """The estimated wall time of training `config`, by part (`*_s`) and in all (`total_s`).

  Args:
    config: the run's task config (`num_train_steps`, `eval_every_steps`, the batch sizes,
      `pretrain`).
    cost: its measured train step.
    startup_s: a fresh process's time to import the trainer and start the backend.
    eval_examples: (validation, test) examples; (0, 0) leaves evaluation out.
    processes: runs sharing the device meanwhile, this one included.
  """
  pretrain = config.pretrain.num_steps if config.pretrain.objective != "none" else 0
  step_s = cost.shared_step_s(processes)
  host = cost.host_slowdown(processes)
  val, test = eval_examples
  evaluations = math.ceil(config.num_train_steps / config.eval_every_steps)
  batches = (evaluations * math.ceil(val / config.eval_batch_size)
             + math.ceil(test / config.eval_batch_size))
  parts = {
      "startup_s": startup_s * host,
      "compile_s": cost.setup_s * (COMPILES_PER_STAGE + (1 if pretrain else 0)) * host,
      "train_s": (config.num_train_steps + pretrain) * step_s,
      "eval_s": batches * step_s * EVAL_COST * config.eval_batch_size / config.batch_size,
  }
  return {**parts, "total_s": sum(parts.values())}


def side_by_side_s(seconds: Sequence[float], parallel: int) -> float:
  """Wall time of runs taking `seconds` each, started `parallel` at a time in order: each
  wave lasts as long as its longest run."""
  return sum(max(seconds[i:i + parallel]) for i in range(0, len(seconds), parallel))


def most_that_fit(group_s: Callable[[int], float], count: int, left_s: float) -> int:
  """The most leading items of `count` (0 to `count`) whose estimate `group_s(m)` is within
  `left_s`."""
  return next((m for m in range(count, 0, -1) if group_s(m) <= left_s), 0)

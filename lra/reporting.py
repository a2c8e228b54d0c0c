"""What a run reports while it trains: the averages of each logging window (to
`metrics.jsonl` and the terminal), its training speed and its peak memory.

The speed counts the windows after a stage's first one in this launch, which holds the
compilation of its steps.
"""

import math
import resource
import time
from typing import Any

import jax
from absl import logging

from lra import errors


def format_duration(seconds: float) -> str:
  """`1h02m` or `3m07s`."""
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def peak_memory_gb() -> float:
  """Peak memory: the accelerator's when it reports one, else the process's resident set."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 1e9
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class Reporter:
  """The logging windows of a launch that resumes after `start_step` and ends at `last_step`.

  `stage` arguments are `lra.train.Stage`s: their `name` prefixes the records, their
  `metrics` average the summed ones, their `steps.schedule` gives the learning rate.
  """

  def __init__(self, run, stage_names: list[str], *, start_step: int, last_step: int):
    self.run, self.start_step, self.last_step = run, start_step, last_step
    self.restart_window()
    self._timed = {name: [0, 0.0] for name in stage_names}  # steps, seconds after compiling

  def log_window(self, stage, step: int, sums: dict[str, Any]) -> dict[str, float]:
    """Logs the averages of the window of steps that ends at `step` (`sums`: their summed
    metrics, on device) and returns them; raises `UserError` where the loss diverged."""
    host = jax.device_get(sums)
    steps = int(host["steps"])
    train = stage.metrics.summarize(host)
    if not math.isfinite(train["loss"]):
      raise errors.UserError(
          f"training diverged: the loss is {train['loss']} between steps {step - steps + 1} "
          f"and {step}. Nothing was saved after the last good checkpoint; lower "
          f"optimizer.learning_rate or set optimizer.grad_clip and relaunch (a relaunch on "
          f"this workdir resumes from that checkpoint)")
    elapsed = time.time() - self._window_start
    if step - steps > max(self.start_step, stage.first_step - 1):
      # Windows after the first (compilation) window measure the training speed.
      self._timed[stage.name][0] += steps
      self._timed[stage.name][1] += elapsed
    rate = steps / max(elapsed, 1e-9)
    self.run.log({"step": step, **{f"{stage.name}_{k}": v for k, v in train.items()},
                  "grad_norm": float(host["grad_norm"]) / steps,
                  "learning_rate": float(stage.steps.schedule(stage.local_step(step) - 1)),
                  "steps_per_sec": rate})
    eta = (self.last_step - step) / max(rate, 1e-9)
    scores = [name for name in stage.metrics.averages.values() if name != "loss"]
    logging.info("%sstep %d/%d | loss %.4f%s | %.2f steps/s | ETA %s",
                 "" if stage.evaluated else f"{stage.name} ", step, self.last_step,
                 train["loss"], "".join(f" | {k} {train[k]:.3f}" for k in scores), rate,
                 format_duration(eta))
    self.restart_window()
    return train

  def restart_window(self) -> None:
    """Starts the window's clock again: the time until now (a validation pass) is not the
    training's."""
    self._window_start = time.time()

  def steps_per_sec(self, stage_name: str) -> float | None:
    """The stage's training speed in this launch; None before its second window."""
    steps, seconds = self._timed[stage_name]
    return steps / seconds if seconds else None

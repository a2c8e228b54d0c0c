"""A run's folder: its config, metrics and result files (`Workdir`) and its orbax checkpoints
(`Checkpoints`), so that a relaunch on the same folder resumes exactly.

`checkpoints/` keeps the last two training checkpoints (train state, data iterator and the
progress of the loop); `best/` keeps the parameters of the best validation score. A damaged
best checkpoint is replaced by the training checkpoint of the same step where there is one.

Orbax runs each restore in an event loop of its own and closes it as soon as one read
fails, which would leave the other reads of the checkpoint pending, to report their errors
(or be destroyed unawaited) on the terminal long after the run's result. Restores here run
under `pending_reads_awaited`: the loop awaits them before it closes, and their errors go to
the standard logger of this module (the log file of an entry point, not its terminal).

With several processes (`lra.distributed`) the workdir is a folder every process sees:
orbax writes each checkpoint once, every process its shards, and grain's data-iterator
state one file per process (`process_<i>-of-<n>.json`), so a run resumes on the same
number of processes only; `Workdir`'s files are written by process 0 alone.
"""

import asyncio
import contextlib
import json
import logging as std_logging
import os
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from lra import distributed
from lra import errors

_DETAILS = std_logging.getLogger(__name__)


def write_json(path: str, value) -> None:
  """Writes `value` to `path` at once (a file that is there is always whole)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _diff_keys(a, b, prefix=""):
  for key in set(a) | set(b):
    if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
      yield from _diff_keys(a[key], b[key], f"{prefix}{key}.")
    elif a.get(key) != b.get(key):
      yield prefix + key


class Workdir:
  """Files of one run: `config.json` (written once; a relaunch must match it),
  `metrics.jsonl` (one JSON object per record, cut back to a checkpoint on resume) and
  those of `write_json`; process 0 writes them, the others check `config.json` alone."""

  def __init__(self, workdir: str, config):
    self.path = workdir
    self.primary = distributed.is_primary()
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    config_json = json.loads(config.to_json_best_effort())
    if os.path.exists(config_path):
      with open(config_path) as f:
        previous = json.load(f)
      # The mesh says where a run computes, not what: it resumes on any mesh shape.
      changed = sorted(key for key in _diff_keys(previous, config_json)
                       if key.partition(".")[0] != "mesh")
      if changed:
        raise errors.ConfigError(
            f"{workdir} holds a run with a different config (changed: {', '.join(changed)}); "
            f"resume it with the same config or use a new --workdir")
    elif self.primary:
      write_json(config_path, config_json)
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def write_json(self, name: str, value) -> None:
    """Writes the run's file `name` (`write_json`)."""
    if self.primary:
      write_json(self.file(name), value)

  def truncate_metrics(self, step: int) -> None:
    """Drops metric lines after `step` (they are recomputed when a run resumes there)."""
    if not self.primary or not os.path.exists(self.metrics_path):
      return
    with open(self.metrics_path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.metrics_path, "w") as f:
      f.writelines(kept)

  def log(self, record: dict[str, Any]) -> None:
    if not self.primary:
      return
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")


def first_line(error: Exception) -> str:
  """`Type: first line of the message`: an error in one line."""
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no details'}"


class _AwaitingLoop(asyncio.SelectorEventLoop):
  """An event loop that awaits the tasks still pending on it before it closes."""

  def close(self):
    pending = asyncio.all_tasks(self)
    if pending and not self.is_running() and not self.is_closed():
      outcomes = self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
      for outcome in outcomes:
        if isinstance(outcome, BaseException):
          _DETAILS.info("a read left pending by a failed restore: %s", first_line(outcome))
    super().close()


class _AwaitingPolicy(asyncio.DefaultEventLoopPolicy):

  def new_event_loop(self):
    return _AwaitingLoop()


@contextlib.contextmanager
def pending_reads_awaited():
  """Within it, an event loop made by `asyncio.new_event_loop` (as orbax makes one for a
  restore) awaits the tasks still pending on it before it closes, and logs their errors."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_AwaitingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


class Checkpoints:
  """Orbax managers: `checkpoints/` (state + data iterator + progress) and `best/` (params)."""

  def __init__(self, workdir: str):
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2))
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1))

  def save(self, step: int, state, data_iterator, progress: dict) -> None:
    self._one_save_at_a_time(self.best)
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        progress=ocp.args.JsonSave(progress)))

  def restore_latest(self, state, data_iterator):
    """Returns (state, progress) of the latest checkpoint, or None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    self._check_process_count(step)
    try:
      with pending_reads_awaited():
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            progress=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for unreadable files
      raise errors.CheckpointError(
          f"the checkpoint {self.latest.directory / str(step)} cannot be restored "
          f"({first_line(e)}); move that folder out of the workdir to resume from an earlier "
          f"checkpoint, or use a new --workdir") from e
    return restored.state, restored.progress

  def _check_process_count(self, step: int) -> None:
    """Raises `CheckpointError` where checkpoint `step` was written by another number of
    processes than this launch's (its data-iterator state is one file per process)."""
    folder = self.latest.directory / str(step) / "data"
    names = os.listdir(folder) if os.path.isdir(folder) else []  # damage: the restore says
    counts = {int(m.group(1)) for m in map(re.compile(r"process_\d+-of-(\d+)\.json").match,
                                            names) if m}
    if counts and counts != {jax.process_count()}:
      raise errors.CheckpointError(
          f"the checkpoint {self.latest.directory / str(step)} was written by "
          f"{' or '.join(map(str, sorted(counts)))} process(es) and this launch has "
          f"{jax.process_count()}; resume it on as many processes, or use a new --workdir")

  def save_best(self, step: int, params) -> None:
    self._one_save_at_a_time(self.latest)
    self.best.save(step, args=ocp.args.StandardSave(params), force=True)

  @staticmethod
  def _one_save_at_a_time(other) -> None:
    """With several processes, waits for `other` manager's save in flight: the two
    managers' asynchronous saves meet at barriers of the same names across processes, and
    one begun while the other's is in flight fails ("barrier ... is already ongoing")."""
    if jax.process_count() > 1:
      other.wait_until_finished()

  def restore_best(self, state) -> tuple[int, Any]:
    """Returns (step, parameters) to test: those of the best validation checkpoint.

    A damaged one is replaced by the training checkpoint of the same step (the same
    parameters) where there is one, with a warning; else it is a `CheckpointError`. Where
    `best/` holds none (emptied by hand), they are `state`'s, with a warning.
    """
    step = self.best.latest_step()
    if step is None:
      logging.warning("best/ holds no checkpoint: testing the parameters of the last step, %d",
                      int(state["step"]))
      return int(state["step"]), state["params"]
    path = self.best.directory / str(step)
    try:
      with pending_reads_awaited():
        return step, self.best.restore(step, args=ocp.args.StandardRestore(state["params"]))
    except Exception as e:  # orbax raises many types for unreadable files
      damage = e
    if step in self.latest.all_steps():
      try:
        with pending_reads_awaited():
          restored = self.latest.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(state)))
      except Exception:  # the same damage there: the error below names the best one
        logging.exception("the training checkpoint of step %d cannot be restored either", step)
      else:
        logging.warning(
            "the best validation checkpoint %s cannot be restored (%s); testing the same "
            "parameters from the training checkpoint %s instead", path, first_line(damage),
            self.latest.directory / str(step))
        return step, restored.state["params"]
    raise errors.CheckpointError(
        f"the best validation checkpoint {path} cannot be restored ({first_line(damage)}), "
        f"and no training checkpoint holds step {step}; move that folder out of the workdir "
        f"and relaunch to test the last step's parameters instead, or use a new --workdir"
    ) from damage

  def close(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    self.latest.close()
    self.best.close()

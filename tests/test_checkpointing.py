"""The workdir's files and the restores of its checkpoints; the trainer's resumes and damaged
checkpoints end to end: tests/test_train.py."""

import asyncio
import logging

import ml_collections
import pytest

from lra import checkpointing
from lra import errors


async def _reads(finished: list[int]):
  """A restore's reads, as orbax gathers them: the first fails at once, the others later."""

  async def read(index: int):
    if index == 0:
      raise ValueError("damaged array 0")
    await asyncio.sleep(0.05)
    finished.append(index)
    if index == 2:
      raise ValueError("damaged array 2")

  await asyncio.gather(*(read(index) for index in range(4)))


def _restore_like_orbax(finished: list[int]):
  """A manager's `restore`: its reads in an event loop of its own, closed when one fails."""

  def restore(step, args):
    del step, args
    loop = asyncio.new_event_loop()
    try:
      return loop.run_until_complete(_reads(finished))
    finally:
      loop.close()

  return restore


def test_a_damaged_best_checkpoint_leaves_no_read_pending(tmp_path, monkeypatch, caplog):
  checkpoints = checkpointing.Checkpoints(str(tmp_path))
  finished = []
  monkeypatch.setattr(checkpoints.best, "latest_step", lambda: 1)
  monkeypatch.setattr(checkpoints.best, "restore", _restore_like_orbax(finished))
  policy = asyncio.get_event_loop_policy()
  with caplog.at_level(logging.INFO), pytest.raises(
      errors.CheckpointError, match=r"best/1 cannot be restored \(ValueError: damaged array 0"):
    checkpoints.restore_best({"step": 3, "params": {}})
  checkpoints.close()
  assert sorted(finished) == [1, 2, 3]  # awaited before the loop closed
  assert "ValueError: damaged array 2" in caplog.text  # to the log
  assert asyncio.get_event_loop_policy() is policy  # loops made after it: as before


def test_a_workdir_resumes_only_its_own_config(tmp_path):
  config = ml_collections.ConfigDict({"seed": 0, "mesh": {"data": 2}, "model": {"width": 8}})
  run = checkpointing.Workdir(str(tmp_path), config)
  run.log({"step": 1, "train_loss": 2.0})
  run.log({"step": 2, "train_loss": 1.0})
  run.truncate_metrics(1)
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "train_loss": 2.0}\n'
  config.mesh.data = 4  # where it computes: it resumes on any mesh
  checkpointing.Workdir(str(tmp_path), config)
  config.model.width = 16
  with pytest.raises(errors.ConfigError, match=r"different config \(changed: model.width\)"):
    checkpointing.Workdir(str(tmp_path), config)

"""The workdir's files; the trainer's resumes and damaged checkpoints end to end:
tests/test_train.py."""

import ml_collections
import pytest

from lra import checkpointing
from lra import errors


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

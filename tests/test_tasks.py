"""Every LRA task x every attention variant trains 2 steps on tiny data in its real layout."""

import json
import os

import pytest

from configs import common as config_common
from lra import train
from tests.data import fixtures
from tests.entry_points import REPO

VARIANTS = ("full", "local", "dilated", "longformer")

# config file -> writes the task's tiny dataset under a root, returns config.data_path.
TASKS = {
    "listops": lambda root: None,  # generated into the cache
    "text": lambda root: fixtures.write_imdb(root, num_reviews=16),
    "retrieval": lambda root: fixtures.write_aan(root, num_pairs=16),
    "image": lambda root: fixtures.write_cifar(root, num_train=40, num_test=10),
    "pathfinder": lambda root: fixtures.write_pathfinder(root, num_images=40, resolution=32),
    "pathx": lambda root: fixtures.write_pathfinder(root, num_images=40, resolution=32),
}
# Bytes kept per text: every fixture text is longer, so all batches share one bucket length
# and the train step compiles once (each extra compile costs ~10 s under 4 devices).
BYTE_TASK_LENGTH = 48


# Each case compiles a model: `make test` runs every task with Longformer attention (global
# tokens, the most wiring) and ListOps with every variant; `make test-slow` every pair.
CASES = [pytest.param(task, variant,
                      marks=[] if variant == "longformer" or task == "listops"
                      else [pytest.mark.slow])
         for task in sorted(TASKS) for variant in VARIANTS]


@pytest.mark.parametrize("task,variant", CASES)
def test_two_steps(tmp_path, task, variant):
  config = config_common.load_config(
      os.path.join(REPO, f"configs/{task}.py:attention={variant},size=tiny"))
  with config.unlocked():
    config.data_path = TASKS[task](tmp_path / "data")
    config.data_cache_dir = str(tmp_path / "cache")
    if task in ("text", "retrieval"):
      config.data.max_length = BYTE_TASK_LENGTH
    config.num_train_steps = 2
    config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 2
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0.0 <= results["test_accuracy"] <= 1.0
  assert results["best_val_step"] == 2
  assert json.load(open(tmp_path / "run" / "results.json"))["task"] == config.task

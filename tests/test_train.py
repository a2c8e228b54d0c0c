"""The trainer end to end on size=tiny ListOps: outputs, exact resume, devices, bad input."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from configs import common as config_common
from lra import data as lra_data
from lra import input_pipeline
from lra import train

from tests.entry_points import REPO
from tests.entry_points import comparable
from tests.entry_points import finish
from tests.entry_points import kill_after_checkpoint
from tests.entry_points import launch


def tiny_config(cache_dir, spec="configs/listops.py:attention=longformer,size=tiny", **fields):
  config = config_common.load_config(os.path.join(REPO, spec))
  with config.unlocked():
    config.data_cache_dir = str(cache_dir)
    config.update(fields)
  return config


def cli_args(workdir, cache_dir, *extra, spec="configs/listops.py:attention=longformer,size=tiny"):
  return [f"--config={spec}", f"--workdir={workdir}",
          f"--config.data_cache_dir={cache_dir}", *extra]


def test_two_steps_write_every_output(tmp_path):
  config = tiny_config(tmp_path / "cache", num_train_steps=2, eval_every_steps=1,
                       checkpoint_every_steps=1, log_every_steps=1)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  run = tmp_path / "run"
  for name in ("config.json", "vocab.json", "metrics.jsonl", "results.json"):
    assert (run / name).exists(), name
  assert sorted(os.listdir(run / "checkpoints")) == ["1", "2"]
  assert os.listdir(run / "best")
  records = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert [r["step"] for r in records if "train_loss" in r] == [1, 2]
  assert [r["step"] for r in records if "val_accuracy" in r] == [1, 2]
  saved = json.load(open(run / "results.json"))
  assert saved == json.loads(json.dumps(results))
  for key in ("test_accuracy", "best_val_accuracy", "best_val_step", "steps_per_sec",
              "peak_memory_gb", "num_params", "majority_class_rate"):
    assert saved[key] is not None, key
  assert json.load(open(run / "vocab.json"))[0] == "<pad>"


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
  cache = tmp_path / "cache"
  extra = ("--config.num_train_steps=24", "--config.checkpoint_every_steps=4",
           "--config.log_every_steps=2", "--config.eval_every_steps=6")
  reference = launch(cli_args(tmp_path / "reference", cache, *extra), tmp_path / "ref.log")
  status, out = finish(reference, tmp_path / "ref.log")
  assert status == 0, out
  assert (tmp_path / "reference" / "curves.png").exists()

  killed = launch(cli_args(tmp_path / "killed", cache, *extra), tmp_path / "killed.log")
  kill_after_checkpoint(killed, tmp_path / "killed", 8)
  assert not (tmp_path / "killed" / "results.json").exists()

  resumed = launch(cli_args(tmp_path / "killed", cache, *extra), tmp_path / "resumed.log")
  status, out = finish(resumed, tmp_path / "resumed.log")
  assert status == 0, out
  assert "Resumed from the checkpoint at step" in out
  assert comparable(tmp_path / "killed") == comparable(tmp_path / "reference")


def test_same_batch_same_loss_on_one_and_four_devices(tmp_path):
  assert jax.device_count() == 4, "tests/conftest.py simulates 4 CPU devices"
  config = tiny_config(tmp_path / "cache")
  data = lra_data.load(config)
  batch = next(input_pipeline.eval_batches(data.splits["train"], batch_size=8))
  sums = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.sharding.Mesh(np.array(devices), ("data",),
                             axis_types=(jax.sharding.AxisType.Auto,))
    steps = train.build_steps(config, data, mesh)
    sharded = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.P("data")))
    eval_sums = steps.eval_steps[0](steps.state["params"], sharded)
    _, train_sums = steps.train_steps[0](steps.state, sharded)
    sums.append(jax.device_get((eval_sums, train_sums["loss"])))
  chex.assert_trees_all_close(sums[0], sums[1], rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/listops.py:attention=foo,size=tiny"], "unknown attention 'foo'"),
    (["--config=configs/listops.py:size=tiny", "--config.attention.window=0"],
     "window must be a positive int"),
    (["--config=configs/listops.py:size=tiny", "--config.num_train_stepz=3"],
     "no such config field 'num_train_stepz'"),
    (["--config=configs/listops.py:size=paper"], "needs config.data_path"),
    (["--config=configs/listops.py:size=tiny", "--config.data_path=/nonexistent/listops"],
     "/nonexistent/listops"),
])
def test_bad_input_gets_one_clear_message(tmp_path, args, message):
  process = launch([*args, f"--workdir={tmp_path / 'run'}",
                    f"--config.data_cache_dir={tmp_path / 'cache'}"], tmp_path / "log")
  status, err = finish(process, tmp_path / "log", timeout=120)
  assert status == 2
  assert "Traceback" not in err
  assert "error: " in err and message in err, err


def test_malformed_tsv_row_is_named(tmp_path):
  folder = tmp_path / "listops"
  folder.mkdir()
  for split in ("train", "val", "test"):
    (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n( [MAX 2 3 ] )\t3\n")
  (folder / "basic_val.tsv").write_text("Source\tTarget\n( [MAX 2 3 ] )\tthree\n")
  process = launch(cli_args(tmp_path / "run", tmp_path / "cache",
                            f"--config.data_path={folder}"), tmp_path / "log")
  status, err = finish(process, tmp_path / "log", timeout=120)
  assert status == 2 and "Traceback" not in err
  assert "basic_val.tsv" in err and "line 2" in err, err


def test_corrupted_checkpoint_is_named_and_kept(tmp_path):
  config = tiny_config(tmp_path / "cache", num_train_steps=2, checkpoint_every_steps=2,
                       log_every_steps=1, eval_every_steps=2)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  state_dir = tmp_path / "run" / "checkpoints" / "2" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")
  process = launch(cli_args(tmp_path / "run", tmp_path / "cache",
                            "--config.num_train_steps=2", "--config.checkpoint_every_steps=2",
                            "--config.log_every_steps=1", "--config.eval_every_steps=2"),
                   tmp_path / "log")
  status, err = finish(process, tmp_path / "log", timeout=120)
  assert status == 2 and "Traceback" not in err, err
  assert "checkpoints/2" in err and "cannot be restored" in err, err
  assert state_dir.exists()  # nothing already written is lost


def _frozen_run(tmp_path, num_train_steps, damaged="every file"):
  """A finished run whose parameters never change (learning rate 0), so that its best
  validation checkpoint is step 1's; checkpoints every step (the last two are kept).
  `damaged`: every file of best/1, or the data files of its arrays alone (orbax's
  `ocdbt.process_*/d/`: the metadata reads, then array reads fail). Returns the results and
  the command-line arguments that relaunch it."""
  fields = dict(num_train_steps=num_train_steps, eval_every_steps=1, checkpoint_every_steps=1,
                log_every_steps=1)
  config = tiny_config(tmp_path / "cache", **fields)
  with config.unlocked():
    config.optimizer.learning_rate = 0.0
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["best_val_step"] == 1
  for root, _, files in os.walk(tmp_path / "run" / "best" / "1"):
    if damaged == "every file" or ("ocdbt.process_" in root and root.endswith("/d")):
      for name in files:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"not a checkpoint")
  return results, cli_args(tmp_path / "run", tmp_path / "cache",
                           "--config.optimizer.learning_rate=0.0",
                           *(f"--config.{key}={value}" for key, value in fields.items()))


@pytest.mark.parametrize("damaged", [
    "every file", pytest.param("array data", marks=pytest.mark.slow)])
def test_damaged_best_checkpoint_falls_back_to_the_training_checkpoint_of_its_step(
    tmp_path, damaged):
  results, args = _frozen_run(tmp_path, num_train_steps=2, damaged=damaged)  # 1 and 2 kept
  process = launch(args, tmp_path / "log")
  status, out = finish(process, tmp_path / "log", timeout=120)
  assert status == 0 and "Traceback" not in out, out
  warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
  assert len(warnings) == 1, out
  assert "best/1 cannot be restored" in warnings[0], out
  assert "from the training checkpoint" in warnings[0] and "checkpoints/1" in warnings[0]
  # Nothing after the result: the reads the failed restore left pending were awaited.
  assert out.rstrip().splitlines()[-1].startswith("results: "), out
  assert "Exception ignored" not in out and "never retrieved" not in out, out
  relaunched = json.load(open(tmp_path / "run" / "results.json"))
  assert relaunched["test_accuracy"] == results["test_accuracy"]
  assert relaunched["tested_step"] == 1


def test_damaged_best_checkpoint_without_a_copy_is_named_and_kept(tmp_path):
  _, args = _frozen_run(tmp_path, num_train_steps=3)  # checkpoints/2 and /3 kept, not 1
  process = launch(args, tmp_path / "log")
  status, err = finish(process, tmp_path / "log", timeout=120)
  assert status == 2 and "Traceback" not in err, err
  [line] = [line for line in err.splitlines() if line.startswith("error: ")]
  assert "best/1 cannot be restored" in line and "move that folder out" in line, err
  assert "the full error is in" in line and "train.log" in line, err
  assert (tmp_path / "run" / "best" / "1").exists()  # nothing already written is lost
  assert "Traceback" in (tmp_path / "run" / "train.log").read_text()  # the cause is kept

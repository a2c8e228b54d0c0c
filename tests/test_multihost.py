"""Training on several processes, each with its own (simulated) CPU devices, started here on
localhost: the same losses, validation and test score as one process on the same global
mesh, every file written once, an exact resume after a process is killed, and one clear
line for each launch that cannot work."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from lra import train as lra_train

from tests.entry_points import ENV
from tests.entry_points import REPO
from tests.entry_points import TIMING_FIELDS
from tests.entry_points import kill_after_checkpoint
from tests.test_train import tiny_config

SPEC = "configs/listops.py:attention=longformer,size=tiny"
# The files of a finished run: one of each, nothing else.
OUTPUTS = ["best", "checkpoints", "config.json", "curves.png", "metrics.jsonl", "results.json",
           "train.log", "vocab.json"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start(workdir, cache, *, processes: int, devices: int, extra=(), port=None):
  """Starts `experiments.train` as `processes` processes of `devices` CPU devices each, on
  one coordinator (none for one process); returns the processes and their log files."""
  env = dict(ENV, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  args = [sys.executable, "-m", "experiments.train", f"--config={SPEC}",
          f"--workdir={workdir}", f"--config.data_cache_dir={cache}", *extra]
  launched = []
  port = port or free_port()
  for index in range(processes):
    launch = ([f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
               f"--process_id={index}", "--coordinator_timeout_s=60"] if processes > 1 else [])
    log = f"{workdir}.{index}.log"
    with open(log, "w") as out:
      launched.append((subprocess.Popen(args + launch, cwd=REPO, text=True, stdout=out,
                                        stderr=subprocess.STDOUT, env=env), log))
  return launched


def finish(launched, timeout=300) -> list[str]:
  """Waits for every process; asserts that each succeeded; returns their outputs."""
  outputs = []
  for process, log in launched:
    process.wait(timeout=timeout)
    outputs.append(open(log).read())
    assert process.returncode == 0, outputs[-1]
  return outputs


def train(workdir, cache, **kwargs) -> list[str]:
  return finish(start(workdir, cache, **kwargs))


def records(workdir):
  """results.json without the machine's fields, and metrics.jsonl without the speed."""
  results = json.load(open(os.path.join(workdir, "results.json")))
  results = {k: v for k, v in results.items() if k not in (*TIMING_FIELDS, "processes")}
  metrics = [{k: v for k, v in json.loads(line).items() if k != "steps_per_sec"}
             for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return results, metrics


def assert_close(record: dict, expected: dict):
  """The same keys; numbers equal to a relative 1e-5, other values equal."""
  assert sorted(record) == sorted(expected)
  for key, value in expected.items():
    if isinstance(value, float):
      assert record[key] == pytest.approx(value, rel=1e-5), key
    else:
      assert record[key] == value, key


def assert_same_run(workdir, reference):
  results, metrics = records(workdir)
  expected_results, expected_metrics = records(reference)
  assert_close(results, expected_results)
  assert len(metrics) == len(expected_metrics)
  for record, expected in zip(metrics, expected_metrics):
    assert_close(record, expected)


def assert_written_once(workdir, processes: int):
  assert sorted(os.listdir(workdir)) == OUTPUTS
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  trains = [s for s, line in zip(steps, open(os.path.join(workdir, "metrics.jsonl")))
            if "train_loss" in line]
  assert trains == sorted(set(trains)), "a training record was written twice"
  assert json.load(open(os.path.join(workdir, "results.json")))["processes"] == processes
  data = os.path.join(workdir, "checkpoints", max(os.listdir(os.path.join(workdir,
                                                                          "checkpoints"))),
                      "data")
  assert sorted(name for name in os.listdir(data) if name.startswith("process_")) == [
      f"process_{i}-of-{processes}.json" for i in range(processes)]


FEW_STEPS = ("--config.num_train_steps=3", "--config.eval_every_steps=2",
             "--config.checkpoint_every_steps=1", "--config.log_every_steps=1")


def test_two_processes_match_one_and_write_each_file_once(tmp_path):
  cache = tmp_path / "cache"
  launched = start(tmp_path / "two", cache, processes=2, devices=1, extra=FEW_STEPS)
  # Meanwhile, the same global mesh in this process: data 2, on 2 of its 4 CPU devices.
  config = tiny_config(cache, num_train_steps=3, eval_every_steps=2, checkpoint_every_steps=1,
                       log_every_steps=1)
  with config.unlocked():
    config.mesh.data = 2
  lra_train.train_and_evaluate(config, str(tmp_path / "one"))
  outputs = finish(launched)
  assert_same_run(tmp_path / "two", tmp_path / "one")
  assert_written_once(tmp_path / "two", processes=2)
  assert "Several processes (--coordinator_address): process 0 of 2" in outputs[0]
  assert "test accuracy" in outputs[0] and "test accuracy" not in outputs[1]


def test_an_unreachable_coordinator_is_one_line(tmp_path):
  port = free_port()  # nothing listens there
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--config={SPEC}",
       f"--workdir={tmp_path / 'run'}", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", "--process_id=1", "--coordinator_timeout_s=2"],
      cwd=REPO, text=True, capture_output=True, env=ENV, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: the coordinator at localhost:{port} cannot be reached within 2 s ([Errno 111] "
      f"Connection refused); start process 0 there, check --coordinator_address and that its "
      f"port is open to this host, or raise --coordinator_timeout_s"]


@pytest.mark.slow
def test_four_processes_and_a_sequence_axis_inside_each_host_match_one_process(tmp_path):
  cache = tmp_path / "cache"
  train(tmp_path / "one", cache, processes=1, devices=4, extra=FEW_STEPS)
  train(tmp_path / "four", cache, processes=4, devices=1, extra=FEW_STEPS)
  assert_same_run(tmp_path / "four", tmp_path / "one")
  assert_written_once(tmp_path / "four", processes=4)

  sequence = (*FEW_STEPS, "--config.mesh.sequence=2")
  train(tmp_path / "one_seq", cache, processes=1, devices=4, extra=sequence)
  train(tmp_path / "two_seq", cache, processes=2, devices=2, extra=sequence)
  assert_same_run(tmp_path / "two_seq", tmp_path / "one_seq")
  assert json.load(open(tmp_path / "two_seq" / "results.json"))["mesh"] == {
      "data": 2, "sequence": 2}


@pytest.mark.slow
def test_sigkill_of_one_process_then_relaunch_of_both_resumes_exactly(tmp_path):
  cache = tmp_path / "cache"
  extra = ("--config.num_train_steps=12", "--config.checkpoint_every_steps=4",
           "--config.log_every_steps=2", "--config.eval_every_steps=6")
  train(tmp_path / "reference", cache, processes=2, devices=1, extra=extra)
  port = free_port()
  launched = start(tmp_path / "killed", cache, processes=2, devices=1, extra=extra, port=port)
  kill_after_checkpoint(launched[1][0], tmp_path / "killed", 4)
  # The other process loses its peer: it ends (JAX's runtime stops it), or is stopped here.
  try:
    launched[0][0].wait(timeout=120)
  except subprocess.TimeoutExpired:
    launched[0][0].send_signal(signal.SIGKILL)
    launched[0][0].wait()
  assert not (tmp_path / "killed" / "results.json").exists()
  outputs = train(tmp_path / "killed", cache, processes=2, devices=1, extra=extra)
  assert "Resumed from the checkpoint at step" in outputs[0]
  assert_same_run(tmp_path / "killed", tmp_path / "reference")
  assert_written_once(tmp_path / "killed", processes=2)

  # A relaunch on another number of processes is refused, in one line.
  process, log = start(tmp_path / "killed", cache, processes=1, devices=2, extra=extra)[0]
  assert process.wait(timeout=300) == 2
  assert open(log).read().strip().splitlines()[-1] == (
      f"error: the checkpoint {tmp_path / 'killed' / 'checkpoints' / '12'} was written by 2 "
      f"process(es) and this launch has 1; resume it on as many processes, or use a new "
      f"--workdir")


@pytest.mark.slow
def test_a_batch_that_does_not_divide_over_the_processes_is_refused(tmp_path):
  launched = start(tmp_path / "run", tmp_path / "cache", processes=2, devices=1,
                   extra=("--config.batch_size=7",))
  for process, log in launched:
    assert process.wait(timeout=300) == 2
    assert open(log).read().strip().splitlines()[-1] == (
        "error: config.batch_size=7 does not divide over the 2 processes, each of which makes "
        "an equal share of every batch; use a multiple of 2 (the devices of the mesh's data "
        "axis)")
  assert not os.path.exists(tmp_path / "run" / "config.json")

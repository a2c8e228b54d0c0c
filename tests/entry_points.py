"""Running the repo's entry points (`python -m experiments.<name>`) from tests."""

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One CPU device and no simulated ones: the entry points run as a user would run them.
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


def run_module(name: str, *args: str, timeout: float, **variables: str):
  """Runs `python -m experiments.<name> args` from the repo root, with the environment
  `variables` set too; returns the result."""
  return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], cwd=REPO,
                        text=True, capture_output=True, timeout=timeout,
                        env=dict(ENV, **variables))


# Fields of results.json that measure the machine, not the run.
TIMING_FIELDS = ("steps_per_sec", "peak_memory_gb", "devices", "pretrain_steps_per_sec",
                 "pretrain_wall_time_s", "train_wall_time_s")


def launch(args, log_path, devices: int = 1):
  """Starts `python -m experiments.train` on `devices` (simulated) CPU devices; its output
  goes to a file, so that a chatty run can never block on a full pipe."""
  log = open(log_path, "w")
  env = ENV if devices == 1 else dict(
      ENV, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO,
                          text=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish(process, log_path, timeout=300):
  """Waits for the run; returns its exit status and everything it printed."""
  process.wait(timeout=timeout)
  with open(log_path) as f:
    return process.returncode, f.read()


def kill_after_checkpoint(process, workdir, step: int, timeout: float = 300) -> list[int]:
  """SIGKILLs a running training process once `workdir` has a checkpoint of `step` or later
  (a crash mid-run, with nothing flushed); returns the checkpointed steps."""
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while not (os.path.exists(checkpoints) and any(name.isdigit() and int(name) >= step
                                                 for name in os.listdir(checkpoints))):
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  return [int(name) for name in os.listdir(checkpoints) if name.isdigit()]


def comparable(workdir):
  """A run's results and metrics without the timing fields, to compare two runs."""
  results = json.load(open(os.path.join(workdir, "results.json")))
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  for record in metrics:
    record.pop("steps_per_sec", None)
  return {k: v for k, v in results.items() if k not in TIMING_FIELDS}, metrics

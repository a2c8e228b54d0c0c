r"""Spends a device's time budget on a list of experiments in priority order, and writes what
came of each into a folder that comes back from the device whole (docs/reproduce.md).

  python -m experiments.reproduce --budget_minutes=9 --out=results/reproduce

The experiments (`--experiments`), in order:
  steps       every LRA task's `paper` train step on the Pallas kernels and on the XLA core
              (the rows of `experiments.bench.gpu --models`), with each full run's
              estimated hours;
  pathfinder  Pathfinder `small`, Longformer, `--seeds` seeds from scratch against
              `pretrain=mlm`, by `experiments.compare`, `--parallel` runs side by side;
  listops     ListOps `paper`, Longformer then full attention, on data regenerated in LRA's
              layout at paper size, against LRA's Table 1.
Before each run it times the run's train step (a few jitted steps, in this process),
estimates the run's wall time (`experiments.estimate`) and starts it only if that fits what
is left of the budget; a run that does not fit is recorded as skipped, with the reason.
Finished runs keep results.json and metrics.jsonl; their checkpoints are deleted. `--size`
runs every experiment at one size instead (tiny, with --allow_cpu: a check on the CPU).
"""

import os
import shutil
import subprocess
import sys
import time

from absl import flags

from experiments import cli
from experiments import estimate
from experiments import reproduce_report as report
from experiments.bench import gpu
from experiments.bench import harness
from lra import errors

FLAGS = flags.FLAGS
EXPERIMENTS = ("steps", "pathfinder", "listops")
# The six LRA tasks of the step table (the device benchmark's task configs, but the char-LM).
LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
PRETRAIN = ("none", "mlm")  # Pathfinder's arms: from scratch, self-pretrained

_BUDGET = flags.DEFINE_float("budget_minutes", 9.0, "Wall time to spend, in minutes.")
_OUT = flags.DEFINE_string("out", None, "Folder of the few output files (the report).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/reproduce",
                               "Folder of the runs and generated data while they train.")
_EXPERIMENTS = flags.DEFINE_list("experiments", list(EXPERIMENTS),
                                 "Experiments to run, in this order.")
_TASKS = flags.DEFINE_list("step_tasks", list(LRA_TASKS), "Tasks of the step table.")
_SIZE = flags.DEFINE_enum("size", None, ["paper", "small", "tiny"],
                          "One size for every experiment (default: each one's own).")
_SEEDS = flags.DEFINE_integer("seeds", 4, "Pathfinder's seeds of each arm.", lower_bound=1)
_PARALLEL = flags.DEFINE_integer("parallel", 8, "Pathfinder's runs training at once.",
                                 lower_bound=1)
_TIMING_STEPS = flags.DEFINE_integer("timing_steps", 5,
                                     "Timed train steps of each measured config.",
                                     lower_bound=1)
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False,
                               "Run on a CPU too (for checking the command at tiny sizes).")
flags.mark_flags_as_required(["out"])
flags.register_validator("budget_minutes", lambda minutes: minutes > 0, "must be > 0")
cli.subset_of("experiments", list(EXPERIMENTS), "the experiments")
cli.subset_of("step_tasks", list(LRA_TASKS), "the LRA tasks")


class Budget:
  """The wall time left, and progress lines that say it."""

  def __init__(self, seconds: float):
    self.seconds, self.start = seconds, time.perf_counter()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def left(self) -> float:
    return self.seconds - self.elapsed()

  def say(self, text: str) -> None:
    print(f"[{report.duration(self.elapsed())} elapsed, {report.duration(self.left())} left] "
          f"{text}", flush=True)


# ---------------------------------------------------------------------------------------------
# Measuring and running.


def startup_seconds() -> float:
  """A fresh process's time to import the trainer and start the backend: what every run
  pays before its first step."""
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", "import jax; jax.devices(); from lra import train; "
                  "from experiments import plotting"], check=True, cwd=harness.REPO)
  return time.perf_counter() - start


def measure(config) -> tuple[estimate.StepCost, dict]:
  """The train step of `config` timed in this process (`gpu.measure_train_step`), what
  building and compiling it took besides, and the host's cores it kept busy."""
  start, cpu = time.perf_counter(), time.process_time()
  row = gpu.measure_train_step(config, steps=_TIMING_STEPS.value)
  wall = time.perf_counter() - start
  timed = (1 + _TIMING_STEPS.value) * row["host_s"] + _TIMING_STEPS.value * row["device_s"]
  host_cores = (time.process_time() - cpu) / wall
  return estimate.StepCost(max(0.0, wall - timed), row["host_s"], row["device_s"], host_cores,
                           harness.cores()), row


def run_child(command: list[str], log_path: str, label: str) -> tuple[int, float]:
  """Runs `command`, its output into `log_path` and its stdout onto this console too;
  returns its exit status and wall seconds."""
  start = time.perf_counter()
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                               cwd=harness.REPO)
    for line in process.stdout:
      log.write(line)
      print(f"  {label} | {line.rstrip()}", flush=True)
    process.wait()
  return process.returncode, time.perf_counter() - start


def work(*parts: str) -> str:
  """A path in --workdir, absolute (the runs' processes start in the repository root)."""
  return os.path.abspath(os.path.join(_WORKDIR.value, *parts))


def drop_checkpoints(workdir: str) -> None:
  """Deletes a finished run's checkpoints: its results and metrics are what comes back."""
  for name in ("checkpoints", "best"):
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def split_sizes(config) -> tuple[int, int]:
  """(validation, test) examples of `config`'s data, loaded here (generated into the cache
  first where it is generated, so that the runs share it)."""
  from lra import data as lra_data  # pylint: disable=g-import-not-at-top
  splits = lra_data.load(config).splits
  return tuple(len(splits[name]["targets"]) for name in ("val", "test"))


def finished(record: dict, workdir: str, wall_s: float) -> None:
  """Fills a run's record from its results.json and its wall time."""
  results = report.read_json(os.path.join(workdir, "results.json"))
  record.update(status="done", wall_s=wall_s,
                estimate_over_wall=record["estimate_s"] / wall_s,
                **{k: results.get(k) for k in report.RESULT_FIELDS})
  drop_checkpoints(workdir)


# ---------------------------------------------------------------------------------------------
# The experiments.


def step_table(budget: Budget, startup_s: float, size: str, record: dict) -> None:
  """Experiment 1: each task's train step on both implementations, and its full run's
  estimated hours (training steps and compiles; evaluation left out)."""
  rows = record["steps"] = []
  for task in _TASKS.value:
    for implementation in ("pallas", "xla"):
      row = {"task": task, "implementation": implementation}
      guess = max((r["measure_s"] for r in rows if "measure_s" in r), default=0.0)
      if guess > budget.left():
        row["status"] = (f"skipped: rows took up to {guess:.0f} s, {budget.left():.0f} s "
                         "left")
      else:
        budget.say(f"train step: {task} ({size}), {implementation} ...")
        start = time.perf_counter()
        try:
          config = gpu.train_config(task, implementation, size=size)
          cost, measured = measure(config)
          full = estimate.run_seconds(config, cost, startup_s=startup_s, eval_examples=(0, 0))
          row.update(measured, num_train_steps=config.num_train_steps,
                     full_run_hours=full["total_s"] / 3600)
        except Exception as error:  # pylint: disable=broad-except
          row["status"] = gpu.failure(error)
        row["measure_s"] = time.perf_counter() - start
      pallas = next((r for r in rows if r["task"] == task and r["status"] == "ok"), None)
      if implementation == "xla" and pallas and row["status"] == "ok":
        row["xla_over_pallas"] = row["device_s"] / pallas["device_s"]
      rows.append(row)
      budget.say(f"  {report.step_line(row)}")


def pathfinder(budget: Budget, startup_s: float, size: str, record: dict) -> None:
  """Experiment 2: Pathfinder from scratch against self-pretrained, the seeds that fit,
  side by side, by `experiments.compare`."""
  folder, cache = work("pathfinder"), work("data")
  spec = f"configs/pathfinder.py:attention=longformer,size={size}"
  configs = {p: harness.load_config(spec + ("" if p == "none" else f",pretrain={p}"))
             for p in PRETRAIN}
  for config in configs.values():
    config.data_cache_dir = cache
  budget.say(f"Pathfinder ({size}): the data, then a train step ...")
  examples = split_sizes(configs["none"])
  cost, _ = measure(configs["none"])
  planned = [(seed, p) for seed in range(_SEEDS.value) for p in PRETRAIN]

  def each_s(count: int) -> list[dict]:  # the first `count` runs, as they would share
    processes = min(_PARALLEL.value, count)
    return [estimate.run_seconds(configs[p], cost, startup_s=startup_s, eval_examples=examples,
                                 processes=processes) for _, p in planned[:count]]

  def seeds_s(seeds: int) -> float:
    return estimate.side_by_side_s([e["total_s"] for e in each_s(len(PRETRAIN) * seeds)],
                                   _PARALLEL.value)

  seeds = estimate.most_that_fit(seeds_s, _SEEDS.value, budget.left())
  runs = each_s(len(PRETRAIN) * seeds)
  for index, (seed, p) in enumerate(planned):
    run = {"experiment": "pathfinder", "name": f"longformer seed {seed}", "pretrain": p,
           # as `experiments.compare` names its runs' folders
           "workdir": os.path.join(folder, f"longformer{'' if p == 'none' else '_' + p}"
                                           f"_seed{seed}")}
    if seed < seeds:
      run.update(estimate=runs[index], estimate_s=runs[index]["total_s"])
    else:
      run["status"] = (f"skipped: seeds 0-{seed} side by side estimated "
                       f"{seeds_s(seed + 1):.0f} s, {budget.left():.0f} s left")
    record["runs"].append(run)
  group = record["pathfinder"] = {"seeds": seeds, "estimate_s": seeds_s(max(seeds, 1))}
  if not seeds:
    budget.say(f"Pathfinder skipped: one seed of both arms estimated {seeds_s(1):.0f} s")
    return
  budget.say(f"Pathfinder: {seeds} seed(s) x {', '.join(PRETRAIN)}, "
             f"{min(_PARALLEL.value, 2 * seeds)} at once, estimated {group['estimate_s']:.0f} s")
  os.makedirs(folder, exist_ok=True)
  status, group["wall_s"] = run_child(
      [sys.executable, "-m", "experiments.compare", "--config=configs/pathfinder.py",
       "--attention=longformer", f"--size={size}", f"--seeds={seeds}",
       f"--pretrain={','.join(PRETRAIN)}", f"--parallel={min(_PARALLEL.value, 2 * seeds)}",
       f"--override=data_cache_dir={cache}", f"--workdir={folder}"],
      work("pathfinder_log.txt"), "pathfinder")
  if status:
    group["status"] = f"failed: exit {status} (pathfinder_log.txt in runs.tar.gz)"
  for run in record["runs"]:
    if run["experiment"] == "pathfinder" and "status" not in run:
      workdir = run["workdir"]
      if os.path.exists(os.path.join(workdir, "results.json")):
        wall = report.read_json(os.path.join(workdir, "wall_time.json"))["seconds"]
        finished(run, workdir, wall)
      else:
        run["status"] = "failed: no results.json"
  comparison = os.path.join(folder, "comparison.md")
  if os.path.exists(comparison):
    with open(comparison) as f:
      group["comparison_md"] = f.read()


def start_listops_data(size: str) -> tuple[subprocess.Popen, str]:
  """Starts generating ListOps at `size` in LRA's layout, in the background (the CPU is
  idle while the device trains); returns the process and the folder."""
  folder = work("listops_data")
  log = open(work("listops_data_log.txt"), "w")
  process = subprocess.Popen(
      [sys.executable, "-m", "experiments.generate_data", "listops", f"--out={folder}",
       f"--size={size}"], stdout=log, stderr=subprocess.STDOUT, cwd=harness.REPO)
  return process, folder


def listops(budget: Budget, startup_s: float, size: str, record: dict,
            data: tuple[subprocess.Popen, str]) -> None:
  """Experiment 3: ListOps, Longformer then full attention, on the regenerated data."""
  process, folder = data
  budget.say("ListOps: waiting for the generated data ...")
  if process.wait():
    raise errors.DataError(f"generating ListOps failed (exit {process.returncode}); see "
                           f"{_WORKDIR.value}/listops_data_log.txt")
  examples = None
  for attention in ("longformer", "full"):
    spec = f"configs/listops.py:attention={attention},size={size}"
    config = harness.load_config(spec)
    config.data_path = folder
    run = {"experiment": "listops", "name": attention, "pretrain": "none"}
    record["runs"].append(run)
    budget.say(f"ListOps ({size}), {attention}: a train step ...")
    examples = examples or split_sizes(config)
    cost, _ = measure(config)
    run["estimate"] = estimate.run_seconds(config, cost, startup_s=startup_s,
                                           eval_examples=examples)
    run["estimate_s"] = run["estimate"]["total_s"]
    if run["estimate_s"] > budget.left():
      run["status"] = (f"skipped: estimated {run['estimate_s']:.0f} s, "
                       f"{budget.left():.0f} s left")
      budget.say(f"  {run['status']}")
      continue
    budget.say(f"ListOps {attention}: training, estimated {run['estimate_s']:.0f} s")
    workdir = work("listops", attention)
    os.makedirs(workdir, exist_ok=True)
    status, wall_s = run_child(
        [sys.executable, "-m", "experiments.train", f"--config={spec}",
         f"--config.data_path={folder}", f"--workdir={workdir}"],
        os.path.join(workdir, "log.txt"), f"listops {attention}")
    if status:
      run.update(status=f"failed: exit {status} (its log.txt in runs.tar.gz)", wall_s=wall_s)
    else:
      finished(run, workdir, wall_s)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top  (after the flags: a slow import)
  if jax.default_backend() == "cpu" and not _ALLOW_CPU.value:
    raise errors.ConfigError(
        "no GPU or TPU here (jax.default_backend() is 'cpu'): install jax for the "
        "accelerator, or pass --allow_cpu (with --size=tiny) to check the command")
  budget = Budget(60 * _BUDGET.value)
  sizes = {"steps": "paper", "pathfinder": "small", "listops": "paper"}
  size = {name: _SIZE.value or default for name, default in sizes.items()}
  chosen = list(dict.fromkeys(_EXPERIMENTS.value))
  os.makedirs(_WORKDIR.value, exist_ok=True)
  data = start_listops_data(size["listops"]) if "listops" in chosen else None
  record = {"command": report.command(), "device": harness.device_name(),
            "jax": jax.__version__, "commit": harness.commit(), "budget_s": budget.seconds,
            "sizes": {name: size[name] for name in chosen}, "runs": []}
  budget.say("timing a fresh process's start ...")
  record["startup_s"] = startup = startup_seconds()
  for name in chosen:
    if name == "steps":
      step_table(budget, startup, size[name], record)
    elif name == "pathfinder":
      pathfinder(budget, startup, size[name], record)
    else:
      listops(budget, startup, size[name], record, data)
    record["elapsed_s"] = budget.elapsed()
    report.write(_OUT.value, _WORKDIR.value, record)
    budget.say(f"{name} done; wrote {_OUT.value}")
  print(report.summary(record), flush=True)


if __name__ == "__main__":
  # Side-by-side runs share the device: none may hold most of its memory (JAX's default).
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  cli.run(main)

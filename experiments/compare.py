r"""Compares attention variants on one task: accuracy, speed, memory, and their figures.

  python -m experiments.compare --config=configs/listops.py \
      [--attention=<variants of the registry; default: every one>] --size=small --seeds=3 \
      [--pretrain=none,mlm] --workdir=results/compare_listops_small

Trains one run per (variant, pretraining, seed) in `--workdir/<variant>_seed<k>/` (from
scratch) or `--workdir/<variant>_<objective>_seed<k>/` (self-pretrained, `lra.pretraining`:
the config argument `pretrain=<objective>`), each by
`python -m experiments.train` in its own process (so that its peak memory is its own), every
variant of a seed before the next seed; `--parallel=N` keeps N of them training at once,
side by side on the device (runs too small to fill a GPU). A run whose `results.json` exists
is reused; an interrupted one is relaunched on its workdir and resumes from its last
checkpoint. A run's output goes to its `log.txt` (its progress lines are shown here too) and
the wall time of its launches to its `wall_time.json`. Then writes, in --workdir:
  comparison.md, comparison.csv  per variant and pretraining: test accuracy mean +- std
                                 over seeds, best
                                 validation accuracy, steps/s, peak memory, parameters,
                                 wall time per run (pretraining included)
  val_accuracy.png               validation accuracy against step, mean over seeds, shaded
                                 from the lowest to the highest seed
  accuracy_vs_throughput.png     test accuracy against training steps/s

  python -m experiments.compare --efficiency --config=configs/listops.py --size=small \
      --workdir=results/efficiency [--lengths=512,1024,... --batch=1]

Measures each variant's training speed and memory against length instead
(`experiments/bench/efficiency.py`): efficiency.md, efficiency.csv and efficiency.png.

On several hosts (docs/multihost.md) the same command runs on each; it passes its launch
flags on to every run, and the first process alone writes the files named above.
"""

import concurrent.futures
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from absl import flags

from configs import common
from experiments import cli
from experiments.bench import efficiency
from experiments.bench import harness
from lra import attention
from lra import errors
from lra import pretraining
from lra import train

_CONFIG = flags.DEFINE_string(
    "config", None, "Task config file, e.g. configs/listops.py; arguments after ':' other "
    "than attention and size go to every run, e.g. configs/listops.py:window=16.")
_ATTENTION = flags.DEFINE_list("attention", None,
                               "Variants to compare: registry variants (default: every one, "
                               f"now {', '.join(attention.variants())}).")
_SIZE = flags.DEFINE_enum("size", "small", common.SIZES, "Size of every run.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Runs per variant, with config.seed 0, 1, ...",
                              lower_bound=1)
_PRETRAIN = flags.DEFINE_list(
    "pretrain", ["none"], "Self-pretraining objectives to compare, each crossed with every "
    f"variant: {', '.join(pretraining.OBJECTIVES)} (none: from scratch).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the runs and of the outputs.")
_PARALLEL = flags.DEFINE_integer(
    "parallel", 1, "Runs training at once, each in its own process sharing the device.",
    lower_bound=1)
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "A config `field=value` for every run or measurement (repeatable), "
    "e.g. --override=data_cache_dir=/tmp/data.")
_EFFICIENCY = flags.DEFINE_bool(
    "efficiency", False, "Measure training speed and memory against length instead of "
    "training (the flags of experiments/bench/efficiency.py).")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_launch_flags()

cli.subset_of("attention", list(attention.variants()), "the registry's variants")
cli.subset_of("pretrain", list(pretraining.OBJECTIVES), "the pretraining objectives")
flags.register_validator("override", lambda items: all("=" in item for item in items),
                         "must be field=value, e.g. data_cache_dir=/tmp/data")


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return (f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600
          else f"{seconds // 60}m{seconds % 60:02d}s")


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _command() -> str:
  """This invocation, to print above the tables it made."""
  return shlex.join(["python", "-m", "experiments.compare", *sys.argv[1:]])


def _label(variant: str, pretrain: str) -> str:
  """A run group's name in the tables and figures: the variant, and its pretraining."""
  return variant if pretrain == "none" else f"{variant} + {pretrain}"


def _variant_configs() -> dict[str, tuple[str, dict]]:
  """label (`_label`) -> (config spec, its config as JSON), checked by loading every spec."""
  path, _, arg = _CONFIG.value.partition(":")
  given = {item.partition("=")[0] for item in arg.split(",")}
  if given & {"attention", "size", "pretrain"}:
    raise errors.ConfigError("choose the variants with --attention, the size with --size and "
                             f"the pretraining with --pretrain, not in --config={_CONFIG.value}")
  configs = {}
  for pretrain in dict.fromkeys(_PRETRAIN.value or ["none"]):
    for variant in dict.fromkeys(_ATTENTION.value or attention.variants()):
      # pretrain=none is the config's default: not passed, for configs without the argument.
      extra = [f"attention={variant}", f"size={_SIZE.value}",
               *([f"pretrain={pretrain}"] if pretrain != "none" else [])]
      spec = f"{path}:{','.join(filter(None, (arg, *extra)))}"
      # A config file that does not take these arguments fails here, in one line.
      configs[_label(variant, pretrain)] = spec, json.loads(
          train.resolve(common.load_config(spec)).to_json_best_effort())
  return configs


def _config_overrides() -> list[str]:
  return [f"--config.{item}" for item in _OVERRIDES.value]


# ---------------------------------------------------------------------------------------------
# The sweep: one training process per (variant, seed).


@dataclasses.dataclass(frozen=True)
class Run:
  variant: str  # the group's label: variant, and its pretraining (`_label`)
  seed: int
  workdir: str

  @property
  def name(self) -> str:
    return f"{self.variant} seed {self.seed}"

  def file(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  @property
  def finished(self) -> bool:
    return os.path.exists(self.file("results.json"))

  @property
  def wall_time_s(self) -> float | None:
    """Seconds of every launch of this run by a sweep, once it has finished."""
    path = self.file("wall_time.json")
    return _read_json(path)["seconds"] if self.finished and os.path.exists(path) else None


def _identity(config: dict) -> tuple:
  """What a sweep sets in a run's config: task, size, seed, attention variant and the
  pretraining objective."""
  attention = config["attention"]
  return (config["task"], config["size"], config["seed"], attention["name"],
          attention.get("dilation"), config.get("pretrain", {}).get("objective", "none"))


def _check_reusable(run: Run, config: dict) -> None:
  wanted = dict(config, seed=run.seed)
  found = _read_json(run.file("config.json"))
  if _identity(found) != _identity(wanted):
    raise errors.ConfigError(
        f"{run.workdir} holds a run of another config (task, size, seed, attention, pretrain: "
        f"{_identity(found)}, not {_identity(wanted)}); use a new --workdir")


def _add_wall_time(run: Run, seconds: float) -> None:
  path = run.file("wall_time.json")
  total = _read_json(path) if os.path.exists(path) else {"seconds": 0.0, "launches": 0}
  harness.write_json(path, {"seconds": total["seconds"] + seconds,
                            "launches": total["launches"] + 1})


def _last_line(path: str) -> str:
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  return lines[-1] if lines else "no output"


def _is_primary() -> bool:
  """Whether this is the first (or only) process of a launch on several hosts."""
  return cli.launch().process_id_before_start() == 0


def _train(run: Run, spec: str) -> None:
  """Trains (or resumes) one run in its own process; its output goes to `log.txt`, and its
  stdout (the trainer's progress lines) to this console too. A process other than the
  first of several hosts runs its share of the run and writes nothing."""
  os.makedirs(run.workdir, exist_ok=True)
  command = [sys.executable, "-m", "experiments.train", f"--config={spec}",
             f"--config.seed={run.seed}", *_config_overrides(), f"--workdir={run.workdir}",
             *cli.launch_args()]
  if not _is_primary():
    if subprocess.run(command).returncode:
      raise errors.UserError(f"the run {run.name} failed on this host; its error is above")
    return
  start = time.time()
  with open(run.file("log.txt"), "a") as log:
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    # stderr (library logging) goes straight to the file; stdout is read to its end here.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
      for line in process.stdout:
        log.write(line)
        log.flush()
        print(f"  {run.name} | {line.rstrip()}", flush=True)
      process.wait()
    finally:
      if process.poll() is None:  # interrupted here: stop the run too
        process.terminate()
        process.wait()
      _add_wall_time(run, time.time() - start)
  if process.returncode:
    raise errors.UserError(f"the run {run.name} failed (exit {process.returncode}): "
                           f"{_last_line(run.file('log.txt'))}; its output: "
                           f"{run.file('log.txt')}")


def _eta(runs: list[Run]) -> str:
  """The remaining time of the sweep, from the wall times of its finished runs."""
  times = [run.wall_time_s for run in runs if run.wall_time_s is not None]
  left = sum(not run.finished for run in runs)
  if not times or not left:
    return ""
  mean = statistics.mean(times)
  runs = f"{left} run{'s' if left > 1 else ''}"
  return f"; sweep ETA {_duration(mean * left)} ({runs} x {_duration(mean)})"


def sweep(configs: dict[str, tuple[str, dict]]) -> list[Run]:
  """Trains every (variant, seed) that has not finished, `--parallel` at a time in order;
  returns all the runs. A failed run stops the sweep (the runs training then finish)."""
  runs = [Run(label, seed, os.path.join(_WORKDIR.value,
                                        f"{label.replace(' + ', '_')}_seed{seed}"))
          for seed in range(_SEEDS.value) for label in configs]

  def start(index: int, run: Run) -> None:
    spec, config = configs[run.variant]
    header = f"[run {index}/{len(runs)}] {run.name}"
    if run.finished:
      _check_reusable(run, config)
      print(f"{header}: reusing the finished run in {run.workdir}", flush=True)
      return
    resumed = " (resuming)" if os.path.exists(run.file("config.json")) else ""
    print(f"{header}: training in {run.workdir}{resumed}{_eta(runs)}", flush=True)
    _train(run, spec)

  with concurrent.futures.ThreadPoolExecutor(_PARALLEL.value) as pool:
    futures = [pool.submit(start, index, run) for index, run in enumerate(runs, 1)]
    try:
      for future in futures:
        future.result()
    except BaseException:
      pool.shutdown(cancel_futures=True)
      raise
  return runs


# ---------------------------------------------------------------------------------------------
# The comparison table and figures.

COMPARISON_COLUMNS = ("variant", "pretrain", "seeds", "test_accuracy_mean", "test_accuracy_std",
                      "best_val_accuracy_mean", "best_val_accuracy_std", "steps_per_sec",
                      "peak_memory_gb", "num_params", "wall_time_s")


def _mean(values: list) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.mean(values) if values else None


def _std(values: list[float]) -> float | None:
  """The sample standard deviation over seeds; None for one seed."""
  return statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: list[Run]) -> list[dict]:
  """One row per variant: its runs' results, averaged over seeds."""
  rows = []
  for variant in dict.fromkeys(run.variant for run in runs):
    mine = [run for run in runs if run.variant == variant]
    results = [_read_json(run.file("results.json")) for run in mine]
    if any("test_accuracy" not in r for r in results):
      raise errors.UserError(f"{mine[0].workdir}/results.json has no test_accuracy: compare "
                             "reports classification tasks")
    test = [r["test_accuracy"] for r in results]
    val = [r["best_val_accuracy"] for r in results]
    rows.append({
        "variant": variant.split(" + ")[0],
        "pretrain": results[0].get("pretrain_objective", "none"), "seeds": len(mine),
        "test_accuracy_mean": statistics.mean(test), "test_accuracy_std": _std(test),
        "best_val_accuracy_mean": statistics.mean(val), "best_val_accuracy_std": _std(val),
        "steps_per_sec": _mean([r["steps_per_sec"] for r in results]),
        "peak_memory_gb": _mean([r["peak_memory_gb"] for r in results]),
        "num_params": results[0]["num_params"],
        "wall_time_s": _mean([run.wall_time_s for run in mine]),
        "majority_class_rate": results[0].get("majority_class_rate"),
        "devices": results[0]["devices"],
    })
  return rows


def _percent(mean: float, std: float | None) -> str:
  return f"{100 * mean:.1f}%" + ("" if std is None else f" ± {100 * std:.1f}")


def comparison_markdown(rows: list[dict], task: str) -> str:
  majority = rows[0]["majority_class_rate"]
  return harness.markdown_page(
      f"# Attention variants on {task}, size {_SIZE.value}",
      f"Made by `{_command()}`",
      harness.markdown_table(
          ["variant", "pretrain", "seeds", "test accuracy", "best val accuracy", "steps/s",
           "peak memory (GB)", "parameters", "wall time per run"], "llrrrrrrr",
          ([row["variant"], row["pretrain"], row["seeds"],
            _percent(row["test_accuracy_mean"], row["test_accuracy_std"]),
            _percent(row["best_val_accuracy_mean"], row["best_val_accuracy_std"]),
            harness.fmt(row["steps_per_sec"], ".2f"), harness.fmt(row["peak_memory_gb"], ".2f"),
            f"{row['num_params']:,}",
            "" if row["wall_time_s"] is None else _duration(row["wall_time_s"])]
           for row in rows)),
      f"Accuracies: mean ± sample standard deviation over the seeds (config.seed 0 to "
      f"{_SEEDS.value - 1}); test accuracy is that of the best validation checkpoint. Steps/s "
      "(of fine-tuning, after compilation), peak memory (the accelerator's, or the process's "
      "peak RSS on CPU) and wall time (pretraining included) are means over seeds, on "
      f"{rows[0]['devices']}. Pretrain: none trains from scratch; mlm or causal self-pretrains "
      "on the training inputs first (`lra.pretraining`)."
      + ("" if majority is None else f" Majority class of the test split: {100 * majority:.1f}%."))


def write_comparison(runs: list[Run], task: str) -> str:
  """Writes comparison.{md,csv} and the two figures; returns the Markdown."""
  from experiments import plotting  # pylint: disable=g-import-not-at-top  (matplotlib: slow import)
  rows = summarize(runs)
  out = _WORKDIR.value
  text = comparison_markdown(rows, task)
  harness.write_outputs(out, "comparison", markdown=text, columns=COMPARISON_COLUMNS, rows=rows)
  seeds = f"{_SEEDS.value} seed{'s' if _SEEDS.value > 1 else ''}"
  plotting.seed_curves(
      {variant: [run.file("metrics.jsonl") for run in runs if run.variant == variant]
       for variant in dict.fromkeys(run.variant for run in runs)},
      "val_accuracy", os.path.join(out, "val_accuracy.png"), ylabel="validation accuracy (%)",
      scale=100, title=f"{task} {_SIZE.value}: mean over {seeds}"
            + (", band from lowest to highest" if _SEEDS.value > 1 else ""),
      baseline=rows[0]["majority_class_rate"], baseline_label="majority class")
  plotting.error_bar_scatter(
      {_label(row["variant"], row["pretrain"]): (
          row["steps_per_sec"] or 0.0, 100 * row["test_accuracy_mean"],
          None if row["test_accuracy_std"] is None else 100 * row["test_accuracy_std"])
       for row in rows},
      os.path.join(out, "accuracy_vs_throughput.png"), xlabel="training steps/s",
      ylabel="test accuracy (%)",
      title=f"{task} {_SIZE.value}: {seeds}" + (", ± std" if _SEEDS.value > 1 else ""))
  return text


def main(argv):
  del argv
  configs = _variant_configs()
  task = next(iter(configs.values()))[1]["task"]
  os.makedirs(_WORKDIR.value, exist_ok=True)
  if _EFFICIENCY.value:
    print(efficiency.run(configs, task, _SIZE.value, _config_overrides(), out=_WORKDIR.value,
                         command=_command()))
    print(f"wrote {_WORKDIR.value}/efficiency.{{md,csv,png}}")
    return
  start = time.time()
  runs = sweep(configs)
  if not _is_primary():
    return
  print()
  print(write_comparison(runs, task))
  print(f"sweep done in {_duration(time.time() - start)}; wrote {_WORKDIR.value}/"
        "{comparison.md,comparison.csv,val_accuracy.png,accuracy_vs_throughput.png}")


if __name__ == "__main__":
  cli.run(main)

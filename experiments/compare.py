r"""Compares attention variants on one task: accuracy, speed, memory, and their figures.

  python -m experiments.compare --config=configs/listops.py \
      [--attention=<variants of the registry; default: every one>] --size=small --seeds=3 \
      [--pretrain=none,mlm] --workdir=results/compare_listops_small

Trains one run per (variant, pretraining, seed) in `--workdir/<variant>_seed<k>/` (from
scratch) or `--workdir/<variant>_<objective>_seed<k>/` (self-pretrained, `lra.pretraining`:
the config argument `pretrain=<objective>`), each by
`python -m experiments.train` in its own process (so that its peak memory is its own), every
variant of a seed before the next seed. A run whose `results.json` exists is reused; an
interrupted one is relaunched on its workdir and resumes from its last checkpoint. A run's
output goes to its `log.txt` (its progress lines are shown here too) and the wall time of its
launches to its `wall_time.json`. Then writes, in --workdir:
  comparison.md, comparison.csv  per variant and pretraining: test accuracy mean +- std
                                 over seeds, best
                                 validation accuracy, steps/s, peak memory, parameters,
                                 wall time per run (pretraining included)
  val_accuracy.png               validation accuracy against step, mean over seeds, shaded
                                 from the lowest to the highest seed
  accuracy_vs_throughput.png     test accuracy against training steps/s

  python -m experiments.compare --efficiency --config=configs/listops.py --size=small \
      --workdir=results/efficiency [--lengths=512,1024,... --batch=1]

Measures the training steps/s and peak memory of each variant's whole model at each length
(LRA's Table 2, Longformer's Figure 1) with `experiments.bench_model` (a fresh process per
measurement, on random tokens) and writes efficiency.md, efficiency.csv and efficiency.png:
the measurements relative to full attention (the first variant compared whose mechanism the
registry marks quadratic), the length from which each variant trains faster than it, and how
its memory and time grow with length. Quadratic variants stop at --full_max_length, or where
their estimated memory exceeds --memory_limit_gb.
"""

import csv
import dataclasses
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

from absl import flags
import psutil

from experiments import cli
from lra import attention
from lra import config_utils
from lra import errors

_CONFIG = flags.DEFINE_string(
    "config", None, "Task config file, e.g. configs/listops.py; arguments after ':' other "
    "than attention and size go to every run, e.g. configs/listops.py:window=16.")
_ATTENTION = flags.DEFINE_list("attention", None,
                               "Variants to compare: registry variants (default: every one, "
                               f"now {', '.join(attention.variants())}).")
_SIZE = flags.DEFINE_enum("size", "small", config_utils.SIZES, "Size of every run.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Runs per variant, with config.seed 0, 1, ...")
_PRETRAIN = flags.DEFINE_list(
    "pretrain", ["none"], "Self-pretraining objectives to compare, each crossed with every "
    f"variant: {', '.join(config_utils.PRETRAIN_OBJECTIVES)} (none: from scratch).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the runs and of the outputs.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "A config `field=value` for every run or measurement (repeatable), "
    "e.g. --override=data_cache_dir=/tmp/data.")
_EFFICIENCY = flags.DEFINE_bool(
    "efficiency", False, "Measure training speed and memory against length instead of "
    "training (the flags below).")
_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192", "16384"],
                             "--efficiency: sequence lengths.")
_BATCH = flags.DEFINE_integer("batch", 1, "--efficiency: batch size.")
_STEPS = flags.DEFINE_integer("steps", 3, "--efficiency: timed steps after the compiling one.")
_FULL_MAX_LENGTH = flags.DEFINE_integer(
    "full_max_length", 8192, "--efficiency: longest length measured for quadratic variants.")
_MEMORY_LIMIT_GB = flags.DEFINE_float(
    "memory_limit_gb", None, "--efficiency: skip a quadratic variant where its estimated memory "
    "exceeds this many GB (default: half the machine's memory).")
flags.mark_flags_as_required(["config", "workdir"])

flags.register_validator(
    "attention", lambda names: names is None or (names and set(names) <= set(
        attention.variants())),
    f"must be a comma-separated subset of the registry's variants "
    f"({','.join(attention.variants())})")
flags.register_validator(
    "pretrain", lambda names: names and set(names) <= set(config_utils.PRETRAIN_OBJECTIVES),
    f"must be a comma-separated subset of {','.join(config_utils.PRETRAIN_OBJECTIVES)}")
flags.register_validator("lengths", lambda lengths: all(s.isdigit() and int(s) > 0
                                                        for s in lengths),
                         "must be positive integers, e.g. 1024,2048")
flags.register_validator("override", lambda items: all("=" in item for item in items),
                         "must be field=value, e.g. data_cache_dir=/tmp/data")
for _name in ("seeds", "batch", "steps"):
  flags.register_validator(_name, lambda value: value >= 1, "must be >= 1")

# Bytes of full attention's training step per score (per layer, example, head and query-key
# pair): 4.1 GB peak RSS measured for 2 layers x batch 8 x 4 heads at length 2048.
_FULL_BYTES_PER_SCORE = 16


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return (f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600
          else f"{seconds // 60}m{seconds % 60:02d}s")


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _write_csv(path: str, columns: tuple[str, ...], rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


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
  for pretrain in dict.fromkeys(_PRETRAIN.value):
    for variant in dict.fromkeys(_ATTENTION.value or attention.variants()):
      # pretrain=none is the config's default: not passed, for configs without the argument.
      extra = [f"attention={variant}", f"size={_SIZE.value}",
               *([f"pretrain={pretrain}"] if pretrain != "none" else [])]
      spec = f"{path}:{','.join(filter(None, (arg, *extra)))}"
      # A config file that does not take these arguments fails here, in one line.
      configs[_label(variant, pretrain)] = spec, json.loads(
          config_utils.load_config(spec).to_json_best_effort())
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
  _write_json(path, {"seconds": total["seconds"] + seconds, "launches": total["launches"] + 1})


def _last_line(path: str) -> str:
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  return lines[-1] if lines else "no output"


def _train(run: Run, spec: str) -> None:
  """Trains (or resumes) one run in its own process; its output goes to `log.txt`, and its
  stdout (the trainer's progress lines) to this console too."""
  os.makedirs(run.workdir, exist_ok=True)
  command = [sys.executable, "-m", "experiments.train", f"--config={spec}",
             f"--config.seed={run.seed}", *_config_overrides(), f"--workdir={run.workdir}"]
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
  return f"; sweep ETA {_duration(mean * left)} ({left} run{'s' if left > 1 else ''} x {_duration(mean)})"


def sweep(configs: dict[str, tuple[str, dict]]) -> list[Run]:
  """Trains every (variant, seed) that has not finished; returns all the runs."""
  runs = [Run(label, seed, os.path.join(_WORKDIR.value,
                                        f"{label.replace(' + ', '_')}_seed{seed}"))
          for seed in range(_SEEDS.value) for label in configs]
  for index, run in enumerate(runs, 1):
    spec, config = configs[run.variant]
    header = f"[run {index}/{len(runs)}] {run.name}"
    if run.finished:
      _check_reusable(run, config)
      print(f"{header}: reusing the finished run in {run.workdir}", flush=True)
      continue
    resumed = " (resuming)" if os.path.exists(run.file("config.json")) else ""
    print(f"{header}: training in {run.workdir}{resumed}{_eta(runs)}", flush=True)
    _train(run, spec)
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


def _fmt(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def comparison_markdown(rows: list[dict], task: str) -> str:
  majority = rows[0]["majority_class_rate"]
  lines = [
      f"# Attention variants on {task}, size {_SIZE.value}",
      "",
      f"Made by `{_command()}`",
      "",
      "| variant | pretrain | seeds | test accuracy | best val accuracy | steps/s "
      "| peak memory (GB) | parameters | wall time per run |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in rows:
    wall = "" if row["wall_time_s"] is None else _duration(row["wall_time_s"])
    lines.append(
        f"| {row['variant']} | {row['pretrain']} | {row['seeds']} "
        f"| {_percent(row['test_accuracy_mean'], row['test_accuracy_std'])} "
        f"| {_percent(row['best_val_accuracy_mean'], row['best_val_accuracy_std'])} "
        f"| {_fmt(row['steps_per_sec'], '.2f')} | {_fmt(row['peak_memory_gb'], '.2f')} "
        f"| {row['num_params']:,} | {wall} |")
  lines += [
      "",
      f"Accuracies: mean ± sample standard deviation over the seeds (config.seed 0 to "
      f"{_SEEDS.value - 1}); test accuracy is that of the best validation checkpoint. Steps/s "
      "(of fine-tuning, after compilation), peak memory (the accelerator's, or the process's "
      "peak RSS on CPU) and wall time (pretraining included) are means over seeds, on "
      f"{rows[0]['devices']}. Pretrain: none trains from scratch; mlm or causal self-pretrains "
      "on the training inputs first (`lra.pretraining`)."
      + ("" if majority is None else f" Majority class of the test split: {100 * majority:.1f}%."),
  ]
  return "\n".join(lines) + "\n"


def write_comparison(runs: list[Run], task: str) -> str:
  """Writes comparison.{md,csv} and the two figures; returns the Markdown."""
  from experiments import plotting  # pylint: disable=g-import-not-at-top  (matplotlib: slow import)
  rows = summarize(runs)
  out = _WORKDIR.value
  _write_csv(os.path.join(out, "comparison.csv"), COMPARISON_COLUMNS, rows)
  text = comparison_markdown(rows, task)
  with open(os.path.join(out, "comparison.md"), "w") as f:
    f.write(text)
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


# ---------------------------------------------------------------------------------------------
# Efficiency: training speed and memory against length.

EFFICIENCY_COLUMNS = ("variant", "length", "batch", "status", "steps_per_sec",
                      "steps_per_sec_vs_full", "peak_memory_gb", "memory_vs_full",
                      "compile_and_first_step_s")


def _quadratic(config: dict) -> bool:
  return attention.get(config["attention"]["name"]).quadratic


def _quadratic_skip(config: dict, length: int, memory_limit_gb: float) -> str | None:
  """Why a quadratic variant is not measured at `length`, or None."""
  if not _quadratic(config):
    return None
  if length > _FULL_MAX_LENGTH.value:
    return f"skipped: length > --full_max_length={_FULL_MAX_LENGTH.value}"
  model = config["model"]
  estimate_gb = (_FULL_BYTES_PER_SCORE * model["num_layers"] * _BATCH.value
                 * model["num_heads"] * length**2 / 1e9)
  if estimate_gb > memory_limit_gb:
    return (f"skipped: estimated {estimate_gb:.0f} GB > --memory_limit_gb="
            f"{memory_limit_gb:.1f}")
  return None


def _bench(spec: str, length: int) -> dict:
  """One `experiments.bench_model` measurement, or why it failed."""
  command = [sys.executable, "-m", "experiments.bench_model", f"--config={spec}",
             *_config_overrides(), f"--config.batch_size={_BATCH.value}",
             f"--config.data.max_length={length}", f"--steps={_STEPS.value}",
             f"--out={_WORKDIR.value}"]
  completed = subprocess.run(command, capture_output=True, text=True, check=False)
  if completed.returncode:
    return {"status": f"failed: {cli.child_failure(completed)}"}
  # bench_model appends its record to bench_model.jsonl; this one is the last line.
  with open(os.path.join(_WORKDIR.value, "bench_model.jsonl")) as f:
    record = json.loads(f.readlines()[-1])
  return {"status": "ok", "steps_per_sec": record["steps_per_sec"],
          "peak_memory_gb": record["peak_rss_gb"],
          "compile_and_first_step_s": record["compile_and_first_step_s"],
          "device": record["device"]}


def _relative_to_full(rows: list[dict], full_variant: str | None) -> None:
  full = {r["length"]: r for r in rows if r["variant"] == full_variant and r["status"] == "ok"}
  for row in rows:
    if row["status"] == "ok" and row["length"] in full:
      row["steps_per_sec_vs_full"] = row["steps_per_sec"] / full[row["length"]]["steps_per_sec"]
      row["memory_vs_full"] = row["peak_memory_gb"] / full[row["length"]]["peak_memory_gb"]


def efficiency_findings(rows: list[dict], full_variant: str | None) -> list[str]:
  """Where each variant overtakes full attention, and how its memory and time grow."""
  lines = []
  for variant in dict.fromkeys(r["variant"] for r in rows):
    done = [r for r in rows if r["variant"] == variant and r["status"] == "ok"]
    compared = [r for r in done if r.get("steps_per_sec_vs_full") is not None]
    if variant != full_variant and compared:
      # The first length from which it stays faster, so that one noisy point does not count.
      faster = [r["steps_per_sec_vs_full"] > 1 for r in compared]
      first = next((i for i in range(len(faster)) if all(faster[i:])), None)
      if first is None:
        lines.append(f"{variant} is not faster than {full_variant} at the longest length "
                     f"measured for both ({compared[-1]['length']})")
      elif first == 0:
        lines.append(f"{variant} is faster than {full_variant} at every length measured for "
                     f"both (from {compared[0]['length']})")
      else:
        lines.append(f"crossover: {variant} is faster than {full_variant} from length "
                     f"{compared[first]['length']} on (slower at {compared[first - 1]['length']})")
    if len(done) >= 2:
      a, b = done[-2], done[-1]
      power = lambda key: math.log(b[key] / a[key]) / math.log(b["length"] / a["length"])
      lines.append(f"{variant}, from length {a['length']} to {b['length']}: peak memory grows "
                   f"as length^{power('peak_memory_gb'):.2f}, time per step as "
                   f"length^{-power('steps_per_sec'):.2f}")
  return lines


def _device(rows: list[dict]) -> str:
  return next((r["device"] for r in rows if r["status"] == "ok"), "no device")


def efficiency_markdown(rows: list[dict], task: str, full_variant: str | None) -> str:
  lines = [
      f"# Training speed and memory against length: {task}, size {_SIZE.value}, "
      f"batch {_BATCH.value}",
      "",
      f"Made by `{_command()}`",
      "",
      f"| variant | length | steps/s | steps/s vs {full_variant} | peak memory (GB) "
      f"| memory vs {full_variant} | note |",
      "|---|---:|---:|---:|---:|---:|---|",
  ]
  for row in rows:
    note = "" if row["status"] == "ok" else row["status"]
    lines.append(
        f"| {row['variant']} | {row['length']} | {_fmt(row.get('steps_per_sec'), '.3f')} "
        f"| {_fmt(row.get('steps_per_sec_vs_full'), '.2f')} "
        f"| {_fmt(row.get('peak_memory_gb'), '.2f')} | {_fmt(row.get('memory_vs_full'), '.2f')} "
        f"| {note} |")
  lines += [
      "",
      f"Each row: the jitted train step of the whole model (`experiments.bench_model`, random "
      f"tokens, no padding) in a fresh process on {_device(rows)} with {os.cpu_count()} cores; "
      f"steps/s from the median of {_STEPS.value} steps after the compiling one; peak "
      "memory is the process's peak RSS (GB, 1e9 bytes), JAX's runtime included.",
      "",
      *(f"- {line}" for line in efficiency_findings(rows, full_variant)),
  ]
  return "\n".join(lines) + "\n"


def efficiency(configs: dict[str, tuple[str, dict]], task: str) -> str:
  """Measures every (length, variant), lengths outside so that machine noise falls on all
  variants alike; writes efficiency.{md,csv,png} and returns the Markdown."""
  from experiments import plotting  # pylint: disable=g-import-not-at-top  (matplotlib: slow import)
  memory_limit_gb = _MEMORY_LIMIT_GB.value or psutil.virtual_memory().total / 2e9
  plan = [(variant, int(n)) for n in _LENGTHS.value for variant in configs]
  rows = []
  for index, (variant, length) in enumerate(plan, 1):
    print(f"[{index}/{len(plan)}] {variant} length {length} ...", flush=True)
    spec, config = configs[variant]
    skip = _quadratic_skip(config, length, memory_limit_gb)
    row = {"variant": variant, "length": length, "batch": _BATCH.value,
           **({"status": skip} if skip else _bench(spec, length))}
    rows.append(row)
    print(f"  {row['steps_per_sec']:.3f} steps/s, peak memory {row['peak_memory_gb']:.2f} GB"
          if row["status"] == "ok" else f"  {row['status']}", flush=True)
  # Full attention: the first quadratic variant compared (LRA's and Longformer's reference).
  full_variant = next((v for v, (_, config) in configs.items() if _quadratic(config)), None)
  _relative_to_full(rows, full_variant)
  out = _WORKDIR.value
  _write_csv(os.path.join(out, "efficiency.csv"), EFFICIENCY_COLUMNS, rows)
  text = efficiency_markdown(rows, task, full_variant)
  with open(os.path.join(out, "efficiency.md"), "w") as f:
    f.write(text)
  for row in rows:  # the plot's time axis: lower is better, as in Longformer's Figure 1
    if row["status"] == "ok":
      row["step_s"] = 1 / row["steps_per_sec"]
  plotting.versus_length(
      rows, os.path.join(out, "efficiency.png"), name_key="variant",
      panels=[("step_s", "seconds per training step", "training step time"),
              ("peak_memory_gb", "peak RSS (GB)", "peak memory")],
      title=f"{task} {_SIZE.value} model, batch {_BATCH.value}, whole train step, "
            f"{_device(rows)} ({os.cpu_count()} cores)")
  return text


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  configs = _variant_configs()
  task = next(iter(configs.values()))[1]["task"]
  os.makedirs(_WORKDIR.value, exist_ok=True)
  if _EFFICIENCY.value:
    print(efficiency(configs, task))
    print(f"wrote {_WORKDIR.value}/efficiency.{{md,csv,png}}")
    return
  start = time.time()
  runs = sweep(configs)
  print()
  print(write_comparison(runs, task))
  print(f"sweep done in {_duration(time.time() - start)}; wrote {_WORKDIR.value}/"
        "{comparison.md,comparison.csv,val_accuracy.png,accuracy_vs_throughput.png}")


if __name__ == "__main__":
  cli.run(main)

r"""Accelerator benchmark: the Pallas kernels against cuDNN, FlexAttention, tokamax and XLA,
forward + backward, timed on the device.

  python -m experiments.bench.gpu --out=results/bench_gpu        # (make bench-gpu)

In one process (FlexAttention in one more), in this order, each row timed as it comes:
  1. The peers' shape (`--peer_shape`, FlashAttention-3's and FlexAttention's published one:
     4 x 16384 x 16 heads x 64, bf16) at the causal windows `--peer_windows` (256, 512):
     `--peer_methods`, by default our causal kernels (split and fused backward), cuDNN's
     causal window, tokamax's and FlexAttention's (`experiments.bench.flex_attention`, run by
     this Python when it imports torch, timed with CUDA events).
  2. One train step of every `--models` task config (`--model_size`, paper by default: their
     attention dropout on), on the kernels and on the XLA core (`implementation=pallas|xla`).
  3. Forward + backward against length (`--lengths`, 4K..64K; batch 1 x `--heads` 8 x
     `--head_dim` 64, `--dtype` bf16, one-sided `--window` 256) of `--methods`.
  4. The shapes of two task configs (`--task_shapes`) for local attention.
Rows are `harness.rows`: the registry's variants on one implementation
(`local_causal_pallas`; `_fused`: the fused GPU backward with an atomic dQ) and the named
baselines (`cudnn_full`, `cudnn_causal_window` = `jax.nn.dot_product_attention(
implementation="cudnn", local_window_size=(w, 0))`, `tokamax_local`, `tokamax_causal`,
`flex_causal_window`). A row that cannot run here (no GPU, no tokamax, no torch) is kept with
the reason, and so is one left when the run passes `--time_budget_s`.

Time is the device's: `harness.time_on_device`, the kernels' time per call from CUPTI (the
host's dispatch and synchronisation are not in it), the median of `--repeats` calls after
`--warmup`; the host's time of a call waited for sits beside it. Useful TFLOP/s counts 3 x the
forward FLOPs of the two matmuls over the pairs the pattern attends, against the bf16 matmul
rate measured on the device in the same process. Memory is XLA's compiled footprint of the
step. Writes bench.{md,csv,json,png} in `--out` after every row, and prints the ratios
against cuDNN's causal window, FlexAttention and tokamax, of the train steps (XLA core over
kernels) and the percentage of the matmul rate.

  python -m experiments.bench.gpu --sweep_launch

instead measures the launch settings of the Pallas GPU kernels (`--launch_candidates`, warps
and stages) on `local_pallas` and `local_causal_pallas` at `--sweep_length`, each kernel
(`forward`, `d_query`, `d_key_value`) timed on its own from CUPTI's kernel names, and writes
the fastest of each into this GPU's entry (`launch.device_kind()`) of the table that
`lra.attention.kernels.launch` reads (`--launch_table`); launch_sweep.{md,csv,json} in `--out`.
"""

import dataclasses
import importlib.metadata
import json
import os
import sys
import time

from absl import flags
import jax

from experiments import cli
from experiments.bench import harness
from lra import errors
from lra.attention.kernels import launch

FLAGS = flags.FLAGS
# What --methods and --peer_methods may name: every row of the harness but HF's (a CPU
# baseline of `experiments.bench.attention`).
METHODS = [name for name in harness.row_names() if name != harness.HF_LONGFORMER]
LENGTH_METHODS = ("local_pallas", "local_causal_pallas", "local_causal_pallas_fused",
                  "dilated_pallas", "longformer_pallas", "local_xla", "cudnn_full",
                  "cudnn_causal_window", "tokamax_local", "tokamax_causal")
PEER_METHODS = ("local_causal_pallas", "local_causal_pallas_fused", "cudnn_causal_window",
                "tokamax_causal", harness.FLEX_CAUSAL_WINDOW)
TASK_SHAPE_METHODS = ("local_pallas", "local_xla", "tokamax_local")
SWEEP_METHODS = ("local_pallas", "local_causal_pallas")
# (ours, theirs): the summary prints time(theirs) / time(ours) wherever both were measured.
RATIOS = (("local_causal_pallas", "cudnn_causal_window"),
          ("local_causal_pallas_fused", "cudnn_causal_window"),
          ("local_causal_pallas", harness.FLEX_CAUSAL_WINDOW),
          ("local_causal_pallas_fused", harness.FLEX_CAUSAL_WINDOW),
          ("local_pallas", "tokamax_local"), ("local_causal_pallas", "tokamax_causal"),
          ("local_pallas", "cudnn_full"), ("local_causal_pallas_fused", "local_causal_pallas"))
CSV_COLUMNS = ("group", "method", "batch", "length", "heads", "head_dim", "window", "status",
               "device_s", "timer", "host_s", "useful_tflops", "pct_of_matmul", "memory_gb")
TRAIN_COLUMNS = ("task", "implementation", "attention", "attention_dropout", "batch", "length",
                 "status", "device_s", "timer", "host_s", "xla_over_pallas")
SWEEP_COLUMNS = ("candidate", "method", "status", "device_s", "timer", "forward_s",
                 "d_query_s", "d_key_value_s", "attributed_by")


def define_flags() -> None:
  """This benchmark's flags; defined when it runs, so that importing it defines none."""
  flags.DEFINE_list("lengths", ["4096", "8192", "16384", "32768", "65536"],
                    "Sequence lengths of the rows against length.")
  flags.DEFINE_integer("window", 256, "One-sided window w of the rows against length.")
  flags.DEFINE_integer("heads", 8, "Attention heads of the rows against length.", lower_bound=1)
  flags.DEFINE_integer("head_dim", 64, "Dimension of each head.", lower_bound=1)
  flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"],
                    "Dtype of q, k, v and of the matmul-rate measurement.")
  flags.DEFINE_list("methods", list(LENGTH_METHODS),
                    "Rows against length (see the module docstring).")
  flags.DEFINE_string("peer_shape", "4x16384x16x64",
                      "batch x length x heads x head_dim of the peers' rows.")
  flags.DEFINE_list("peer_windows", ["256", "512"], "One-sided windows of the peers' rows.")
  flags.DEFINE_list("peer_methods", list(PEER_METHODS), "Rows at the peers' shape.")
  flags.DEFINE_list(
      "task_shapes", ["pathfinder:512x1024x4x8", "pathx:64x16384x2x16"],
      "Extra shapes as name:batch x length x heads x head_dim, measured for "
      f"{', '.join(TASK_SHAPE_METHODS)} where --methods has them.")
  flags.DEFINE_integer("xla_max_length", 16384,
                       "Longest length for local_xla (a loop of small kernels on GPU).")
  flags.DEFINE_list("models", list(harness.TASK_CONFIGS),
                    "Task configs whose train step is timed on the kernels and on the XLA "
                    "core (empty: none).")
  flags.DEFINE_string("model_size", "paper", "Size argument of those configs.")
  flags.DEFINE_list("model_implementations", ["pallas", "xla"],
                    "Implementations whose train steps are timed.")
  flags.DEFINE_integer("model_steps", 5, "Timed train steps of each config.", lower_bound=1)
  flags.DEFINE_integer("repeats", 20, "Timed calls of each attention row.", lower_bound=1)
  flags.DEFINE_integer("warmup", 3, "Untimed calls first (the first compiles).",
                       lower_bound=1)
  flags.DEFINE_integer("matmul_size", 8192,
                       "n of the n x n @ n x n matmul that measures the device's rate.",
                       lower_bound=1)
  flags.DEFINE_float("time_budget_s", 255,
                     "Rows not started this many seconds after the start are skipped "
                     "(written with the reason), so that the command ends in about five "
                     "minutes.")
  flags.DEFINE_string("out", "results/bench_gpu", "Folder of the outputs.")
  flags.DEFINE_bool("sweep_launch", False,
                    "Instead of the comparison: measure the kernels' launch settings and "
                    "write this GPU's entry of --launch_table.")
  flags.DEFINE_list("launch_candidates", ["4:2", "4:3", "8:2", "8:3", "8:4"],
                    "--sweep_launch: settings to try, each as num_warps:num_stages.")
  flags.DEFINE_integer("sweep_length", 16384, "--sweep_launch: the sequence length.",
                       lower_bound=1)
  flags.DEFINE_string("launch_table", launch.TABLE,
                      "--sweep_launch: the launch table written (default: the one the "
                      "kernels read).")
  flags.DEFINE_bool(
      "allow_cpu", False, "Run on a CPU too (interpret-mode kernels: for checking the "
      "command at tiny shapes, not for figures).")
  flags.register_validator("window", lambda w: w > 0, "must be > 0 (the one-sided window w)")
  cli.positive_ints("lengths", "4096,8192")
  cli.positive_ints("peer_windows", "256,512", allow_empty=True)
  cli.subset_of("methods", METHODS, "the harness's rows")
  cli.subset_of("peer_methods", METHODS, "the harness's rows")
  cli.subset_of("models", list(harness.TASK_CONFIGS), "the task configs")
  cli.subset_of("model_implementations", ["pallas", "xla"], "the implementations")
  flags.register_validator("peer_shape", lambda text: _dims(text) is not None,
                           "must be batch x length x heads x head_dim in positive integers, "
                           "e.g. 4x16384x16x64")
  flags.register_validator(
      "task_shapes", lambda specs: all(_dims(s.partition(":")[2]) for s in specs),
      "each must be name:batch x length x heads x head_dim, e.g. pathx:64x16384x2x16")
  flags.register_validator(
      "launch_candidates", lambda specs: bool(specs) and all(
          len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts)
          for parts in (spec.split(":") for spec in specs)),
      "each must be num_warps:num_stages in positive integers, e.g. 8:3")


def _dims(text: str) -> tuple[int, ...] | None:
  """`batch x length x heads x head_dim` as four positive ints, or None."""
  parts = text.split("x")
  if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
    return None
  return tuple(int(p) for p in parts)


# ---------------------------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class Planned:
  """One attention row to measure: `method` on `[batch, length, heads, head_dim]`."""

  group: str  # "peer", "length" or a task shape's name
  method: str
  shape: tuple[int, int, int, int]
  window: int

  def setup(self, dtype: str) -> harness.Setup:
    batch, _, heads, head_dim = self.shape
    return harness.Setup(window=self.window, heads=heads, head_dim=head_dim, batch=batch,
                         dtype=dtype)


def plan() -> list[Planned]:
  """The attention rows of the comparison, in measuring order (the module docstring)."""
  rows = [Planned("peer", method, _dims(FLAGS.peer_shape), int(window))
          for window in FLAGS.peer_windows for method in dict.fromkeys(FLAGS.peer_methods)]
  rows += [Planned("length", method, (1, int(length), FLAGS.heads, FLAGS.head_dim),
                   FLAGS.window)
           for length in FLAGS.lengths for method in dict.fromkeys(FLAGS.methods)]
  for spec in FLAGS.task_shapes:
    name, _, dims = spec.partition(":")
    rows += [Planned(name, method, _dims(dims), FLAGS.window)
             for method in TASK_SHAPE_METHODS if method in FLAGS.methods]
  return rows


# ---------------------------------------------------------------------------------------------
# Measurements.


def measure_attention(row: harness.Row, shape, dtype: str, *, repeats: int, warmup: int,
                      settings: dict | None = None) -> dict:
  """Device and host time, and compiled memory, of `row`'s forward + backward on random
  inputs of `shape`; `settings`: launch settings of the Pallas kernels, by kernel."""
  *inputs, cotangent = harness.random_inputs(row.inputs + 1, shape, dtype)
  args = (cotangent, *inputs)
  compiled = harness.trace_forward_backward(row, args, settings).lower().compile()
  memory = harness.compiled_memory_gb(compiled)
  host = harness.time_jax_calls(lambda: compiled(*args), warmup, repeats)
  device = harness.time_on_device(compiled, args, repeats=repeats)
  return {"device_s": device["median_s"], "timer": device["timer"],
          "fallback": device.get("fallback"), "kernel_s": device.get("kernel_s"),
          "device_times_s": device["times_s"], "host_s": host["median_s"],
          "memory_gb": memory and memory["memory_gb"]}


def measure_flex(planned: list[Planned], dtype: str) -> dict:
  """FlexAttention's rows of `planned`, measured by one process of
  `experiments.bench.flex_attention` with this Python: (shape, window) -> record."""
  cases = ",".join(f"{'x'.join(map(str, p.shape))}:{p.window}" for p in planned)
  record = harness.measure_in_child(
      [sys.executable, "-m", "experiments.bench.flex_attention", f"--cases={cases}",
       f"--dtype={dtype}", f"--repeats={FLAGS.repeats}", f"--warmup={FLAGS.warmup}"],
      cwd=harness.REPO)
  if record["status"] != "ok":
    return {(p.shape, p.window): {"status": record["status"]} for p in planned}
  return {(tuple(r["shape"]), r["window"]): {
      "status": "ok", "device_s": r["median_s"], "device_times_s": r["times_s"],
      "timer": record["timer"], "torch": record["torch"]} for r in record["rows"]}


def train_config(task: str, implementation: str, *, size: str):
  """`task`'s config at `size`, its attention on `implementation`."""
  config = harness.load_config(harness.task_config_spec(task, size))
  with config.unlocked():
    config.attention.implementation = implementation
  return config


def measure_train_step(config, *, steps: int) -> dict:
  """Device and host time per train step of `config`, the medians of `steps` steps."""
  train = harness.train_step(config)
  # The step donates its state; this one keeps it, so that every call starts from it.
  step = jax.jit(lambda state, batch: train.step(state, batch)[0])
  args = (train.state, train.batch)
  compiled = step.lower(*args).compile()
  host = harness.time_jax_calls(lambda: compiled(*args), 1, steps)
  device = harness.time_on_device(compiled, args, repeats=steps)
  return {"attention": config.attention.name,
          "attention_dropout": config.model.attention_dropout_rate,
          "batch": train.batch_size, "length": train.length, "status": "ok",
          "device_s": device["median_s"], "timer": device["timer"],
          "fallback": device.get("fallback"), "host_s": host["median_s"]}


def failure(error: Exception) -> str:
  """A failed row's status: the error's type and first line."""
  # One failed row (an unsupported shape, out of memory) must not lose the others.
  return f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


# ---------------------------------------------------------------------------------------------
# Outputs.


def _ms(seconds) -> str:
  return harness.fmt(seconds and 1e3 * seconds, ".3f")


def _note(row: dict, timer: str) -> str:
  """A row's status where it did not run, or its timer where it is not `timer`."""
  if row["status"] != "ok":
    return row["status"]
  return "" if row["timer"] == timer else f"timed by {row['timer']}"


def _attention_table(rows: list[dict], timer: str) -> list[str]:
  fmt = harness.fmt
  return harness.markdown_table(
      ["method", "batch x length x heads x head_dim", "window", "device (ms)",
       "host, synced (ms)", "useful TFLOP/s", "% of matmul rate", "memory (GB)", "note"],
      "llrrrrrrl",
      ([r["method"], f"{r['batch']} x {r['length']} x {r['heads']} x {r['head_dim']}",
        r["window"], _ms(r.get("device_s")), _ms(r.get("host_s")),
        fmt(r.get("useful_tflops"), ".1f"), fmt(r.get("pct_of_matmul"), ".1f"),
        fmt(r.get("memory_gb"), ".2f"), _note(r, timer)] for r in rows))


def _train_table(steps: list[dict], timer: str) -> list[str]:
  return harness.markdown_table(
      ["task", "attention", "attention dropout", "batch x length", "implementation",
       "device (ms)", "host, synced (ms)", "XLA core / kernels", "note"], "lllllrrrl",
      ([s["task"], s.get("attention", ""), s.get("attention_dropout", ""),
        f"{s['batch']} x {s['length']}" if "batch" in s else "", s["implementation"],
        _ms(s.get("device_s")), _ms(s.get("host_s")), harness.fmt(s.get("xla_over_pallas"), ".2f"),
        _note(s, timer)] for s in steps))


def ratio_lines(rows: list[dict], steps: list[dict], matmul_tflops: float) -> list[str]:
  """The summary: each `RATIOS` pair's time(theirs) / time(ours) on every shape both were
  measured at, the train steps' XLA core over kernels, and the percentage of the matmul rate
  of `local_pallas` and `local_causal_pallas`."""
  device = {(r["method"], _shape_label(r)): r["device_s"] for r in rows if r["status"] == "ok"}
  labels = list(dict.fromkeys(_shape_label(r) for r in rows))
  lines = []
  for ours, theirs in RATIOS:
    shared = [label for label in labels if (ours, label) in device and (theirs, label) in device]
    if shared:
      lines.append(f"time({theirs}) / time({ours}): " + ", ".join(
          f"{label} {device[theirs, label] / device[ours, label]:.2f}" for label in shared))
  measured = [s for s in steps if s.get("xla_over_pallas")]
  if measured:
    lines.append("train step, time(xla) / time(pallas): " + ", ".join(
        f"{s['task']} {s['xla_over_pallas']:.2f}" for s in measured))
  for method in ("local_pallas", "local_causal_pallas"):
    done = [r for r in rows if r["method"] == method and r.get("pct_of_matmul")]
    if done:
      lines.append(f"{method}, % of the measured matmul rate ({matmul_tflops:.1f} TFLOP/s): "
                   + ", ".join(f"{_shape_label(r)} {r['pct_of_matmul']:.1f}" for r in done))
  return lines


def _shape_label(row: dict) -> str:
  if row["group"] == "length":
    return str(row["length"])
  if row["group"] == "peer":
    return f"{row['batch']}x{row['length']}x{row['heads']}x{row['head_dim']} w={row['window']}"
  return row["group"]


def markdown(rows: list[dict], steps: list[dict], machine: dict) -> str:
  groups = list(dict.fromkeys(r["group"] for r in rows))
  blocks = [
      "# Accelerator benchmark: forward + backward, timed on the device",
      f"Device {machine['device']}; jax {machine['jax']}; commit {machine['commit']}; "
      f"{machine['dtype']}; matmul rate {machine['matmul_tflops']:.1f} TFLOP/s "
      f"({machine['matmul_n']}^3, timed like the rows). Device time: {machine['timer']}, the "
      f"median of {machine['repeats']} calls; host, synced: the median of as many calls each "
      "waited for. Useful TFLOP/s: 3 x the forward FLOPs over the attended pairs. Memory: "
      "XLA's compiled footprint of the step.",
  ]
  titles = {"peer": "The peers' shape, causal windows",
            "length": f"Against length (window {machine['window']})"}
  for group in groups:
    blocks += [f"## {titles.get(group, f'Task shape: {group}')}",
               _attention_table([r for r in rows if r["group"] == group], machine["timer"])]
  if steps:
    blocks += ["## Train steps of the task configs", _train_table(steps, machine["timer"])]
  lines = ratio_lines(rows, steps, machine["matmul_tflops"])
  if lines:
    blocks += ["## Summary", [f"- {line}" for line in lines]]
  return harness.markdown_page(*blocks)


def write(out: str, rows: list[dict], steps: list[dict], machine: dict, *,
          figure: bool = True) -> str:
  """Writes bench.{md,csv,json}, and bench.png (the rows against length) with `figure`;
  returns the Markdown."""
  text = markdown(rows, steps, machine)
  plot = None
  if figure:
    plot = dict(rows=[r for r in rows if r["group"] == "length"], name_key="method",
                panels=[("device_s", "device seconds per call", "forward + backward time"),
                        ("useful_tflops", "useful TFLOP/s", "useful throughput")],
                title=f"window {machine['window']}, 1 x L x {FLAGS.heads} x {FLAGS.head_dim}, "
                      f"{machine['dtype']}, {machine['device']}")
  harness.write_outputs(out, "bench", markdown=text, columns=CSV_COLUMNS, rows=rows,
                        record={"machine": machine, "rows": rows, "train_steps": steps},
                        figure=plot)
  harness.write_csv(os.path.join(out, "train_steps.csv"), TRAIN_COLUMNS, steps)
  return text


# ---------------------------------------------------------------------------------------------
# The comparison.


def compare(out: str, machine: dict, start: float) -> None:
  """Measures the plan and the train steps, writing the outputs after every row."""
  planned = plan()
  flex = {}
  rows, steps = [], []
  model_plan = [(task, implementation) for task in FLAGS.models
                for implementation in dict.fromkeys(FLAGS.model_implementations)]
  total = len(planned) + len(model_plan)
  count = 0

  def over_budget() -> str | None:
    if time.perf_counter() - start > FLAGS.time_budget_s:
      return f"skipped: past --time_budget_s={FLAGS.time_budget_s:g}"
    return None

  def attention_row(item: Planned) -> None:
    nonlocal count
    count += 1
    batch, length, heads, head_dim = item.shape
    setup = item.setup(machine["dtype"])
    row = harness.rows(setup)[item.method]
    record = {"group": item.group, "method": item.method, "batch": batch, "length": length,
              "heads": heads, "head_dim": head_dim, "window": item.window}
    print(f"[{count}/{total}] {item.method} {_shape_label(record)} ...", flush=True)
    status = over_budget() or harness.unmet(row.needs)
    if not status and item.method == "local_xla" and length > FLAGS.xla_max_length:
      status = f"skipped: length > --xla_max_length={FLAGS.xla_max_length}"
    if status:
      record["status"] = status
    elif item.method == harness.FLEX_CAUSAL_WINDOW:
      if not flex:
        flex.update(measure_flex([p for p in planned if p.method == item.method],
                                 machine["dtype"]))
      record.update(flex[item.shape, item.window])
    else:
      try:
        record.update(measure_attention(row, item.shape, machine["dtype"],
                                        repeats=FLAGS.repeats, warmup=FLAGS.warmup),
                      status="ok")
      except Exception as error:  # pylint: disable=broad-except
        record["status"] = failure(error)
    if record["status"] == "ok":
      record["useful_tflops"] = harness.useful_flop(row, length, setup) / record["device_s"] / 1e12
      record["pct_of_matmul"] = 100 * record["useful_tflops"] / machine["matmul_tflops"]
    rows.append(record)
    print(f"  {1e3 * record['device_s']:.3f} ms on the device ({record['timer']}), "
          f"{record['useful_tflops']:.1f} TFLOP/s" if record["status"] == "ok"
          else f"  {record['status']}", flush=True)
    # The figure draws the rows against length alone: redrawn when one of them comes.
    write(out, rows, steps, machine, figure=item.group == "length")

  def train_row(task: str, implementation: str) -> None:
    nonlocal count
    count += 1
    print(f"[{count}/{total}] train step: {task} ({FLAGS.model_size}), {implementation} ...",
          flush=True)
    record = {"task": task, "implementation": implementation}
    status = over_budget()
    if status:
      record["status"] = status
    else:
      try:
        config = train_config(task, implementation, size=FLAGS.model_size)
        record.update(measure_train_step(config, steps=FLAGS.model_steps))
      except Exception as error:  # pylint: disable=broad-except
        record["status"] = failure(error)
    steps.append(record)
    pallas = next((s for s in steps if s["task"] == task and s["implementation"] == "pallas"
                   and s["status"] == "ok"), None)
    if implementation == "xla" and pallas and record["status"] == "ok":
      record["xla_over_pallas"] = record["device_s"] / pallas["device_s"]
    print(f"  {1e3 * record['device_s']:.2f} ms per step on the device"
          if record["status"] == "ok" else f"  {record['status']}", flush=True)
    write(out, rows, steps, machine, figure=False)

  for item in planned:
    if item.group == "peer":
      attention_row(item)
  for task, implementation in model_plan:
    train_row(task, implementation)
  for item in planned:
    if item.group != "peer":
      attention_row(item)
  print()
  print(write(out, rows, steps, machine))
  for line in ratio_lines(rows, steps, machine["matmul_tflops"]):
    print(line)
  print(f"wrote {out}/bench.{{md,csv,json,png}} and {out}/train_steps.csv")


# ---------------------------------------------------------------------------------------------
# The launch-settings sweep.


def kernel_seconds(record: dict, kernel: str) -> tuple[float, str]:
  """The device seconds of one Pallas kernel (`forward`, `d_query`, `d_key_value`) in a
  measured step, from CUPTI's kernel names, and "kernel"; where no kernel of that name was
  recorded (no CUPTI), the whole step's, and "step"."""
  name = f"band_attention_{kernel}"
  found = [s for k, s in (record.get("kernel_s") or {}).items() if name in k]
  return (sum(found), "kernel") if found else (record["device_s"], "step")


def updated_launch_table(table: dict, kind: str, best: dict) -> dict:
  """`table` with the entry of `kind` set to `best` (kernel -> `launch.Settings`)."""
  entry = {kernel: dataclasses.asdict(best[kernel]) for kernel in launch.KERNELS}
  return {**table, kind: entry}


def write_launch_table(path: str, table: dict) -> None:
  """Writes the launch table as `gpu_launch.json` is laid out: one line per kernel."""
  kinds = []
  for kind, entry in table.items():
    kernels = ",\n".join(f"    {json.dumps(kernel)}: {json.dumps(settings)}"
                         for kernel, settings in entry.items())
    kinds.append(f"  {json.dumps(kind)}: {{\n{kernels}\n  }}")
  with open(path, "w") as f:
    f.write("{\n" + ",\n".join(kinds) + "\n}\n")


def check_sweep() -> None:
  """Raises `ConfigError` where `--sweep_launch` cannot run as asked."""
  if (launch.device_kind() == "default"
      and os.path.abspath(FLAGS.launch_table) == os.path.abspath(launch.TABLE)):
    raise errors.ConfigError(
        "--sweep_launch writes the entry of the attached GPU, and there is none here: it "
        "would overwrite the table's default entry. Run it on a GPU, or pass "
        "--launch_table=PATH to try it on a copy")
  if not any(m in FLAGS.methods for m in SWEEP_METHODS):
    raise errors.ConfigError(f"--sweep_launch times {' and '.join(SWEEP_METHODS)}: keep one "
                             "of them in --methods")


def sweep(out: str, machine: dict) -> None:
  """Times every launch candidate on every sweep method, picks each kernel's fastest and
  writes this GPU's entry of the launch table."""
  kind = launch.device_kind()
  methods = [m for m in SWEEP_METHODS if m in FLAGS.methods]
  candidates = [launch.Settings(*map(int, spec.split(":")))
                for spec in dict.fromkeys(FLAGS.launch_candidates)]
  shape = (1, FLAGS.sweep_length, FLAGS.heads, FLAGS.head_dim)
  table = harness.rows(harness.Setup(window=FLAGS.window, heads=FLAGS.heads,
                                     head_dim=FLAGS.head_dim, batch=1, dtype=machine["dtype"]))
  label = lambda settings: f"{settings.num_warps}:{settings.num_stages}"
  records = []
  for index, (candidate, method) in enumerate(
      [(c, m) for c in candidates for m in methods], 1):
    print(f"[{index}/{len(candidates) * len(methods)}] {method} at {label(candidate)} ...",
          flush=True)
    record = {"candidate": label(candidate), "method": method}
    try:
      record.update(measure_attention(
          table[method], shape, machine["dtype"], repeats=FLAGS.repeats, warmup=FLAGS.warmup,
          settings={kernel: candidate for kernel in launch.KERNELS}), status="ok")
      for kernel in launch.KERNELS:
        record[f"{kernel}_s"], record["attributed_by"] = kernel_seconds(record, kernel)
      print(f"  {1e3 * record['device_s']:.3f} ms on the device", flush=True)
    except Exception as error:  # pylint: disable=broad-except
      record["status"] = failure(error)
      print(f"  {record['status']}", flush=True)
    records.append(record)

  best = fastest_launch(records, methods)
  if best:
    with open(FLAGS.launch_table) as f:
      written = updated_launch_table(json.load(f), kind, best)
    write_launch_table(FLAGS.launch_table, written)
  chosen = ("none: no candidate ran every method, and the table is unchanged" if not best
            else ", ".join(f"{kernel} {label(s)}" for kernel, s in best.items())
            + f"; written to {FLAGS.launch_table}")
  text = harness.markdown_page(
      "# Launch settings of the Pallas GPU kernels",
      f"Device {machine['device']} (table entry {kind!r}); jax {machine['jax']}; commit "
      f"{machine['commit']}; {', '.join(methods)} at 1 x {FLAGS.sweep_length} x "
      f"{FLAGS.heads} x {FLAGS.head_dim}, window {FLAGS.window}, {machine['dtype']}; device "
      f"time, the median of {FLAGS.repeats} calls. Chosen (the fastest of each kernel, summed "
      f"over the methods): {chosen}.",
      harness.markdown_table(
          ["num_warps:num_stages", "method", "step (ms)", "forward (ms)", "d_query (ms)",
           "d_key_value (ms)", "kernels timed by", "note"], "llrrrrll",
          ([r["candidate"], r["method"], _ms(r.get("device_s")), _ms(r.get("forward_s")),
            _ms(r.get("d_query_s")), _ms(r.get("d_key_value_s")), r.get("attributed_by", ""),
            "" if r["status"] == "ok" else r["status"]] for r in records)))
  harness.write_outputs(out, "launch_sweep", markdown=text, columns=SWEEP_COLUMNS,
                        rows=records, record={"machine": machine, "rows": records, "chosen": {
                            k: dataclasses.asdict(s) for k, s in (best or {}).items()}})
  print()
  print(text)
  if not best:
    raise errors.UserError(f"no launch candidate ran every sweep method; the table is "
                           f"unchanged (the rows are in {out}/launch_sweep.md)")
  print(f"wrote {out}/launch_sweep.{{md,csv,json}} and {kind!r} of {FLAGS.launch_table}")


def fastest_launch(records: list[dict], methods) -> dict | None:
  """Each kernel's fastest candidate (kernel -> `launch.Settings`): the least of its time
  (`<kernel>_s`) summed over `methods`, among the candidates that ran every one of them;
  None where no candidate did."""
  best = {}
  for kernel in launch.KERNELS:
    totals = {}
    for candidate in dict.fromkeys(r["candidate"] for r in records):
      times = [r[f"{kernel}_s"] for r in records
               if r["candidate"] == candidate and r["status"] == "ok"]
      if len(times) == len(methods):
        totals[candidate] = sum(times)
    if not totals:
      return None
    warps, stages = min(totals, key=totals.get).split(":")
    best[kernel] = launch.Settings(int(warps), int(stages))
  return best


def main(argv):
  del argv
  start = time.perf_counter()
  backend = jax.default_backend()
  if backend == "cpu" and not FLAGS.allow_cpu:
    raise errors.ConfigError(
        "no GPU or TPU here (jax.default_backend() is 'cpu'): install jax for the "
        "accelerator (make ... ACCEL=cuda13), or pass --allow_cpu to check the command with "
        "interpret-mode kernels at tiny shapes")
  if FLAGS.sweep_launch:
    if backend not in ("gpu", "cpu"):
      raise errors.ConfigError(f"--sweep_launch sets launch settings of the GPU kernels; "
                               f"this backend is {backend!r}: run it on a GPU")
    check_sweep()
  print(f"matmul {FLAGS.matmul_size}^3 ({FLAGS.dtype}) ...", flush=True)
  matmul = harness.matmul_rate(FLAGS.matmul_size, FLAGS.dtype, warmup=FLAGS.warmup,
                               repeats=FLAGS.repeats, on_device=True)
  print(f"  {matmul['gflops'] / 1e3:.1f} TFLOP/s ({matmul['timer']})", flush=True)
  if matmul.get("fallback"):
    print(f"  no device timer, so the host's clock of queued calls: {matmul['fallback']}",
          flush=True)
  machine = {"device": harness.device_name(), "jax": importlib.metadata.version("jax"),
             "commit": harness.commit(), "dtype": FLAGS.dtype, "window": FLAGS.window,
             "matmul_n": FLAGS.matmul_size, "matmul_tflops": matmul["gflops"] / 1e3,
             "matmul_device_times_s": matmul["times_s"], "timer": matmul["timer"],
             "repeats": FLAGS.repeats, "launch_kind": launch.device_kind(),
             "launch": {k: dataclasses.asdict(launch.settings(k)) for k in launch.KERNELS}}
  out = os.path.abspath(FLAGS.out)
  if FLAGS.sweep_launch:
    sweep(out, machine)
  else:
    compare(out, machine, start)


if __name__ == "__main__":
  # FlexAttention's process shares the GPU: this one must not hold 75% of its memory (JAX's
  # default preallocation). Set before JAX starts its backend; the memory column is XLA's
  # compiled footprint, not the allocator's.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  define_flags()
  cli.run(main)

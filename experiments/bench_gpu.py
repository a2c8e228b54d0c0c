r"""Accelerator benchmark: the Pallas kernels against XLA, cuDNN and tokamax, forward + backward.

  python -m experiments.bench_gpu --out=results/bench_gpu        # (make bench-gpu)

On a GPU, in a few minutes, one process measures at each length (default 4K..64K, bfloat16,
one-sided window 256, 8 heads x 64):
  local_pallas, causal_pallas, dilated_pallas, longformer_pallas
               `lra.attention` with `implementation="pallas"` (the fused kernels);
  local_xla    the same window on the blocked XLA core (`implementation="xla"`);
  cudnn_full   `jax.nn.dot_product_attention(implementation="cudnn")`, full bidirectional
               attention: the FlashAttention anchor;
  cudnn_causal_window  cuDNN's causal sliding window (`local_window_size=(w, 0)`, the only
               window cuDNN takes): the anchor for `causal_pallas`, the same work;
  tokamax_local, tokamax_causal  `tokamax.dot_product_attention(local_window_size=...,
               implementation="mosaic")`, when tokamax is installed;
and the shapes of two task configs (`--task_shapes`: Pathfinder's 4 heads x 8 and Path-X's
2 heads x 16, at their paper batch), and then one jitted train step of every task's paper
config (`experiments.bench_model`, `--models`).

  python -m experiments.bench_gpu --kernel_configs=128:4:2,128:8:3,64:4:2 --lengths=16384

instead compares launch settings of the Pallas GPU kernels (block, Triton's num_warps and
num_stages) on local and causal attention, in one process, side by side.

A step is a jitted forward and `jax.vjp` pullback of a fixed random output gradient. Time is
the median of `--repeats` steps after `--warmup`; useful TFLOP/s counts 3 x the forward
FLOPs of the two matmuls over exactly the pairs the pattern attends (the band's for the
windowed rows, every pair for `cudnn_full`), against the bf16 matmul rate measured in the
same process. Memory is XLA's compiled footprint of the step (arguments, outputs and
temporaries), a figure of the program rather than of the allocator. Writes bench.csv,
bench.md, bench.json and bench.png in `--out`. Rows that cannot run here (no cuDNN, no
tokamax, no GPU) are kept with the reason.
"""

import functools
import importlib.metadata
import importlib.util
import os
import sys

# The train steps of `--models` run in child processes on the same GPU: this process must not
# hold 75% of its memory (JAX's default preallocation) while they run. Set before JAX
# starts its backend; the memory column is XLA's compiled footprint, not the allocator's.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import flags  # noqa: E402  (after the allocator is configured)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments import bench_attention
from experiments import cli
from experiments import harness
from lra import attention
from lra import errors
from lra.attention import kernels
from lra.attention.kernels import launch as launch_lib

# The shape, timing and output flags are bench_attention's, with accelerator defaults.
FLAGS = flags.FLAGS
for _name, _default in (("lengths", ["4096", "8192", "16384", "32768", "65536"]),
                        ("dtype", "bfloat16"), ("repeats", 20), ("matmul_size", 8192),
                        ("out", "results/bench_gpu")):
  FLAGS.set_default(_name, _default)
_TASK_SHAPES = flags.DEFINE_list(
    "task_shapes", ["pathfinder:512x1024x4x8", "pathx:64x16384x2x16"],
    "Extra shapes as name:batch x length x heads x head_dim, measured for local_pallas, "
    "local_xla and tokamax_local.")
_XLA_MAX_LENGTH = flags.DEFINE_integer(
    "xla_max_length", 16384, "Longest length for local_xla (a loop of small kernels on GPU).")
_MODELS = flags.DEFINE_bool("models", True,
                            "Also time one train step of every task's paper config.")
_KERNEL_CONFIGS = flags.DEFINE_list(
    "kernel_configs", [],
    "Instead of the comparison: launch settings of the Pallas GPU kernels to compare, each "
    "as block:num_warps:num_stages (e.g. 128:4:2,128:8:3), timed for local and causal "
    "attention at every --lengths; writes kernel_configs.{md,csv,json,png}.")
_ALLOW_CPU = flags.DEFINE_bool(
    "allow_cpu", False, "Run on a CPU too (interpret-mode kernels: for checking the command "
    "on small lengths, not for figures).")

CSV_COLUMNS = ("method", "shape", "batch", "length", "heads", "head_dim", "status", "median_s",
               "useful_tflops", "pct_of_matmul", "memory_gb")
# Task configs whose paper train step `--models` times.
MODEL_CONFIGS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx", "enwik8")


def _tokamax(q, k, v, *, window, causal):
  import tokamax  # pylint: disable=g-import-not-at-top
  return tokamax.dot_product_attention(q, k, v, is_causal=causal,
                                       local_window_size=(window, 0 if causal else window),
                                       implementation="mosaic")


def methods(window: int, heads: int):
  """name -> (attend(q, k, v), its pattern as `bench_attention.pattern_pairs` arguments other
  than the window of every head, requirement or None)."""
  dilations = tuple(1 if h < heads // 2 else 2 for h in range(heads))
  local = functools.partial(attention.sliding_window_attention, window=window)
  band, causal = {}, {"causal": True}
  return {
      "local_pallas": (functools.partial(local, implementation="pallas"), band, None),
      "causal_pallas": (functools.partial(local, causal=True, implementation="pallas"),
                        causal, None),
      "dilated_pallas": (functools.partial(local, dilation=dilations, implementation="pallas"),
                         {"dilations": dilations}, None),
      "longformer_pallas": (
          lambda q, k, v: attention.longformer_attention(
              q, k, v, window=window, implementation="pallas",
              global_mask=bench_attention.global_token_mask(q.shape[:2])),
          {"global_positions": bench_attention.GLOBAL_POSITIONS}, None),
      "local_xla": (functools.partial(local, implementation="xla"), band, None),
      "cudnn_full": (functools.partial(jax.nn.dot_product_attention, implementation="cudnn"),
                     {"window": None}, "gpu"),
      "cudnn_causal_window": (
          functools.partial(jax.nn.dot_product_attention, is_causal=True,
                            local_window_size=(window, 0), implementation="cudnn"),
          causal, "gpu"),
      "tokamax_local": (functools.partial(_tokamax, window=window, causal=False), band,
                        "tokamax"),
      "tokamax_causal": (functools.partial(_tokamax, window=window, causal=True), causal,
                         "tokamax"),
  }


_METHODS = flags.DEFINE_list("methods", list(methods(1, 2)),
                             "Methods to measure (see the module docstring).")
cli.subset_of("methods", list(methods(1, 2)), "the methods")


@flags.validator("kernel_configs", "each of --kernel_configs must be block:num_warps:num_stages "
                 "in positive integers, e.g. 128:8:3")
def _valid_kernel_configs(specs):
  return all(len(parts) == 3 and all(p.isdigit() and int(p) > 0 for p in parts)
             for parts in (spec.split(":") for spec in specs))


def _unmet(requirement) -> str | None:
  if requirement == "gpu" and jax.default_backend() != "gpu":
    return "skipped: needs a GPU"
  if requirement == "tokamax" and importlib.util.find_spec("tokamax") is None:
    return "skipped: tokamax is not installed (pip install tokamax)"
  return None


def measure(attend, shape, dtype: str) -> dict:
  """Times `attend`'s forward + backward on random inputs of `shape`."""
  *inputs, cotangent = harness.random_inputs(4, shape, dtype)
  step = harness.forward_backward(attend)
  memory = harness.compiled_memory_gb(step.lower(cotangent, *inputs).compile())
  timing = harness.time_jax_calls(lambda: step(cotangent, *inputs), FLAGS.warmup,
                                  FLAGS.repeats)
  return {**timing, "memory_gb": memory and memory["memory_gb"]}


def _plan():
  """(method name, shape label, shape, method, kernel launch) in measuring order; the launch
  is `(block, num_warps, num_stages)` of the Pallas kernels, or None for their defaults."""
  names = list(dict.fromkeys(_METHODS.value))
  table = methods(FLAGS.window, FLAGS.heads)
  plan = []
  for length in (int(n) for n in FLAGS.lengths):
    shape = (1, length, FLAGS.heads, FLAGS.head_dim)
    for name in names:
      if name == "local_xla" and length > _XLA_MAX_LENGTH.value:
        continue
      plan.append((name, str(length), shape, table[name], None))
  for spec in _TASK_SHAPES.value:
    label, _, dims = spec.partition(":")
    shape = tuple(int(x) for x in dims.split("x"))
    for name in ("local_pallas", "local_xla", "tokamax_local"):
      if name in names:
        plan.append((name, f"{label} {shape[1]}", shape, methods(FLAGS.window, shape[2])[name],
                     None))
  return plan


def _kernel_config_plan():
  """The plan of `--kernel_configs`: local and causal on the kernels, each launch."""
  plan = []
  for length in (int(n) for n in FLAGS.lengths):
    for spec in _KERNEL_CONFIGS.value:
      launch = tuple(int(x) for x in spec.split(":"))
      # The kernels cap the block to fit shared memory; a row says when that changed it.
      runs = kernels.gpu_block(kernels.kernel_block(launch[0]), FLAGS.head_dim,
                               jnp.dtype(FLAGS.dtype).itemsize)
      label = spec if runs == launch[0] else f"{spec} (runs in blocks of {runs})"
      for causal, pattern in ((False, {}), (True, {"causal": True})):
        attend = functools.partial(attention.sliding_window_attention, window=FLAGS.window,
                                   causal=causal, implementation="pallas", block_size=launch[0])
        plan.append((f"{'causal' if causal else 'local'}_pallas {label}", str(length),
                     (1, length, FLAGS.heads, FLAGS.head_dim), (attend, pattern, None), launch))
  return plan


def _measure_row(name, label, shape, method, launch, dtype, matmul_tflops) -> dict:
  batch, length, heads, head_dim = shape
  attend, pattern, requirement = method
  row = {"method": name, "shape": label, "batch": batch, "length": length, "heads": heads,
         "head_dim": head_dim}
  pairs = bench_attention.pattern_pairs(
      length, **{"window": FLAGS.window, "dilations": (1,) * heads, **pattern})
  useful_tflop = 3 * 2 * 2 * batch * pairs * head_dim / 1e12
  row["status"] = _unmet(requirement) or "ok"
  if row["status"] == "ok":
    settings = {}
    if launch:  # read when the step is traced, inside `measure`
      settings = {kernel: launch_lib.Settings(*launch[1:]) for kernel in launch_lib.KERNELS}
    try:
      with launch_lib.overridden(settings):
        row.update(measure(attend, shape, dtype))
    except Exception as error:  # pylint: disable=broad-except
      # One failed method (an unsupported shape, out of memory) must not lose the others.
      row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
  if row["status"] == "ok":
    row["useful_tflops"] = useful_tflop / row["median_s"]
    row["pct_of_matmul"] = 100 * row["useful_tflops"] / matmul_tflops
  return row


def _bench_models(out: str) -> list[dict]:
  """One train step of each paper config, each through `experiments.bench_model`."""
  results = []
  for task in MODEL_CONFIGS:
    print(f"train step: configs/{task}.py (paper, longformer) ...", flush=True)
    stdout, failure = harness.run_child(
        [sys.executable, "-m", "experiments.bench_model",
         f"--config=configs/{task}.py:attention=longformer", "--steps=3", f"--out={out}"],
        cwd=harness.REPO)
    message = f"failed: {failure}" if stdout is None else (stdout.strip().splitlines() or [""])[-1]
    print("  " + message, flush=True)
    results.append({"task": task, "result": message})
  return results


def markdown(rows, machine, models) -> str:
  fmt = harness.fmt
  return harness.markdown_page(
      "# Accelerator benchmark: forward + backward",
      f"Device {machine['device']}; jax {machine['jax']}; {machine['dtype']}; window "
      f"{machine['window']} (one-sided); measured matmul rate "
      f"{machine['matmul_tflops']:.0f} TFLOP/s ({machine['matmul_n']}^3). Time: median of "
      f"{machine['repeats']} steps. Useful TFLOP/s: 3 x the forward FLOPs over the attended "
      "pairs. Memory: XLA's compiled footprint of the step.",
      harness.markdown_table(
          ["method", "shape (batch x heads x head_dim)", "length", "median time (ms)",
           "useful TFLOP/s", "% of matmul rate", "memory (GB)", "note"], "llrrrrrl",
          ([row["method"], f"{row['batch']} x {row['heads']} x {row['head_dim']}",
            row["length"], fmt(row.get("median_s") and 1e3 * row["median_s"], ".3f"),
            fmt(row.get("useful_tflops"), ".1f"), fmt(row.get("pct_of_matmul"), ".1f"),
            fmt(row.get("memory_gb"), ".2f"), "" if row["status"] == "ok" else row["status"]]
           for row in rows)),
      "Train steps of the paper configs (longformer attention):" if models else "",
      [f"- {m['task']}: {m['result']}" for m in models])


def _write(out: str, stem: str, rows, machine, models, *, figure: bool) -> str:
  """Writes `stem`.{md,csv,json} (and .png when `figure`); returns the Markdown."""
  text = markdown(rows, machine, models)
  plot = dict(rows=[r for r in rows if r["shape"] == str(r["length"])], name_key="method",
              panels=[("median_s", "seconds per step", "forward + backward time"),
                      ("useful_tflops", "useful TFLOP/s", "useful throughput")],
              title=f"window {FLAGS.window}, {FLAGS.heads} heads x {FLAGS.head_dim}, "
                    f"{machine['dtype']}, {machine['device']}")
  harness.write_outputs(out, stem, markdown=text, columns=CSV_COLUMNS, rows=rows,
                        record={"machine": machine, "rows": rows, "models": models},
                        figure=plot if figure else None)
  return text


def main(argv):
  del argv
  if jax.default_backend() == "cpu" and not _ALLOW_CPU.value:
    raise errors.ConfigError(
        "no GPU or TPU here (jax.default_backend() is 'cpu'): install jax for the "
        "accelerator (make ... ACCEL=cuda13), or pass --allow_cpu to check the command with "
        "interpret-mode kernels on small --lengths")
  if _KERNEL_CONFIGS.value and jax.default_backend() not in ("gpu", "cpu"):
    raise errors.ConfigError(
        f"--kernel_configs sets launch settings of the GPU kernels; this backend is "
        f"{jax.default_backend()!r}: run it on a GPU")
  dtype = FLAGS.dtype
  print(f"matmul {FLAGS.matmul_size}^3 ({dtype}) ...", flush=True)
  matmul_tflops = harness.matmul_rate(FLAGS.matmul_size, dtype, warmup=FLAGS.warmup,
                                      repeats=FLAGS.repeats)["gflops"] / 1e3
  print(f"  {matmul_tflops:.1f} TFLOP/s", flush=True)
  machine = {"device": harness.device_name(),
             "jax": importlib.metadata.version("jax"), "commit": harness.commit(),
             "dtype": dtype, "window": FLAGS.window, "matmul_n": FLAGS.matmul_size,
             "matmul_tflops": matmul_tflops, "repeats": FLAGS.repeats}
  out = os.path.abspath(FLAGS.out)
  rows, models = [], []
  sweep = bool(_KERNEL_CONFIGS.value)
  plan, stem = (_kernel_config_plan(), "kernel_configs") if sweep else (_plan(), "bench")
  for index, (name, label, shape, method, launch) in enumerate(plan, 1):
    print(f"[{index}/{len(plan)}] {name} {label} ...", flush=True)
    rows.append(_measure_row(name, label, shape, method, launch, dtype, matmul_tflops))
    row = rows[-1]
    print(f"  {1e3 * row['median_s']:.3f} ms, {row['useful_tflops']:.1f} TFLOP/s"
          if row["status"] == "ok" else f"  {row['status']}", flush=True)
    # Written after every row, so that a run cut short keeps what it measured.
    _write(out, stem, rows, machine, models, figure=False)
  if _MODELS.value and not sweep:
    models = _bench_models(out)
  text = _write(out, stem, rows, machine, models, figure=True)
  print()
  print(text)
  for length in (8192, 16384):
    medians = {r["method"]: r["median_s"] for r in rows
               if r["shape"] == str(length) and r["status"] == "ok"}
    for a, b in (("cudnn_full", "local_pallas"), ("cudnn_causal_window", "causal_pallas"),
                 ("tokamax_local", "local_pallas"), ("tokamax_causal", "causal_pallas")):
      if a in medians and b in medians:
        print(f"time({a}) / time({b}) at {length}: {medians[a] / medians[b]:.2f}")
  print(f"wrote {out}/{stem}.{{csv,md,json,png}}")


if __name__ == "__main__":
  cli.run(main)

"""What every benchmark of `experiments/bench/` measures with, one implementation each.

- Process isolation: `measure_in_child` runs a measuring process whose last stdout line is
  its JSON record, so that its peak memory is its own; `pool_rounds` merges the records of a
  measurement repeated in several processes.
- Timing: `time_calls` and `time_jax_calls` on the host (each call waited for);
  `time_on_device`, the device's own time per call (the kernels' time from CUPTI on a GPU),
  so that no host floor sits in a figure.
- Memory: `peak_rss_gb`, `rss_gb`, `compiled_memory_gb`.
- Rows: `rows`, every registry variant (`lra.attention.variants()`) on each of its
  implementations, causal where it has the option, plus the named baselines (`jax.nn`'s
  banded window, cuDNN, tokamax, HuggingFace's Longformer, FlexAttention); `pattern_pairs`
  counts the query-key pairs a pattern attends, for useful FLOPs; `trace_forward_backward`
  traces a row's step with its Pallas backward and launch settings.
- Train steps: `train_step`, a task config's jitted train step on a synthetic batch.
- The machine and compiled programs: `matmul_rate` (which the benchmarks put their rates in
  proportion to), `cpu_model`, `cores`, `device_name`, `commit`, `hlo_collectives`.
- Outputs: `markdown_table`, `markdown_page`, `write_outputs`, `write_json`.

Importable without jax, absl or lra (they are imported where they are used): the torch
scripts `hf_longformer.py` and `flex_attention.py` run it under a Python that may hold only
torch.
"""

import collections
import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The last "SomeError: message" line of an error text that wraps a traceback.
ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.*)$")


# ---------------------------------------------------------------------------------------------
# Process isolation.


def child_env(*, huge_pages: bool = False, **variables: str) -> dict:
  """This process's environment for a child, with `variables` set, and glibc's malloc on
  huge pages if `huge_pages` (no effect without glibc >= 2.35)."""
  env = dict(os.environ, **variables)
  if huge_pages:
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    env["GLIBC_TUNABLES"] = ":".join(tunables + ["glibc.malloc.hugetlb=1"])
  return env


def child_failure(completed: subprocess.CompletedProcess, *, tail: int = 20) -> str:
  """Why a child process failed, in one line: its `error:` line or its last exception line
  (else its last line). The last `tail` lines of its stderr are printed on this process's
  stderr, so that what led to the failure shows too."""
  lines = [line for line in (completed.stderr or "").splitlines() if line.strip()]
  if lines:
    print(f"a child process failed (exit {completed.returncode}); the end of its stderr:",
          file=sys.stderr)
    print("\n".join(f"  | {line}" for line in lines[-tail:]), file=sys.stderr)
  errors_seen = [line.strip() for line in lines
                 if line.startswith("error: ") or ERROR_LINE.match(line)]
  last = errors_seen[-1] if errors_seen else lines[-1].strip() if lines else "no output"
  return f"exit {completed.returncode}: {last}"


def run_child(command: list[str], *, env: dict | None = None,
              cwd: str | None = None) -> tuple[str | None, str]:
  """Runs a process to its end (in `cwd`, else this process's folder); returns (its stdout,
  "") or (None, why it failed)."""
  completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False,
                             env=env)
  if completed.returncode == 0:
    return completed.stdout, ""
  if completed.returncode < 0:
    return None, f"killed by signal {-completed.returncode} (out of memory?)"
  return None, child_failure(completed)


def measure_in_child(command: list[str], *, env: dict | None = None,
                     cwd: str | None = None) -> dict:
  """`{"status": "ok", **record}` of a measuring process (run in `cwd`, else this process's
  folder) that prints its record as the last line of its stdout (libraries may print before
  it), or `{"status": "failed: why"}`."""
  stdout, failure = run_child(command, env=env, cwd=cwd)
  if stdout is None:
    return {"status": f"failed: {failure}"}
  return {"status": "ok", **json.loads(stdout.strip().splitlines()[-1])}


def measure_in_child_or_exit(command: list[str], what: str, *, cwd: str | None = None) -> dict:
  """`measure_in_child`'s record, less its status; a failure ends this process with
  `error: <what> failed: <why>`."""
  record = measure_in_child(command, cwd=cwd)
  status = record.pop("status")
  if status != "ok":
    sys.exit(f"error: {what} {status}")
  return record


def print_record(record: dict) -> None:
  """Prints a measuring process's record for `measure_in_child`."""
  print(json.dumps(record), flush=True)


def pool_rounds(records: list[dict]) -> dict:
  """One record from the rounds of a measurement: timed calls pooled, memory at its
  largest. A round that failed or was skipped decides the status only when none succeeded."""
  done = [r for r in records if r["status"] == "ok"]
  if not done:
    return records[0]
  pooled = {**done[0], "times_s": [t for r in done for t in r["times_s"]],
            "warmup_s": [t for r in done for t in r.get("warmup_s", [])],
            "rounds": len(done)}
  pooled["median_s"] = statistics.median(pooled["times_s"])
  for key in ("setup_rss_gb", "peak_rss_gb"):
    if key in done[0]:
      pooled[key] = max(r[key] for r in done)
  return pooled


# ---------------------------------------------------------------------------------------------
# Timing.


def time_calls(step: Callable[[], object], warmup: int, repeats: int) -> dict:
  """Seconds of each call of `step`, which returns once its work is done: `warmup` untimed
  ones first (the first compiles), then `repeats` timed ones, and their median."""
  times = []
  for _ in range(warmup + repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return {"warmup_s": times[:warmup], "times_s": times[warmup:],
          "median_s": statistics.median(times[warmup:])}


def time_jax_calls(step: Callable[[], object], warmup: int, repeats: int) -> dict:
  """`time_calls` of a step that returns jax arrays, waiting for them."""
  import jax  # pylint: disable=g-import-not-at-top
  return time_calls(lambda: jax.block_until_ready(step()), warmup, repeats)


def cupti_record(calls: list[list[tuple[str, float]]]) -> dict:
  """The record of `time_on_device` from CUPTI's kernel timings, one list of
  `(kernel name, milliseconds)` per call: each call's kernels summed, and `kernel_s`, the
  median over the calls of each kernel's time in a call."""
  totals, by_kernel = [], collections.defaultdict(list)
  for kernels in calls:
    in_call = collections.Counter()
    for name, milliseconds in kernels:
      in_call[name] += milliseconds / 1e3
    totals.append(sum(in_call.values()))
    for name, seconds in in_call.items():
      by_kernel[name].append(seconds)
  return {"timer": "cupti", "times_s": totals, "median_s": statistics.median(totals),
          "kernel_s": {name: statistics.median(s) for name, s in by_kernel.items()}}


def time_on_device(fn: Callable, args: Sequence, *, repeats: int) -> dict:
  """Device seconds per call of `fn(*args)`, a jitted or compiled jax function that has
  already run once (compiled and warm).

  On a GPU, the time of its kernels as CUPTI records them
  (`jax.experimental.mosaic.gpu.profiler.measure`), summed per call: the host's dispatch
  and synchronisation fall outside it, and so do gaps between kernels. Elsewhere, or where
  CUPTI cannot attach (its `fallback` says why), the host's time of `repeats` calls queued
  back to back and waited for once, per call: the dispatch of one call overlaps the work of
  the one before, so that a host floor only shows where a call is shorter than its dispatch.
  `timer` names which.
  """
  import jax  # pylint: disable=g-import-not-at-top
  fallback = f"no CUPTI on the {jax.default_backend()} backend"
  if jax.default_backend() == "gpu":
    try:
      from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
      _, timings = profiler.measure(fn, aggregate=False, iterations=repeats)(*args)
    except (ImportError, RuntimeError) as error:
      fallback = f"{type(error).__name__}: {error}"
    else:
      if timings:
        return cupti_record(timings if repeats > 1 else [timings])
      fallback = "CUPTI recorded no kernel"
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / repeats
  return {"timer": "host, queued", "fallback": fallback, "times_s": [seconds],
          "median_s": seconds}


def forward_backward(attend: Callable[..., object]) -> Callable[..., object]:
  """`step(cotangent, *inputs)`: the jitted forward of `attend(*inputs)` and the `jax.vjp`
  pullback of the output gradient `cotangent` to every input."""
  import jax  # pylint: disable=g-import-not-at-top
  # A real output gradient, as a model's backward hands the layer: under a loss like
  # sum(output) it would be a constant, which XLA folds into the backward.
  return jax.jit(lambda cotangent, *inputs: jax.vjp(attend, *inputs)[1](cotangent))


# ---------------------------------------------------------------------------------------------
# Memory.


def peak_rss_gb() -> float:
  """This process's peak RSS in GB (1e9 bytes)."""
  # VmHWM is the high-water mark of this process's own memory. ru_maxrss is not: Linux
  # carries a parent's RSS at fork into the child's ru_maxrss across exec, so every child
  # would report at least the size of its parent process.
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024 / 1e9
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return (peak if sys.platform == "darwin" else peak * 1024) / 1e9


def rss_gb() -> float:
  """This process's RSS now, in GB."""
  import psutil  # pylint: disable=g-import-not-at-top
  return psutil.Process().memory_info().rss / 1e9


def compiled_memory_gb(compiled) -> dict | None:
  """XLA's memory analysis of a compiled program, GB: its arguments, outputs and
  temporaries, and `memory_gb`, what one device holds (their sum less what aliases)."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return {"argument_gb": analysis.argument_size_in_bytes / 1e9,
          "output_gb": analysis.output_size_in_bytes / 1e9,
          "temp_gb": analysis.temp_size_in_bytes / 1e9,
          "memory_gb": (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                        + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes) / 1e9}


def quadratic_skip(length: int, estimate_gb: float, *, full_max_length: int,
                   memory_limit_gb: float | None, what: str) -> str | None:
  """Why a row that builds `[length, length]` scores is not measured at `length`, or None;
  `estimate_gb` is its memory, `what` names that estimate, and the memory limit is half of
  this machine's by default."""
  if length > full_max_length:
    return f"skipped: length > --full_max_length={full_max_length}"
  if memory_limit_gb is None:
    import psutil  # pylint: disable=g-import-not-at-top
    memory_limit_gb = psutil.virtual_memory().total / 2e9
  if estimate_gb > memory_limit_gb:
    return (f"skipped: its {estimate_gb:.1f} GB {what} > "
            f"--memory_limit_gb={memory_limit_gb:.1f}")
  return None


# ---------------------------------------------------------------------------------------------
# Rows: the registry's variants on each implementation, and the named baselines.

# Positions of Longformer's global tokens: the first one, like a classifier's [CLS].
GLOBAL_POSITIONS = (0,)
# The named baselines measured by a torch script, run as `python -m experiments.bench.<module>`.
HF_LONGFORMER = "hf_longformer"
FLEX_CAUSAL_WINDOW = "flex_causal_window"


@dataclasses.dataclass(frozen=True)
class Setup:
  """The shape and options of a benchmark's attention calls."""

  window: int  # one-sided
  heads: int
  head_dim: int
  batch: int
  dtype: str
  dilations: tuple[int, ...] = ()  # one per head for the dilating presets; () keeps theirs


@dataclasses.dataclass(frozen=True)
class Row:
  """One benchmarked row: a registry variant on one implementation, or a named baseline.

  Attributes:
    attend: `(*inputs) -> output`, inputs `[batch, length, heads, head_dim]`; None for a
      baseline that a torch script measures in its own process.
    count_pairs: `length ->` query-key pairs its pattern attends, summed over heads.
    inputs: number of input arrays (q, k, v, then any global q, k, v).
    quadratic: builds `[length, length]` scores, so long lengths are skipped.
    needs: what it runs on, none of them for anywhere: "gpu", "tokamax" (the package in
      this Python), "torch" (the package in this Python; HF's row needs a Python of its own).
    backward: the Pallas GPU backward it traces (`lra.attention.kernels.gpu.BACKWARD`), or
      None for the default.
  """

  attend: Callable | None
  count_pairs: Callable[[int], int]
  inputs: int = 3
  quadratic: bool = False
  needs: tuple[str, ...] = ()
  backward: str | None = None


def global_token_mask(shape):
  """bool `shape` (`[batch, length]`), True at `GLOBAL_POSITIONS`: a numpy constant, as a
  model with a fixed [CLS]-like global token passes it."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  global_mask = np.zeros(shape, bool)
  global_mask[:, list(GLOBAL_POSITIONS)] = True
  return global_mask


def pattern_pairs(length: int, window: int | None, dilations: Sequence[int],
                  global_positions: Sequence[int] = (), causal: bool = False) -> int:
  """Query-key pairs the pattern attends, summed over heads: sum_i |keys seen by query i|.

  Counts `window_pattern` exactly, sequence ends included, without building the
  `[length, length]` pattern: a query sees `min(w, i // d)` keys before it,
  `min(w, (length - 1 - i) // d)` after it (none when causal) and itself (window None: every
  key); the global keys outside that window; and a global query sees every key.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  i = np.arange(length)
  reach = length if window is None else window
  total = 0
  for d in dilations:
    after = 0 if causal else np.minimum(reach, (length - 1 - i) // d)
    seen = np.minimum(reach, i // d) + after + 1
    if global_positions:
      offset = np.array(global_positions)[None, :] - i[:, None]
      global_in_window = (offset % d == 0) & (np.abs(offset) <= reach * d)
      seen += len(global_positions) - global_in_window.sum(axis=1)
      seen[list(global_positions)] = length
    total += int(seen.sum())
  return total


def useful_flop(row: Row, length: int, setup: Setup) -> float:
  """3 x the forward FLOPs of q @ k^T and probs @ v over the attended pairs (the backward
  counted as twice the forward: 4 matmuls against 2)."""
  return 3 * 2 * 2 * setup.batch * row.count_pairs(length) * setup.head_dim


def _registry_row(variant: str, setup: Setup, *, implementation, causal, backward) -> Row:
  """A registry variant as a config naming it gets it, at the setup's window."""
  from lra import attention  # pylint: disable=g-import-not-at-top
  from lra.attention import common  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  mechanism, preset = attention.variants()[variant]
  dilation = None
  if preset and "dilation" in preset(setup.heads) and setup.dilations:
    dilation = setup.dilations
  bound = attention.build(attention.variant_config(
      variant, num_heads=setup.heads, window=setup.window, dilation=dilation,
      causal=causal or None, implementation=implementation,
      max_global=len(GLOBAL_POSITIONS)), setup.heads)
  global_positions = GLOBAL_POSITIONS if bound.uses_global else ()

  def attend(q, k, v, *global_qkv):
    global_mask = global_token_mask(q.shape[:2]) if bound.uses_global else None
    return bound(q, k, v, global_mask=global_mask, global_qkv=global_qkv or None)

  def count_pairs(length: int) -> int:
    if mechanism.pattern is not attention.window_pattern:  # no closed form: count the mask
      return int(np.sum(bound.pattern(length, global_mask=(
          global_token_mask((1, length)) if global_positions else None))))
    options = dict(bound.options)
    return pattern_pairs(length, options.get("window"),
                         common.dilation_per_head(options.get("dilation", 1), setup.heads),
                         global_positions, causal=options.get("causal", False))

  return Row(attend, count_pairs, inputs=6 if bound.uses_global else 3,
             quadratic=mechanism.quadratic, backward=backward)


def _tokamax(q, k, v, *, window: int, causal: bool):
  import tokamax  # pylint: disable=g-import-not-at-top
  return tokamax.dot_product_attention(q, k, v, is_causal=causal,
                                       local_window_size=(window, 0 if causal else window),
                                       implementation="mosaic")


def _baselines(setup: Setup) -> dict[str, Row]:
  import jax  # pylint: disable=g-import-not-at-top

  w = setup.window
  band = lambda length: pattern_pairs(length, w, (1,) * setup.heads)
  causal_band = lambda length: pattern_pairs(length, w, (1,) * setup.heads, causal=True)
  every_pair = lambda length: pattern_pairs(length, None, (1,) * setup.heads)
  dot_product = jax.nn.dot_product_attention
  return {
      # The band of window w computed as a dense masked [length, length] product.
      "jax_nn_banded": Row(functools.partial(dot_product, local_window_size=(w, w),
                                             implementation="xla"), band, quadratic=True),
      # cuDNN's flash attention, full and bidirectional: the FlashAttention anchor.
      "cudnn_full": Row(functools.partial(dot_product, implementation="cudnn"), every_pair,
                        needs=("gpu",)),
      # cuDNN's causal sliding window, the only window it takes (a left one).
      "cudnn_causal_window": Row(functools.partial(
          dot_product, is_causal=True, local_window_size=(w, 0), implementation="cudnn"),
          causal_band, needs=("gpu",)),
      "tokamax_local": Row(functools.partial(_tokamax, window=w, causal=False), band,
                           needs=("gpu", "tokamax")),
      "tokamax_causal": Row(functools.partial(_tokamax, window=w, causal=True), causal_band,
                            needs=("gpu", "tokamax")),
      HF_LONGFORMER: Row(None, band),
      # FlexAttention has no backward on a CPU.
      FLEX_CAUSAL_WINDOW: Row(None, causal_band, needs=("gpu", "torch")),
  }


def rows(setup: Setup) -> dict[str, Row]:
  """Every row a benchmark may measure, by name: each registry variant (mechanisms and
  presets, in registration order) as `<variant>[_causal][_<implementation>][_fused]`, then
  the named baselines.

  Without an implementation in its name, a variant runs as a config that names none gets it
  (the best for the backend). `_causal` where the mechanism has the `causal` option;
  `_<implementation>` where it has the `implementation` option, one row per implementation
  it lists; `_fused` on the Pallas rows: the fused GPU backward (atomic dQ) instead of the
  default split one.
  """
  from lra import attention  # pylint: disable=g-import-not-at-top
  found = {}
  for variant, (mechanism, _) in attention.variants().items():
    implementations = [None]
    if "implementation" in mechanism.options:
      implementations += mechanism.implementations
    for causal in (False, True) if "causal" in mechanism.options else (False,):
      for implementation in implementations:
        for backward in (None, "fused") if implementation == "pallas" else (None,):
          name = "_".join(part for part in (variant, causal and "causal", implementation,
                                            backward) if part)
          found[name] = _registry_row(variant, setup, implementation=implementation,
                                      causal=causal, backward=backward)
  return {**found, **_baselines(setup)}


def row_names() -> list[str]:
  """The names of `rows`, without building them."""
  return list(rows(Setup(window=1, heads=2, head_dim=1, batch=1, dtype="float32")))


def trace_forward_backward(row: Row, args: Sequence, settings: dict | None = None):
  """`forward_backward(row.attend)` traced on `args` (the cotangent, then the inputs) with
  the row's Pallas GPU backward and, where given, the launch settings of the Pallas kernels
  (`settings`: kernel -> `lra.attention.kernels.launch.Settings`), both of which a call
  reads when it is traced; `.lower().compile()` it."""
  from lra.attention.kernels import launch  # pylint: disable=g-import-not-at-top
  with pallas_backward(row.backward), launch.overridden(settings or {}):
    return forward_backward(row.attend).trace(*args)


@contextlib.contextmanager
def pallas_backward(variant: str | None):
  """Calls traced inside the block run the Pallas GPU backward `variant` ("split" or
  "fused"; None keeps the default)."""
  from lra.attention.kernels import gpu  # pylint: disable=g-import-not-at-top
  saved = gpu.BACKWARD
  gpu.BACKWARD = variant or saved
  try:
    yield
  finally:
    gpu.BACKWARD = saved


def unmet(needs: Sequence[str]) -> str | None:
  """Why a row that `needs` these cannot run in this process, or None."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  for need in needs:
    if need == "gpu" and jax.default_backend() != "gpu":
      return "skipped: needs a GPU"
    if need != "gpu" and importlib.util.find_spec(need) is None:
      return f"skipped: {need} is not installed for this Python"
  return None


# ---------------------------------------------------------------------------------------------
# Train steps.

# Task configs whose paper train step the benchmarks time, with the config arguments that
# choose the attention (the char-LM configs set their own).
TASK_CONFIGS = {"listops": "attention=longformer", "text": "attention=longformer",
                "retrieval": "attention=longformer", "image": "attention=longformer",
                "pathfinder": "attention=longformer", "pathx": "attention=longformer",
                "enwik8": ""}


@dataclasses.dataclass
class TrainStep:
  """A config's train step, ready to run.

  Attributes:
    step: `(state, batch) -> (state, metrics)`, jitted; it donates `state`, so a caller
      threads the state it returns.
    state: the initial state.
    batch: a synthetic batch of random tokens, placed on the mesh.
    batch_size, length: its shape.
  """

  step: Callable
  state: object
  batch: dict
  batch_size: int
  length: int


def task_config_spec(task: str, size: str) -> str:
  """`configs/<task>.py:<arguments>` of `task` (a `TASK_CONFIGS` key) at `size`."""
  arguments = ",".join(a for a in (TASK_CONFIGS[task], f"size={size}") if a)
  return f"configs/{task}.py:{arguments}"


def load_config(spec: str):
  """The config of `path/to/config.py[:arguments]`, as `--config=` parses it."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.ConfigFileFlagParser(name="config").parse(spec)


def input_shape(config) -> tuple[int, int]:
  """(batch, tokens per sequence) of a train step: the config's batch and max_length, every
  pixel of a Pathfinder image, or a language model's first phase."""
  if "phases" in config:
    return config.phases.batch_size[0], config.phases.seq_length[0]
  length = (config.data.resolution ** 2 if config.task == "pathfinder"
            else config.data.max_length)
  return config.batch_size, length


def train_step(config) -> TrainStep:
  """Builds the model and optimizer of `config` (`lra.train.build_steps`) on all devices,
  and a synthetic batch at its full shape (no data files are read)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lra import data as lra_data  # pylint: disable=g-import-not-at-top
  from lra import train  # pylint: disable=g-import-not-at-top

  vocab = {"listops": 16, "pathfinder": 257, "charlm": 256}.get(config.task, 257)
  num_classes = {"text": 2, "retrieval": 2, "pathfinder": 2, "charlm": 0}.get(config.task, 10)
  data = lra_data.TaskData(splits={}, vocab=["<pad>"] * vocab, num_classes=num_classes)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  steps = train.build_steps(config, data, mesh)
  batch_size, length = input_shape(config)
  rng = np.random.default_rng(0)
  fields = ["inputs1", "inputs2"] if config.model.kind == "dual_encoder" else ["inputs"]
  shape = (batch_size, length)
  batch = {name: rng.integers(1, data.vocab_size, shape, np.int32) for name in fields}
  if data.num_classes:
    batch["targets"] = rng.integers(0, data.num_classes, batch_size, np.int32)
    batch["weights"] = np.ones(batch_size, np.float32)
  else:  # next-token prediction at every position
    batch["targets"] = rng.integers(0, data.vocab_size, shape, np.int32)
    batch["weights"] = np.ones(shape, np.float32)
  batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.P("data")))
  return TrainStep(steps.train_steps[0], steps.state, batch, batch_size, length)


# ---------------------------------------------------------------------------------------------
# The machine and compiled programs.


def random_inputs(count: int, shape: Sequence[int], dtype: str, sharding=None) -> list:
  """`count` standard-normal jax arrays of `shape`, on the default device or laid out by
  `sharding`: each shard is drawn on its own, so that no whole array is held in one place."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def shard(array_index, index):
    # Drawn by numpy: jax.random would compile a few ops first, seconds on a small machine.
    spans = [range(n)[s] for n, s in zip(shape, index)]
    rng = np.random.default_rng([array_index, *(span.start for span in spans)])
    return rng.standard_normal([len(span) for span in spans], np.float32).astype(
        jnp.dtype(dtype))

  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.block_until_ready([jax.make_array_from_callback(
      tuple(shape), sharding, functools.partial(shard, i)) for i in range(count)])


def device_name() -> str:
  """The platform of the default device, and its kind where that says more: `gpu (NVIDIA
  H100)`, `cpu`."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  kind = "" if device.device_kind == device.platform else f" ({device.device_kind})"
  return device.platform + kind


def matmul_rate(n: int, dtype: str, *, warmup: int, repeats: int,
                on_device: bool = False) -> dict:
  """The machine's rate on an `n x n @ n x n` matmul: its timing (on the host, or with
  `on_device` by `time_on_device`) and `gflops`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a, b = random_inputs(2, (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  # At least 20 calls: one takes a fraction of a second, and it sets every row's proportion.
  repeats = max(repeats, 20)
  if on_device:
    for _ in range(warmup):
      jax.block_until_ready(matmul(a, b))
    timing = time_on_device(matmul, (a, b), repeats=repeats)
  else:
    timing = time_jax_calls(lambda: matmul(a, b), warmup, repeats)
  return {**timing, "gflops": 2 * n**3 / timing["median_s"] / 1e9, "device": device_name()}


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cores() -> int:
  """The cores this process may run on (os.cpu_count() also counts those outside a
  restricted affinity mask)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def commit() -> str | None:
  """The repository's commit, short, or None outside a git checkout."""
  stdout, _ = run_child(["git", "rev-parse", "--short", "HEAD"], cwd=REPO)
  return (stdout or "").strip() or None


# Result bytes of a collective's output, per device: `f32[1,256,8,64]{...} collective-permute(`.
_COLLECTIVE = re.compile(r"=\s*(.*?)\s(all-gather|collective-permute|all-reduce|reduce-scatter|"
                         r"all-to-all|collective-broadcast)(?:-start)?\(")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}


def hlo_collectives(hlo_text: str) -> list[tuple[str, tuple[int, ...], int]]:
  """`(op, result shape, result bytes)` of every collective of a compiled HLO module (one
  device's program): the bytes each device receives from it."""
  found = []
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if match:
      arrays = [(dtype, tuple(int(n) for n in dims.split(",") if n))
                for dtype, dims in _ARRAY.findall(match.group(1))]
      dtype, shape = max(arrays, key=lambda a: math.prod(a[1]))
      found.append((match.group(2), shape, math.prod(shape) * _BYTES[dtype]))
  return found


# ---------------------------------------------------------------------------------------------
# Outputs.


def fmt(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence]) -> list[str]:
  """The lines of a Markdown table; `align` has one letter per column, `l` or `r`."""
  rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
  return [f"| {' | '.join(header)} |", rule,
          *(f"| {' | '.join(str(cell) for cell in row)} |" for row in rows)]


def markdown_page(*blocks: str | Sequence[str]) -> str:
  """Markdown of `blocks` (a paragraph, or the lines of a table or list), each two apart by a
  blank line; empty blocks are left out."""
  return "\n\n".join(b if isinstance(b, str) else "\n".join(b) for b in blocks if b) + "\n"


def write_json(path: str, value) -> None:
  """Writes `value` as JSON; a reader never sees a half-written file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def write_csv(path: str, columns: Sequence[str], rows: Iterable[dict]) -> None:
  """Writes `rows` as CSV, one line each: keys outside `columns` left out, missing ones
  empty."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def write_outputs(folder: str, stem: str, *, markdown: str, columns: Sequence[str] = (),
                  rows: list[dict] = (), record=None, figure: dict | None = None) -> None:
  """Writes `<stem>.md` in `folder` (made if missing), and where given `<stem>.csv` (`rows`
  of `columns`), `<stem>.json` (`record`) and `<stem>.png` (`figure`: the arguments of
  `plotting.versus_length`, whose rows are `rows` unless it names others)."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, stem)
  with open(path + ".md", "w") as f:
    f.write(markdown)
  if columns:
    write_csv(path + ".csv", columns, rows)
  if record is not None:
    write_json(path + ".json", record)
  if figure is not None:
    # Imported here: matplotlib is a slow import, and measuring processes never plot.
    from experiments import plotting  # pylint: disable=g-import-not-at-top
    plotting.versus_length(**{"rows": rows, **figure, "out_png": path + ".png"})

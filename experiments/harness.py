"""What every benchmark of `experiments/` measures with, one implementation each: process
isolation (`measure_in_child`: a measuring process whose last stdout line is its JSON record,
so that its peak memory is its own), timing (`time_calls`: warm-up calls, then the median of
the timed ones), memory (`peak_rss_gb`, `compiled_memory_gb`), the machine (`matmul_rate`,
which the benchmarks put their rates in proportion to, `cpu_model`, `cores`, `device_name`,
`commit`) and outputs (`markdown_table`, `markdown_page`, `write_outputs`).

Importable without jax, absl or lra: `experiments/bench_hf_longformer.py` runs it under a
Python that holds only torch and transformers, so jax is imported where it is used.
"""

import csv
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measures HF's Longformer, run by a Python that holds torch and transformers.
HF_SCRIPT = os.path.join(REPO, "experiments", "bench_hf_longformer.py")
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


def measure_in_child(command: list[str], *, env: dict | None = None) -> dict:
  """`{"status": "ok", **record}` of a measuring process that prints its record as the last
  line of its stdout (libraries may print before it), or `{"status": "failed: why"}`."""
  stdout, failure = run_child(command, env=env)
  if stdout is None:
    return {"status": f"failed: {failure}"}
  return {"status": "ok", **json.loads(stdout.strip().splitlines()[-1])}


def measure_in_child_or_exit(command: list[str], what: str) -> dict:
  """`measure_in_child`'s record, less its status; a failure ends this process with
  `error: <what> failed: <why>`."""
  record = measure_in_child(command)
  status = record.pop("status")
  if status != "ok":
    sys.exit(f"error: {what} {status}")
  return record


def print_record(record: dict) -> None:
  """Prints a measuring process's record for `measure_in_child`."""
  print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------------------
# Timing and memory.


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


def forward_backward(attend: Callable[..., object]) -> Callable[..., object]:
  """`step(cotangent, *inputs)`: the jitted forward of `attend(*inputs)` and the `jax.vjp`
  pullback of the output gradient `cotangent` to every input."""
  import jax  # pylint: disable=g-import-not-at-top
  # A real output gradient, as a model's backward hands the layer: under a loss like
  # sum(output) it would be a constant, which XLA folds into the backward.
  return jax.jit(lambda cotangent, *inputs: jax.vjp(attend, *inputs)[1](cotangent))


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
# The machine.


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


def matmul_rate(n: int, dtype: str, *, warmup: int, repeats: int) -> dict:
  """The machine's rate on an `n x n @ n x n` matmul: its timing and `gflops`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a, b = random_inputs(2, (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  # At least 20 steps: one takes a fraction of a second, and it sets every row's proportion.
  timing = time_jax_calls(lambda: matmul(a, b), warmup, max(repeats, 20))
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


def write_outputs(folder: str, stem: str, *, markdown: str, columns: Sequence[str] = (),
                  rows: list[dict] = (), record=None, figure: dict | None = None) -> None:
  """Writes `<stem>.md` in `folder` (made if missing), and where given `<stem>.csv` (`rows`
  of `columns`), `<stem>.json` (`record`) and `<stem>.png` (`figure`: the arguments of
  `plotting.versus_length`, whose rows are `rows` unless it names others)."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, stem)
  with open(path + ".md", "w") as f:
    f.write(markdown)
  if columns:  # one line per row; keys outside `columns` left out, missing ones empty
    with open(path + ".csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
  if record is not None:
    write_json(path + ".json", record)
  if figure is not None:
    # Imported here: matplotlib is a slow import, and measuring processes never plot.
    from experiments import plotting  # pylint: disable=g-import-not-at-top
    plotting.versus_length(**{"rows": rows, **figure, "out_png": path + ".png"})

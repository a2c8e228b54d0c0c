r"""Benchmarks attention mechanisms, forward + backward: time, throughput and peak memory.

  python -m experiments.bench_attention --out=results/bench_attention \
      [--lengths=1024,2048,4096 --mechanisms=local,longformer --dtype=bfloat16 \
       --hf_python=/tmp/hfvenv/bin/python]

Rows (one-sided window w):
  every variant of the registry (`lra.attention.variants()`: each mechanism and preset),
              as a config naming it gets it, with window w; a preset's dilations can be
              replaced (`--dilations`); mechanisms with global tokens have the first token
              global, with separate global q/k/v (`max_global=1`).
  jax_nn_banded  baseline: `jax.nn.dot_product_attention(local_window_size=(w, w),
              implementation="xla")`, the undilated band of window w computed as a dense
              masked [length, length] product.
With `--hf_python`, HuggingFace's `LongformerSelfAttention` (experiments/bench_hf_longformer.py,
run by that interpreter) adds an `hf_longformer` baseline row per length that it supports.

One timed step is a jit-compiled forward and `jax.vjp` pullback of a fixed random output
gradient (a real array, as a model's backward hands the layer) to every input array: q, k, v,
and for Longformer also its global q, k, v, which a model trains too. Each (mechanism, length)
runs in a fresh subprocess of this script, so that its peak RSS is its own; lengths are the
outer loop so that machine noise falls on all mechanisms alike. The machine's matmul rate, measured
afresh before each length (shared machines drift by tens of percent within minutes), puts
the useful GFLOP/s of that length's rows in proportion: useful FLOPs are 3 x the forward FLOPs
of the two matmuls over exactly the keys each query sees (`pattern_pairs`), so the waste of
a method (masked-out scores, padding blocks, recomputation) lowers its useful rate.

Writes bench.csv, bench.md, bench.json (every raw time) and bench.png in --out.
"""

import dataclasses
import importlib.metadata
import os
import statistics
import sys
from typing import Callable, Sequence

from absl import flags
import jax
import numpy as np

from experiments import cli
from experiments import harness
from lra import attention
from lra import errors
from lra.attention import common

HF_MECHANISM = "hf_longformer"
BANDED_BASELINE = "jax_nn_banded"
# Positions of Longformer's global tokens: the first one, like a classifier's [CLS].
GLOBAL_POSITIONS = (0,)

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768"],
                             "Sequence lengths.")
_WINDOW = flags.DEFINE_integer("window", 256, "One-sided window w (HF's attention_window = 2w).")
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads.", lower_bound=1)
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Dimension of each head.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Dtype of q, k, v and of the matmul-rate measurement.")
_MECHANISMS = flags.DEFINE_list(
    "mechanisms", None,
    "Rows to measure: registry variants and baselines (default: every one of them).")
_DILATIONS = flags.DEFINE_list(
    "dilations", [],
    "Per-head dilations of the presets that set a dilation: the heads are split into equal "
    "consecutive groups, one per value (default: each preset's own).")
_FULL_MAX_LENGTH = flags.DEFINE_integer(
    "full_max_length", 8192,
    "Longest length measured for the quadratic rows (quadratic mechanisms, the banded "
    "baseline).")
_MEMORY_LIMIT_GB = flags.DEFINE_float(
    "memory_limit_gb", None,
    "Skip a quadratic row at a length whose float32 score tensor alone exceeds this many GB "
    "(default: half the machine's memory).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per measuring process.", lower_bound=1)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1,
    "Sweeps over every (length, mechanism), each measurement in a fresh process; a row "
    "reports the median of its timed steps pooled over the rounds (and the matmul rate of "
    "a length likewise), so that a slow phase of a shared machine, which lasts minutes, "
    "falls on different rows in different rounds instead of deciding one row.", lower_bound=1)
_WARMUP = flags.DEFINE_integer(
    "warmup", 3,
    "Untimed steps first: the first compiles, and the next few still run up to several "
    "times slower while the process's memory settles (fresh pages for XLA's buffers).",
    lower_bound=1)
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 2048, "n of the n x n @ n x n matmul that measures the machine's rate.",
    lower_bound=1)
_OUT = flags.DEFINE_string("out", "results/bench_attention", "Folder of the outputs.")
_HF_PYTHON = flags.DEFINE_string(
    "hf_python", None,
    "A Python with torch and transformers (e.g. /tmp/hfvenv/bin/python): also time HF's "
    "Longformer attention, at the lengths that are multiples of 2 * window and at most "
    "--hf_max_length (float32, batch 1 only).")
_HF_MAX_LENGTH = flags.DEFINE_integer("hf_max_length", 4096, "Longest length measured for HF.")
_HUGE_PAGES = flags.DEFINE_bool(
    "malloc_huge_pages", True,
    "Run every measuring process (this script's, HF's, the matmul's) with glibc's malloc "
    "on transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1). XLA:CPU allocates "
    "a step's large temporaries afresh each step, and on 4 KB pages first touching them "
    "costs tens of thousands of page faults per step. No effect without glibc >= 2.35.")
_ONE = flags.DEFINE_string(
    "_one", None, "Internal: measure one `mechanism:length` (or `matmul:n`) in this process "
    "and print it as one JSON line.")

flags.register_validator("window", lambda w: w > 0, "must be > 0 (the one-sided window w)")
cli.positive_ints("lengths", "1024,2048")
cli.positive_ints("dilations", "1,2", allow_empty=True)


@dataclasses.dataclass(frozen=True)
class Setup:
  """The shapes and options shared by every measurement of a run."""

  window: int
  heads: int
  head_dim: int
  batch: int
  dtype: str
  dilations: tuple[int, ...]  # one per head for the dilating presets; () keeps their own

  @classmethod
  def from_flags(cls) -> "Setup":
    groups = [int(d) for d in _DILATIONS.value]
    if groups and _HEADS.value % len(groups):
      raise errors.ConfigError(
          f"--dilations has {len(groups)} values, which do not split --heads={_HEADS.value} "
          f"into equal groups")
    per_group = _HEADS.value // max(len(groups), 1)
    return cls(window=_WINDOW.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value,
               batch=_BATCH.value, dtype=_DTYPE.value,
               dilations=tuple(d for d in groups for _ in range(per_group)))


@dataclasses.dataclass(frozen=True)
class Measured:
  """One benchmarked row: a registry variant or a baseline.

  Attributes:
    attend: `(*inputs) -> output`, inputs `[batch, length, heads, head_dim]`.
    inputs: number of input arrays (q, k, v, then any global q, k, v).
    count_pairs: `length -> ` query-key pairs its pattern attends, summed over heads.
    quadratic: builds `[length, length]` scores, so long lengths are skipped.
  """

  attend: Callable[..., jax.Array]
  count_pairs: Callable[[int], int]
  inputs: int = 3
  quadratic: bool = False


def global_token_mask(shape) -> np.ndarray:
  # A numpy constant, as a model with a fixed [CLS]-like global token passes it.
  global_mask = np.zeros(shape, bool)
  global_mask[:, list(GLOBAL_POSITIONS)] = True
  return global_mask


def measured(name: str, setup: Setup) -> Measured:
  """The row `name`: a registry variant as a config choosing it gets it, at this benchmark's
  window, or a baseline."""
  band_pairs = lambda length: pattern_pairs(length, setup.window, (1,) * setup.heads)
  if name == BANDED_BASELINE:
    return Measured(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, local_window_size=(setup.window, setup.window), implementation="xla"),
        band_pairs, quadratic=True)
  if name == HF_MECHANISM:  # HF's layer runs in its own interpreter (`_run_hf`)
    return Measured(None, band_pairs)
  mechanism, preset = attention.variants()[name]
  dilation = None
  if preset and "dilation" in preset(setup.heads) and setup.dilations:
    dilation = setup.dilations
  bound = attention.build(attention.variant_config(
      name, num_heads=setup.heads, window=setup.window, dilation=dilation,
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

  return Measured(attend, count_pairs, inputs=6 if bound.uses_global else 3,
                  quadratic=mechanism.quadratic)


def row_names() -> list[str]:
  """What `--mechanisms` may name: every registry variant, then the baselines (HF's only
  through --hf_python)."""
  return [*attention.variants(), BANDED_BASELINE]


cli.subset_of("mechanisms", row_names(), "the registry variants and baselines")


def pattern_pairs(length: int, window: int | None, dilations: Sequence[int],
                  global_positions: Sequence[int] = (), causal: bool = False) -> int:
  """Query-key pairs the pattern attends, summed over heads: sum_i |keys seen by query i|.

  Counts `window_pattern` exactly, sequence ends included, without building the
  `[length, length]` pattern: a query sees `min(w, i // d)` keys before it,
  `min(w, (length - 1 - i) // d)` after it (none when causal) and itself (window None: every
  key); the global keys outside that window; and a global query sees every key.
  """
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


def useful_gflop(mechanism: str, length: int, setup: Setup) -> float:
  """3 x the forward FLOPs of q @ k^T and probs @ v over the attended pairs, in GFLOP (the
  backward counted as twice the forward: 4 matmuls against 2)."""
  pairs = measured(mechanism, setup).count_pairs(length)
  return 3 * 2 * 2 * setup.batch * pairs * setup.head_dim / 1e9


# ---------------------------------------------------------------------------------------------
# One measurement, in a fresh process.


def measure_one(spec: str, setup: Setup) -> dict:
  """Measures `mechanism:length` or `matmul:n` in this process (the `--_one` mode)."""
  name, _, size = spec.partition(":")
  if name == "matmul":
    return harness.matmul_rate(int(size), setup.dtype, warmup=_WARMUP.value,
                               repeats=_REPEATS.value)
  row = measured(name, setup)
  shape = (setup.batch, int(size), setup.heads, setup.head_dim)
  *inputs, cotangent = harness.random_inputs(row.inputs + 1, shape, setup.dtype)
  setup_rss_gb = harness.rss_gb()
  step = harness.forward_backward(row.attend)
  timing = harness.time_jax_calls(lambda: step(cotangent, *inputs), _WARMUP.value,
                                  _REPEATS.value)
  return {**timing, "setup_rss_gb": setup_rss_gb, "peak_rss_gb": harness.peak_rss_gb()}


# ---------------------------------------------------------------------------------------------
# The driver: subprocesses, tables, figure.


def _run_self(spec: str) -> dict:
  """Measures `spec` (see `measure_one`) in a fresh process of this script."""
  passed = ("window", "heads", "head_dim", "batch", "dtype", "dilations", "repeats", "warmup")
  return harness.measure_in_child(
      [sys.executable, "-m", "experiments.bench_attention", f"--_one={spec}",
       *(flags.FLAGS[name].serialize() for name in passed)],
      env=harness.child_env(huge_pages=_HUGE_PAGES.value))


def _run_hf(length: int) -> dict:
  """Times HF's Longformer layer at one length in a fresh process of its own interpreter."""
  record = harness.measure_in_child(
      [_HF_PYTHON.value, harness.HF_SCRIPT, "--child", f"--lengths={length}",
       f"--repeats={_REPEATS.value}", f"--warmup={_WARMUP.value}", f"--heads={_HEADS.value}",
       f"--head_dim={_HEAD_DIM.value}", f"--window={_WINDOW.value}"],
      env=harness.child_env(huge_pages=_HUGE_PAGES.value))
  if record["status"] == "ok":
    record["setup_rss_gb"] = record.pop("base_rss_gb")
  return record


def _measure(mechanism: str, length: int, setup: Setup) -> dict:
  """The record of one (mechanism, length), measured in a fresh process, or why not."""
  if mechanism == HF_MECHANISM:
    return _run_hf(length)
  skip = None
  if measured(mechanism, setup).quadratic:
    scores_gb = setup.batch * setup.heads * length**2 * 4 / 1e9
    skip = harness.quadratic_skip(length, scores_gb, full_max_length=_FULL_MAX_LENGTH.value,
                                  memory_limit_gb=_MEMORY_LIMIT_GB.value, what="score tensor")
  return {"status": skip} if skip else _run_self(f"{mechanism}:{length}")


def _plan(lengths: list[int]) -> list[tuple[str, int]]:
  """(mechanism, length) in measuring order: lengths outside, mechanisms inside."""
  hf_lengths = set()
  if _HF_PYTHON.value:
    hf_lengths = {n for n in lengths
                  if n % (2 * _WINDOW.value) == 0 and n <= _HF_MAX_LENGTH.value}
  names = list(dict.fromkeys(_MECHANISMS.value or row_names()))
  return [(name, n) for n in lengths
          for name in names + ([HF_MECHANISM] if n in hf_lengths else [])]


def _machine(matmuls: list[dict], setup: Setup) -> dict:
  rates = [m["gflops"] for m in matmuls if m.get("gflops")]
  return {"cpu": harness.cpu_model(), "cores": harness.cores(),
          "device": next((m["device"] for m in matmuls if m.get("device")), None),
          "jax": importlib.metadata.version("jax"), "matmul_n": _MATMUL_SIZE.value,
          "matmul_gflops": statistics.median(rates) if rates else None,
          "matmul_gflops_range": [min(rates), max(rates)] if rates else None,
          "malloc_huge_pages": _HUGE_PAGES.value, "repeats": _REPEATS.value,
          "rounds": _ROUNDS.value, **dataclasses.asdict(setup)}


CSV_COLUMNS = ("mechanism", "length", "status", "median_s", "useful_gflop", "useful_gflops",
               "matmul_gflops", "pct_of_matmul", "setup_rss_gb", "peak_rss_gb", "first_call_s")


def _pool(records: list[dict]) -> dict:
  """One record from a measurement's rounds: timed steps pooled, memory at its largest.

  A round that failed or was skipped decides the status only when no round succeeded.
  """
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


def _progress(record: dict) -> str:
  if record["status"] != "ok":
    return f"  {record['status']}"
  if "gflops" in record:
    return f"  {record['gflops']:.1f} GFLOP/s"
  return f"  {record['median_s']:.4f} s, peak RSS {record['peak_rss_gb']:.2f} GB"


def _finish_row(row: dict, setup: Setup, matmul_gflops: float | None) -> dict:
  """Adds the useful rate and its fraction of the matmul rate measured next to it."""
  row["useful_gflop"] = useful_gflop(row["mechanism"], row["length"], setup)
  row["matmul_gflops"] = matmul_gflops
  if row["status"] == "ok":
    row["useful_gflops"] = row["useful_gflop"] / row["median_s"]
    if matmul_gflops:
      row["pct_of_matmul"] = 100 * row["useful_gflops"] / matmul_gflops
    if row.get("warmup_s"):
      row["first_call_s"] = row["warmup_s"][0]
  return row


def markdown(rows: list[dict], machine: dict) -> str:
  matmul = "not measured"
  if machine["matmul_gflops"]:
    low, high = machine["matmul_gflops_range"]
    matmul = (f"median {machine['matmul_gflops']:.1f} GFLOP/s over the lengths (from "
              f"{low:.1f} to {high:.1f})")
  fmt = harness.fmt
  return harness.markdown_page(
      "# Attention benchmark: forward + backward",
      f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX device {machine['device']}; "
      f"jax {machine['jax']}; {machine['dtype']}; window {machine['window']} (one-sided); "
      f"{machine['heads']} heads x {machine['head_dim']}; batch {machine['batch']}; "
      f"matmul rate ({machine['matmul_n']}^3, {machine['dtype']}): {matmul}; malloc on "
      f"huge pages: {'yes' if machine['malloc_huge_pages'] else 'no'}.",
      f"Time: median of the timed steps ({machine['repeats']} per measuring process x "
      f"{machine['rounds']} round(s), pooled). Useful GFLOP/s: 3 x the forward FLOPs of the two "
      "matmuls over exactly the keys each query sees, per second. RSS in GB (1e9 bytes) of "
      "the measuring process: after setup (inputs allocated, before compiling) and peak.",
      harness.markdown_table(
          ["mechanism", "length", "median time (s)", "useful GFLOP/s",
           "matmul GFLOP/s (this length)", "% of matmul rate", "setup RSS (GB)",
           "peak RSS (GB)", "note"], "lrrrrrrrl",
          ([row["mechanism"], row["length"], fmt(row.get("median_s"), ".4f"),
            fmt(row.get("useful_gflops"), ".2f"), fmt(row.get("matmul_gflops"), ".1f"),
            fmt(row.get("pct_of_matmul"), ".1f"), fmt(row.get("setup_rss_gb"), ".2f"),
            fmt(row.get("peak_rss_gb"), ".2f"), "" if row["status"] == "ok" else row["status"]]
           for row in rows)))


def key_ratios(rows: list[dict]) -> list[str]:
  """The headline comparisons against the first linear registry variant measured: how its
  time grows from the shortest to the longest length, and every other row's time over its
  own at the longest length both reached."""
  median = {(r["mechanism"], r["length"]): r["median_s"] for r in rows if r["status"] == "ok"}
  names = list(dict.fromkeys(r["mechanism"] for r in rows))
  variants = attention.variants()
  linear = [n for n in names if n in variants and not variants[n][0].quadratic]
  if not linear:
    return []
  reference = linear[0]
  lines = []
  lengths = sorted({length for name, length in median if name == reference})
  if len(lengths) >= 2:
    lo, hi = lengths[0], lengths[-1]
    lines.append(f"time({reference}, {hi}) / time({reference}, {lo}): "
                 f"{median[reference, hi] / median[reference, lo]:.2f} "
                 f"({hi / lo:.2f} if linear)")
  for name in names:
    shared = [n for n in lengths if (name, n) in median]
    if name != reference and shared:
      n = shared[-1]
      lines.append(f"time({name}, {n}) / time({reference}, {n}): "
                   f"{median[name, n] / median[reference, n]:.2f}")
  return lines


def write_outputs(rows: list[dict], machine: dict, matmuls: list[dict], out: str) -> str:
  """Writes bench.{csv,md,json,png} and returns the Markdown table."""
  text = markdown(rows, machine)
  ratios = "\n".join(f"- {line}" for line in key_ratios(rows))
  harness.write_outputs(
      out, "bench", markdown=f"{text}\n{ratios}\n", columns=CSV_COLUMNS, rows=rows,
      record={"machine": machine, "matmuls": matmuls, "rows": rows},
      figure=dict(name_key="mechanism",
                  panels=[("median_s", "seconds per step", "forward + backward time"),
                          ("peak_rss_gb", "peak RSS (GB)", "peak memory")],
                  title=f"window {machine['window']}, {machine['heads']} heads x "
                        f"{machine['head_dim']}, batch {machine['batch']}, {machine['dtype']}, "
                        f"{machine['cpu']} ({machine['cores']} cores)"))
  return text


def main(argv):
  del argv
  setup = Setup.from_flags()
  if _ONE.value:
    harness.print_record(measure_one(_ONE.value, setup))
    return
  if _HF_PYTHON.value:
    if not os.access(_HF_PYTHON.value, os.X_OK):
      raise errors.ConfigError(f"--hf_python={_HF_PYTHON.value} is not an executable Python")
    if setup.dtype != "float32" or setup.batch != 1:
      raise errors.ConfigError("--hf_python measures HF at float32 and batch 1 only: drop "
                               "--hf_python, or use --dtype=float32 --batch=1")
  lengths = [int(n) for n in _LENGTHS.value]

  plan = _plan(lengths)
  records = {key: [] for key in plan}
  matmul_records = {length: [] for length in lengths}
  for round_index in range(_ROUNDS.value):
    rounds = f"round {round_index + 1}/{_ROUNDS.value} " if _ROUNDS.value > 1 else ""
    for index, (name, length) in enumerate(plan, 1):
      if index == 1 or plan[index - 2][1] != length:
        print(f"{rounds}matmul {_MATMUL_SIZE.value}^3 ({setup.dtype}) ...", flush=True)
        matmul_records[length].append(_run_self(f"matmul:{_MATMUL_SIZE.value}"))
        print(_progress(matmul_records[length][-1]), flush=True)
      print(f"{rounds}[{index}/{len(plan)}] {name} length {length} ...", flush=True)
      records[name, length].append(_measure(name, length, setup))
      print(_progress(records[name, length][-1]), flush=True)

  matmuls = [{"length": length, **_pool(matmul_records[length])} for length in lengths]
  for matmul in matmuls:
    if matmul["status"] == "ok":
      matmul["gflops"] = 2 * _MATMUL_SIZE.value**3 / matmul["median_s"] / 1e9
  matmul_rate = {m["length"]: m.get("gflops") for m in matmuls}
  rows = [_finish_row({"mechanism": name, "length": length, **_pool(records[name, length])},
                      setup, matmul_rate[length]) for name, length in plan]

  out = os.path.abspath(_OUT.value)
  print()
  print(write_outputs(rows, _machine(matmuls, setup), matmuls, out))
  for line in key_ratios(rows):
    print(line)
  print(f"wrote {out}/bench.{{csv,md,json,png}}")


if __name__ == "__main__":
  cli.run(main)

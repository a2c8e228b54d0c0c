r"""Benchmarks attention mechanisms, forward + backward: time, throughput and peak memory.

  python -m experiments.bench.attention --out=results/bench_attention \
      [--lengths=1024,2048,4096 --mechanisms=local,longformer --dtype=bfloat16 \
       --hf_python=/tmp/hfvenv/bin/python]

Rows (`harness.rows`, one-sided window w):
  every variant of the registry (`lra.attention.variants()`: each mechanism and preset),
              as a config naming it gets it, with window w; a preset's dilations can be
              replaced (`--dilations`); mechanisms with global tokens have the first token
              global, with separate global q/k/v (`max_global=1`). `--mechanisms` also takes
              the registry's rows on one implementation (`local_xla`, `local_causal_pallas`).
  jax_nn_banded  baseline: `jax.nn.dot_product_attention(local_window_size=(w, w),
              implementation="xla")`, the undilated band of window w computed as a dense
              masked [length, length] product.
With `--hf_python`, HuggingFace's `LongformerSelfAttention` (`experiments.bench.hf_longformer`,
run by that interpreter) adds an `hf_longformer` baseline row per length that it supports.

One timed step is a jit-compiled forward and `jax.vjp` pullback of a fixed random output
gradient (a real array, as a model's backward hands the layer) to every input array: q, k, v,
and for Longformer also its global q, k, v, which a model trains too. Each (mechanism, length)
runs in a fresh subprocess of this script, so that its peak RSS is its own; lengths are the
outer loop so that machine noise falls on all mechanisms alike. The machine's matmul rate,
measured afresh before each length (shared machines drift by tens of percent within minutes),
puts the useful GFLOP/s of that length's rows in proportion: useful FLOPs are 3 x the forward
FLOPs of the two matmuls over exactly the keys each query sees (`harness.pattern_pairs`), so
the waste of a method (masked-out scores, padding blocks, recomputation) lowers its useful
rate.

Writes bench.csv, bench.md, bench.json (every raw time) and bench.png in --out.
"""

import dataclasses
import importlib.metadata
import os
import statistics
import sys

from absl import flags

from experiments import cli
from experiments.bench import harness
from lra import attention
from lra import errors

FLAGS = flags.FLAGS
# The rows this benchmark measures: every row of the harness but FlexAttention's (a GPU
# baseline of `experiments.bench.gpu`) and HF's, which `--hf_python` adds.
MECHANISMS = [name for name in harness.row_names()
              if name not in (harness.HF_LONGFORMER, harness.FLEX_CAUSAL_WINDOW)]
# What `--mechanisms` measures when not given: each variant as a config naming it gets it.
DEFAULT_MECHANISMS = [*attention.variants(), "jax_nn_banded"]
# Flags a measuring process of this script takes from its parent.
PASSED_FLAGS = ("window", "heads", "head_dim", "batch", "dtype", "dilations", "repeats",
                "warmup")
CSV_COLUMNS = ("mechanism", "length", "status", "median_s", "useful_gflop", "useful_gflops",
               "matmul_gflops", "pct_of_matmul", "setup_rss_gb", "peak_rss_gb", "first_call_s")


def define_flags() -> None:
  """This benchmark's flags; defined when it runs, so that importing it defines none."""
  flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768"],
                    "Sequence lengths.")
  flags.DEFINE_integer("window", 256, "One-sided window w (HF's attention_window = 2w).")
  flags.DEFINE_integer("heads", 8, "Attention heads.", lower_bound=1)
  flags.DEFINE_integer("head_dim", 64, "Dimension of each head.", lower_bound=1)
  flags.DEFINE_integer("batch", 1, "Batch size.", lower_bound=1)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Dtype of q, k, v and of the matmul-rate measurement.")
  flags.DEFINE_list("mechanisms", DEFAULT_MECHANISMS,
                    "Rows to measure: registry variants (also on one implementation) and "
                    "baselines.")
  flags.DEFINE_list(
      "dilations", [],
      "Per-head dilations of the presets that set a dilation: the heads are split into equal "
      "consecutive groups, one per value (default: each preset's own).")
  flags.DEFINE_integer(
      "full_max_length", 8192,
      "Longest length measured for the quadratic rows (quadratic mechanisms, the banded "
      "baseline).")
  flags.DEFINE_float(
      "memory_limit_gb", None,
      "Skip a quadratic row at a length whose float32 score tensor alone exceeds this many GB "
      "(default: half the machine's memory).")
  flags.DEFINE_integer("repeats", 5, "Timed steps per measuring process.", lower_bound=1)
  flags.DEFINE_integer(
      "rounds", 1,
      "Sweeps over every (length, mechanism), each measurement in a fresh process; a row "
      "reports the median of its timed steps pooled over the rounds (and the matmul rate of "
      "a length likewise), so that a slow phase of a shared machine, which lasts minutes, "
      "falls on different rows in different rounds instead of deciding one row.",
      lower_bound=1)
  flags.DEFINE_integer(
      "warmup", 3,
      "Untimed steps first: the first compiles, and the next few still run up to several "
      "times slower while the process's memory settles (fresh pages for XLA's buffers).",
      lower_bound=1)
  flags.DEFINE_integer(
      "matmul_size", 2048, "n of the n x n @ n x n matmul that measures the machine's rate.",
      lower_bound=1)
  flags.DEFINE_string("out", "results/bench_attention", "Folder of the outputs.")
  flags.DEFINE_string(
      "hf_python", None,
      "A Python with torch and transformers (e.g. /tmp/hfvenv/bin/python): also time HF's "
      "Longformer attention, at the lengths that are multiples of 2 * window and at most "
      "--hf_max_length (float32, batch 1 only).")
  flags.DEFINE_integer("hf_max_length", 4096, "Longest length measured for HF.")
  flags.DEFINE_bool(
      "malloc_huge_pages", True,
      "Run every measuring process (this script's, HF's, the matmul's) with glibc's malloc "
      "on transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1). XLA:CPU allocates "
      "a step's large temporaries afresh each step, and on 4 KB pages first touching them "
      "costs tens of thousands of page faults per step. No effect without glibc >= 2.35.")
  flags.DEFINE_string(
      "_one", None, "Internal: measure one `mechanism:length` (or `matmul:n`) in this process "
      "and print it as one JSON line.")
  flags.register_validator("window", lambda w: w > 0, "must be > 0 (the one-sided window w)")
  cli.positive_ints("lengths", "1024,2048")
  cli.positive_ints("dilations", "1,2", allow_empty=True)
  cli.subset_of("mechanisms", MECHANISMS, "the registry's rows and the baselines")


def setup_from_flags() -> harness.Setup:
  groups = [int(d) for d in FLAGS.dilations]
  if groups and FLAGS.heads % len(groups):
    raise errors.ConfigError(
        f"--dilations has {len(groups)} values, which do not split --heads={FLAGS.heads} "
        f"into equal groups")
  per_group = FLAGS.heads // max(len(groups), 1)
  return harness.Setup(window=FLAGS.window, heads=FLAGS.heads, head_dim=FLAGS.head_dim,
                       batch=FLAGS.batch, dtype=FLAGS.dtype,
                       dilations=tuple(d for d in groups for _ in range(per_group)))


# ---------------------------------------------------------------------------------------------
# One measurement, in a fresh process.


def measure_one(spec: str, setup: harness.Setup) -> dict:
  """Measures `mechanism:length` or `matmul:n` in this process (the `--_one` mode)."""
  name, _, size = spec.partition(":")
  if name == "matmul":
    return harness.matmul_rate(int(size), setup.dtype, warmup=FLAGS.warmup,
                               repeats=FLAGS.repeats)
  row = harness.rows(setup)[name]
  shape = (setup.batch, int(size), setup.heads, setup.head_dim)
  *inputs, cotangent = harness.random_inputs(row.inputs + 1, shape, setup.dtype)
  setup_rss_gb = harness.rss_gb()
  step = harness.forward_backward(row.attend)
  with harness.pallas_backward(row.backward):
    timing = harness.time_jax_calls(lambda: step(cotangent, *inputs), FLAGS.warmup,
                                    FLAGS.repeats)
  return {**timing, "setup_rss_gb": setup_rss_gb, "peak_rss_gb": harness.peak_rss_gb()}


# ---------------------------------------------------------------------------------------------
# The driver: subprocesses, tables, figure.


def _run_self(spec: str) -> dict:
  """Measures `spec` (see `measure_one`) in a fresh process of this script."""
  return harness.measure_in_child(
      [sys.executable, "-m", "experiments.bench.attention", f"--_one={spec}",
       *(FLAGS[name].serialize() for name in PASSED_FLAGS)],
      env=harness.child_env(huge_pages=FLAGS.malloc_huge_pages))


def _run_hf(length: int) -> dict:
  """Times HF's Longformer layer at one length in a fresh process of its own interpreter."""
  record = harness.measure_in_child(
      [FLAGS.hf_python, "-m", "experiments.bench.hf_longformer", "--child",
       f"--lengths={length}", f"--repeats={FLAGS.repeats}", f"--warmup={FLAGS.warmup}",
       f"--heads={FLAGS.heads}", f"--head_dim={FLAGS.head_dim}", f"--window={FLAGS.window}"],
      env=harness.child_env(huge_pages=FLAGS.malloc_huge_pages), cwd=harness.REPO)
  if record["status"] == "ok":
    record["setup_rss_gb"] = record.pop("base_rss_gb")
  return record


def _measure(name: str, length: int, setup: harness.Setup, table: dict) -> dict:
  """The record of one (row, length), measured in a fresh process, or why not."""
  if name == harness.HF_LONGFORMER:
    return _run_hf(length)
  skip = harness.unmet(table[name].needs)
  if not skip and table[name].quadratic:
    scores_gb = setup.batch * setup.heads * length**2 * 4 / 1e9
    skip = harness.quadratic_skip(length, scores_gb, full_max_length=FLAGS.full_max_length,
                                  memory_limit_gb=FLAGS.memory_limit_gb, what="score tensor")
  return {"status": skip} if skip else _run_self(f"{name}:{length}")


def plan(names: list[str], lengths: list[int], hf_lengths: set[int]) -> list[tuple[str, int]]:
  """(row, length) in measuring order: lengths outside, rows inside, HF's last at the
  lengths it supports."""
  names = list(dict.fromkeys(names))
  return [(name, n) for n in lengths
          for name in names + ([harness.HF_LONGFORMER] if n in hf_lengths else [])]


def _machine(matmuls: list[dict], setup: harness.Setup) -> dict:
  rates = [m["gflops"] for m in matmuls if m.get("gflops")]
  return {"cpu": harness.cpu_model(), "cores": harness.cores(),
          "device": next((m["device"] for m in matmuls if m.get("device")), None),
          "jax": importlib.metadata.version("jax"), "matmul_n": FLAGS.matmul_size,
          "matmul_gflops": statistics.median(rates) if rates else None,
          "matmul_gflops_range": [min(rates), max(rates)] if rates else None,
          "malloc_huge_pages": FLAGS.malloc_huge_pages, "repeats": FLAGS.repeats,
          "rounds": FLAGS.rounds, **dataclasses.asdict(setup)}


def _progress(record: dict) -> str:
  if record["status"] != "ok":
    return f"  {record['status']}"
  if "gflops" in record:
    return f"  {record['gflops']:.1f} GFLOP/s"
  return f"  {record['median_s']:.4f} s, peak RSS {record['peak_rss_gb']:.2f} GB"


def finish_row(row: dict, table: dict, setup: harness.Setup,
               matmul_gflops: float | None) -> dict:
  """Adds the useful rate and its fraction of the matmul rate measured next to it."""
  row["useful_gflop"] = harness.useful_flop(table[row["mechanism"]], row["length"], setup) / 1e9
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
  setup = setup_from_flags()
  if FLAGS["_one"].value:
    harness.print_record(measure_one(FLAGS["_one"].value, setup))
    return
  hf_lengths = set()
  lengths = [int(n) for n in FLAGS.lengths]
  if FLAGS.hf_python:
    if not os.access(FLAGS.hf_python, os.X_OK):
      raise errors.ConfigError(f"--hf_python={FLAGS.hf_python} is not an executable Python")
    if setup.dtype != "float32" or setup.batch != 1:
      raise errors.ConfigError("--hf_python measures HF at float32 and batch 1 only: drop "
                               "--hf_python, or use --dtype=float32 --batch=1")
    hf_lengths = {n for n in lengths
                  if n % (2 * FLAGS.window) == 0 and n <= FLAGS.hf_max_length}

  table = harness.rows(setup)
  order = plan(FLAGS.mechanisms, lengths, hf_lengths)
  records = {key: [] for key in order}
  matmul_records = {length: [] for length in lengths}
  for round_index in range(FLAGS.rounds):
    rounds = f"round {round_index + 1}/{FLAGS.rounds} " if FLAGS.rounds > 1 else ""
    for index, (name, length) in enumerate(order, 1):
      if index == 1 or order[index - 2][1] != length:
        print(f"{rounds}matmul {FLAGS.matmul_size}^3 ({setup.dtype}) ...", flush=True)
        matmul_records[length].append(_run_self(f"matmul:{FLAGS.matmul_size}"))
        print(_progress(matmul_records[length][-1]), flush=True)
      print(f"{rounds}[{index}/{len(order)}] {name} length {length} ...", flush=True)
      records[name, length].append(_measure(name, length, setup, table))
      print(_progress(records[name, length][-1]), flush=True)

  matmuls = [{"length": length, **harness.pool_rounds(matmul_records[length])}
             for length in lengths]
  for matmul in matmuls:
    if matmul["status"] == "ok":
      matmul["gflops"] = 2 * FLAGS.matmul_size**3 / matmul["median_s"] / 1e9
  matmul_rate = {m["length"]: m.get("gflops") for m in matmuls}
  rows = [finish_row({"mechanism": name, "length": length,
                      **harness.pool_rounds(records[name, length])},
                     table, setup, matmul_rate[length]) for name, length in order]

  out = os.path.abspath(FLAGS.out)
  print()
  print(write_outputs(rows, _machine(matmuls, setup), matmuls, out))
  for line in key_ratios(rows):
    print(line)
  print(f"wrote {out}/bench.{{csv,md,json,png}}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)

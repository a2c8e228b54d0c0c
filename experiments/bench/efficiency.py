"""Training speed and memory of whole models against length: `compare --efficiency`.

Measures the training steps/s and peak memory of each variant's whole model at each length
(LRA's Table 2, Longformer's Figure 1) with `experiments.bench.model` (a fresh process per
measurement, on random tokens), relative to full attention (the first variant compared whose
mechanism the registry marks quadratic), and finds the length from which each variant trains
faster than it and how its memory and time grow with length. Writes efficiency.md,
efficiency.csv and efficiency.png. Defines compare's `--efficiency` flags.
"""

import json
import math
import os
import sys

from absl import flags

from experiments import cli
from experiments.bench import harness
from lra import attention

COLUMNS = ("variant", "length", "batch", "status", "steps_per_sec", "steps_per_sec_vs_full",
           "peak_memory_gb", "memory_vs_full", "compile_and_first_step_s")

# Bytes of full attention's training step per score (per layer, example, head and query-key
# pair): 4.1 GB peak RSS measured for 2 layers x batch 8 x 4 heads at length 2048.
_FULL_BYTES_PER_SCORE = 16


_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192", "16384"],
                             "--efficiency: sequence lengths.")
_BATCH = flags.DEFINE_integer("batch", 1, "--efficiency: batch size.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 3, "--efficiency: timed steps after the compiling one.",
                              lower_bound=1)
_FULL_MAX_LENGTH = flags.DEFINE_integer(
    "full_max_length", 8192, "--efficiency: longest length measured for quadratic variants.")
_MEMORY_LIMIT_GB = flags.DEFINE_float(
    "memory_limit_gb", None, "--efficiency: skip a quadratic variant where its estimated memory "
    "exceeds this many GB (default: half the machine's memory).")
cli.positive_ints("lengths", "1024,2048")


def _quadratic(config: dict) -> bool:
  return attention.get(config["attention"]["name"]).quadratic


def _skip(config: dict, length: int) -> str | None:
  """Why a variant is not measured at `length`, or None."""
  if not _quadratic(config):
    return None
  model = config["model"]
  estimate_gb = (_FULL_BYTES_PER_SCORE * model["num_layers"] * _BATCH.value
                 * model["num_heads"] * length**2 / 1e9)
  return harness.quadratic_skip(length, estimate_gb, full_max_length=_FULL_MAX_LENGTH.value,
                                memory_limit_gb=_MEMORY_LIMIT_GB.value,
                                what="estimated step memory")


def _bench(spec: str, length: int, overrides: list[str], out: str) -> dict:
  """One `experiments.bench.model` measurement, or why it failed."""
  command = [sys.executable, "-m", "experiments.bench.model", f"--config={spec}", *overrides,
             f"--config.batch_size={_BATCH.value}", f"--config.data.max_length={length}",
             f"--steps={_STEPS.value}", f"--out={out}"]
  stdout, failure = harness.run_child(command)
  if stdout is None:
    return {"status": f"failed: {failure}"}
  # experiments.bench.model appends its record to bench_model.jsonl; this one is the last line.
  with open(os.path.join(out, "bench_model.jsonl")) as f:
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


def findings(rows: list[dict], full_variant: str | None) -> list[str]:
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


def markdown(rows: list[dict], title: str, full_variant: str | None, steps: int,
             command: str) -> str:
  fmt = harness.fmt
  return harness.markdown_page(
      f"# Training speed and memory against length: {title}",
      f"Made by `{command}`",
      harness.markdown_table(
          ["variant", "length", "steps/s", f"steps/s vs {full_variant}", "peak memory (GB)",
           f"memory vs {full_variant}", "note"], "lrrrrrl",
          ([row["variant"], row["length"], fmt(row.get("steps_per_sec"), ".3f"),
            fmt(row.get("steps_per_sec_vs_full"), ".2f"), fmt(row.get("peak_memory_gb"), ".2f"),
            fmt(row.get("memory_vs_full"), ".2f"), "" if row["status"] == "ok" else row["status"]]
           for row in rows)),
      f"Each row: the jitted train step of the whole model (`experiments.bench.model`, random "
      f"tokens, no padding) in a fresh process on {_device(rows)} with {harness.cores()} cores; "
      f"steps/s from the median of {steps} steps after the compiling one; peak "
      "memory is the process's peak RSS (GB, 1e9 bytes), JAX's runtime included.",
      [f"- {line}" for line in findings(rows, full_variant)])


def run(configs: dict[str, tuple[str, dict]], task: str, size: str, overrides: list[str], *,
        out: str, command: str) -> str:
  """Measures every (length, variant) of `configs` (variant -> (config spec, its config as
  JSON)) with the `--config.field=value` `overrides`, lengths outside so that machine noise
  falls on all variants alike; writes efficiency.{md,csv,png} in `out`, returns the Markdown."""
  batch = _BATCH.value
  plan = [(variant, length) for length in map(int, _LENGTHS.value) for variant in configs]
  rows = []
  for index, (variant, length) in enumerate(plan, 1):
    print(f"[{index}/{len(plan)}] {variant} length {length} ...", flush=True)
    spec, config = configs[variant]
    skip = _skip(config, length)
    row = {"variant": variant, "length": length, "batch": batch,
           **({"status": skip} if skip else _bench(spec, length, overrides, out))}
    rows.append(row)
    print(f"  {row['steps_per_sec']:.3f} steps/s, peak memory {row['peak_memory_gb']:.2f} GB"
          if row["status"] == "ok" else f"  {row['status']}", flush=True)
  # Full attention: the first quadratic variant compared (LRA's and Longformer's reference).
  full_variant = next((v for v, (_, config) in configs.items() if _quadratic(config)), None)
  _relative_to_full(rows, full_variant)
  for row in rows:  # the plot's time axis: lower is better, as in Longformer's Figure 1
    if row["status"] == "ok":
      row["step_s"] = 1 / row["steps_per_sec"]
  text = markdown(rows, f"{task}, size {size}, batch {batch}", full_variant, _STEPS.value,
                  command)
  harness.write_outputs(
      out, "efficiency", markdown=text, columns=COLUMNS, rows=rows,
      figure=dict(name_key="variant",
                  panels=[("step_s", "seconds per training step", "training step time"),
                          ("peak_memory_gb", "peak RSS (GB)", "peak memory")],
                  title=f"{task} {size} model, batch {batch}, whole train step, "
                        f"{_device(rows)} ({harness.cores()} cores)"))
  return text

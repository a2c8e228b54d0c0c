r"""Benchmarks sequence-parallel local attention over P simulated CPU devices.

  python -m experiments.bench.sequence_parallel --out=docs \
      [--sequence_devices=1,2,4,8 --length=65536 --device_memory_gb=16 \
       --big_length=1048576 --big_heads=2]

One step is a jit-compiled forward and `jax.vjp` pullback of a random output gradient to
q, k, v (as in `experiments.bench.attention`, whose shape flags --window, --heads,
--head_dim, --dtype, --repeats, --warmup this command has too). P = 1 is the single-device
`sliding_window_attention`; P > 1 is `sharded_sliding_window_attention` with the length
split over a mesh of P simulated CPU devices. Each measurement runs in a fresh process that
simulates exactly P devices.

What it reports:
  1. At a fixed total length (--length), for each P: the per-device memory of the compiled
     step (XLA's memory analysis of the SPMD program: arguments + outputs + temporaries,
     which is what one device holds), the time of a step and the process's peak RSS (all
     P simulated devices together; they share this machine's cores, so time does not fall
     with P here), and the bytes each device receives per step, summed over the
     collectives of the compiled HLO (`harness.hlo_collectives`), next to the halo formula.
  2. For each P, the longest total length whose compiled per-device memory fits
     --device_memory_gb (doubling, then bisection, compile only; bounded by
     --max_search_length), and the bytes received per device there: the same as at
     --length, since halos do not grow with the length.
  3. One step at --big_length on the largest P with --big_heads heads, executed, checked
     against the single-device core on stretches around every shard boundary and at both
     ends of the sequence; and the same length at --heads compiled only, for its
     per-device memory.

Writes sequence_parallel.json (every figure) and sequence_parallel_tables.md in --out.
"""

import functools
import json
import os
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import psutil

from experiments import cli
from experiments.bench import harness
from lra import attention
from lra import errors
from lra.attention import sequence_parallel

FLAGS = flags.FLAGS
AXIS = "sequence"
PARTS = ("fixed", "search", "big")
# Flags a measuring process of this script takes from its parent.
PASSED_FLAGS = ("window", "head_dim", "dtype", "repeats", "warmup", "device_memory_gb",
                "max_search_length", "check_length", "malloc_huge_pages")


def define_flags() -> None:
  """This benchmark's flags; defined when it runs, so that importing it defines none."""
  flags.DEFINE_integer("window", 256, "One-sided window w.")
  flags.DEFINE_integer("heads", 8, "Attention heads.", lower_bound=1)
  flags.DEFINE_integer("head_dim", 64, "Dimension of each head.", lower_bound=1)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of q, k, v.")
  flags.DEFINE_integer("repeats", 5, "Timed steps of the fixed-length sweep.", lower_bound=1)
  flags.DEFINE_integer("warmup", 3, "Untimed steps first (the first compiles).",
                       lower_bound=1)
  flags.DEFINE_string("out", "docs", "Folder of the outputs.")
  flags.DEFINE_bool(
      "malloc_huge_pages", True,
      "Run every measuring process with glibc's malloc on transparent huge pages "
      "(GLIBC_TUNABLES=glibc.malloc.hugetlb=1). No effect without glibc >= 2.35.")
  flags.DEFINE_list("sequence_devices", ["1", "2", "4", "8"],
                    "Numbers of simulated devices P the length is split over.")
  flags.DEFINE_integer("length", 65536, "Total length of the fixed-length sweep.")
  flags.DEFINE_float(
      "device_memory_gb", 16.0,
      "Per-device memory of the longest-length search, GB (1e9 B): a 16 GB accelerator.")
  flags.DEFINE_integer("max_search_length", 1 << 23,
                       "Longest total length the search compiles.")
  flags.DEFINE_integer("big_length", 1 << 20, "Total length of the one big step (0: skip it).")
  flags.DEFINE_integer(
      "big_heads", 2,
      "Heads of the executed big step: the simulated devices share this machine's memory, "
      "so it holds P devices' worth; --heads is compiled at --big_length for its memory "
      "alone.")
  flags.DEFINE_integer("check_length", 16384,
                       "Length of each stretch checked against the single-device core.")
  flags.DEFINE_list(
      "parts", list(PARTS),
      "Parts to measure (1, 2, 3 above); the others are kept from the sequence_parallel.json "
      "already in --out, which must be of the same shapes.")
  flags.DEFINE_string(
      "_measure", None, "Internal: `kind:devices:length:heads` in this process, as one JSON "
      "line (kind: run, compile, search or big).")
  flags.register_validator("window", lambda w: w > 0, "must be > 0 (the one-sided window w)")
  cli.subset_of("parts", PARTS, "the parts")
  cli.positive_ints("sequence_devices", "1,2,4,8")


def setup_from_flags() -> harness.Setup:
  return harness.Setup(window=FLAGS.window, heads=FLAGS.heads, head_dim=FLAGS.head_dim,
                       batch=1, dtype=FLAGS.dtype)


def halo_bytes(window: int, heads: int, head_dim: int, itemsize: int) -> int:
  """Bytes a device receives per step by the halo formula: k and v from both neighbours in
  the forward, their gradients back in the backward, plus the key mask."""
  halo = window  # dilation 1
  return 2 * 2 * 2 * halo * heads * head_dim * itemsize + 2 * halo


# ---------------------------------------------------------------------------------------------
# One measurement, in a process that simulates `devices` devices.


def _step(devices: int, window: int):
  """The jitted forward + backward, and the sharding of its `[1, L, H, D]` arrays."""
  mesh = jax.make_mesh((devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, PartitionSpec(None, AXIS))
  if devices == 1:
    attend = functools.partial(attention.sliding_window_attention, window=window)
  else:
    attend = functools.partial(sequence_parallel.sharded_sliding_window_attention,
                               sequence_axis=AXIS, window=window)

  def forward_backward(cotangent, q, k, v):
    out, pullback = jax.vjp(attend, q, k, v)
    return (out, *pullback(cotangent))

  step = jax.jit(forward_backward, in_shardings=(sharding,) * 4, out_shardings=(sharding,) * 4)
  return mesh, sharding, step


def compile_step(devices: int, length: int, heads: int, setup: harness.Setup):
  """The compiled step on `devices` devices (this process must have that many), its input
  sharding, and the record of its per-device memory and collectives."""
  mesh, sharding, step = _step(devices, setup.window)
  spec = jax.ShapeDtypeStruct((1, length, heads, setup.head_dim), jnp.dtype(setup.dtype),
                              sharding=sharding)
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(spec, spec, spec, spec).compile()
  memory = harness.compiled_memory_gb(compiled)
  collectives = harness.hlo_collectives(compiled.as_text())
  return compiled, sharding, {
      "devices": devices, "length": length, "heads": heads,
      "shard_length": -(-length // devices),
      "compile_s": time.perf_counter() - start,
      **{f"device_{key}": value for key, value in memory.items()},
      "collectives": [f"{op} {list(shape)}" for op, shape, _ in collectives],
      "device_received_bytes": sum(size for _, _, size in collectives),
      "halo_formula_bytes": (0 if devices == 1 else
                             halo_bytes(setup.window, heads, setup.head_dim,
                                        jnp.dtype(setup.dtype).itemsize)),
  }


def _stretch_errors(inputs, results, setup) -> list[dict]:
  """Max |sharded - single-device core| of the output and the gradients on stretches around
  every shard boundary and at both ends: the core runs on the stretch alone, and rows whose
  window (output, dq) or whose queries' windows (dk, dv) reach past a cut are left out."""
  q = inputs[1]
  length, window, n = q.shape[1], setup.window, FLAGS.check_length
  devices = len(jax.devices())
  shard = -(-length // devices)
  starts = sorted({0, length - n, *(max(0, min(b * shard - n // 2, length - n))
                                    for b in range(1, devices))})
  local = _step(1, window)[2]
  checks = []
  for start in starts:
    cut = slice(start, start + n)
    want = local(*(jax.device_put(x[:, cut], jax.devices()[0]) for x in inputs))
    for name, got, expected, margin in zip(("out", "dq", "dk", "dv"), results, want,
                                           (window, window, 2 * window, 2 * window)):
      lo = start + (margin if start > 0 else 0)
      hi = start + n - (margin if start + n < length else 0)
      got_rows = np.asarray(got[:, lo:hi])
      error = float(np.max(np.abs(got_rows - np.asarray(expected)[:, lo - start:hi - start])))
      checks.append({"start": start, "array": name, "rows": [lo, hi], "max_abs_error": error,
                     "max_abs_value": float(np.max(np.abs(got_rows)))})
  return checks


def _run_step(devices: int, length: int, heads: int, setup, *, repeats: int,
              warmup: int, check: bool) -> dict:
  compiled, sharding, record = compile_step(devices, length, heads, setup)
  # All P devices live in this process.
  need_gb = record["device_memory_gb"] * devices
  available_gb = psutil.virtual_memory().available / 1e9
  if need_gb > 0.9 * available_gb:
    raise errors.UserError(f"not run: the step needs ~{need_gb:.1f} GB of this machine's "
                           f"memory and {available_gb:.1f} GB is available")
  # The output gradient, q, k and v.
  inputs = harness.random_inputs(4, (1, length, heads, setup.head_dim), setup.dtype, sharding)
  record["setup_rss_gb"] = harness.peak_rss_gb()
  timing = harness.time_jax_calls(lambda: compiled(*inputs), warmup, repeats)
  record.update(timing, peak_rss_gb=harness.peak_rss_gb())
  if check:
    record["checks"] = _stretch_errors(inputs, compiled(*inputs), setup)
  return record


def _search(devices: int, start_length: int, heads: int, setup) -> dict:
  """The longest total length (a multiple of devices * 1024) whose compiled per-device
  memory fits --device_memory_gb: doubling, then bisection; compile only."""
  unit = devices * 1024
  budget = FLAGS.device_memory_gb
  fits, fails, tried = None, None, []

  def measure(length):
    record = compile_step(devices, length, heads, setup)[2]
    tried.append({k: record[k] for k in ("length", "device_memory_gb")})
    return record if record["device_memory_gb"] <= budget else None

  length = max(unit, start_length // unit * unit)
  while length <= FLAGS.max_search_length:
    record = measure(length)
    if record is None:
      fails = length
      break
    fits = record
    length *= 2
  low = fits["length"] if fits else 0
  while fails is not None and fails - low > unit:
    middle = (low + fails) // 2 // unit * unit
    record = measure(middle)
    if record is None:
      fails = middle
    else:
      fits, low = record, middle
  bounded = fails is None  # the bound was reached before the budget
  return {"devices": devices, "budget_gb": budget, "longest": fits, "tried": tried,
          "bounded_by_max_search_length": bounded}


def measure_one(spec: str, setup) -> dict:
  kind, devices, length, heads = spec.split(":")
  devices, length, heads = int(devices), int(length), int(heads)
  if kind == "compile":
    return compile_step(devices, length, heads, setup)[2]
  if kind == "search":
    return _search(devices, length, heads, setup)
  if kind == "run":
    return _run_step(devices, length, heads, setup, repeats=FLAGS.repeats,
                     warmup=FLAGS.warmup, check=False)
  if kind == "big":
    return _run_step(devices, length, heads, setup, repeats=1, warmup=0, check=True)
  raise errors.ConfigError(f"unknown measurement {spec!r}")


# ---------------------------------------------------------------------------------------------
# The driver.


def _measure(kind: str, devices: int, length: int, heads: int) -> dict:
  """Runs one measurement in a fresh process that simulates `devices` CPU devices."""
  command = [sys.executable, "-m", "experiments.bench.sequence_parallel",
             f"--_measure={kind}:{devices}:{length}:{heads}",
             *(FLAGS[name].serialize() for name in PASSED_FLAGS)]
  env = harness.child_env(huge_pages=FLAGS.malloc_huge_pages, JAX_PLATFORMS="cpu",
                          XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  print(f"{kind} P={devices} length={length} heads={heads} ...", flush=True)
  record = harness.measure_in_child(command, env=env)
  print(f"  {_summary(record)}", flush=True)
  return record


def _summary(record: dict) -> str:
  if record["status"] != "ok":
    return record["status"]
  parts = []
  if "device_memory_gb" in record:
    parts.append(f"{record['device_memory_gb']:.3f} GB per device")
  if "median_s" in record:
    parts.append(f"{record['median_s']:.2f} s, peak RSS {record['peak_rss_gb']:.2f} GB")
  if record.get("longest"):
    parts.append(f"longest {record['longest']['length']}")
  return ", ".join(parts)


def _gb(value) -> str:
  return harness.fmt(value, ".3f")


def _mb(value) -> str:
  return "" if value is None else f"{value / 1e6:.3f}"


def _fixed_row(r: dict, base: dict | None) -> list:
  """The cells of one P of the fixed-length table; `base` is the record of P = 1."""
  if r["status"] != "ok":
    return [r.get("devices", ""), *[""] * 8, r["status"]]
  ratio = f"{r['device_memory_gb'] / base['device_memory_gb']:.3f}" if base else ""
  kinds = sorted({c.split(" ")[0] for c in r["collectives"]})
  return [r["devices"], r["shard_length"], _gb(r["device_memory_gb"]), ratio,
          f"{_gb(r['device_argument_gb'])} / {_gb(r['device_output_gb'])} / "
          f"{_gb(r['device_temp_gb'])}", f"{r['median_s']:.3f}", f"{r['peak_rss_gb']:.2f}",
          _mb(r["device_received_bytes"]), _mb(r["halo_formula_bytes"]),
          f"{len(r['collectives'])} x {', '.join(kinds) or 'none'}"]


def _search_row(r: dict) -> list:
  """The cells of one P of the longest-length table."""
  if r["status"] != "ok" or not r["longest"]:
    return [r.get("devices", ""), "", "", "", r["status"]]
  best = r["longest"]
  return [r["devices"], best["length"], _gb(best["device_memory_gb"]),
          _mb(best["device_received_bytes"]),
          "bounded by --max_search_length" if r["bounded_by_max_search_length"] else ""]


def markdown(results: dict) -> str:
  m = results["machine"]
  base = next((r for r in results["fixed"] if r["status"] == "ok" and r["devices"] == 1), None)
  blocks = [
      "# Sequence-parallel local attention: forward + backward on simulated devices",
      f"Machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']}; P simulated CPU devices in "
      f"one process (they share the cores and the memory); window {m['window']} "
      f"(one-sided), {m['heads']} heads x {m['head_dim']}, batch 1, {m['dtype']}. Measured "
      "by: " + "; ".join(f"{part}: `{by['command']}` at commit {by['commit']}"
                          for part, by in results["measured_by"].items()) + ".",
      "Per-device memory: XLA's memory analysis of the compiled SPMD step (arguments + "
      "outputs + temporaries of one device). Received: bytes each device receives per step, "
      "summed over the collectives of the compiled HLO; the halo formula is "
      "8·w·H·D·itemsize + 2·w (k and v from both neighbours, their gradients back, the "
      "mask). Time and peak RSS are of the whole process (all P devices on the same cores).",
      f"## Fixed total length {results['length']}",
      harness.markdown_table(
          ["P", "shard length", "per-device memory (GB)", "x P=1",
           "args / outputs / temps (GB)", "step time (s)", "process peak RSS (GB)",
           "received per device (MB)", "halo formula (MB)", "collectives"], "rrrrlrrrrl",
          (_fixed_row(r, base) for r in results["fixed"])),
      f"## Longest total length whose step fits {results['device_memory_gb']} GB per device",
      "Compiled only (doubling, then bisection to a multiple of P·1024).",
      harness.markdown_table(
          ["P", "longest length", "per-device memory (GB)", "received per device (MB)", "note"],
          "rrrrl", (_search_row(r) for r in results["search"])),
  ]
  big = results.get("big")
  if big:
    blocks.append(f"## One step at total length {results['big_length']}")
    compiled, run = big["compiled"], big["run"]
    lines = []
    if compiled["status"] == "ok":
      lines.append(
          f"- {compiled['heads']} heads x {m['head_dim']}, P = {compiled['devices']}, "
          f"compiled: {_gb(compiled['device_memory_gb'])} GB per device "
          f"({_gb(compiled['device_memory_gb'] * compiled['devices'])} GB for all "
          f"{compiled['devices']}), {_mb(compiled['device_received_bytes'])} MB received per "
          f"device.")
    if run["status"] == "ok":
      worst = max(run["checks"], key=lambda c: c["max_abs_error"])
      lines.append(
          f"- {run['heads']} heads x {m['head_dim']}, P = {run['devices']}, executed: "
          f"{run['median_s']:.1f} s for the step (compiled beforehand in "
          f"{run['compile_s']:.1f} s), process peak RSS {run['peak_rss_gb']:.2f} GB, "
          f"{_gb(run['device_memory_gb'])} GB per device compiled; against the single-device "
          f"core on {len({c['start'] for c in run['checks']})} stretches of "
          f"{results['check_length']} (every shard boundary and both ends): max |error| of "
          f"the output, dq, dk, dv {worst['max_abs_error']:.2e} (values up to "
          f"{max(c['max_abs_value'] for c in run['checks']):.1f}).")
    else:
      lines.append(f"- executed: {run['status']}")
    blocks.append(lines)
  return harness.markdown_page(*blocks)


def main(argv):
  del argv
  setup = setup_from_flags()
  if FLAGS["_measure"].value:
    harness.print_record(measure_one(FLAGS["_measure"].value, setup))
    return
  devices = sorted({int(p) for p in FLAGS.sequence_devices})
  heads, length = setup.heads, FLAGS.length
  results = {
      "machine": {"cpu": harness.cpu_model(), "cores": harness.cores(), "jax": jax.__version__,
                  "window": setup.window, "heads": heads, "head_dim": setup.head_dim,
                  "dtype": setup.dtype, "devices": devices},
      "length": length, "device_memory_gb": FLAGS.device_memory_gb,
      "big_length": FLAGS.big_length, "check_length": FLAGS.check_length,
  }
  out = os.path.join(FLAGS.out, "sequence_parallel")
  kept_by = _kept_parts(results, out + ".json")
  if "fixed" in FLAGS.parts:
    results["fixed"] = [{"devices": p, **_measure("run", p, length, heads)} for p in devices]
  if "search" in FLAGS.parts:
    results["search"] = [{"devices": p, **_measure("search", p, length, heads)}
                         for p in devices]
  if "big" in FLAGS.parts and FLAGS.big_length:
    most = devices[-1]
    results["big"] = {
        "compiled": _measure("compile", most, FLAGS.big_length, heads),
        "run": _measure("big", most, FLAGS.big_length, FLAGS.big_heads),
    }
  by = {"command": " ".join(["python -m experiments.bench.sequence_parallel", *sys.argv[1:]]),
        "commit": harness.commit()}
  results["measured_by"] = {part: by if part in FLAGS.parts else kept_by[part]
                            for part in PARTS if part in results}
  text = markdown(results)
  harness.write_outputs(FLAGS.out, "sequence_parallel_tables", markdown=text)
  harness.write_json(out + ".json", results)
  print()
  print(text)
  print(f"wrote {out}.json and {out}_tables.md")


def _kept_parts(results: dict, path: str) -> dict:
  """Copies into `results` the parts not measured now from an earlier run at `path`;
  returns who measured them."""
  kept = [part for part in PARTS if part not in FLAGS.parts]
  if not kept or not os.path.exists(path):
    return {}
  with open(path) as f:
    earlier = json.load(f)
  settings = ("machine", "length", "device_memory_gb", "big_length", "check_length")
  if any(earlier.get(key) != results[key] for key in settings):
    raise errors.ConfigError(
        f"{path} was measured with other settings; measure every part (--parts="
        f"{','.join(PARTS)}) or use the same flags")
  results.update({part: earlier[part] for part in kept if part in earlier})
  return {part: earlier["measured_by"][part] for part in kept if part in earlier}


if __name__ == "__main__":
  define_flags()
  cli.run(main)

r"""What the GPU kernels compile to, without a GPU: registers, spills and shared memory.

Two steps in two Pythons, because Triton is not a project dependency:

  # 1. With the project's Python: lower forward + backward for CUDA and keep each Triton
  #    kernel's IR (and its launch settings) in a folder.
  .venv/bin/python -m experiments.bench.kernel_ptxas dump --out=results/ptxas --length=16384
  # 2. With a Python that has the `triton` package (the GPU's Triton version, e.g.
  #    `python3 -m venv /tmp/triton && /tmp/triton/bin/pip install triton==3.6.0`), from
  #    the repository's root: compile each kernel for sm_90 at its launch settings and read
  #    ptxas' report.
  /tmp/triton/bin/python -m experiments.bench.kernel_ptxas compile --dir=results/ptxas

`compile` writes `ptxas.json` and `ptxas.md`: per kernel, its warps and stages, registers
per thread, spill stores and loads, static shared memory, and the count of `ex2.approx`
(the exponential) and `wgmma` (Hopper's asynchronous matmul) instructions in the PTX.
XLA's own Triton pipeline differs a little from the `triton` package's: the figures are
indicative of the kernels' resource use, not the device's truth, and they time nothing.
"""

import argparse
import json
import os
import re
import subprocess
import sys

from experiments.bench import harness


def dump(args) -> None:
  """Lowers forward + backward of `sliding_window_attention` on the kernels for CUDA and
  writes each kernel's Triton IR (`<name>.ttir`) and launch settings (`kernels.json`)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import export  # pylint: disable=g-import-not-at-top
  from jax._src.pallas.triton import pallas_call_registration  # pylint: disable=g-import-not-at-top

  from lra import attention  # pylint: disable=g-import-not-at-top
  from lra.attention.kernels import launch  # pylint: disable=g-import-not-at-top

  os.makedirs(args.out, exist_ok=True)
  lowering = pallas_call_registration.lowering
  lower = lowering.lower_jaxpr_to_triton_module
  found = {}

  def capture(jaxpr, *rest, **options):
    result = lower(jaxpr, *rest, **options)
    name = jaxpr.debug_info.func_name
    with open(os.path.join(args.out, f"{name}.ttir"), "w") as f:
      f.write(result.module.operation.get_asm(enable_debug_info=False))
    kernel = name.removeprefix("band_attention_")
    found[name] = vars(launch.settings(kernel))
    return result

  dtype = jnp.dtype(args.dtype)
  q = jax.ShapeDtypeStruct((1, args.length, args.heads, args.head_dim), dtype)
  kv = jax.ShapeDtypeStruct((1, args.length, args.kv_heads or args.heads, args.head_dim), dtype)
  options = dict(window=args.window, causal=args.causal, implementation="pallas")
  inputs = [q, kv, kv]
  if args.dropout:
    options["dropout_rate"] = 0.1
  if args.segments:
    inputs.append(jax.ShapeDtypeStruct((1, args.length), jnp.int32))

  def loss(q, k, v, *segments):
    rng = jax.random.key(0) if args.dropout else None
    out = attention.sliding_window_attention(
        q, k, v, dropout_rng=rng, segment_ids=segments[0] if segments else None, **options)
    return jnp.sum(out.astype(jnp.float32))

  overrides = {}
  for spec in filter(None, args.launch.split(",")):
    kernel, warps, stages = spec.split(":")
    overrides[kernel] = launch.Settings(int(warps), int(stages))
  lowering.lower_jaxpr_to_triton_module = capture
  try:
    with launch.overridden(overrides), harness.pallas_backward(args.backward):
      export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=("cuda",),
                    disabled_checks=[export.DisabledSafetyCheck.custom_call(
                        "__gpu$xla.gpu.triton")])(*inputs)
  finally:
    lowering.lower_jaxpr_to_triton_module = lower
  with open(os.path.join(args.out, "kernels.json"), "w") as f:
    json.dump({"shape": vars(args), "kernels": found}, f, indent=1, default=str)
  print(f"wrote {len(found)} kernels to {args.out}: {', '.join(sorted(found))}")


_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_kernels(args) -> None:
  """Compiles every kernel of a `dump` folder for sm_90 and writes ptxas' figures."""
  import triton  # pylint: disable=g-import-not-at-top
  from triton.backends.compiler import GPUTarget  # pylint: disable=g-import-not-at-top

  ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
  with open(os.path.join(args.dir, "kernels.json")) as f:
    dumped = json.load(f)
  rows = []
  for name, settings in sorted(dumped["kernels"].items()):
    compiled = triton.compile(os.path.join(args.dir, f"{name}.ttir"),
                              target=GPUTarget("cuda", 90, 32), options=settings)
    ptx = compiled.asm["ptx"]
    ptx_path = os.path.join(args.dir, f"{name}.ptx")
    with open(ptx_path, "w") as f:
      f.write(ptx)
    report = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx_path, "-o", os.devnull],
                            capture_output=True, text=True, check=True).stderr
    spills = _PTXAS_SPILLS.search(report)
    rows.append({"kernel": name, **settings,
                 "registers": int(_PTXAS_REGISTERS.search(report).group(1)),
                 "spill_stores": int(spills.group(1)), "spill_loads": int(spills.group(2)),
                 "shared_kb": round(compiled.metadata.shared / 1024, 1),
                 "ex2": ptx.count("ex2.approx"), "wgmma": ptx.count("wgmma.mma_async")})
  table = ["| kernel | warps | stages | registers | spill stores / loads (B) | shared KB "
           "| ex2 | wgmma |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  table += [f"| {r['kernel']} | {r['num_warps']} | {r['num_stages']} | {r['registers']} | "
            f"{r['spill_stores']} / {r['spill_loads']} | {r['shared_kb']} | {r['ex2']} | "
            f"{r['wgmma']} |" for r in rows]
  with open(os.path.join(args.dir, "ptxas.json"), "w") as f:
    json.dump({"shape": dumped["shape"], "triton": triton.__version__, "kernels": rows}, f,
              indent=1)
  with open(os.path.join(args.dir, "ptxas.md"), "w") as f:
    f.write("\n".join(table) + "\n")
  print("\n".join(table))


def main(argv) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  dumping = commands.add_parser("dump", help="lower for CUDA and keep the Triton IR")
  dumping.add_argument("--out", required=True)
  dumping.add_argument("--length", type=int, default=16384)
  dumping.add_argument("--heads", type=int, default=8)
  dumping.add_argument("--kv_heads", type=int, default=None)
  dumping.add_argument("--head_dim", type=int, default=64)
  dumping.add_argument("--window", type=int, default=256)
  dumping.add_argument("--dtype", default="bfloat16")
  dumping.add_argument("--causal", action="store_true")
  dumping.add_argument("--dropout", action="store_true")
  dumping.add_argument("--segments", action="store_true")
  dumping.add_argument("--backward", default="split", choices=("split", "fused"))
  dumping.add_argument("--launch", default="",
                       help="kernel:warps:stages,... instead of the launch table's settings")
  compiling = commands.add_parser("compile", help="compile a dump with the triton package")
  compiling.add_argument("--dir", required=True)
  args = parser.parse_args(argv)
  (dump if args.command == "dump" else compile_kernels)(args)


if __name__ == "__main__":
  main(sys.argv[1:])

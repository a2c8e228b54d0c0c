r"""Forward + backward of a pretrained-size Longformer: ours (JAX) beside HF's (PyTorch).

  python -m experiments.bench.pretrained --hf_python=/tmp/hfvenv/bin/python \
      --out=results/bench_pretrained

Ours: `lra.models.longformer_pretrained.LongformerModel` with random weights of the
`allenai/longformer-base-4096` shape (12 layers of 12 x 64 heads, MLP 3072, vocabulary
50265; `--layers`, `--heads`, `--window` change it), the attention through the registry's
`longformer` mechanism. One step is the jitted forward and the backward of
`sum(last_hidden_state * g)` into every parameter, batch 1, `--global_tokens` leading global
tokens, no dropout, float32: the step that `experiments.bench.hf_longformer --model` times
for HF's `LongformerModel` (run by `--hf_python`, a Python holding torch and transformers).
`--remat` recomputes every layer in the backward pass on both sides. Each side runs in a
fresh process, so that its peak RSS is its own; both are printed side by side, and their
JSON lines appended to `--out/bench_pretrained.jsonl`.
"""

import json
import os
import sys

from absl import flags

from experiments import cli
from experiments.bench import harness

FLAGS = flags.FLAGS
HEAD_DIM = 64


def define_flags() -> None:
  """This benchmark's flags; defined when it runs, so that importing it defines none."""
  flags.DEFINE_integer("length", 4096, "Tokens per sequence.")
  flags.DEFINE_integer("layers", 12, "Encoder layers.")
  flags.DEFINE_integer("heads", 12, "Attention heads of 64 features.")
  flags.DEFINE_integer("window", 256, "One-sided window (HF's attention_window / 2).")
  flags.DEFINE_integer("global_tokens", 1, "Leading global tokens.")
  flags.DEFINE_bool("remat", False, "Recompute every layer in the backward pass "
                    "(HF: gradient checkpointing), on both sides.")
  flags.DEFINE_integer("steps", 3, "Timed steps after the compiling one.")
  flags.DEFINE_string("hf_python", None,
                      "Python of a venv with torch + transformers: also time HF.")
  flags.DEFINE_string("out", "results/bench_pretrained", "Output folder.")
  flags.DEFINE_bool("in_process", False,
                    "Measure ours in this process (used by the parent run).")


def measure() -> dict:
  """Compiles and times our forward + backward; returns seconds per step and peak RSS."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lra.models import longformer_pretrained as lp  # pylint: disable=g-import-not-at-top

  hidden = FLAGS.heads * HEAD_DIM
  config = lp.LongformerConfig(
      hidden_size=hidden, num_attention_heads=FLAGS.heads, intermediate_size=4 * hidden,
      num_hidden_layers=FLAGS.layers, attention_window=(2 * FLAGS.window,) * FLAGS.layers,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = lp.LongformerModel(config, attention={"max_global": FLAGS.global_tokens},
                             remat=FLAGS.remat, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(0)
  input_ids = jnp.asarray(rng.integers(3, config.vocab_size, (1, FLAGS.length)), jnp.int32)
  global_mask = jnp.asarray(np.arange(FLAGS.length)[None] < FLAGS.global_tokens)
  cotangent = jnp.asarray(rng.normal(size=(1, FLAGS.length, hidden)), jnp.float32)

  @jax.jit
  def step(params, input_ids, global_mask, cotangent):
    def objective(params):
      out = nnx.merge(graphdef, params)(input_ids, global_attention_mask=global_mask)
      return jnp.sum(out.last_hidden_state * cotangent)
    return jax.grad(objective)(params)

  timing = harness.time_jax_calls(lambda: step(params, input_ids, global_mask, cotangent),
                                  warmup=1, repeats=FLAGS.steps)
  return {"impl": "ours (jax)", "length": FLAGS.length, "layers": FLAGS.layers,
          "hidden": hidden, "window": FLAGS.window, "global_tokens": FLAGS.global_tokens,
          "remat": FLAGS.remat,
          "median_s": timing["median_s"], "times_s": timing["times_s"],
          "compile_and_first_step_s": timing["warmup_s"][0],
          "peak_rss_gb": harness.peak_rss_gb(),
          "versions": f"jax {jax.__version__}", "device": jax.devices()[0].device_kind}


def _ours() -> dict:
  args = [a for a in sys.argv[1:] if not a.startswith(("--out", "--hf_python"))]
  return harness.measure_in_child_or_exit(
      [sys.executable, "-m", "experiments.bench.pretrained", *args, "--in_process"],
      "our measurement")


def _huggingface() -> dict:
  record = harness.measure_in_child_or_exit([
      FLAGS.hf_python, "-m", "experiments.bench.hf_longformer", "--model", "--child",
      f"--lengths={FLAGS.length}", f"--layers={FLAGS.layers}", f"--heads={FLAGS.heads}",
      f"--head_dim={HEAD_DIM}", f"--window={FLAGS.window}",
      f"--global_tokens={FLAGS.global_tokens}",
      f"--repeats={FLAGS.steps}", "--warmup=1", f"--threads={harness.cores()}"]
      + (["--remat"] if FLAGS.remat else []), "HF's measurement", cwd=harness.REPO)
  versions, _ = harness.run_child(
      [FLAGS.hf_python, "-c", "import torch, transformers; "
       "print(f'torch {torch.__version__}, transformers {transformers.__version__}')"])
  return {"impl": "HF (pytorch)", **record, "remat": FLAGS.remat,
          "versions": (versions or "").strip()}


def main(argv):
  del argv
  if FLAGS.in_process:
    harness.print_record(measure())
    return
  print(f"{FLAGS.layers} layers x {FLAGS.heads * HEAD_DIM}, one-sided window "
        f"{FLAGS.window}, length {FLAGS.length}, batch 1, {FLAGS.global_tokens} global, "
        f"forward + backward{', layers recomputed' if FLAGS.remat else ''} ...", flush=True)
  results = [_ours()]
  if FLAGS.hf_python:
    results.append(_huggingface())
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "bench_pretrained.jsonl"), "a") as f:
    for result in results:
      f.write(json.dumps(result) + "\n")
  for r in results:
    steps = ", ".join(f"{t:.2f}" for t in r["times_s"])
    print(f"{r['impl']:>13}: {r['median_s']:7.2f} s/step (steps {steps}), "
          f"peak RSS {r['peak_rss_gb']:.2f} GB  [{r['versions']}]")
  if len(results) == 2:
    ours, hf = results
    print(f"ours vs HF: {hf['median_s'] / ours['median_s']:.2f}x faster, "
          f"{ours['peak_rss_gb'] / hf['peak_rss_gb']:.2f}x the peak memory")


if __name__ == "__main__":
  define_flags()
  cli.run(main)

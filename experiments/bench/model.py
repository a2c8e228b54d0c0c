r"""Training speed and memory of whole models: steps/s of a config's real train step.

  python -m experiments.bench.model --config=configs/text.py:attention=longformer \
      --out=results/bench_model

Builds the model and optimizer of the config, then times its jitted train step on
synthetic batches of random tokens at the config's full `max_length` (`harness.train_step`:
no data files are read; `--config.data.max_length=N` measures another length,
`--config.batch_size=B` another batch; a language model runs at its first phase's length and
batch), each measurement in a fresh process so that peak memory belongs to it alone.
Prints steps/s, the wall-time estimate for the config's `num_train_steps`, and peak
memory, and appends one JSON line per measurement to `--out/bench_model.jsonl`.
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.bench import harness

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This benchmark's flags; defined when it runs, so that importing it defines none."""
  config_flags.DEFINE_config_file("config", None, "Task config file.", lock_config=True)
  flags.DEFINE_integer("steps", 3, "Timed steps after the compiling one.")
  flags.DEFINE_string("out", "results/bench_model", "Output folder.")
  flags.DEFINE_bool("in_process", False, "Measure in this process (used by the parent run).")
  flags.mark_flag_as_required("config")


def measure(config) -> dict:
  """Compiles and runs the train step; returns steps/s and peak memory."""
  import jax  # pylint: disable=g-import-not-at-top

  train = harness.train_step(config)
  state = train.state

  def step():
    nonlocal state
    state, _ = train.step(state, train.batch)
    return state

  timing = harness.time_jax_calls(step, warmup=1, repeats=FLAGS.steps)
  step_s = timing["median_s"]
  return {"task": config.task, "size": config.size, "attention": config.attention.name,
          "dilation": str(config.attention.get("dilation", "")),
          "batch": train.batch_size, "length": train.length,
          "layers": config.model.num_layers,
          "width": config.model.emb_dim, "compile_and_first_step_s": timing["warmup_s"][0],
          "median_step_s": step_s, "steps_per_sec": 1.0 / step_s,
          "estimated_hours": config.num_train_steps * step_s / 3600,
          "num_train_steps": config.num_train_steps,
          "peak_rss_gb": harness.peak_rss_gb(),
          "device": jax.devices()[0].device_kind}


def main(argv):
  del argv
  if FLAGS.in_process:
    harness.print_record(measure(FLAGS.config))
    return
  args = [a for a in sys.argv[1:] if not a.startswith("--out")]
  print(f"measuring {FLAGS.config.task} ({FLAGS.config.attention.name}) ...", flush=True)
  result = harness.measure_in_child_or_exit(
      [sys.executable, "-m", "experiments.bench.model", *args, "--in_process"],
      "the measurement")
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "bench_model.jsonl"), "a") as f:
    f.write(json.dumps(result) + "\n")
  print(f"{result['task']} {result['size']} {result['attention']}: "
        f"{result['steps_per_sec']:.3f} steps/s (batch {result['batch']}), "
        f"{result['num_train_steps']} steps ~ {result['estimated_hours']:.1f} h, "
        f"peak RSS {result['peak_rss_gb']:.2f} GB, compile+first step "
        f"{result['compile_and_first_step_s']:.0f} s")


if __name__ == "__main__":
  define_flags()
  cli.run(main)

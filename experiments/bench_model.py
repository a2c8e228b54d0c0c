r"""Training speed and memory of whole models: steps/s of a config's real train step.

  python -m experiments.bench_model --config=configs/text.py:attention=longformer \
      --out=results/bench_model

Builds the model and optimizer of the config, then times its jitted train step on
synthetic batches of random tokens at the config's full `max_length` (no data files are
read; `--config.data.max_length=N` measures another length, `--config.batch_size=B` another
batch; a language model runs at its first phase's length and batch), each measurement in a
fresh process so that peak memory belongs to it alone.
Prints steps/s, the wall-time estimate for the config's `num_train_steps`, and peak
memory, and appends one JSON line per measurement to `--out/bench_model.jsonl`.
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import harness

_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after the compiling one.")
_OUT = flags.DEFINE_string("out", "results/bench_model", "Output folder.")
_IN_PROCESS = flags.DEFINE_bool("in_process", False,
                                "Measure in this process (used by the parent run).")
flags.mark_flag_as_required("config")


def _input_length(config) -> int:
  """Tokens per sequence: the config's max_length, every pixel of a Pathfinder image, or the
  first phase's crops of a language model."""
  if "phases" in config:
    return config.phases.seq_length[0]
  return config.data.resolution ** 2 if config.task == "pathfinder" else config.data.max_length


def _batch_size(config) -> int:
  return config.phases.batch_size[0] if "phases" in config else config.batch_size


def _synthetic_batch(config, data):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  fields = ["inputs1", "inputs2"] if config.model.kind == "dual_encoder" else ["inputs"]
  shape = (_batch_size(config), _input_length(config))
  batch = {name: rng.integers(1, data.vocab_size, shape, np.int32) for name in fields}
  if data.num_classes:
    batch["targets"] = rng.integers(0, data.num_classes, shape[0], np.int32)
    batch["weights"] = np.ones(shape[0], np.float32)
  else:  # next-token prediction at every position
    batch["targets"] = rng.integers(0, data.vocab_size, shape, np.int32)
    batch["weights"] = np.ones(shape, np.float32)
  return batch


def measure(config) -> dict:
  """Compiles and runs the train step; returns steps/s and peak memory."""
  import jax  # pylint: disable=g-import-not-at-top
  from lra import data as lra_data  # pylint: disable=g-import-not-at-top
  from lra import train  # pylint: disable=g-import-not-at-top

  vocab = {"listops": 16, "pathfinder": 257, "charlm": 256}.get(config.task, 257)
  num_classes = {"text": 2, "retrieval": 2, "pathfinder": 2, "charlm": 0}.get(config.task, 10)
  data = lra_data.TaskData(splits={}, vocab=["<pad>"] * vocab, num_classes=num_classes)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  steps = train.build_steps(config, data, mesh)
  batch = jax.device_put(_synthetic_batch(config, data),
                         jax.sharding.NamedSharding(mesh, jax.P("data")))
  state = steps.state

  def step():
    nonlocal state
    state, _ = steps.train_steps[0](state, batch)
    return state

  timing = harness.time_jax_calls(step, warmup=1, repeats=_STEPS.value)
  step_s = timing["median_s"]
  return {"task": config.task, "size": config.size, "attention": config.attention.name,
          "dilation": str(config.attention.get("dilation", "")),
          "batch": _batch_size(config), "length": _input_length(config),
          "layers": config.model.num_layers,
          "width": config.model.emb_dim, "compile_and_first_step_s": timing["warmup_s"][0],
          "median_step_s": step_s, "steps_per_sec": 1.0 / step_s,
          "estimated_hours": config.num_train_steps * step_s / 3600,
          "num_train_steps": config.num_train_steps,
          "peak_rss_gb": harness.peak_rss_gb(),
          "device": jax.devices()[0].device_kind}


def main(argv):
  del argv
  if _IN_PROCESS.value:
    harness.print_record(measure(_CONFIG.value))
    return
  args = [a for a in sys.argv[1:] if not a.startswith("--out")]
  print(f"measuring {_CONFIG.value.task} ({_CONFIG.value.attention.name}) ...", flush=True)
  result = harness.measure_in_child_or_exit(
      [sys.executable, "-m", "experiments.bench_model", *args, "--in_process"],
      "the measurement")
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "bench_model.jsonl"), "a") as f:
    f.write(json.dumps(result) + "\n")
  print(f"{result['task']} {result['size']} {result['attention']}: "
        f"{result['steps_per_sec']:.3f} steps/s (batch {result['batch']}), "
        f"{result['num_train_steps']} steps ~ {result['estimated_hours']:.1f} h, "
        f"peak RSS {result['peak_rss_gb']:.2f} GB, compile+first step "
        f"{result['compile_and_first_step_s']:.0f} s")


if __name__ == "__main__":
  cli.run(main)

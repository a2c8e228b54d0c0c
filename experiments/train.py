r"""Trains one task from a config file.

  python -m experiments.train --config=configs/listops.py:attention=longformer,size=small \
      --workdir=runs/listops_small_longformer [--config.num_train_steps=500 ...]

Relaunching with the same --workdir resumes from its last checkpoint.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (created if missing).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from lra import train  # after flag parsing: importing JAX is slow
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  # Test score -> the score of a model that ignores its input.
  baselines = {"test_accuracy": ("majority_class_rate", "majority class"),
               "test_bpc": ("unigram_entropy_bits", "unigram entropy")}
  for key, (baseline_key, label) in baselines.items():
    if results.get(key) is not None:
      baseline = results.get(baseline_key)
      extra = f" ({label}: {baseline:.3f})" if baseline is not None else ""
      print(f"{key.replace('_', ' ')}: {results[key]:.4f}{extra}")
  print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  cli.run(main)

r"""The ListOps score of reading only the outermost operator (`outermost_operator_prior`).

  python -m experiments.listops_prior --config=configs/listops.py:size=small

Loads the task's data as a training run of that config would (generated small data, or
--config.data_path) and prints the accuracy on the validation and test splits.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/listops.py config.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from lra.data import listops  # pylint: disable=g-import-not-at-top  (after flag parsing)
  prior = listops.outermost_operator_prior(listops.load(_CONFIG.value))
  print(f"outermost-operator prior: val {100 * prior['val']:.1f}%, "
        f"test {100 * prior['test']:.1f}%")


if __name__ == "__main__":
  cli.run(main)

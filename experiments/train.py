r"""Trains one task from a config file.

  python -m experiments.train --config=configs/listops.py:attention=longformer,size=small \
      --workdir=runs/listops_small_longformer [--config.num_train_steps=500 ...]

Relaunching with the same --workdir resumes from its last checkpoint. The terminal shows the
run's progress, validation and result lines; all logging, other libraries' included, goes to
`<workdir>/train.log` (`--verbosity=0` shows it on the terminal too). At the end the workdir
also holds `curves.png`, the training curves.

On several hosts, the same command runs on each, with the launch flags where the cluster
does not tell JAX the processes (docs/multihost.md); process 0 prints and writes the files,
the others print warnings and errors alone.
"""

import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (created if missing).")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_launch_flags()


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  cli.make_workdir(workdir)
  # After flag parsing: importing JAX and matplotlib is slow.
  from experiments import plotting  # pylint: disable=g-import-not-at-top
  from lra import data as lra_data  # pylint: disable=g-import-not-at-top
  from lra import distributed  # pylint: disable=g-import-not-at-top
  from lra import train  # pylint: disable=g-import-not-at-top
  several = distributed.initialize(cli.launch())
  if not distributed.is_primary():
    cli.quiet()
    train.train_and_evaluate(config, workdir)
    return
  cli.log_to_file(os.path.join(workdir, "train.log"))
  if several:
    logging.info("Several processes (%s): %s.", several, distributed.describe())
  results = train.train_and_evaluate(config, workdir)
  metrics = lra_data.task(config).metrics
  score = f"test_{metrics.selection}"
  baseline = results[metrics.baseline]
  extra = f" ({metrics.baseline_label}: {baseline:.3f})" if baseline is not None else ""
  print(f"{score.replace('_', ' ')}: {results[score]:.4f}{extra}")
  plotting.training_curves(os.path.join(workdir, "metrics.jsonl"),
                           os.path.join(workdir, "curves.png"),
                           title=f"{config.task} / {results['attention']}")
  print(f"results: {workdir}/results.json")


if __name__ == "__main__":
  cli.run(main)

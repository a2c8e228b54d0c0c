r"""Generates a dataset in its published on-disk layout.

  python -m experiments.generate_data listops --out=data/listops --size=small
  python -m experiments.generate_data pathfinder --out=data/pathfinder32 --resolution=32
  python -m experiments.generate_data pathfinder --out=data/pathfinder32 --difficulty=easy

Each generator module exposes `generate(out_dir, *, size, seed, **options)`.
"""

import importlib
import sys

from absl import app
from absl import flags

from lra import errors

_GENERATORS = {
    "listops": "lra.data.listops",
    "pathfinder": "lra.data.pathfinder",
}

_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SIZE = flags.DEFINE_enum("size", "paper", ["paper", "small", "tiny"], "Dataset scale.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed; the same seed gives the same files.")
_RESOLUTION = flags.DEFINE_integer("resolution", 32, "Pathfinder image side in pixels.")
_DIFFICULTY = flags.DEFINE_enum(
    "difficulty", "hard", ["easy", "intermediate", "hard"],
    "Pathfinder contour length: 6, 9 or 14 segments (curv_baseline, curv_contour_length_9, "
    "curv_contour_length_14).")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", None, "Override the number of examples of the chosen size.")


def main(argv):
  if len(argv) != 2 or argv[1] not in _GENERATORS:
    raise app.UsageError(f"usage: generate_data {{{','.join(_GENERATORS)}}} --out=DIR")
  options = {"num_examples": _NUM_EXAMPLES.value}
  if argv[1] == "pathfinder":
    options.update(resolution=_RESOLUTION.value, difficulty=_DIFFICULTY.value)
  module = importlib.import_module(_GENERATORS[argv[1]])
  try:
    module.generate(_OUT.value, size=_SIZE.value, seed=_SEED.value, **options)
  except errors.UserError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)

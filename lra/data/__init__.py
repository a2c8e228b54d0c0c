"""Datasets of every task as in-memory numpy arrays, and the registry of task loaders.

Every task module `lra/data/<task>.py` exposes

    load(config: ml_collections.ConfigDict) -> TaskData

which reads `config.data_path` (the dataset folder as its archive unpacks, or None to
generate a small dataset into `config.data_cache_dir` for tasks that can be generated) and
`config.data` (task-specific options such as `max_length`). Problems with the files raise
`lra.errors.DataError` with one message naming the file, what was expected, and where the
dataset is published.

Array conventions shared by all classification tasks:
  - `inputs` (or `inputs1`/`inputs2` for the two documents of a retrieval pair):
    integer token ids `[num_examples, length]`, right-padded with `PAD_ID`; `length` is the
    longest example of the split (at most `config.data.max_length`). Id 0 is never a real
    token, so `inputs != PAD_ID` is the padding mask.
  - `targets`: int32 `[num_examples]`, class ids in `[0, num_classes)`.
"""

import dataclasses
import importlib

import numpy as np

from lra import errors

PAD_ID = 0

# Task name -> module implementing `load(config)`; imported lazily.
_TASK_MODULES = {
    "listops": "lra.data.listops",
    "text": "lra.data.text",
    "retrieval": "lra.data.retrieval",
    "image": "lra.data.image",
    "pathfinder": "lra.data.pathfinder",
    "charlm": "lra.data.charlm",
}


@dataclasses.dataclass(frozen=True)
class TaskData:
  """All splits of one task.

  Attributes:
    splits: split name ('train', 'val', 'test') -> field name -> array.
    vocab: token string of each id (`vocab[PAD_ID]` is the padding token); saved with runs.
    num_classes: number of target classes (0 for language modelling).
  """

  splits: dict[str, dict[str, np.ndarray]]
  vocab: list[str]
  num_classes: int

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)


def load(config) -> TaskData:
  """Loads the dataset of `config.task` with its module's `load`."""
  if config.task not in _TASK_MODULES:
    raise errors.ConfigError(
        f"unknown task {config.task!r}; known tasks: {', '.join(sorted(_TASK_MODULES))}")
  return importlib.import_module(_TASK_MODULES[config.task]).load(config)

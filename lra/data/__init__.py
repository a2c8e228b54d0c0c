"""Datasets of every task as in-memory numpy arrays, and the interface between a task and the
trainer.

Every task module `lra/data/<task>.py` exposes two things:

    load(config: ml_collections.ConfigDict) -> TaskData
    TASK: Task

`load` reads `config.data_path` (the dataset folder as its archive unpacks, or None to
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

The trainer (`lra.train`) imports no task module: it learns everything task-specific from
`task(config)`, the module's `TASK`, which says how the task is trained and scored:

  - `phases(config) -> Phases`: the stages of training (one for most tasks; character-level
    LM grows its sequences and windows in several), each with the config of its model graph,
    the training batch sizes, and, for `optimizer.schedule = "phases"`, the learning rate.
    It checks the config's task-specific fields and raises `lra.errors.ConfigError`; it is
    called before any file is written or read.
  - `pipelines(config, data, shard=WHOLE) -> Pipelines`: the checkpointable training
    iterator, the evaluation batches of a split, and the test score of a model that ignores
    its input; each batch holds the rows of this process's `lra.input_pipeline.Shard` (all
    of them in one process).
  - `metrics: Metrics`: which of the summed metrics a model's `metrics(batch)` returns are
    reported as which averages, and which average picks the best validation checkpoint.

Classification tasks share `lra.data.common.CLASSIFICATION` (Text with its own `phases`, which
checks its tokenizer options); `lra.data.charlm` defines its own. A new task is a module
with `load` and `TASK`, and an entry in `_TASK_MODULES`.
"""


import dataclasses
import importlib
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from lra import errors
from lra.tokens import PAD_ID  # the padding of every split, as the models read it

# Task name -> module implementing `load(config)` and `TASK`; imported lazily.
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


@dataclasses.dataclass(frozen=True)
class Phases:
  """The stages of training: phase `i` trains optimizer steps `ends[i-1] + 1 .. ends[i]`.

  Attributes:
    configs: per phase, the config its model graph is built from (phases share parameters
      and differ only in static options such as attention windows).
    ends: per phase, its last optimizer step; the last is `config.num_train_steps`.
    batch_sizes: the training batch size of each phase that is not `config.batch_size`, by
      the config field that sets it (for the check that it divides over the devices).
    learning_rate: `count -> rate`, the schedule of `optimizer.schedule = "phases"`; None
      where the task has no such schedule.
  """

  configs: tuple[Any, ...]
  ends: tuple[int, ...]
  batch_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
  learning_rate: Callable | None = None

  def of_step(self, step: int) -> int:
    """The phase of optimizer step `step` (1-based): a function of `step` alone, so that a
    resumed run is in the same phase as an uninterrupted one."""
    return int(np.searchsorted(self.ends, step, side="left"))


def single_phase(config) -> Phases:
  """The one phase of a task trained throughout with `config`."""
  return Phases(configs=(config,), ends=(config.num_train_steps,))


@dataclasses.dataclass(frozen=True)
class Pipelines:
  """A task's data as the trainer consumes it.

  Attributes:
    train: batches of optimizer steps 1, 2, ...; checkpointed with the train state
      (a `grain.DatasetIterator`, whose state resumes it exactly).
    evaluation: `(split name, phase) -> batches` of one pass over the split.
    baseline: the test score of a model that ignores its input (`Metrics.baseline` names
      it), or None when it cannot be computed.
    texts: split name -> its text (token ids), where a split is scored in one streaming
      pass of the model instead of in `evaluation`'s batches (the char-LM's
      `evaluation.protocol = "streaming"`); None otherwise.
  """

  train: Iterator[dict[str, np.ndarray]]
  evaluation: Callable[[str, int], Iterable[dict[str, np.ndarray]]]
  baseline: float | None
  texts: dict[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class Metrics:
  """How the summed metrics of a model's `metrics(batch)` are reported.

  Attributes:
    averages: summed metric -> the name of its average per `count` (e.g. correct
      predictions -> accuracy); `loss` is always one.
    selection: the average that picks the best validation checkpoint.
    higher_is_better: whether a larger `selection` is better.
    baseline: the results key of `Pipelines.baseline`.
    baseline_label: what `baseline` is, in words.
  """

  averages: dict[str, str]
  selection: str
  higher_is_better: bool
  baseline: str
  baseline_label: str

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    """The averages of summed metrics per example (or per token), by name."""
    count = max(float(sums["count"]), 1.0)
    return {name: float(sums[key]) / count for key, name in self.averages.items()}


@dataclasses.dataclass(frozen=True)
class Task:
  """How a task is trained and scored (see the module docstring); a task module's `TASK`."""

  phases: Callable[[Any], Phases]
  pipelines: Callable[..., Pipelines]  # (config, data, shard=WHOLE)
  metrics: Metrics


def _module(config):
  if config.task not in _TASK_MODULES:
    raise errors.ConfigError(
        f"unknown task {config.task!r}; known tasks: {', '.join(sorted(_TASK_MODULES))}")
  return importlib.import_module(_TASK_MODULES[config.task])


def task(config) -> Task:
  """The `TASK` of `config.task`'s module."""
  return _module(config).TASK


def load(config) -> TaskData:
  """Loads the dataset of `config.task` with its module's `load`."""
  return _module(config).load(config)

"""A training run read back from its workdir: its config, vocabulary and best model.

For the commands that use a trained model (`experiments.generate`, `experiments.evaluate_lm`):
`load_lm` rebuilds a char-LM run's model with the windows of the phase its best validation
step trained in, and its parameters from `best/`.
"""

import dataclasses
import json
import os

import ml_collections
from flax import nnx

from lra import checkpointing
from lra import data as lra_data
from lra import errors
from lra import models
from lra import train


@dataclasses.dataclass
class Run:
  """A run's resolved config (of the phase of `step`), vocabulary, model and its step."""

  config: ml_collections.ConfigDict
  vocab: list[str]
  model: nnx.Module
  step: int


def _read_json(workdir: str, name: str):
  path = os.path.join(workdir, name)
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f"{workdir} holds no {name}: give the --workdir of a training run "
        f"(python -m experiments.train ... --workdir=DIR)")
  with open(path) as f:
    return json.load(f)


def load_lm(workdir: str) -> Run:
  """The best model of a char-LM run (`configs/enwik8.py`, `configs/text8.py`)."""
  config = ml_collections.ConfigDict(_read_json(workdir, "config.json"))
  if config.get("model", {}).get("kind") != "causal_lm":
    raise errors.ConfigError(
        f"{workdir} is a run of task {config.get('task')!r} (model.kind "
        f"{config.get('model', {}).get('kind')!r}), not a character-level LM: give the "
        f"workdir of a configs/enwik8.py or configs/text8.py run")
  vocab = _read_json(workdir, "vocab.json")
  phases = lra_data.task(config).phases(config)
  checkpoints = checkpointing.Checkpoints(workdir)
  try:
    step = checkpoints.best.latest_step()
    if step is None:
      raise errors.ConfigError(
          f"{workdir} holds no best checkpoint yet (it is written at the first validation): "
          f"train the run longer")
    phase_config = train.resolve(phases.configs[phases.of_step(step)])
    model = models.build(phase_config, vocab_size=len(vocab), num_classes=0,
                         rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    step, params = checkpoints.restore_best({"step": step, "params": params})
  finally:
    checkpoints.close()
  return Run(phase_config, vocab, nnx.merge(graphdef, params, rest), step)

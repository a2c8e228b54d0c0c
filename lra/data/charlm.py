"""Character-level language modelling data: enwik8, text8 or any text file, as bytes.

`config.data_path` is the file itself: `enwik8` (the first 10^8 bytes of an English
Wikipedia dump, http://mattmahoney.net/dc/enwik8.zip) or `text8` (10^8 characters of
lower-cased a-z and space, http://mattmahoney.net/dc/text8.zip), unzipped; or, with
`config.data.format = "text"`, any file. The vocabulary is the 256 byte values (id = byte),
so nothing is ever unknown; language-model batches have no padding (PAD_ID plays no part).

Splits follow the standard convention: the first 90M bytes train, the next 5M validation,
the last 5M test for enwik8 and text8; 90% / 5% / 5% of any other file (or of an enwik8 or
text8 file that is not the standard 10^8 bytes, with a warning).

Batches (all int32 `[batch, length]` plus float32 `weights`):
  - training (`train_iterator`): random crops whose starts are a pure function of (seed,
    step), with the length and batch size of the step's phase, so that the iterator state is
    one index and resuming, across phase boundaries included, is exact;
  - evaluation (`eval_batches`): windows of `length` characters, `step` apart, of which the
    first scores every prediction and the others only their last `scored_length` ones, so
    each character is scored at most once (exactly once when `scored_length == step`) and
    with at least `length - scored_length` characters of context after the first window.

Training is staged (`config.phases`, `TASK.phases`): each phase has its own sequence length,
batch size, window scale and learning rate (after its own warmup). The parameters are
shared; each phase has its own model graph (its windows), and step `i`'s phase follows from
`i` alone, so resuming across a phase boundary is exact too.
"""

import copy
import os
from typing import Iterator, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lra import data as lra_data
from lra import errors
from lra import input_pipeline
from lra.data import TaskData

FORMATS = ("enwik8", "text8", "text")
_STANDARD_BYTES = 100_000_000  # enwik8 and text8: 90M train, 5M validation, 5M test
_SOURCES = {
    "enwik8": "the enwik8 file unzipped from http://mattmahoney.net/dc/enwik8.zip",
    "text8": "the text8 file unzipped from http://mattmahoney.net/dc/text8.zip",
    "text": "a text file (any bytes; split 90/5/5)",
}


# How a split is scored: `strided` windows (the Longformer paper's protocol), or one
# `streaming` pass through the model's rolling caches (`lra.generation.streaming_bits`).
PROTOCOLS = ("strided", "streaming")


def split_bounds(num_bytes: int) -> list[tuple[int, int]]:
  """`[start, end)` byte ranges of train, val and test: 90% / 5% / 5%.

  For the standard 10^8-byte files that is exactly 90M / 5M / 5M.
  """
  val = test = num_bytes // 20
  bounds = np.cumsum((0, num_bytes - val - test, val, test))
  return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def load(config) -> TaskData:
  """Reads `config.data_path` (the file) and splits it; see the module docstring."""
  data_format = config.data.format
  if data_format not in FORMATS:
    raise errors.ConfigError(
        f"config.data.format must be one of {', '.join(FORMATS)}, got {data_format!r}")
  path = config.data_path
  if path is None or not os.path.isfile(path):
    raise errors.DataError(
        f"config.data_path={path!r} is not a file; character-level language modelling reads "
        f"{_SOURCES[data_format]}. Pass it with --config.data_path=PATH")
  tokens = np.fromfile(path, np.uint8)
  if tokens[:4].tobytes() == b"PK\x03\x04":
    raise errors.DataError(f"{path} is a zip archive; unzip it and pass the file inside: "
                           f"{_SOURCES[data_format]}")
  if data_format != "text" and len(tokens) != _STANDARD_BYTES:
    logging.warning("%s has %d bytes, not the %d of the standard %s file: split 90/5/5 in "
                    "proportion, results are not comparable with published ones", path,
                    len(tokens), _STANDARD_BYTES, data_format)
  splits = {name: {"tokens": tokens[start:end]}
            for name, (start, end) in zip(("train", "val", "test"), split_bounds(len(tokens)))}
  longest = max(config.phases.seq_length) + 1
  if len(splits["train"]["tokens"]) < longest:
    raise errors.DataError(
        f"{path}: its training split has {len(splits['train']['tokens']):,} bytes, fewer than "
        f"one training crop of {longest:,}; use a larger file")
  vocab = [bytes([b]).decode("latin-1") for b in range(256)]
  return TaskData(splits=splits, vocab=vocab, num_classes=0)


def unigram_entropy_bits(tokens: np.ndarray) -> float:
  """Entropy of the byte frequencies of `tokens`, in bits per character."""
  counts = np.bincount(tokens, minlength=256).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def phase_of(step: int, phase_steps: Sequence[int]) -> int:
  """Index of the phase that optimizer step `step` (1-based) belongs to."""
  return int(np.searchsorted(np.cumsum(phase_steps), step, side="left"))


def _crops(tokens: np.ndarray, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
  windows = np.stack([tokens[s:s + length + 1] for s in starts]).astype(np.int32)
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
          "weights": np.ones((len(starts), length), np.float32)}


def train_iterator(tokens: np.ndarray, phases, *, seed: int,
                   shard: input_pipeline.Shard = input_pipeline.WHOLE) -> grain.DatasetIterator:
  """Batch `i` (for optimizer step `i + 1`): random crops of step `i + 1`'s phase (`shard`'s
  rows of them)."""
  steps = list(phases.steps)

  def batch(index: int) -> dict[str, np.ndarray]:
    phase = phase_of(index + 1, steps)
    length, size = phases.seq_length[phase], phases.batch_size[phase]
    starts = np.random.default_rng([seed, index]).integers(0, len(tokens) - length, size)
    return _crops(tokens, starts[shard.rows(size)], length)

  return iter(grain.MapDataset.range(sum(steps)).map(batch).to_iter_dataset(
      input_pipeline.READ_OPTIONS))


def eval_windows(num_tokens: int, length: int, step: int,
                 scored_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Starts `[windows]` and scored-prediction weights `[windows, length]` of a split.

  Prediction `j` of the window at `s` is of character `s + j + 1` from those up to it.
  """
  predictions = num_tokens - 1
  if predictions < 1:
    raise errors.DataError("an evaluation split needs at least 2 characters")
  length = min(length, predictions)
  starts = list(range(0, predictions - length + 1, step))
  if starts[-1] + length < predictions:  # a last window flush with the end
    starts.append(predictions - length)
  weights = np.zeros((len(starts), length), np.float32)
  weights[0] = 1.0
  scored_until = length  # predictions [0, scored_until) are scored
  for row, start in enumerate(starts[1:], start=1):
    first = max(start + length - scored_length, scored_until)
    weights[row, first - start:] = 1.0
    scored_until = start + length
  return np.array(starts), weights


def scored_text(tokens: np.ndarray, evaluation) -> np.ndarray:
  """The characters of a split that `evaluation` scores: its first `max_chars` (0: all)."""
  return tokens[:evaluation.max_chars or None]


def eval_batches(tokens: np.ndarray, evaluation, *, batch_size: int,
                 shard: input_pipeline.Shard = input_pipeline.WHOLE
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Scored windows over (the first `evaluation.max_chars` characters of) a split
  (`shard`'s rows of each batch)."""
  tokens = scored_text(tokens, evaluation)
  starts, weights = eval_windows(len(tokens), evaluation.length, evaluation.step,
                                 evaluation.scored_length)
  length = weights.shape[1]
  for first in range(0, len(starts), batch_size):
    rows = np.arange(first, first + batch_size)[shard.rows(batch_size)]
    real = rows < len(starts)
    rows = np.where(real, rows, 0)
    batch = _crops(tokens, starts[rows], length)
    batch["weights"] = weights[rows] * real[:, None]
    yield batch


def check_evaluation(evaluation) -> None:
  if evaluation.protocol not in PROTOCOLS:
    raise errors.ConfigError(
        f"evaluation.protocol must be one of {', '.join(PROTOCOLS)}, got "
        f"{evaluation.protocol!r}")
  if evaluation.streams < 1 or evaluation.chunk < 1:
    raise errors.ConfigError(
        f"evaluation.streams and evaluation.chunk must be >= 1, got {evaluation.streams} "
        f"and {evaluation.chunk}")
  if not 0 < evaluation.step <= evaluation.length:
    raise errors.ConfigError(
        f"evaluation.step must be in [1, evaluation.length={evaluation.length}], got "
        f"{evaluation.step}")
  if not 0 < evaluation.scored_length <= evaluation.step:
    raise errors.ConfigError(
        f"evaluation.scored_length must be in [1, evaluation.step={evaluation.step}] (a larger "
        f"one would score characters twice), got {evaluation.scored_length}")



def phases(config) -> lra_data.Phases:
  """The phases of `config.phases`, checked against the rest of the config."""
  phase_fields = config.phases
  fields = ("steps", "seq_length", "batch_size", "window_scale", "learning_rate",
            "warmup_steps")
  counts = {key: len(phase_fields[key]) for key in fields}
  if len(set(counts.values())) != 1:
    raise errors.ConfigError(
        f"config.phases fields need one entry per phase; got {counts}")
  if sum(phase_fields.steps) != config.num_train_steps:
    raise errors.ConfigError(
        f"config.num_train_steps ({config.num_train_steps}) must equal the sum of "
        f"config.phases.steps {tuple(phase_fields.steps)} = {sum(phase_fields.steps)}")
  check_evaluation(config.evaluation)
  configs = []
  for scale in phase_fields.window_scale:
    phase_config = copy.deepcopy(config)
    phase_config.model.window_scale = scale
    configs.append(phase_config)
  return lra_data.Phases(
      configs=tuple(configs), ends=tuple(np.cumsum(phase_fields.steps).tolist()),
      batch_sizes={f"phases.batch_size[{i}]": b
                   for i, b in enumerate(phase_fields.batch_size)},
      learning_rate=_phase_schedule(phase_fields))


def _phase_schedule(phase_fields):
  """Per phase: linear warmup over its `warmup_steps`, then its constant learning rate."""
  ends = np.cumsum(phase_fields.steps)
  starts = jnp.asarray(ends - np.asarray(phase_fields.steps))
  rates = jnp.asarray(phase_fields.learning_rate, jnp.float32)
  warmups = jnp.maximum(jnp.asarray(phase_fields.warmup_steps, jnp.float32), 1.0)

  def schedule(count):  # count: updates done before this one
    phase = jnp.minimum(jnp.searchsorted(jnp.asarray(ends), count, side="right"),
                        len(ends) - 1)
    into = (count - starts[phase] + 1).astype(jnp.float32)
    return rates[phase] * jnp.minimum(1.0, into / warmups[phase])

  return schedule


def pipelines(config, data: TaskData, shard=input_pipeline.WHOLE) -> lra_data.Pipelines:
  """Random crops of each step's phase for training; scored windows for evaluation, or
  the texts of the splits for the streaming protocol (of one process)."""
  evaluation = config.evaluation
  texts = None
  if evaluation.protocol == "streaming":
    if jax.process_count() > 1:
      raise errors.ConfigError(
          "evaluation.protocol=streaming runs in one process: train on several with "
          "protocol=strided, then score the run with python -m experiments.evaluate_lm")
    texts = {split: scored_text(data.splits[split]["tokens"], evaluation)
             for split in ("val", "test")}
  return lra_data.Pipelines(
      train=train_iterator(data.splits["train"]["tokens"], config.phases, seed=config.seed,
                           shard=shard),
      evaluation=lambda split, phase: eval_batches(data.splits[split]["tokens"], evaluation,
                                                   batch_size=config.eval_batch_size,
                                                   shard=shard),
      baseline=unigram_entropy_bits(data.splits["test"]["tokens"]), texts=texts)


# Bits per character pick the best checkpoint; the test split's unigram entropy is the
# baseline.
TASK = lra_data.Task(
    phases=phases,
    pipelines=pipelines,
    metrics=lra_data.Metrics(averages={"loss": "loss", "bits": "bpc"}, selection="bpc",
                             higher_is_better=False, baseline="unigram_entropy_bits",
                             baseline_label="unigram entropy"))

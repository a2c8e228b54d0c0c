"""Self-pretraining (SPT; Amos, Berant & Gupta, "Never Train from Scratch", ICLR 2024): a
denoising stage on the task's own training inputs before fine-tuning on its labels.

`config.pretrain` (every LRA classification config) sets it:

    objective      none | mlm | causal
    num_steps      optimizer steps of the pretraining stage (before `num_train_steps`)
    learning_rate  peak rate of the stage's own schedule
    warmup_steps   linear warmup of that schedule
    schedule       a name of `lra.optimizers.SCHEDULES` (as `optimizer.schedule`)
    batch_size     sequences per pretraining step (a retrieval pair is two sequences)
    mask_rate      mlm: the share of each sequence's real tokens that is masked
    mean_span      mlm: 1 masks single tokens; > 1 masks spans of this mean length
    pack           fill each row with several sequences (`pack`), for fewer padded tokens
    max_sequences  pack: the most sequences of a row

The stage's model (`lra.models.pretraining.SelfPretrainingLM`) is the task model's encoder
(`encode`: embedding, CLS vector, blocks) with a language-model output tied to the token
embedding. Its batches (`train_iterator`) come from the inputs of the training split alone
(`pretraining_split`: no targets, no validation or test input); each document of a
retrieval pair is a sequence of its own. Per sequence:

  - mlm: `round(mask_rate * real tokens)` of them (at least 1) become `<mask>`, a vocabulary
    entry appended after the task's (`with_mask_token`); the loss and the accuracy count
    the masked positions only. Padding is never masked and never a target.
  - causal: next-token prediction with causal attention; the CLS vector is the first
    position, so every real token is predicted. Longformer runs its window alone, causally
    (a global token would see the future); its global projections start the fine-tuning as
    copies of the pretrained local ones, as the Longformer paper initialises them.

With `pack`, the sequences (in a seeded order) fill rows of the task's length plus one: each
starts with a slot for its CLS vector, carries its own positions from 0 and a segment id,
and attends within itself alone (segment ids reach the attention kernels), so each
sequence is encoded as it would be alone while the rows carry fewer padded tokens. Rows
are packed once per run; the batches then shuffle and group rows as the unpacked stage
does sequences, and `batch_size` counts rows.

Fine-tuning then starts from the pretrained encoder (`transplant`) with the task's fresh
head, a fresh optimizer state and its own schedule (`config.optimizer`); the trainer
(`lra.train`) runs both stages in one launch and resumes exactly across their boundary.
"""

import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lra import attention as attention_lib
from lra import data as lra_data
from lra import errors
from lra import input_pipeline
from lra import optimizers
from lra.tokens import PAD_ID

OBJECTIVES = ("none", "mlm", "causal")
MASK_TOKEN = "<mask>"

# Masked (or, causal, every real) tokens: loss and accuracy per predicted token. The stage
# is neither validated nor tested: no selection is made from it and it has no baseline.
METRICS = lra_data.Metrics(averages={"loss": "loss", "correct": "accuracy"},
                           selection="accuracy", higher_is_better=True, baseline="",
                           baseline_label="")

# Longformer's global projections and the local ones they start as (`SelfAttention`).
_GLOBAL_PROJECTIONS = {"query_global": "query", "key_global": "key", "value_global": "value"}


def objective(config) -> str:
  """`config.pretrain.objective`, or 'none' for a config without the field."""
  pretrain = config.get("pretrain")
  return "none" if pretrain is None else pretrain.objective


def check(config) -> None:
  """Raises `ConfigError` for a bad `config.pretrain` value (before any file is touched)."""
  name = objective(config)
  if name not in OBJECTIVES:
    raise errors.ConfigError(
        f"pretrain.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
  if name == "none":
    return
  pretrain = config.pretrain
  for key in ("num_steps", "batch_size"):
    if pretrain[key] <= 0:
      raise errors.ConfigError(f"config.pretrain.{key} must be > 0, got {pretrain[key]}")
  if pretrain.learning_rate < 0:
    raise errors.ConfigError(
        f"config.pretrain.learning_rate must be >= 0, got {pretrain.learning_rate}")
  if pretrain.schedule not in optimizers.SCHEDULES:
    raise errors.ConfigError(
        f"config.pretrain.schedule must be one of {', '.join(optimizers.SCHEDULES)}, got "
        f"{pretrain.schedule!r}")
  if pretrain.pack and pretrain.max_sequences < 1:
    raise errors.ConfigError(
        f"config.pretrain.max_sequences must be >= 1 (the most sequences a packed row "
        f"holds), got {pretrain.max_sequences}")
  if name == "mlm":
    if not 0 < pretrain.mask_rate < 1:
      raise errors.ConfigError(
          f"config.pretrain.mask_rate must be in (0, 1), got {pretrain.mask_rate}")
    if pretrain.mean_span < 1:
      raise errors.ConfigError(
          f"config.pretrain.mean_span must be >= 1 (1: single tokens), got "
          f"{pretrain.mean_span}")
  if config.model.kind not in ("classifier", "dual_encoder"):
    raise errors.ConfigError(
        f"pretrain.objective={name} pretrains the encoder of a classifier or dual encoder; "
        f"model.kind is {config.model.kind!r}: use pretrain.objective=none")
  if name == "causal":
    causal_attention(config.attention)  # raises for a mechanism that cannot run causally


def causal_attention(attention) -> dict:
  """The attention config of the causal stage: the mechanism's own `causal` option; for a
  mechanism with global tokens (Longformer), the registered mechanism without them that
  takes the same options and `causal` (its window alone: a global token sees the future)."""
  options = {k: v for k, v in dict(attention).items() if k != "name"}
  mechanism = attention_lib.get(attention["name"])
  if "causal" in mechanism.options:
    return {"name": mechanism.name, **options, "causal": True}
  if mechanism.uses_global:
    options.pop("max_global", None)
    for candidate in attention_lib.MECHANISMS.values():
      if (not candidate.uses_global and "causal" in candidate.options
          and set(options) <= set(candidate.options)):
        return {"name": candidate.name, **options, "causal": True}
  raise errors.ConfigError(
      f"pretrain.objective=causal needs attention that can run causally; "
      f"{mechanism.name!r} cannot: use pretrain.objective=mlm")


def stage_config(config) -> ml_collections.ConfigDict:
  """The config of the pretraining stage: the task config with the stage's model kind,
  steps, batch size and schedule (and causal attention for the causal objective)."""
  stage = copy.deepcopy(config)
  pretrain = config.pretrain
  with stage.unlocked():
    stage.model.kind = "self_pretraining"
    stage.num_train_steps = pretrain.num_steps
    stage.batch_size = pretrain.batch_size
    stage.optimizer.learning_rate = pretrain.learning_rate
    stage.optimizer.warmup_steps = pretrain.warmup_steps
    stage.optimizer.schedule = pretrain.schedule
    if pretrain.objective == "causal":
      stage.attention = ml_collections.ConfigDict(causal_attention(config.attention))
  return stage


def with_mask_token(data: lra_data.TaskData) -> lra_data.TaskData:
  """The task data with `<mask>` appended to its vocabulary: its id is the last."""
  return lra_data.TaskData(splits=data.splits, vocab=[*data.vocab, MASK_TOKEN],
                           num_classes=data.num_classes)


def pretraining_split(data: lra_data.TaskData) -> dict[str, np.ndarray]:
  """`{"inputs": [sequences, length]}`: every token field of the training split (both
  documents of a retrieval pair), right-padded to one length; nothing else."""
  fields = [tokens for name, tokens in data.splits["train"].items()
            if name.startswith("inputs")]
  width = max(tokens.shape[1] for tokens in fields)
  padded = [np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])),
                   constant_values=PAD_ID) for tokens in fields]
  return {"inputs": np.concatenate(padded, axis=0)}


def _segment(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """`parts` positive lengths summing to `total`, uniformly among such splits."""
  cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def mask_positions(num_real: int, *, mask_rate: float, mean_span: float,
                   rng: np.random.Generator) -> np.ndarray:
  """bool `[num_real]`: `max(1, round(mask_rate * num_real))` masked positions.

  With `mean_span == 1` they are drawn uniformly; otherwise they form
  `round(masked / mean_span)` spans (at least 1) between unmasked stretches, both split at
  uniform random points (T5's span corruption), so spans average `mean_span` tokens.
  """
  masked = min(max(1, round(mask_rate * num_real)), num_real)
  mask = np.zeros(num_real, bool)
  if mean_span <= 1 or masked == num_real:
    mask[rng.choice(num_real, masked, replace=False)] = True
    return mask
  num_spans = int(np.clip(round(masked / mean_span), 1, min(masked, num_real - masked)))
  span_lengths = _segment(masked, num_spans, rng)
  # num_spans + 1 unmasked stretches; the outer two may be empty.
  gaps = _segment(num_real - masked + 2, num_spans + 1, rng)
  gaps[0] -= 1
  gaps[-1] -= 1
  start = 0
  for gap, length in zip(gaps[:-1], span_lengths):
    start += gap
    mask[start:start + length] = True
    start += length
  return mask


def mask_batch(tokens_BxL: np.ndarray, *, mask_rate: float, mean_span: float, mask_id: int,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
  """An mlm batch: `inputs` with masked tokens replaced by `mask_id`, `targets` the
  original tokens, `weights` 1.0 at the masked positions and 0 elsewhere."""
  inputs = tokens_BxL.astype(np.int32).copy()
  weights = np.zeros(tokens_BxL.shape, np.float32)
  for row, tokens in enumerate(tokens_BxL):
    real = np.flatnonzero(tokens != PAD_ID)
    if not len(real):
      continue
    masked = real[mask_positions(len(real), mask_rate=mask_rate, mean_span=mean_span,
                                 rng=rng)]
    inputs[row, masked] = mask_id
    weights[row, masked] = 1.0
  return {"inputs": inputs, "targets": tokens_BxL.astype(np.int32), "weights": weights}


def causal_batch(tokens_BxL: np.ndarray) -> dict[str, np.ndarray]:
  """A causal batch: every real token is a target (predicted from those before it)."""
  tokens = tokens_BxL.astype(np.int32)
  return {"inputs": tokens, "targets": tokens,
          "weights": (tokens != PAD_ID).astype(np.float32)}


def pack(tokens_NxL: np.ndarray, *, max_sequences: int,
         rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Sequences `[N, L]` (right-padded) packed into rows of `L + 1` slots, in a random order.

  Each sequence takes `1 + its real tokens` slots: its CLS slot (token `PAD_ID`, position
  0), then its tokens at positions 1, 2, ...; a row is closed when the next sequence does
  not fit or it holds `max_sequences`. Returns `inputs`, `segment_ids` (1, 2, ... per row;
  0 for padding) and `positions`, each `[rows, L + 1]`. Empty sequences are left out.
  """
  lengths = np.sum(tokens_NxL != PAD_ID, axis=1)
  width = tokens_NxL.shape[1] + 1
  rows, row, used = [], [], 0
  for index in rng.permutation(len(tokens_NxL)):
    if not lengths[index]:
      continue
    if row and (used + 1 + lengths[index] > width or len(row) == max_sequences):
      rows.append(row)
      row, used = [], 0
    row.append(index)
    used += 1 + lengths[index]
  rows += [row] if row else []
  packed = {name: np.zeros((len(rows), width), np.int32)
            for name in ("inputs", "segment_ids", "positions")}
  for r, members in enumerate(rows):
    start = 0
    for segment, index in enumerate(members, start=1):
      stop = start + 1 + lengths[index]
      packed["inputs"][r, start + 1:stop] = tokens_NxL[index, :lengths[index]]
      packed["segment_ids"][r, start:stop] = segment
      packed["positions"][r, start:stop] = np.arange(stop - start)
      start = stop
  return packed


def mask_packed_batch(batch: dict[str, np.ndarray], *, mask_rate: float, mean_span: float,
                      mask_id: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """`mask_batch` for packed rows: each sequence's tokens are masked as it would be alone;
  the states of the masked positions predict their tokens."""
  inputs = batch["inputs"].copy()
  weights = np.zeros(inputs.shape, np.float32)
  tokens = (batch["segment_ids"] > 0) & (batch["positions"] > 0)
  for row in range(len(inputs)):
    for segment in np.unique(batch["segment_ids"][row][tokens[row]]):
      real = np.flatnonzero(tokens[row] & (batch["segment_ids"][row] == segment))
      masked = real[mask_positions(len(real), mask_rate=mask_rate, mean_span=mean_span,
                                   rng=rng)]
      inputs[row, masked] = mask_id
      weights[row, masked] = 1.0
  return dict(batch, inputs=inputs, targets=batch["inputs"], weights=weights)


def causal_packed_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`causal_batch` for packed rows: the state at each position (a CLS slot or a token)
  predicts the next token of its sequence."""
  segments = batch["segment_ids"]
  targets = np.zeros_like(batch["inputs"])
  targets[:, :-1] = batch["inputs"][:, 1:]
  weights = np.zeros(targets.shape, np.float32)
  weights[:, :-1] = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] > 0)
  return dict(batch, targets=targets, weights=weights)


def train_iterator(config, data: lra_data.TaskData, shard=input_pipeline.WHOLE):
  """Endless pretraining batches of `config` (the stage's), resumable like the task's.

  Sequences (or packed rows) are shuffled and grouped by length as the task's training
  batches are (`input_pipeline.train_dataset`); the masks of batch `b` are a pure function
  of (seed, b), so the iterator state stays one index. The masks are drawn over the whole
  batch, row after row: each process makes the whole batch and keeps `shard`'s rows.
  """
  pretrain = config.pretrain
  mask_id = data.vocab.index(MASK_TOKEN) if pretrain.objective == "mlm" else None
  split = pretraining_split(data)
  if pretrain.pack:
    # A stream of its own ([seed, 2]) for the order of packing.
    split = pack(split["inputs"], max_sequences=pretrain.max_sequences,
                 rng=np.random.default_rng([config.seed, 2]))

  def make(index: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if pretrain.objective == "causal":
      return causal_packed_batch(batch) if pretrain.pack else causal_batch(batch["inputs"])
    # A stream of its own ([seed, 1, b]): the shuffle uses [seed, b].
    rng = np.random.default_rng([config.seed, 1, index])
    options = dict(mask_rate=pretrain.mask_rate, mean_span=pretrain.mean_span,
                   mask_id=mask_id, rng=rng)
    if pretrain.pack:
      return mask_packed_batch(batch, **options)
    return mask_batch(batch["inputs"], **options)

  dataset = input_pipeline.train_dataset(split, batch_size=config.batch_size,
                                         seed=config.seed)
  return iter(dataset.map_with_index(make).map(shard.of).to_iter_dataset(
      input_pipeline.READ_OPTIONS))


def fine_tuning_state(fresh: dict, pretrained_params: nnx.State) -> dict:
  """The train state of fine-tuning at its first step: its own `fresh` state (`step`,
  `params`, `opt_state`) with the pretrained encoder (`transplant`)."""
  params = transplant(pretrained_params, fresh["params"])
  # One buffer per leaf (a donated state must not hold one twice: Longformer's global
  # projections can start as the same pretrained arrays as the local ones).
  return dict(fresh, params=jax.tree.map(lambda x: jnp.array(x, copy=True), params))


def transplant(pretrained: nnx.State, fresh: nnx.State) -> nnx.State:
  """The fine-tuning parameters: `fresh` (the task model's initialisation) with its
  encoder (`encode`) replaced by the pretrained one's.

  A parameter the pretrained encoder lacks (Longformer's global projections after causal
  pretraining of its window) starts as a copy of its pretrained local counterpart.
  """
  source = nnx.to_pure_dict(pretrained)["encode"]
  target = nnx.to_pure_dict(fresh)

  def merge(fresh_tree, trained, path):
    if not isinstance(fresh_tree, dict):
      if np.shape(fresh_tree) != np.shape(trained):
        raise errors.ConfigError(
            f"the pretrained parameter {'/'.join(path)} has shape {np.shape(trained)}, the "
            f"fine-tuned model's {np.shape(fresh_tree)}")
      return trained
    merged = {}
    for key, value in fresh_tree.items():
      if key in trained:
        merged[key] = merge(value, trained[key], (*path, key))
      elif key in _GLOBAL_PROJECTIONS and _GLOBAL_PROJECTIONS[key] in trained:
        merged[key] = merge(value, trained[_GLOBAL_PROJECTIONS[key]], (*path, key))
      else:
        raise errors.ConfigError(
            f"the pretrained encoder has no parameter {'/'.join((*path, key))}")
    return merged

  target["encode"] = merge(target["encode"], source, ("encode",))
  state = jax.tree.map(lambda x: x, fresh)  # new containers: `fresh` stays as it is
  nnx.replace_by_pure_dict(state, target)
  return state

"""Helpers for `configs/<task>.py`: the `key=value` argument and the fields every task shares.

A config file is launched as `--config=configs/listops.py:attention=longformer,size=small`;
the string after the colon reaches `get_config(arg)`. Its keys and their defaults are
declared by the config file, so a typo is an error, and values take the defaults' types.

Fields computed from others are ml_collections `FieldReference`s of their sources, so they
follow an override of a source on the command line (`--config.data.resolution=128` makes
Path-X's `data.max_length`, and with it the model's, 16384); overriding the computed field
itself sets it alone.
"""

import dataclasses
import importlib.util
import os
from typing import Any, Callable, NamedTuple

import ml_collections
from ml_collections import config_dict

from lra import attention as attention_lib
from lra import errors
from lra import pretraining

SIZES = ("paper", "small", "tiny")
# Self-pretraining objectives: none trains from scratch.
PRETRAIN_OBJECTIVES = pretraining.OBJECTIVES


def _parse_value(key: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise errors.ConfigError(f"config argument {key}={text!r} must be true or false")
    return text.lower() in ("true", "1")
  if isinstance(default, int) or default is None and text.isdigit():
    try:
      return int(text)
    except ValueError:
      raise errors.ConfigError(f"config argument {key}={text!r} must be an int") from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise errors.ConfigError(f"config argument {key}={text!r} must be a number") from None
  if isinstance(default, tuple):  # ints separated by '/', e.g. dilation=1/1/2/2
    try:
      return tuple(int(part) for part in text.split("/"))
    except ValueError:
      raise errors.ConfigError(
          f"config argument {key}={text!r} must be ints separated by '/'") from None
  return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `key=value,key=value` against `defaults` (which fix the allowed keys and types)."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, text = item.partition("=")
    if not sep:
      raise errors.ConfigError(f"config argument {item!r} must be key=value")
    if key not in defaults:
      raise errors.ConfigError(
          f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
    values[key] = _parse_value(key, text, defaults[key])
  if "size" in values and values["size"] not in SIZES:
    raise errors.ConfigError(f"size must be one of {SIZES}, got {values['size']!r}")
  if "pretrain" in values and values["pretrain"] not in PRETRAIN_OBJECTIVES:
    raise errors.ConfigError(f"pretrain must be one of {', '.join(PRETRAIN_OBJECTIVES)}, got "
                             f"{values['pretrain']!r}")
  variants = attention_lib.variants()
  if "attention" in values and values["attention"] not in variants:
    raise errors.ConfigError(
        f"unknown attention {values['attention']!r}; choose one of: {', '.join(variants)}")
  return ml_collections.ConfigDict(values)


def attention_config(variant: str, *, window: int, num_heads: int,
                     dilation: tuple[int, ...] = ()) -> ml_collections.ConfigDict:
  """The registry config of an attention variant (`lra.attention.variants()`).

  Every option of the variant's mechanism is a field (its meaning: the registry's
  `Option.doc`), so `--config.attention.<option>=...` sets any of them and a typo fails;
  options without a default are typed placeholders. `window` and `dilation` (one per head)
  apply where the mechanism takes them; a preset's own options (the dilations of
  `dilated`) give way to a `dilation` given here.
  """
  options = attention_lib.variant_config(variant, num_heads=num_heads, window=window,
                                         dilation=tuple(dilation) or None)
  mechanism = attention_lib.get(options["name"])
  return ml_collections.ConfigDict({
      key: config_dict.placeholder(mechanism.options[key].type) if value is None else value
      for key, value in options.items()})


class _Compute(NamedTuple):
  """An op of ml_collections' `FieldReference(op=...)`: `fn(value, *args)`, with every
  `FieldReference` in `args` read afresh each time the field is read."""

  fn: Callable
  args: list


def computed(fn: Callable, *sources: config_dict.FieldReference,
             field_type: type) -> config_dict.FieldReference:
  """A field equal to `fn(*sources)` whenever it is read: it follows every change of a
  source (`config.get_ref(name)`) until it is set itself. (FieldReference's own operators
  cover arithmetic; this covers any function, such as a sum over a tuple.)"""
  return config_dict.FieldReference(
      field_type(), field_type=field_type,
      op=_Compute(lambda _, *values: fn(*values), list(sources)))


def base_config(task: str, args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fields every task config has; task files fill in the values."""
  config = ml_collections.ConfigDict()
  config.task = task  # which lra.data module loads the data
  config.size = args.size  # paper | small | tiny: model and data scale
  config.seed = 0  # seeds initialisation, data order, dropout and seeded splits
  # The dataset folder as its archive unpacks; None generates (small/tiny) where possible.
  config.data_path = config_dict.placeholder(str)
  config.data_cache_dir = "data"  # generated datasets and preprocessed caches
  config.num_train_steps = 0  # optimizer steps
  config.eval_every_steps = 0  # evaluate on the whole validation split this often
  config.checkpoint_every_steps = 0  # save train state + data iterator this often
  config.log_every_steps = 0  # append to metrics.jsonl and print progress this often
  config.batch_size = 0  # global batch, split over all devices
  config.eval_batch_size = 0  # batch of the evaluation passes
  # Devices per mesh axis (-1: the devices left): `data` splits the batch, `sequence` the
  # length of every sequence, for the attention by halo exchange (local and longformer
  # attention, lra.attention.sequence_parallel). Their product is every device.
  config.mesh = ml_collections.ConfigDict({"data": -1, "sequence": 1})
  config.data = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.optimizer = ml_collections.ConfigDict({
      "learning_rate": 1e-3,  # peak learning rate
      "schedule": "rsqrt",  # rsqrt: linear warmup then 1/sqrt decay | cosine | constant |
                            # linear (decay to 0)
      "warmup_steps": 1000,  # linear warmup from 0 to the peak
      "weight_decay": 0.1,  # AdamW decoupled decay of the weight matrices
      "grad_clip": 1.0,  # clip the global gradient norm (0 disables)
      "b1": 0.9,  # Adam beta1
      "b2": 0.98,  # Adam beta2
      "eps": 1e-9,  # Adam epsilon
  })
  return config


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` as `--config=` would (for tests and sweeps)."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise errors.ConfigError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(
      f"config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  return config


@dataclasses.dataclass(frozen=True)
class Preset:
  """The scale of one size of a task: model, window, batch, steps and learning rate."""

  layers: int
  width: int
  heads: int
  mlp: int  # hidden width of the MLP blocks and of the classification head
  max_length: int | None  # tokens kept per sequence (per document for retrieval); None:
                          # computed by the config (an image's pixels)
  window: int  # one-sided attention window of the local and Longformer variants
  batch: int
  steps: int
  warmup: int
  learning_rate: float
  log_every: int
  eval_every: int
  checkpoint_every: int


# The small and tiny scales of the byte-level tasks (Text, Retrieval).
BYTE_TASK_SMALL = Preset(layers=2, width=64, heads=4, mlp=128, max_length=1000, window=64,
                         batch=32, steps=1000, warmup=100, learning_rate=1e-3, log_every=50,
                         eval_every=200, checkpoint_every=200)
BYTE_TASK_TINY = Preset(layers=1, width=32, heads=2, mlp=64, max_length=256, window=8,
                        batch=8, steps=4, warmup=2, learning_rate=1e-3, log_every=1,
                        eval_every=2, checkpoint_every=2)


def classification_config(task: str, arg: str | None, *, presets: dict[str, Preset],
                          kind: str = "classifier", pooling: str = "cls",
                          pos_emb: str = "sinusoidal", schedule: str = "rsqrt",
                          weight_decay: float = 0.1, grad_clip: float = 0.0,
                          dropout_rate: float = 0.1, attention_dropout_rate: float = 0.1,
                          **data) -> ml_collections.ConfigDict:
  """A full LRA classification config from the preset of `size` and the task's options.

  `arg` takes attention=<a variant of the registry: `lra.attention.variants()`>,
  size=paper|small|tiny,
  window=<one-sided window, 0 = the preset's>, dilation=<d or d/d/.../d per head>,
  pretrain=none|mlm|causal (self-pretraining, `lra.pretraining`; none: from scratch).
  Dropout and weight decay are the paper's at size=paper; smaller sizes train without
  dropout and with weight decay 0.01 (short runs underfit rather than overfit).
  """
  args = parse_arg(arg, attention="longformer", size="paper", window=0, dilation=(),
                   pretrain="none")
  preset = presets[args.size]
  paper = args.size == "paper"
  config = base_config(task, args)
  if preset.max_length is not None:
    config.data.max_length = preset.max_length
  config.data.update(data)

  config.model.kind = kind  # classifier | dual_encoder
  config.model.num_layers = preset.layers
  config.model.emb_dim = preset.width
  config.model.num_heads = preset.heads
  config.model.mlp_dim = preset.mlp
  config.model.dropout_rate = dropout_rate if paper else 0.0
  config.model.attention_dropout_rate = attention_dropout_rate if paper else 0.0
  config.model.pos_emb = pos_emb  # sinusoidal | learned | rotary
  config.model.pooling = pooling  # cls | mean | max (over real tokens)
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  config.attention = attention_config(args.attention, window=args.window or preset.window,
                                      num_heads=preset.heads, dilation=args.dilation)

  config.batch_size = preset.batch
  config.eval_batch_size = config.get_ref("batch_size").identity()  # follows batch_size
  config.num_train_steps = preset.steps
  config.log_every_steps = preset.log_every
  config.eval_every_steps = preset.eval_every
  config.checkpoint_every_steps = preset.checkpoint_every
  config.optimizer.learning_rate = preset.learning_rate
  config.optimizer.schedule = schedule
  config.optimizer.warmup_steps = preset.warmup
  config.optimizer.weight_decay = weight_decay if paper else 0.01
  config.optimizer.grad_clip = grad_clip if paper else 1.0
  config.pretrain = pretrain_config(args.pretrain, preset,
                                    config.get_ref("batch_size").identity(), paper=paper)
  return config


def pretrain_config(objective: str, preset: Preset, batch_size: config_dict.FieldReference,
                    *, paper: bool) -> ml_collections.ConfigDict:
  """`config.pretrain`: self-pretraining before fine-tuning (see `lra.pretraining`).

  By default the stage trains as many steps as fine-tuning, at the preset's batch size,
  peak learning rate and warmup, masking single tokens. At size=paper it follows the SPT
  authors' recipe (github.com/IdoAmos/not-from-scratch): 50% of the tokens masked, a
  constant rate after the warmup. Smaller sizes mask 15% (BERT's rate) with a cosine
  schedule (docs/self_pretraining.md).
  """
  config = ml_collections.ConfigDict({
      "objective": objective,  # none | mlm | causal
      "num_steps": preset.steps,  # optimizer steps of pretraining, before fine-tuning's
      "learning_rate": preset.learning_rate,  # peak learning rate of pretraining
      "warmup_steps": preset.warmup,  # linear warmup of pretraining
      "schedule": "constant" if paper else "cosine",  # rsqrt | cosine | constant
      "batch_size": batch_size,  # sequences per step (a retrieval pair is two); follows
                                 # batch_size
      "mask_rate": 0.5 if paper else 0.15,  # mlm: share of each sequence's real tokens masked
      "mean_span": 1.0,  # mlm: mean length of the masked spans (1: single tokens)
  })
  return config


# Character-level LM scales (Longformer §4 and App. B for `paper`: its small model).
# Windows are one-sided and causal (each position sees `w` earlier ones) and grow with depth;
# `layer_dilation` applies to the last `dilated_heads` heads of each layer (1 = none).
# The paper's phase-1 windows: 32 at the bottom to 512 at the top, geometric in between.
_PAPER_WINDOWS = tuple(round(32 * 16 ** (layer / 11)) for layer in range(12))
CHARLM_PRESETS = {
    "paper": dict(
        layers=12, width=512, heads=8, mlp=2048, windows=_PAPER_WINDOWS,
        layer_dilation=(1,) * 6 + (2, 2, 3, 3, 4, 4), dilated_heads=2, dropout=0.2,
        phases=dict(steps=(430_000, 50_000, 50_000, 35_000, 5_000),
                    seq_length=(2048, 4096, 8192, 16384, 23040),
                    batch_size=(32, 32, 16, 16, 16), window_scale=(1, 2, 4, 8, 16),
                    learning_rate=(2.5e-4, 1.25e-4, 6.25e-5, 3.125e-5, 1.5625e-5),
                    warmup_steps=(10_000, 5_000, 5_000, 3_500, 500)),
        evaluation=dict(length=32256, step=512, scored_length=512, max_chars=0),
        eval_batch=4, log_every=100, eval_every=10_000, checkpoint_every=5_000),
    "small": dict(
        layers=4, width=128, heads=4, mlp=512, windows=(16, 32, 48, 64),
        layer_dilation=(1, 1, 2, 2), dilated_heads=1, dropout=0.0,
        phases=dict(steps=(400, 150), seq_length=(256, 512), batch_size=(16, 8),
                    window_scale=(1, 2), learning_rate=(2e-3, 1e-3), warmup_steps=(40, 15)),
        evaluation=dict(length=512, step=256, scored_length=256, max_chars=100_000),
        eval_batch=32, log_every=25, eval_every=200, checkpoint_every=100),
    "tiny": dict(
        layers=2, width=32, heads=2, mlp=64, windows=(4, 8), layer_dilation=(1, 2),
        dilated_heads=1, dropout=0.0,
        phases=dict(steps=(3, 3), seq_length=(16, 32), batch_size=(4, 2), window_scale=(1, 2),
                    learning_rate=(1e-3, 5e-4), warmup_steps=(1, 1)),
        evaluation=dict(length=32, step=16, scored_length=16, max_chars=400),
        eval_batch=4, log_every=1, eval_every=3, checkpoint_every=3),
}


def charlm_config(data_format: str, arg: str | None) -> ml_collections.ConfigDict:
  """A character-level LM config: `arg` takes size=paper|small|tiny."""
  args = parse_arg(arg, size="paper")
  preset = CHARLM_PRESETS[args.size]
  config = base_config("charlm", args)
  del config["batch_size"]  # per phase: phases.batch_size
  config.data.format = data_format  # enwik8 | text8 | text (any file); all split 90/5/5

  config.model.kind = "causal_lm"
  config.model.num_layers = preset["layers"]
  config.model.emb_dim = preset["width"]
  config.model.num_heads = preset["heads"]
  config.model.mlp_dim = preset["mlp"]
  config.model.windows = preset["windows"]  # one-sided causal window per layer (phase 1)
  config.model.window_scale = 1  # multiplies the windows; set per phase by the trainer
  config.model.layer_dilation = preset["layer_dilation"]  # dilation per layer (1 = none)
  config.model.dilated_heads = preset["dilated_heads"]  # the last heads take that dilation
  config.model.dropout_rate = preset["dropout"]
  config.model.attention_dropout_rate = 0.0
  config.model.pos_emb = "rotary"  # relative positions, any length: see lra/models/lm.py
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  config.attention = ml_collections.ConfigDict({"name": "local"})  # causal, per layer: model.*

  # Staged training: one entry per phase. Each phase trains `steps` steps on crops of
  # `seq_length` with `batch_size`, windows x `window_scale`, and `learning_rate` after a
  # linear warmup of `warmup_steps`.
  config.phases = ml_collections.ConfigDict(preset["phases"])
  config.num_train_steps = computed(sum, config.phases.get_ref("steps"), field_type=int)
  # Bits per character over windows of `length`, `step` apart, each scoring its last
  # `scored_length` predictions (the first window scores all); max_chars > 0 evaluates only
  # the first max_chars characters of a split.
  config.evaluation = ml_collections.ConfigDict(preset["evaluation"])
  config.eval_batch_size = preset["eval_batch"]
  config.log_every_steps = preset["log_every"]
  config.eval_every_steps = preset["eval_every"]
  config.checkpoint_every_steps = preset["checkpoint_every"]

  config.optimizer.schedule = "phases"  # learning rates and warmups: config.phases
  del config.optimizer["learning_rate"], config.optimizer["warmup_steps"]
  config.optimizer.weight_decay = 0.01
  config.optimizer.grad_clip = 0.25
  return config

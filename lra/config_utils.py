"""Helpers for `configs/<task>.py`: the `key=value` argument and the fields every task shares.

A config file is launched as `--config=configs/listops.py:attention=longformer,size=small`;
the string after the colon reaches `get_config(arg)`. Its keys and their defaults are
declared by the config file, so a typo is an error, and values take the defaults' types.
"""

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from lra import errors

SIZES = ("paper", "small", "tiny")
# Attention variants a config can name; `dilated` is `local` with per-head dilation.
VARIANTS = ("full", "local", "dilated", "longformer")


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
  if "attention" in values and values["attention"] not in VARIANTS:
    raise errors.ConfigError(
        f"unknown attention {values['attention']!r}; choose one of: {', '.join(VARIANTS)}")
  return ml_collections.ConfigDict(values)


def attention_config(variant: str, *, window: int, num_heads: int,
                     dilation: tuple[int, ...] = ()) -> ml_collections.ConfigDict:
  """The registry config of an attention variant.

  `dilated` gives the first half of the heads dilation 1 and the rest dilation 2, unless
  `dilation` names one per head.
  """
  if variant == "full":
    return ml_collections.ConfigDict({"name": "full"})  # no window: a typo'd override fails
  if variant == "dilated" and not dilation:
    dilation = (1,) * (num_heads // 2) + (2,) * (num_heads - num_heads // 2)
  attention = ml_collections.ConfigDict({
      "name": "longformer" if variant == "longformer" else "local",
      "window": window,  # one-sided window w: each query sees w keys on each side
      "block_size": config_dict.placeholder(int),  # None: chosen from the window
  })
  # One int for every head, or one per head.
  attention.dilation = tuple(dilation) if dilation else 1
  return attention


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
  config.data = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.optimizer = ml_collections.ConfigDict({
      "learning_rate": 1e-3,  # peak learning rate
      "schedule": "rsqrt",  # rsqrt: linear warmup then 1/sqrt decay | cosine | constant
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
  max_length: int  # tokens kept per sequence (per document for retrieval)
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

  `arg` takes attention=full|local|dilated|longformer, size=paper|small|tiny,
  window=<one-sided window, 0 = the preset's>, dilation=<d or d/d/.../d per head>.
  Dropout and weight decay are the paper's at size=paper; smaller sizes train without
  dropout and with weight decay 0.01 (short runs underfit rather than overfit).
  """
  args = parse_arg(arg, attention="longformer", size="paper", window=0, dilation=())
  preset = presets[args.size]
  paper = args.size == "paper"
  config = base_config(task, args)
  config.data.max_length = preset.max_length
  config.data.update(data)

  config.model.kind = kind  # classifier | dual_encoder
  config.model.num_layers = preset.layers
  config.model.emb_dim = preset.width
  config.model.num_heads = preset.heads
  config.model.mlp_dim = preset.mlp
  config.model.dropout_rate = dropout_rate if paper else 0.0
  config.model.attention_dropout_rate = attention_dropout_rate if paper else 0.0
  config.model.pos_emb = pos_emb  # sinusoidal | learned
  config.model.pooling = pooling  # cls | mean
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  config.attention = attention_config(args.attention, window=args.window or preset.window,
                                      num_heads=preset.heads, dilation=args.dilation)

  config.batch_size = preset.batch
  config.eval_batch_size = preset.batch
  config.num_train_steps = preset.steps
  config.log_every_steps = preset.log_every
  config.eval_every_steps = preset.eval_every
  config.checkpoint_every_steps = preset.checkpoint_every
  config.optimizer.learning_rate = preset.learning_rate
  config.optimizer.schedule = schedule
  config.optimizer.warmup_steps = preset.warmup
  config.optimizer.weight_decay = weight_decay if paper else 0.01
  config.optimizer.grad_clip = grad_clip if paper else 1.0
  return config

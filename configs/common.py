"""What the task configs share: the `key=value` argument, the presets of a task's sizes, the
fields every config has, fields computed from others, and the LRA classification recipe.

A config file is launched as `--config=configs/listops.py:attention=longformer,size=small`;
the string after the colon reaches `get_config(arg)`. Its keys and their defaults are
declared by the config file, so a typo is an error, and values take the defaults' types.
Loading a config imports ml_collections and `lra.errors`, never JAX: names the library owns
(attention variants, pretraining objectives, schedules) are checked by the modules that own
them when a run starts (`lra.train.check`).

Fields computed from others follow an override of a source on the command line
(`--config.data.resolution=128` makes Path-X's `data.max_length`, and with it the model's,
16384); overriding the computed field itself sets it alone.
"""

import dataclasses
import importlib.util
import os
from typing import Any, Callable

import ml_collections
from ml_collections import config_dict

from lra import errors

SIZES = ("paper", "small", "tiny")


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
  return ml_collections.ConfigDict(values)


@dataclasses.dataclass(frozen=True)
class Preset:
  """One size of a task (`size=paper|small|tiny`): the fields that differ between its sizes.

  A field left None is the task config's own: the pixels of an image (`max_length`), the
  model of a pretrained checkpoint (`model`, `window`), the phases of the char-LM (`batch`,
  `steps`, `warmup`, `learning_rate`).
  """

  log_every: int  # append to metrics.jsonl and print progress this often (steps)
  eval_every: int  # evaluate on the whole validation split this often
  checkpoint_every: int  # save train state + data iterator this often
  model: dict[str, Any] = dataclasses.field(default_factory=dict)  # config.model fields
  max_length: int | None = None  # tokens kept per sequence (per document for retrieval)
  window: int | None = None  # one-sided window of the attention variants that take one
  batch: int | None = None  # sequences per training step
  eval_batch: int | None = None  # sequences per evaluation step; None: `batch`
  steps: int | None = None  # optimizer steps
  warmup: int | None = None  # linear warmup from 0 to the peak learning rate
  learning_rate: float | None = None  # the peak learning rate
  phases: dict[str, tuple] | None = None  # `config.phases` of a task trained in phases
  evaluation: dict[str, int] | None = None  # `config.evaluation` of the char-LM


class _Computed(config_dict.FieldReference):
  """A field equal to `fn(*sources)` whenever it is read, until it is set itself."""

  def __init__(self, fn: Callable, sources: tuple, field_type: type):
    super().__init__(None, field_type=field_type)
    self._fn, self._sources = fn, sources

  def get(self):
    if not self.empty():  # set itself
      return super().get()
    return self._fn(*(source.get() for source in self._sources))

  def __setstate__(self, state):  # copies and unpickling: FieldReference's fields, and ours
    super().__setstate__(state)
    self._fn, self._sources = state["_fn"], state["_sources"]


def computed(fn: Callable, *sources: config_dict.FieldReference,
             field_type: type) -> config_dict.FieldReference:
  """A field equal to `fn(*sources)` whenever it is read: it follows every change of a
  source (`config.get_ref(name)`) until it is set itself. (FieldReference's operators
  cover arithmetic; this covers any function, such as a sum over a tuple.)"""
  return _Computed(fn, sources, field_type)


def base_config(task: str, size: str, preset: Preset) -> ml_collections.ConfigDict:
  """The fields every task config has, with the values of `preset`; task files add theirs."""
  config = ml_collections.ConfigDict()
  config.task = task  # which lra.data module loads the data
  config.size = size  # paper | small | tiny: model and data scale
  config.seed = 0  # seeds initialisation, data order, dropout and seeded splits
  # The dataset folder as its archive unpacks; None generates (small/tiny) where possible.
  config.data_path = config_dict.placeholder(str)
  config.data_cache_dir = "data"  # generated datasets and preprocessed caches
  config.num_train_steps = preset.steps  # optimizer steps
  config.eval_every_steps = preset.eval_every
  config.checkpoint_every_steps = preset.checkpoint_every
  config.log_every_steps = preset.log_every
  config.batch_size = preset.batch  # global batch, split over the devices of the mesh
  # Sequences per evaluation step; follows batch_size where the preset does not set it.
  config.eval_batch_size = preset.eval_batch or config.get_ref("batch_size").identity()
  # Devices per mesh axis (-1: the devices left): `data` splits the batch, `sequence` the
  # length of every sequence, for the attention by halo exchange (local and longformer
  # attention, lra.attention.sequence_parallel). Their product is every device.
  config.mesh = ml_collections.ConfigDict({"data": -1, "sequence": 1})
  config.data = ml_collections.ConfigDict()
  if preset.max_length is not None:
    config.data.max_length = preset.max_length
  config.model = ml_collections.ConfigDict(preset.model)
  config.optimizer = ml_collections.ConfigDict({
      "learning_rate": preset.learning_rate,  # peak learning rate
      "schedule": "rsqrt",  # lra.optimizers.SCHEDULES, e.g. rsqrt: linear warmup then
                            # 1/sqrt decay; or phases: the rates of the task's phases
      "warmup_steps": preset.warmup,  # linear warmup from 0 to the peak
      "weight_decay": 0.1,  # AdamW decoupled decay of the weight matrices
      "grad_clip": 1.0,  # clip the global gradient norm (0 disables)
      "b1": 0.9,  # Adam beta1
      "b2": 0.98,  # Adam beta2
      "eps": 1e-9,  # Adam epsilon
  })
  return config


def attention_config(variant: str, *, window: int,
                     dilation: tuple[int, ...] = ()) -> ml_collections.ConfigDict:
  """`config.attention` of a variant of the attention registry (`lra.attention.variants()`)
  with the options a task sets for every variant alike.

  A run resolves it when it starts (`lra.train.resolve`): the variant's mechanism with its
  defaults, a preset's options (the dilations of `dilated`), then the options given here
  that the mechanism takes (a window means nothing to full attention).
  """
  return ml_collections.ConfigDict({
      "name": variant,  # full | local | dilated | longformer, or any registered variant
      "window": window,  # one-sided window w: each query sees w keys on each side
      # One int for every head, or one per head; None: the variant's.
      "dilation": tuple(dilation) or config_dict.placeholder(object),
      "block_size": config_dict.placeholder(int),  # query block; None: from the window
      "implementation": config_dict.placeholder(str),  # xla | pallas; None: the backend's
  })


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


# The small and tiny scales of the byte-level tasks (Text, Retrieval).
BYTE_TASK_SMALL = Preset(
    model=dict(num_layers=2, emb_dim=64, num_heads=4, mlp_dim=128), max_length=1000,
    window=64, batch=32, steps=1000, warmup=100, learning_rate=1e-3, log_every=50,
    eval_every=200, checkpoint_every=200)
BYTE_TASK_TINY = Preset(
    model=dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64), max_length=256, window=8,
    batch=8, steps=4, warmup=2, learning_rate=1e-3, log_every=1, eval_every=2,
    checkpoint_every=2)


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
  The `model` of a preset holds `num_layers`, `emb_dim`, `num_heads` and `mlp_dim` (the
  hidden width of the MLP blocks and of the classification head).
  """
  args = parse_arg(arg, attention="longformer", size="paper", window=0, dilation=(),
                   pretrain="none")
  preset = presets[args.size]
  paper = args.size == "paper"
  config = base_config(task, args.size, preset)
  config.data.update(data)

  config.model.kind = kind  # classifier | dual_encoder
  config.model.dropout_rate = dropout_rate if paper else 0.0
  config.model.attention_dropout_rate = attention_dropout_rate if paper else 0.0
  config.model.pos_emb = pos_emb  # sinusoidal | learned | rotary
  config.model.pooling = pooling  # cls | mean | max (over real tokens)
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  config.attention = attention_config(args.attention, window=args.window or preset.window,
                                      dilation=args.dilation)

  config.optimizer.schedule = schedule
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
  return ml_collections.ConfigDict({
      "objective": objective,  # none | mlm | causal
      "num_steps": preset.steps,  # optimizer steps of pretraining, before fine-tuning's
      "learning_rate": preset.learning_rate,  # peak learning rate of pretraining
      "warmup_steps": preset.warmup,  # linear warmup of pretraining
      "schedule": "constant" if paper else "cosine",  # lra.optimizers.SCHEDULES
      "batch_size": batch_size,  # sequences per step (a retrieval pair is two); follows
                                 # batch_size
      "mask_rate": 0.5 if paper else 0.15,  # mlm: share of each sequence's real tokens masked
      "mean_span": 1.0,  # mlm: mean length of the masked spans (1: single tokens)
      "pack": True,  # fill each row with several sequences (segment ids); rows count in
                     # batch_size
      "max_sequences": 8,  # pack: the most sequences of a row (its global CLS tokens)
  })

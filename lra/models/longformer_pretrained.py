"""Pretrained Longformer (Beltagy et al. 2020) in NNX, loaded from HuggingFace checkpoints.

The architecture of HF's PyTorch `LongformerModel` (`allenai/longformer-base-4096`,
`-large-4096`): RoBERTa embeddings, post-LN encoder layers whose self-attention has local
and separate global query/key/value projections, and a pooler; heads for masked LM and
sequence classification. The attention core is the project's registry mechanism
`longformer`, so any of its implementations serves a pretrained model.

    from lra import models
    model = models.longformer_from_pretrained("path/to/longformer-base-4096")
    out = model(input_ids, attention_mask=mask, global_attention_mask=global_mask)
    out.last_hidden_state, out.pooler_output  # [batch, length, hidden], [batch, hidden]

Windows: HF's `attention_window` is the TOTAL window of each layer (512 for the published
models); ours is one-sided, so layer i runs with `window = attention_window[i] // 2`.
HF pads every input to a multiple of the largest window inside its forward; we do not
need to, and at every position HF returns the outputs are the same (the tests compare).
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra import errors
from lra.attention.layers import SelfAttention

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF's "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}

# config.json fields that do not change the encoder's computation.
IGNORED_CONFIG_FIELDS = frozenset({
    "_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype",
    "initializer_range", "bos_token_id", "eos_token_id", "sep_token_id", "onnx_export",
    "gradient_checkpointing", "label2id", "problem_type", "return_dict",
    "output_hidden_states", "output_attentions", "use_cache", "chunk_size_feed_forward",
    "tokenizer_class", "finetuning_task", "prefix", "task_specific_params",
    "torchscript", "use_return_dict",
})
# config.json fields with the one value this implementation computes.
REQUIRED_CONFIG_VALUES = {
    "model_type": "longformer",
    "attention_mode": "longformer",  # older checkpoints name the attention they use
    "ignore_attention_mask": False,
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
    "pruned_heads": {},
}


@dataclasses.dataclass(frozen=True)
class LongformerConfig:
  """The fields of HF's `LongformerConfig` that define the computation.

  `attention_window` is HF's total window, one per layer; `windows` the one-sided ones.
  Defaults are `allenai/longformer-base-4096`'s.
  """

  vocab_size: int = 50265
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 4098
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1
  attention_window: tuple[int, ...] = (512,) * 12
  tie_word_embeddings: bool = True
  num_labels: int = 2

  def __post_init__(self):
    if isinstance(self.attention_window, int):
      object.__setattr__(self, "attention_window",
                         (self.attention_window,) * self.num_hidden_layers)
    object.__setattr__(self, "attention_window", tuple(self.attention_window))
    if len(self.attention_window) != self.num_hidden_layers:
      raise errors.ConfigError(
          f"attention_window has {len(self.attention_window)} entries for "
          f"{self.num_hidden_layers} layers: give one int or one per layer")
    for window in self.attention_window:
      if isinstance(window, bool) or not isinstance(window, int) or window <= 0 or window % 2:
        raise errors.ConfigError(
            f"attention_window entries are HF's total windows and must be positive even "
            f"ints (one-sided window = attention_window // 2), got {window!r}")
    if self.hidden_size % self.num_attention_heads:
      raise errors.ConfigError(
          f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
          f"({self.num_attention_heads})")
    if self.hidden_act not in ACTIVATIONS:
      raise errors.ConfigError(
          f"hidden_act {self.hidden_act!r} is not supported; choose one of "
          f"{sorted(ACTIVATIONS)}")

  @property
  def windows(self) -> tuple[int, ...]:
    """The one-sided window of each layer: HF's `attention_window // 2`."""
    return tuple(window // 2 for window in self.attention_window)

  @classmethod
  def from_hf(cls, fields: Mapping[str, Any], *, ignore_fields=()) -> "LongformerConfig":
    """From the fields of an HF `config.json`; any field that would change the computation
    and that this implementation does not follow is an error, never silently dropped."""
    fields = dict(fields)
    wrong = {name: fields[name] for name, value in REQUIRED_CONFIG_VALUES.items()
             if name in fields and fields[name] != value and name not in ignore_fields}
    if wrong:
      raise errors.ConfigError(
          "unsupported config.json values: " + ", ".join(
              f"{name}={value!r} (supported: {REQUIRED_CONFIG_VALUES[name]!r})"
              for name, value in sorted(wrong.items())))
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known - IGNORED_CONFIG_FIELDS - set(REQUIRED_CONFIG_VALUES)
                     - {"id2label"} - set(ignore_fields))
    if unknown:
      raise errors.ConfigError(
          f"config.json has fields this loader does not know: {', '.join(unknown)}; if "
          f"they do not change the model's computation, pass ignore_config_fields="
          f"{tuple(unknown)!r}")
    values = {name: fields[name] for name in known if name in fields}
    if "num_labels" not in values and "id2label" in fields:
      values["num_labels"] = len(fields["id2label"])  # how HF stores num_labels
    return cls(**values)


@flax.struct.dataclass
class LongformerOutput:
  """`last_hidden_state` `[batch, length, hidden]`; `pooler_output` `[batch, hidden]`, or
  None for a model without the pooler."""

  last_hidden_state: jax.Array
  pooler_output: jax.Array | None = None


def position_ids(input_ids_BxL, pad_token_id: int):
  """RoBERTa's positions: pad_token_id + 1, +2, ... over the non-pad tokens; pad tokens
  get pad_token_id. Counted from `input_ids` (as HF), not from the attention mask."""
  real = (input_ids_BxL != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(real, axis=1) * real + pad_token_id


class Embeddings(nnx.Module):
  """Word + learned position (RoBERTa offset) + token type embeddings, LayerNorm, dropout."""

  def __init__(self, config: LongformerConfig, dtype, rngs: nnx.Rngs):
    self.config = config
    embed = lambda n: nnx.Embed(n, config.hidden_size, dtype=dtype, rngs=rngs)
    self.word_embeddings = embed(config.vocab_size)
    self.position_embeddings = embed(config.max_position_embeddings)
    self.token_type_embeddings = embed(config.type_vocab_size)
    self.layer_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps,
                                    dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def __call__(self, input_ids_BxL, token_type_ids_BxL, *, deterministic, rngs):
    length, limit = input_ids_BxL.shape[1], self.config.max_position_embeddings
    if length + self.config.pad_token_id >= limit:
      raise errors.ConfigError(
          f"sequences of length {length} need position {length + self.config.pad_token_id}"
          f" but the model has {limit} position embeddings: at most "
          f"{limit - self.config.pad_token_id - 1} tokens")
    x = (self.word_embeddings(input_ids_BxL)
         + self.position_embeddings(position_ids(input_ids_BxL, self.config.pad_token_id))
         + self.token_type_embeddings(token_type_ids_BxL))
    return self.dropout(self.layer_norm(x), deterministic=deterministic, rngs=rngs)


class Layer(nnx.Module):
  """Post-LN encoder layer: LN(x + Attention(x)), then LN(x + Dense(act(Dense(x))))."""

  def __init__(self, config: LongformerConfig, window: int, attention: Mapping[str, Any],
               dtype, rngs: nnx.Rngs):
    hidden = config.hidden_size
    self.attention = SelfAttention(
        hidden, config.num_attention_heads,
        attention={**attention, "name": "longformer", "window": window},
        dropout_rate=config.attention_probs_dropout_prob, dtype=dtype, rngs=rngs)
    norm = lambda: nnx.LayerNorm(hidden, epsilon=config.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.attention_norm = norm()
    self.intermediate = nnx.Linear(hidden, config.intermediate_size, dtype=dtype, rngs=rngs)
    self.output = nnx.Linear(config.intermediate_size, hidden, dtype=dtype, rngs=rngs)
    self.output_norm = norm()
    self.activation = ACTIVATIONS[config.hidden_act]
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def __call__(self, x, *, padding_mask, global_mask, deterministic, rngs):
    # The elementwise parts (residual + LayerNorm, the activation) are recomputed in the
    # backward pass from their inputs rather than saving their intermediates: per layer of
    # the base model at length 4096 that is ~0.25 GB less memory, for a negligible cost.
    add_norm = lambda norm: jax.checkpoint(lambda a, b: norm(a + b))
    y = self.attention(x, padding_mask=padding_mask, global_mask=global_mask,
                       deterministic=deterministic, rngs=rngs)
    x = add_norm(self.attention_norm)(x, self.dropout(y, deterministic=deterministic,
                                                      rngs=rngs))
    y = self.output(jax.checkpoint(self.activation)(self.intermediate(x)))
    return add_norm(self.output_norm)(x, self.dropout(y, deterministic=deterministic,
                                                      rngs=rngs))


def checkpoint_in_order(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`jax.checkpoint(f)` whose recomputation waits for the cotangent of its output.

  The backward pass keeps only `f`'s arguments and recomputes the rest. A plain
  `jax.checkpoint` leaves the recomputed forward passes free to run as early as XLA likes,
  and XLA:CPU runs them all before the gradients that need them: every layer's
  intermediates are alive at once, and the peak is that of no recomputation. Here the
  recomputation reads its arguments through a data dependency on the cotangent, so layer
  i's starts only once the backward pass has reached layer i. (An `optimization_barrier`
  of the arguments with the cotangent would say the same, but XLA:CPU removes it before
  scheduling.) The masks and other values `f` closes over are not differentiated. Being a
  `jax.custom_vjp`, it has reverse-mode derivatives only (no `jax.jvp` or `jax.hessian`).
  """

  @jax.custom_vjp
  def checkpointed(*args):
    return f(*args)

  def forward(*args):
    return f(*args), args

  def backward(args, cotangent):
    # x + 0 * (one element of the cotangent): exact for a finite cotangent, and a dependency
    # that XLA keeps (it does not fold a float product with 0, NaN for an infinite operand).
    zero = 0.0 * cotangent.reshape(-1)[0].astype(jnp.float32)
    args = jax.tree.map(
        lambda a: a + zero.astype(a.dtype) if jnp.issubdtype(a.dtype, jnp.inexact) else a,
        args)
    return jax.vjp(f, *args)[1](cotangent)

  checkpointed.defvjp(forward, backward)
  return checkpointed


class LongformerModel(nnx.Module):
  """HF's `LongformerModel`: embeddings, post-LN layers, optional pooler (tanh dense of the
  first token).

  `attention` holds extra options of the registry's `longformer` mechanism for every layer
  (`block_size`, `max_global`, ...); the windows come from the config. Under `jax.jit`
  with a traced `global_attention_mask`, set `max_global` (the most global tokens of any
  row). Parameters are float32; `dtype` is the compute dtype. With `remat`, each layer
  keeps only its input for the backward pass and recomputes the rest when the backward
  pass reaches it (`checkpoint_in_order`; HF's `gradient_checkpointing`): a fraction of
  the memory for one more forward pass, reverse-mode differentiation only. Each layer draws
  one dropout key, so a recomputed layer drops what it dropped before.
  """

  def __init__(self, config: LongformerConfig, *, add_pooling_layer: bool = True,
               attention: Mapping[str, Any] | None = None, dtype=jnp.float32,
               remat: bool = False, rngs: nnx.Rngs):
    self.config = config
    self.remat = remat
    self.embeddings = Embeddings(config, dtype, rngs)
    self.layers = nnx.List([Layer(config, window, dict(attention or {}), dtype, rngs)
                            for window in config.windows])
    self.pooler = (nnx.Linear(config.hidden_size, config.hidden_size, dtype=dtype, rngs=rngs)
                   if add_pooling_layer else None)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> LongformerOutput:
    """Encodes `input_ids` `[batch, length]`.

    Args:
      input_ids: int token ids.
      attention_mask: `[batch, length]`, 1 (True) for real tokens, 0 for padding; None: all
        real.
      global_attention_mask: `[batch, length]`, 1 for tokens with global attention (on a
        padded position it is ignored, as in HF); None: none.
      token_type_ids: `[batch, length]`; None: zeros.
      deterministic: disables dropout.
      rngs: `nnx.Rngs` with a `dropout` stream, when dropout is active.
    """
    input_ids = jnp.asarray(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    padding_mask = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    global_mask = None
    if global_attention_mask is not None:
      # numpy when given as numpy: a concrete mask sizes the global budget under jit too.
      as_bool = np.asarray if isinstance(global_attention_mask, np.ndarray) else jnp.asarray
      global_mask = as_bool(global_attention_mask).astype(bool)
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs)
    dropout = not deterministic and rngs is not None
    for layer in self.layers:
      # Layers hold parameters only (no batch statistics, no stored Rngs): what a call
      # would change in a merged copy's state is not written back.
      graphdef, state = nnx.split(layer)

      def run_layer(state, x, key, graphdef=graphdef):
        # One key a layer, so that a recomputed layer draws the masks it drew before. The
        # masks are closed over: a concrete (numpy) global mask stays concrete.
        return nnx.merge(graphdef, state)(
            x, padding_mask=padding_mask, global_mask=global_mask,
            deterministic=deterministic, rngs=None if key is None else nnx.Rngs(dropout=key))

      if self.remat:
        run_layer = checkpoint_in_order(run_layer)
      x = run_layer(state, x, rngs.dropout() if dropout else None)
    pooled = None if self.pooler is None else jnp.tanh(self.pooler(x[:, 0]))
    return LongformerOutput(last_hidden_state=x, pooler_output=pooled)


class _Head(nnx.Module):
  """An encoder without the pooler (as HF's heads) and the head's first dense layer."""

  def __init__(self, config: LongformerConfig, *, attention, dtype, remat, rngs: nnx.Rngs):
    self.longformer = LongformerModel(config, add_pooling_layer=False, attention=attention,
                                      dtype=dtype, remat=remat, rngs=rngs)
    self.dense = nnx.Linear(config.hidden_size, config.hidden_size, dtype=dtype, rngs=rngs)

  def encode(self, input_ids, attention_mask, global_attention_mask, token_type_ids, *,
             deterministic, rngs):
    return self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids,
                           deterministic=deterministic, rngs=rngs).last_hidden_state


class LongformerForMaskedLM(_Head):
  """Encoder + RoBERTa's LM head: Dense, GELU, LayerNorm, then the (tied) word embeddings
  and a bias. Returns logits `[batch, length, vocab]`."""

  def __init__(self, config: LongformerConfig, *, attention=None, dtype=jnp.float32,
               remat: bool = False, rngs: nnx.Rngs):
    super().__init__(config, attention=attention, dtype=dtype, remat=remat, rngs=rngs)
    hidden = config.hidden_size
    self.layer_norm = nnx.LayerNorm(hidden, epsilon=config.layer_norm_eps, dtype=dtype,
                                    rngs=rngs)
    self.decoder = (None if config.tie_word_embeddings else
                    nnx.Linear(hidden, config.vocab_size, use_bias=False, dtype=dtype, rngs=rngs))
    self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, *, deterministic: bool = True, rngs=None):
    x = self.encode(input_ids, attention_mask, global_attention_mask, token_type_ids,
                    deterministic=deterministic, rngs=rngs)
    x = self.layer_norm(ACTIVATIONS["gelu"](self.dense(x)))
    if self.decoder is None:
      logits = self.longformer.embeddings.word_embeddings.attend(x)
    else:
      logits = self.decoder(x)
    return logits + self.bias[...][None, None].astype(logits.dtype)


class LongformerForSequenceClassification(_Head):
  """Encoder + the classification head on the first token: dropout, Dense, tanh, dropout,
  Dense. Returns logits `[batch, num_labels]`. Without a `global_attention_mask` the first
  token is global, as in HF."""

  def __init__(self, config: LongformerConfig, *, attention=None, dtype=jnp.float32,
               remat: bool = False, rngs: nnx.Rngs):
    super().__init__(config, attention=attention, dtype=dtype, remat=remat, rngs=rngs)
    self.out_proj = nnx.Linear(config.hidden_size, config.num_labels, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, *, deterministic: bool = True, rngs=None):
    if global_attention_mask is None:
      global_attention_mask = np.zeros(np.shape(input_ids), bool)
      global_attention_mask[:, 0] = True
    x = self.encode(input_ids, attention_mask, global_attention_mask, token_type_ids,
                    deterministic=deterministic, rngs=rngs)[:, 0]
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    return self.out_proj(drop(jnp.tanh(self.dense(drop(x)))))


HEADS = {LongformerForMaskedLM: "lm_head.", LongformerForSequenceClassification: "classifier."}
HEAD_PREFIXES = tuple(HEADS.values())
HEAD_MODELS = {None: LongformerModel, "masked_lm": LongformerForMaskedLM,
               "sequence_classification": LongformerForSequenceClassification}


@dataclasses.dataclass(frozen=True)
class _Slot:
  """Where one checkpoint tensor goes: its HF shape and the map to our layout."""

  variable: nnx.Variable
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]


def _dense_slots(name: str, module, in_axes: int = 1) -> dict[str, _Slot]:
  """torch's `nn.Linear` (`weight` `[out, in]`) onto `nnx.Linear`/`LinearGeneral`, whose
  kernel is `[*in, *out]` with `in_axes` leading input axes."""
  kernel = module.kernel
  shape = kernel[...].shape
  fan_in, fan_out = math.prod(shape[:in_axes]), math.prod(shape[in_axes:])
  slots = {f"{name}.weight": _Slot(kernel, (fan_out, fan_in), lambda w: w.T.reshape(shape))}
  if module.bias is not None:
    bias_shape = module.bias[...].shape
    slots[f"{name}.bias"] = _Slot(module.bias, (math.prod(bias_shape),),
                                  lambda b: b.reshape(bias_shape))
  return slots


def _norm_slots(name: str, module) -> dict[str, _Slot]:
  identity = lambda x: x
  return {f"{name}.weight": _Slot(module.scale, module.scale[...].shape, identity),
          f"{name}.bias": _Slot(module.bias, module.bias[...].shape, identity)}


def _encoder_slots(model: LongformerModel) -> dict[str, _Slot]:
  """HF's names (without the `longformer.` prefix) of every encoder parameter."""
  embeddings = model.embeddings
  slots = {f"embeddings.{name}.weight": _Slot(getattr(embeddings, name).embedding,
                                              getattr(embeddings, name).embedding[...].shape,
                                              lambda x: x)
           for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
  slots.update(_norm_slots("embeddings.LayerNorm", embeddings.layer_norm))
  for i, layer in enumerate(model.layers):
    prefix = f"encoder.layer.{i}."
    for name in ("query", "key", "value", "query_global", "key_global", "value_global"):
      slots.update(_dense_slots(f"{prefix}attention.self.{name}",
                                getattr(layer.attention, name)))
    slots.update(_dense_slots(f"{prefix}attention.output.dense", layer.attention.out,
                              in_axes=2))
    slots.update(_norm_slots(f"{prefix}attention.output.LayerNorm", layer.attention_norm))
    slots.update(_dense_slots(f"{prefix}intermediate.dense", layer.intermediate))
    slots.update(_dense_slots(f"{prefix}output.dense", layer.output))
    slots.update(_norm_slots(f"{prefix}output.LayerNorm", layer.output_norm))
  if model.pooler is not None:
    slots.update(_dense_slots("pooler.dense", model.pooler))
  return slots


def parameter_slots(model) -> dict[str, _Slot]:
  """HF checkpoint name -> slot, for a model or one of the heads."""
  if isinstance(model, LongformerModel):
    return _encoder_slots(model)
  slots = {f"longformer.{k}": v for k, v in _encoder_slots(model.longformer).items()}
  if isinstance(model, LongformerForMaskedLM):
    slots.update(_dense_slots("lm_head.dense", model.dense))
    slots.update(_norm_slots("lm_head.layer_norm", model.layer_norm))
    slots["lm_head.bias"] = _Slot(model.bias, model.bias[...].shape, lambda x: x)
    if model.decoder is not None:
      slots.update(_dense_slots("lm_head.decoder", model.decoder))
  else:
    slots.update(_dense_slots("classifier.dense", model.dense))
    slots.update(_dense_slots("classifier.out_proj", model.out_proj))
  return slots


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """All tensors of an HF model folder: `model.safetensors` (or its sharded index), else
  `pytorch_model.bin` when torch is installed."""
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(single) or os.path.exists(index):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise errors.CheckpointError(
          "reading model.safetensors needs the safetensors package: pip install "
          "safetensors") from e
    if os.path.exists(single):
      return load_file(single)
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    return {k: v for shard in shards for k, v in load_file(os.path.join(path, shard)).items()}
  binary = os.path.join(path, "pytorch_model.bin")
  if os.path.exists(binary):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise errors.CheckpointError(
          f"{binary} is a PyTorch pickle and torch is not installed: install torch, or "
          f"convert the folder to model.safetensors") from e
    state = torch.load(binary, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
  found = sorted(os.listdir(path)) if os.path.isdir(path) else "no such folder"
  raise errors.CheckpointError(
      f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {path} "
      f"(found: {found}); point at the folder of a HuggingFace Longformer checkpoint")


def _hf_names(tensors: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
  """The checkpoint's tensors under the names of `parameter_slots(model)`.

  Accepts checkpoints of the bare encoder (`embeddings.*`) and of a head model
  (`longformer.embeddings.*`); leaves out what HF would not load into this model either:
  the weights of another head, the pooler for a head model, tied copies and buffers.
  """
  bare = isinstance(model, LongformerModel)
  own_head = None if bare else HEADS[type(model)]
  renamed = {}
  for name, value in tensors.items():
    inner = name[len("longformer."):] if name.startswith("longformer.") else None
    if inner is None and name.split(".")[0] in ("embeddings", "encoder", "pooler"):
      inner = name
    if inner is not None:
      if inner == "embeddings.position_ids" or (inner.startswith("pooler.") and not bare):
        continue
      renamed[inner if bare else f"longformer.{inner}"] = value
    elif any(name.startswith(prefix) for prefix in HEAD_PREFIXES if prefix != own_head):
      continue
    elif name == "lm_head.decoder.bias" or (
        name == "lm_head.decoder.weight" and model.decoder is None):
      continue  # tied to lm_head.bias / to the word embeddings
    else:
      renamed[name] = value
  return renamed


def load_parameters(model, tensors: Mapping[str, np.ndarray], *,
                    keep_missing: str | None = None) -> None:
  """Copies an HF checkpoint's tensors into `model`, by name.

  Parameters whose names start with `keep_missing` may be absent (they keep their
  initialisation). Raises `lra.errors.CheckpointError` listing every other missing
  tensor, every unexpected one and every shape mismatch, before anything is copied.
  """
  slots = parameter_slots(model)
  tensors = _hf_names(tensors, model)
  missing = sorted(name for name in set(slots) - set(tensors)
                   if not (keep_missing and name.startswith(keep_missing)))
  unexpected = sorted(set(tensors) - set(slots))
  mismatched = sorted(f"{name}: checkpoint {tuple(tensors[name].shape)}, model "
                      f"{slots[name].hf_shape}" for name in set(slots) & set(tensors)
                      if tuple(tensors[name].shape) != slots[name].hf_shape)
  problems = [f"{label}: {', '.join(names)}" for label, names in (
      ("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
              if names]
  if problems:
    raise errors.CheckpointError(
        f"the checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
  for name, slot in slots.items():
    if name in tensors:
      value = slot.to_ours(np.asarray(tensors[name], np.float32))
      slot.variable.set_value(jnp.asarray(value, slot.variable[...].dtype))


def longformer_from_pretrained(path: str, *, head: str | None = None,
                               attention: Mapping[str, Any] | None = None, dtype=jnp.float32,
                               remat: bool = False, ignore_config_fields=(), seed: int = 0,
                               num_labels: int | None = None):
  """Loads an HF Longformer folder (`config.json` + `model.safetensors`) into NNX.

  Args:
    path: the folder `save_pretrained` writes (or a downloaded hub snapshot).
    head: None for `LongformerModel` (with the pooler if the checkpoint has its weights,
      else `pooler_output` is None; the weights of any head are skipped), "masked_lm" or
      "sequence_classification". A classification head absent from the checkpoint (a
      pretrained encoder to fine-tune) is freshly initialised from `seed`, with
      `num_labels` from the config.
    attention: extra options of the registry's `longformer` mechanism (e.g. `max_global`
      for jit with a traced global mask, `block_size`).
    dtype: compute dtype (parameters stay float32).
    remat: recompute each layer in the backward pass (see `LongformerModel`).
    ignore_config_fields: config.json fields to accept without following them.
    seed: initialisation of parameters the checkpoint does not hold.
    num_labels: the classes of a sequence-classification head, in place of the config's
      (as HF's `from_pretrained(num_labels=...)`); a checkpoint's own head of another size
      is a shape mismatch.

  Returns:
    The model, called like HF's: `model(input_ids, attention_mask=None,
    global_attention_mask=None, token_type_ids=None)`.
  """
  if head not in HEAD_MODELS:
    raise errors.ConfigError(f"unknown head {head!r}; choose one of {list(HEAD_MODELS)}")
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise errors.CheckpointError(f"no config.json in {path}: point at the folder of a "
                                 f"HuggingFace Longformer checkpoint")
  with open(config_path) as f:
    config = LongformerConfig.from_hf(json.load(f), ignore_fields=ignore_config_fields)
  if num_labels is not None:
    config = dataclasses.replace(config, num_labels=num_labels)
  tensors = read_checkpoint(path)
  kwargs = dict(attention=attention, dtype=dtype, remat=remat, rngs=nnx.Rngs(seed))
  keep_missing = None
  if head is None:
    has_pooler = any(k.endswith("pooler.dense.weight") for k in tensors)
    model = LongformerModel(config, add_pooling_layer=has_pooler, **kwargs)
  else:
    model = HEAD_MODELS[head](config, **kwargs)
    prefix = HEADS[type(model)]
    if head == "sequence_classification" and not any(k.startswith(prefix) for k in tensors):
      keep_missing = prefix  # a pretrained encoder, to fine-tune with a new head
  load_parameters(model, tensors, keep_missing=keep_missing)
  return model

"""Causal character-level Transformer LM with per-layer causal windows (Longformer §4).

Every layer attends through the causal windowed mechanism that `config.attention` names.
The one-sided window of layer `i` is `model.windows[i] * model.window_scale` (windows grow
with depth; staged training doubles `window_scale` per phase), and the last
`model.dilated_heads` heads of layer `i` use dilation `model.layer_dilation[i]` (1 = none), as
the paper's dilation on 2 heads of the upper layers.

Positions are relative, as in the paper (which used Transformer-XL's relative sinusoidal
encoding): rotary embeddings (RoPE) rotate queries and keys by sinusoidal angles of their
positions, so attention scores depend on the offset between query and key alone. That suits
causal local attention: a query only ever compares itself with keys a window away, training
crops start anywhere in the text, and evaluation windows longer than the training crops
(the paper's 32,256 characters after training at 23,040; in staged training every phase
lengthens the crops) meet no untrained absolute positions. Absolute sinusoids fail exactly
there: positions past the training length are never seen (in a small run, validation on
512-character windows after training on 256 gave 5.5 BPC against 2.0 in training), and each
phase change to longer crops sets training back (train BPC 1.98 -> 3.15 at that boundary).
"""

import jax.numpy as jnp
import optax
from flax import nnx

from lra import errors
from lra.models.encoder import Encoder

_LN2 = 0.6931471805599453


def layer_attention_configs(model) -> dict:
  """The attention options of the causal windows: per-layer window and per-head dilation
  (merged into `config.attention`, which names the mechanism)."""
  num_layers, num_heads = model.num_layers, model.num_heads
  for key in ("windows", "layer_dilation"):
    if len(model[key]) != num_layers:
      raise errors.ConfigError(
          f"model.{key} has {len(model[key])} entries but the model has {num_layers} layers")
  if not 0 <= model.dilated_heads <= num_heads:
    raise errors.ConfigError(
        f"model.dilated_heads must be in [0, {num_heads}], got {model.dilated_heads}")
  undilated = num_heads - model.dilated_heads
  return {
      "causal": True,
      "window": tuple(w * model.window_scale for w in model.windows),
      "dilation": tuple((1,) * undilated + (d,) * model.dilated_heads
                        for d in model.layer_dilation),
  }


class CausalLM(nnx.Module):
  """Bytes `[batch, length]` -> next-byte logits `[batch, length, vocab]`."""

  def __init__(self, config, *, vocab_size: int, num_classes: int, rngs: nnx.Rngs):
    del num_classes  # language modelling predicts the vocabulary
    if config.model.pos_emb != "rotary":
      raise errors.ConfigError(
          f"the causal LM takes model.pos_emb='rotary' (relative positions, any length), "
          f"got {config.model.pos_emb!r}")
    attention = {**config.attention, **layer_attention_configs(config.model)}
    self.encoder = Encoder(config.model, attention, vocab_size=vocab_size, max_length=None,
                           rngs=rngs)
    self.head = nnx.Linear(config.model.emb_dim, vocab_size, dtype=self.encoder.dtype,
                           rngs=rngs)

  def logits_from_embeddings(self, x_BxLxE, *, deterministic: bool = True, rngs=None):
    h = self.encoder(x_BxLxE, padding_mask=None, deterministic=deterministic, rngs=rngs)
    return self.head(h).astype(jnp.float32)

  def __call__(self, tokens_BxL, *, deterministic: bool = True, rngs=None):
    return self.logits_from_embeddings(self.encoder.embed_tokens(tokens_BxL),
                                       deterministic=deterministic, rngs=rngs)

  def init_cache(self, batch: int) -> dict:
    """An empty decoding state: every layer's rolling cache of its last `window x
    max(dilation) + 1` keys and values, and the next position."""
    return {"position": jnp.zeros((), jnp.int32), "layers": self.encoder.init_cache(batch)}

  def decode(self, tokens_BxT, cache: dict):
    """Next-token logits `[batch, T, vocab]` of `T` new tokens that continue the text the
    cache has seen (a prompt chunk, or one token), and the updated cache. The logits equal
    the full forward's at those positions; the cache's size does not grow."""
    position = cache["position"]
    x = self.encoder.embed_tokens(tokens_BxT)
    h, layers = self.encoder.decode(x, cache["layers"], position)
    logits = self.head(h).astype(jnp.float32)
    return logits, {"position": position + tokens_BxT.shape[1], "layers": layers}

  def metrics(self, batch, *, deterministic: bool, rngs):
    """Summed cross-entropy (nats) and bits over the scored predictions, and their count."""
    logits = self(batch["inputs"], deterministic=deterministic, rngs=rngs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    weights = batch["weights"]
    loss = jnp.sum(losses * weights)
    return {"loss": loss, "bits": loss / _LN2, "count": jnp.sum(weights)}

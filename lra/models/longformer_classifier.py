"""A pretrained HuggingFace Longformer fine-tuned as a sequence classifier by the trainer
(`config.model.kind = "pretrained_longformer"`, `configs/imdb_longformer.py`).

The encoder's weights are read from `config.init_from` (an HF folder,
`longformer_pretrained.longformer_from_pretrained`) when the model is built, so the
trainer's initial parameters are the checkpoint's; the classification head (HF's: dropout,
Dense, tanh, dropout, Dense on the first token) is fresh, drawn from the trainer's `rngs`.
The first token (`<s>`) is the one global token, as in HF and the Longformer paper.

Batches hold `inputs` in the task's ids: the tokenizer's id + `PRETRAINED_ID_SHIFT`, with
`PAD_ID` (0) for padding (`lra.data.bpe`). The model maps them back to the checkpoint's ids,
padding to its `pad_token_id`, and masks `inputs != PAD_ID` out as padding.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra import errors
from lra.models.classifier import classification_metrics
from lra.models.longformer_pretrained import longformer_from_pretrained
from lra.tokens import PAD_ID
from lra.tokens import PRETRAINED_ID_SHIFT


class PretrainedLongformerClassifier(nnx.Module):
  """`LongformerForSequenceClassification` loaded from `config.init_from`; batches hold
  `inputs` `[batch, length]`, `targets` and `weights` `[batch]`."""

  def __init__(self, config, *, vocab_size: int, num_classes: int, rngs: nnx.Rngs):
    if not config.get("init_from"):
      raise errors.ConfigError(
          "config.init_from is not set: point it at a HuggingFace Longformer folder "
          "(config.json, model.safetensors), e.g. a download of allenai/longformer-base-4096")
    # The fresh head's initialisation, drawn from the trainer's key (a concrete int:
    # the loader seeds its own nnx.Rngs).
    seed = int(jax.random.randint(rngs.params(), (), 0, np.iinfo(np.int32).max))
    attention = {key: value for key, value in config.attention.items()
                 if key != "name" and value is not None}
    self.pretrained = longformer_from_pretrained(
        config.init_from, head="sequence_classification", num_labels=num_classes,
        attention=attention, dtype=jnp.dtype(config.model.dtype), remat=config.model.remat,
        seed=seed)
    checkpoint_vocab = self.pretrained.longformer.config.vocab_size
    if vocab_size - PRETRAINED_ID_SHIFT > checkpoint_vocab:
      raise errors.ConfigError(
          f"the tokenizer has {vocab_size - PRETRAINED_ID_SHIFT} ids but the checkpoint "
          f"{config.init_from} embeds only {checkpoint_vocab}: use the tokenizer files "
          f"(vocab.json, merges.txt) of that checkpoint")
    self.pad_token_id = self.pretrained.longformer.config.pad_token_id

  def __call__(self, batch, *, deterministic: bool = True, rngs=None):
    """Logits `[batch, num_classes]`."""
    tokens = batch["inputs"]
    real = tokens != PAD_ID
    input_ids = jnp.where(real, tokens - PRETRAINED_ID_SHIFT, self.pad_token_id)
    return self.pretrained(input_ids, attention_mask=real, deterministic=deterministic,
                           rngs=rngs)

  def metrics(self, batch, *, deterministic: bool = True, rngs=None):
    logits = self(batch, deterministic=deterministic, rngs=rngs)
    return classification_metrics(logits, batch["targets"], batch["weights"])

"""Models by kind: every model exposes `metrics(batch, *, deterministic, rngs)`.

`metrics` returns summed quantities (`loss`, `count`, and task metrics such as `correct`)
so that they average exactly over devices and over a whole evaluation set; the trainer
minimises `loss / count`.
"""

from flax import nnx

from lra import errors
from lra.models.classifier import Classifier
from lra.models.classifier import DualEncoder
from lra.models.lm import CausalLM
from lra.models.longformer_classifier import PretrainedLongformerClassifier
from lra.models.longformer_pretrained import longformer_from_pretrained
from lra.models.pretraining import SelfPretrainingLM

MODELS = {
    "classifier": Classifier,
    "dual_encoder": DualEncoder,
    "causal_lm": CausalLM,
    "self_pretraining": SelfPretrainingLM,  # lra.pretraining's stage before fine-tuning
    "pretrained_longformer": PretrainedLongformerClassifier,  # fine-tunes config.init_from
}


def build(config, *, vocab_size: int, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the model named by `config.model.kind` for a vocabulary of `vocab_size` token ids
  and `num_classes` target classes (0 for a language model)."""
  kind = config.model.kind
  if kind not in MODELS:
    raise errors.ConfigError(f"unknown model.kind {kind!r}; choose one of {sorted(MODELS)}")
  return MODELS[kind](config, vocab_size=vocab_size, num_classes=num_classes, rngs=rngs)

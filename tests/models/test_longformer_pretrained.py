"""The pretrained Longformer against HuggingFace's outputs, and its checkpoint loader.

The fixture (`tests/fixtures/make_hf_fixtures.py`) holds a tiny random HF
`LongformerForMaskedLM` whose encoder has the pooler (2 layers, hidden 64, 4 heads,
`attention_window=[8, 16]`, vocab 300), a classifier with the same encoder, fixed inputs
of length 37 (HF pads them to 48 inside) with padding and global tokens at the first and at
scattered positions, and HF's outputs. Every position HF returns is compared, padded ones
included.
"""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from lra import errors
from lra import models
from lra.models import longformer_pretrained

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "hf_longformer")
MLM_CHECKPOINT = os.path.join(FIXTURES, "tiny")
CLS_CHECKPOINT = os.path.join(FIXTURES, "tiny_cls")
TOL = dict(atol=1e-4, rtol=0)
SUFFIXES = ("", "_no_global")


@pytest.fixture(scope="module")
def hf():
  with np.load(os.path.join(FIXTURES, "tiny_outputs.npz")) as data:
    return dict(data)


def _inputs(hf, suffix):
  return dict(attention_mask=hf["attention_mask"],
              global_attention_mask=None if suffix else hf["global_attention_mask"])


@pytest.fixture(scope="module")
def encoder():
  return models.longformer_from_pretrained(MLM_CHECKPOINT)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_encoder_matches_huggingface(hf, encoder, suffix):
  out = encoder(hf["input_ids"], **_inputs(hf, suffix))
  chex.assert_shape(out.last_hidden_state, (3, 37, 64))
  chex.assert_shape(out.pooler_output, (3, 64))
  np.testing.assert_allclose(out.last_hidden_state, hf["last_hidden_state" + suffix], **TOL)
  np.testing.assert_allclose(out.pooler_output, hf["pooler_output" + suffix], **TOL)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_masked_lm_matches_huggingface(hf, suffix):
  model = models.longformer_from_pretrained(MLM_CHECKPOINT, head="masked_lm")
  logits = model(hf["input_ids"], **_inputs(hf, suffix))
  chex.assert_shape(logits, (3, 37, 300))
  np.testing.assert_allclose(logits, hf["mlm_logits" + suffix], **TOL)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_sequence_classification_matches_huggingface(hf, suffix):
  """Without a global mask both make the first token global."""
  model = models.longformer_from_pretrained(CLS_CHECKPOINT, head="sequence_classification")
  logits = model(hf["input_ids"], **_inputs(hf, suffix))
  chex.assert_shape(logits, (3, 3))
  np.testing.assert_allclose(logits, hf["cls_logits" + suffix], **TOL)


def test_fixture_has_global_tokens_that_matter(hf):
  """Global tokens change HF's outputs, so the comparisons above test them."""
  assert hf["global_attention_mask"][1, 1:].sum() >= 4
  difference = np.abs(hf["last_hidden_state"] - hf["last_hidden_state_no_global"])
  assert difference[1].max() > 0.1


def test_windows_are_one_sided(encoder):
  """HF's total windows [8, 16] become one-sided 4 and 8."""
  assert encoder.config.windows == (4, 8)
  assert [dict(layer.attention.core.options)["window"] for layer in encoder.layers] == [4, 8]


def test_jit_with_traced_masks(hf):
  model = models.longformer_from_pretrained(MLM_CHECKPOINT, attention={"max_global": 6})

  @nnx.jit
  def encode(model, input_ids, attention_mask, global_attention_mask):
    return model(input_ids, attention_mask, global_attention_mask).last_hidden_state

  out = encode(model, hf["input_ids"], hf["attention_mask"], hf["global_attention_mask"])
  np.testing.assert_allclose(out, hf["last_hidden_state"], **TOL)


def test_gradients_are_finite(hf, encoder):
  graphdef, params = nnx.split(encoder, nnx.Param)

  def loss(params):
    out = nnx.merge(graphdef, params)(hf["input_ids"], **_inputs(hf, ""))
    return (out.last_hidden_state ** 2).mean()

  grads = jax.grad(loss)(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # The separate global projections are used: their gradient is not zero.
  assert np.abs(grads["layers"][0]["attention"]["query_global"]["kernel"][...]).max() > 0


def _copy_checkpoint(tmp_path, source=MLM_CHECKPOINT, edit_tensors=None, edit_config=None):
  folder = tmp_path / "checkpoint"
  shutil.copytree(source, folder)
  if edit_tensors:
    tensors = load_file(str(folder / "model.safetensors"))
    edit_tensors(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
  if edit_config:
    config = json.loads((folder / "config.json").read_text())
    edit_config(config)
    (folder / "config.json").write_text(json.dumps(config))
  return str(folder)


def test_bare_encoder_checkpoint(tmp_path, hf):
  """A checkpoint of HF's bare `LongformerModel` names tensors without `longformer.`."""

  def strip(tensors):
    for name in list(tensors):
      value = tensors.pop(name)
      if name.startswith("longformer."):
        tensors[name[len("longformer."):]] = value

  model = models.longformer_from_pretrained(_copy_checkpoint(tmp_path, edit_tensors=strip))
  out = model(hf["input_ids"], **_inputs(hf, ""))
  np.testing.assert_allclose(out.pooler_output, hf["pooler_output"], **TOL)


def test_new_classification_head_on_a_pretrained_encoder(hf, encoder):
  """The masked-LM checkpoint fine-tunes as a classifier: encoder loaded, head fresh."""
  model = models.longformer_from_pretrained(MLM_CHECKPOINT, head="sequence_classification")
  np.testing.assert_array_equal(model.longformer.layers[1].output.kernel[...],
                                encoder.layers[1].output.kernel[...])
  assert model.longformer.pooler is None
  chex.assert_shape(model(hf["input_ids"]), (3, 2))  # HF's default of 2 labels


def test_without_pooler_weights(tmp_path):
  drop = lambda t: [t.pop(k) for k in list(t) if "pooler" in k]
  model = models.longformer_from_pretrained(_copy_checkpoint(tmp_path, edit_tensors=drop))
  assert model(np.full((1, 5), 7)).pooler_output is None


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("longformer.encoder.layer.1.attention.self.key_global.bias"),
     "missing: longformer.encoder.layer.1.attention.self.key_global.bias"),
    (lambda t: t.update(extra=np.zeros(3, np.float32)), "unexpected: extra"),
    (lambda t: t.update({"lm_head.bias": np.zeros(299, np.float32)}),
     r"shape mismatch: lm_head.bias: checkpoint \(299,\), model \(300,\)"),
])
def test_tensors_that_do_not_fit(tmp_path, edit, message):
  folder = _copy_checkpoint(tmp_path, edit_tensors=edit)
  with pytest.raises(errors.CheckpointError, match=message):
    models.longformer_from_pretrained(folder, head="masked_lm")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(model_type="roberta"), "model_type='roberta'"),
    (lambda c: c.update(attention_mode="tvm"), "attention_mode='tvm'"),
    (lambda c: c.update(position_embedding_type="relative_key"), "position_embedding_type"),
    (lambda c: c.update(hidden_act="swish"), "hidden_act 'swish' is not supported"),
    (lambda c: c.update(attention_window=[8, 15]), "positive even ints"),
    (lambda c: c.update(attention_window=[8]), "1 entries for 2 layers"),
    (lambda c: c.update(rope_theta=10000.0), "fields this loader does not know: rope_theta"),
])
def test_unsupported_config(tmp_path, edit, message):
  folder = _copy_checkpoint(tmp_path, edit_config=edit)
  with pytest.raises(errors.ConfigError, match=message):
    models.longformer_from_pretrained(folder)


def test_ignored_config_field_is_accepted_when_named(tmp_path):
  folder = _copy_checkpoint(tmp_path, edit_config=lambda c: c.update(my_note="x"))
  models.longformer_from_pretrained(folder, ignore_config_fields=("my_note",))


def test_missing_files(tmp_path):
  with pytest.raises(errors.CheckpointError, match="no config.json"):
    models.longformer_from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text((open(os.path.join(MLM_CHECKPOINT, "config.json"))
                                         .read()))
  with pytest.raises(errors.CheckpointError, match="no model.safetensors"):
    models.longformer_from_pretrained(str(tmp_path))


def test_too_long_for_the_position_table(encoder):
  with pytest.raises(errors.ConfigError, match="at most 62 tokens"):
    encoder(np.full((1, 63), 7))


def test_position_ids_follow_roberta():
  ids = np.array([[0, 5, 6, 1, 1], [0, 1, 7, 2, 1]])
  np.testing.assert_array_equal(longformer_pretrained.position_ids(ids, 1),
                                [[2, 3, 4, 1, 1], [2, 1, 3, 4, 1]])


def test_published_base_config():
  """`allenai/longformer-base-4096`'s config.json (older fields included) is understood."""
  fields = {
      "_name_or_path": "allenai/longformer-base-4096", "attention_mode": "longformer",
      "attention_probs_dropout_prob": 0.1, "attention_window": [512] * 12, "bos_token_id": 0,
      "eos_token_id": 2, "gradient_checkpointing": False, "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1, "hidden_size": 768, "ignore_attention_mask": False,
      "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
      "max_position_embeddings": 4098, "model_type": "longformer", "num_attention_heads": 12,
      "num_hidden_layers": 12, "pad_token_id": 1, "sep_token_id": 2, "type_vocab_size": 1,
      "vocab_size": 50265,
  }
  config = longformer_pretrained.LongformerConfig.from_hf(fields)
  assert config == longformer_pretrained.LongformerConfig()  # the defaults are base-4096's
  assert config.windows == (256,) * 12


@pytest.mark.slow  # remat's equality; the plain gradients: test_gradients_are_finite
def test_remat_gives_the_same_outputs_and_gradients_with_dropout(tmp_path, hf):
  """Recomputed layers draw the same dropout masks: the same values and gradients."""
  folder = _copy_checkpoint(tmp_path, edit_config=lambda c: c.update(
      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
  results = []
  for remat, deterministic in ((False, False), (True, False), (False, True)):
    model = models.longformer_from_pretrained(folder, remat=remat, attention={"max_global": 6})
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
      out = nnx.merge(graphdef, params)(  # pylint: disable=cell-var-from-loop
          hf["input_ids"], hf["attention_mask"], hf["global_attention_mask"],
          deterministic=deterministic,
          rngs=nnx.Rngs(dropout=1))  # pylint: disable=cell-var-from-loop
      return jnp.sum(out.last_hidden_state * out.last_hidden_state[:, :1])

    results.append(jax.jit(jax.value_and_grad(loss))(params))
  chex.assert_trees_all_close(results[0], results[1], atol=1e-4, rtol=1e-4)
  assert abs(results[0][0] - results[2][0]) > 1.0  # dropout was active


def test_remat_lowers_the_compiled_memory():
  """With `remat` each layer keeps only its input: XLA's temporaries of a 4-layer model's
  gradient fall to well under those of no recomputation (a plain `jax.checkpoint` left
  them where they were on XLA:CPU: its recomputed layers all ran at once)."""
  layers, length = 4, 2048
  config = longformer_pretrained.LongformerConfig(
      vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
      intermediate_size=256, attention_window=(64,) * layers)
  input_ids = np.ones((1, length), np.int32)
  temporaries = {}
  for remat in (False, True):
    graphdef, params = nnx.split(longformer_pretrained.LongformerModel(
        config, remat=remat, rngs=nnx.Rngs(0)), nnx.Param)

    def loss(params):
      out = nnx.merge(graphdef, params)(input_ids)  # pylint: disable=cell-var-from-loop
      return jnp.sum(out.last_hidden_state ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    temporaries[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temporaries[True] < 0.6 * temporaries[False], temporaries


@pytest.mark.slow
def test_pallas_implementation_matches_huggingface(hf):
  """Any implementation of the mechanism serves the model (Pallas: interpret mode on CPU)."""
  model = models.longformer_from_pretrained(MLM_CHECKPOINT,
                                            attention={"implementation": "pallas"})
  out = model(hf["input_ids"], **_inputs(hf, ""))
  np.testing.assert_allclose(out.last_hidden_state, hf["last_hidden_state"], **TOL)

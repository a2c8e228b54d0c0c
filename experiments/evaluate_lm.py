r"""Bits per character of a trained character-level LM, by both evaluation protocols.

  python -m experiments.evaluate_lm --workdir=runs/charlm_small --split=test \
      [--protocols=streaming,strided --length=4032 --step=64 --max_chars=100000 \
       --streams=8 --chunk=512 --out=DIR]

- `strided`: windows of `--length` characters `--step` apart, each scoring its last `--step`
  predictions (the first window all of its own): the Longformer paper's protocol, which
  recomputes every character `length / step` times (its 32,256 / 512). Defaults: the run's
  `config.evaluation`.
- `streaming`: one pass over the split through the model's rolling caches
  (`lra.generation.streaming_bits`): every character predicted once, with all the context
  its layers' windows reach, in `--streams` stretches side by side.

Prints and writes (`--out`, default the workdir: `evaluation_<split>.json`) each
protocol's BPC, characters scored and wall time (after compilation: each protocol runs once
to compile on the split's first characters).
"""

import json
import os
import time

import numpy as np
from absl import flags

from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a char-LM training run.")
_SPLIT = flags.DEFINE_enum("split", "test", ["val", "test"], "Split to score.")
_PROTOCOLS = flags.DEFINE_list("protocols", ["streaming", "strided"],
                               "streaming and/or strided.")
_LENGTH = flags.DEFINE_integer("length", None, "strided: window length (default: the run's).")
_STEP = flags.DEFINE_integer("step", None, "strided: window step, and the predictions each "
                             "window scores (default: the run's).")
_MAX_CHARS = flags.DEFINE_integer("max_chars", None, "Score the first characters of the split "
                                  "only (default: the run's evaluation.max_chars; 0: all).")
_STREAMS = flags.DEFINE_integer("streams", None, "streaming: stretches decoded side by side "
                                "(default: the run's).")
_CHUNK = flags.DEFINE_integer("chunk", None, "streaming: characters per decoding step "
                              "(default: the run's).")
_BATCH = flags.DEFINE_integer("batch", None, "strided: windows per step (default: the run's).")
_OUT = flags.DEFINE_string("out", None, "Folder of the JSON (default: --workdir).")
flags.mark_flags_as_required(["workdir"])
cli.subset_of("protocols", ("streaming", "strided"), "protocol")


def strided_bits(run, tokens, evaluation, batch_size: int) -> dict:
  """Bits of the strided windows of `lra.data.charlm.eval_batches`, summed."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lra.data import charlm  # pylint: disable=g-import-not-at-top
  step = nnx.jit(lambda model, batch: model.metrics(batch, deterministic=True, rngs=None))
  bits = count = 0.0
  start = time.perf_counter()
  for batch in charlm.eval_batches(tokens, evaluation, batch_size=batch_size):
    sums = step(run.model, batch)
    bits += float(sums["bits"])
    count += float(sums["count"])
  return {"bits": bits, "count": int(count), "seconds": time.perf_counter() - start}


def main(argv):
  del argv
  import ml_collections  # pylint: disable=g-import-not-at-top
  from lra import data as lra_data  # pylint: disable=g-import-not-at-top
  from lra.data import charlm  # pylint: disable=g-import-not-at-top
  from lra import generation  # pylint: disable=g-import-not-at-top
  from lra import runs  # pylint: disable=g-import-not-at-top
  cli.log_to_run(_WORKDIR.value, "evaluate_lm.log")
  run = runs.load_lm(_WORKDIR.value)
  evaluation = ml_collections.ConfigDict(dict(run.config.evaluation))
  for name, flag in (("length", _LENGTH), ("step", _STEP), ("max_chars", _MAX_CHARS),
                     ("streams", _STREAMS), ("chunk", _CHUNK)):
    if flag.value is not None:
      evaluation[name] = flag.value
  if _STEP.value is not None:
    evaluation.scored_length = _STEP.value
  tokens = lra_data.load(run.config).splits[_SPLIT.value]["tokens"]
  tokens = np.asarray(charlm.scored_text(tokens, evaluation), np.int32)
  batch_size = _BATCH.value or run.config.eval_batch_size
  measure = {
      "streaming": lambda text: generation.streaming_bits(
          run.model, text, streams=evaluation.streams, chunk=evaluation.chunk),
      "strided": lambda text: strided_bits(run, text, evaluation, batch_size),
  }
  results = {"workdir": _WORKDIR.value, "step": run.step, "split": _SPLIT.value,
             "characters": len(tokens), "evaluation": evaluation.to_dict()}
  for protocol in _PROTOCOLS.value:
    measure[protocol](tokens[:2 * evaluation.length + 1])  # compiles the shapes
    scored = measure[protocol](tokens)
    results[protocol] = dict(scored, bpc=scored["bits"] / max(scored["count"], 1))
    print(f"{protocol}: {results[protocol]['bpc']:.4f} bits per character over "
          f"{scored['count']:,} predictions in {scored['seconds']:.1f} s")
  out = _OUT.value or _WORKDIR.value
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, f"evaluation_{_SPLIT.value}.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  print(f"results: {path}")


if __name__ == "__main__":
  cli.run(main)

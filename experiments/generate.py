r"""Continues a prompt with a trained character-level LM.

  python -m experiments.generate --workdir=runs/charlm_small --prompt="def main(" \
      --num_chars=400 [--temperature=0.8 --top_k=20 --seed=0 --batch=1]

Loads the run's best parameters (`lra.runs.load_lm`), reads the prompt through the model's
rolling caches in chunks (prefill, the training window core), then samples `--num_chars`
bytes one at a time: greedy with `--temperature=0`, else from the softmax at that
temperature, restricted to the `--top_k` most likely bytes (0: all). With `--batch` > 1 the
same prompt is continued that many times side by side (different draws). Prints the text
(the first continuation) and the characters per second of the sampling, after its
compilation.
"""

import sys

import numpy as np
from absl import flags

from experiments import cli
from lra import errors

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a char-LM training run.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue (UTF-8).")
_NUM_CHARS = flags.DEFINE_integer("num_chars", 200, "Bytes to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0: greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely bytes; 0: all.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the draws.")
_BATCH = flags.DEFINE_integer("batch", 1, "Continuations generated side by side.")
_CHUNK = flags.DEFINE_integer("chunk", 512, "Prompt characters read per prefill step.")
flags.mark_flags_as_required(["workdir", "prompt"])


def main(argv):
  del argv
  if _NUM_CHARS.value < 1 or _BATCH.value < 1 or _CHUNK.value < 1:
    raise errors.UserError("--num_chars, --batch and --chunk must be >= 1")
  from lra import generation  # pylint: disable=g-import-not-at-top
  from lra import runs  # pylint: disable=g-import-not-at-top
  cli.log_to_run(_WORKDIR.value, "generate.log")
  run = runs.load_lm(_WORKDIR.value)
  prompt = np.frombuffer(_PROMPT.value.encode("utf-8"), np.uint8).astype(np.int32)
  prompts = np.repeat(prompt[None], _BATCH.value, axis=0)
  options = dict(num_tokens=_NUM_CHARS.value, seed=_SEED.value,
                 temperature=_TEMPERATURE.value, top_k=_TOP_K.value, chunk=_CHUNK.value)
  generation.generate(run.model, prompts, **options)  # compiles
  result = generation.generate(run.model, prompts, **options)
  text = bytes(result["tokens"][0].astype(np.uint8)).decode("utf-8", errors="replace")
  print(_PROMPT.value + text)
  rate = _BATCH.value * _NUM_CHARS.value / result["sample_seconds"]
  print(f"\n{_NUM_CHARS.value} characters x batch {_BATCH.value} in "
        f"{result['sample_seconds']:.2f} s: {rate:,.0f} characters/s (prompt of "
        f"{len(prompt)} read in {result['prefill_seconds']:.2f} s; step {run.step} of "
        f"{_WORKDIR.value})", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)

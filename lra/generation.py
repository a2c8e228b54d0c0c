"""Text from a causal windowed LM, and its bits per character in one streaming pass.

Both run the model's rolling-cache decoding (`CausalLM.init_cache` / `decode`): each
layer keeps the keys and values of its last `window x max(dilation) + 1` positions, so the
state has a fixed size however long the text, and one compiled step serves every position.

- `generate` consumes a prompt in chunks through the training window core (prefill), then
  samples one token per step (greedy, temperature, top-k), all steps in one compiled loop.
- `streaming_bits` scores a text with every character predicted once from all the context
  the model's windows reach. The text is cut into `streams` contiguous stretches decoded
  side by side; each stream first reads the `receptive_field` characters before its
  stretch without scoring them, which gives its first characters the whole context the
  layers can see, so the result equals one pass over the whole text.
"""

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra import errors


def receptive_field(cache: dict) -> int:
  """How far back the states of the last layer reach: the sum of every layer's reach (its
  ring size less the current position)."""
  return sum(layer["k"].shape[1] - 1 for layer in cache["layers"])


@nnx.jit
def _decode(model, tokens_BxT, cache):
  return model.decode(tokens_BxT, cache)


def prefill(model, tokens_BxP, cache: dict, *, chunk: int):
  """The cache after reading `tokens` in chunks of `chunk`; returns the last position's
  logits `[batch, vocab]` and the cache."""
  if tokens_BxP.shape[1] == 0:
    raise errors.ConfigError("the prompt is empty: give at least one character")
  logits = None
  for start in range(0, tokens_BxP.shape[1], chunk):
    logits, cache = _decode(model, jnp.asarray(tokens_BxP[:, start:start + chunk]), cache)
  return logits[:, -1], cache


def sample(logits_BxV, rng, *, temperature: float, top_k: int):
  """A token per row: the argmax when `temperature == 0`, else a draw from the softmax of
  `logits / temperature` restricted to the `top_k` most likely (0: all)."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  if top_k:
    kth = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV / temperature).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("num_tokens", "temperature", "top_k"))
def _sample_steps(model, logits_BxV, cache, rng, *, num_tokens, temperature, top_k):
  def step(carry, rng):
    logits, cache = carry
    token = sample(logits, rng, temperature=temperature, top_k=top_k)
    logits, cache = model.decode(token[:, None], cache)
    return (logits[:, -1], cache), token

  (_, cache), tokens = jax.lax.scan(step, (logits_BxV, cache),
                                    jax.random.split(rng, num_tokens))
  return tokens.T, cache


def generate(model, prompt_BxP: np.ndarray, *, num_tokens: int, seed: int = 0,
             temperature: float = 1.0, top_k: int = 0, chunk: int = 512) -> dict:
  """Continues each prompt row by `num_tokens` tokens.

  Returns `tokens [batch, num_tokens]`, and the seconds of the prefill and of the sampling
  (each after its compilation, which a first call of the same shapes pays).
  """
  if temperature < 0 or top_k < 0:
    raise errors.ConfigError(
        f"temperature and top_k must be >= 0, got {temperature} and {top_k}")
  cache = model.init_cache(prompt_BxP.shape[0])
  start = time.perf_counter()
  logits, cache = prefill(model, prompt_BxP, cache, chunk=chunk)
  logits.block_until_ready()
  prefilled = time.perf_counter()
  tokens, _ = _sample_steps(model, logits, cache, jax.random.key(seed), num_tokens=num_tokens,
                            temperature=float(temperature), top_k=int(top_k))
  tokens = np.asarray(tokens)
  return {"tokens": tokens, "prefill_seconds": prefilled - start,
          "sample_seconds": time.perf_counter() - prefilled}


def streaming_bits(model, tokens: np.ndarray, *, streams: int = 8, chunk: int = 512) -> dict:
  """Bits of every prediction of `tokens` (each from all the context its windows reach).

  Returns `{"bits": total bits, "count": predictions, "seconds": wall time}`: the text's
  `len(tokens) - 1` next-token predictions, as the strided windows would score them with
  unbounded context.
  """
  tokens = np.asarray(tokens, np.int32)
  predictions = len(tokens) - 1
  if predictions < 1:
    raise errors.ConfigError("streaming evaluation needs a text of at least 2 characters")
  streams = max(1, min(streams, predictions))
  cache = model.init_cache(streams)
  warmup = receptive_field(cache)
  # Stream s scores predictions [s * stretch, (s + 1) * stretch) (the prediction at
  # position i is that of token i + 1), reading from `warmup` positions before them, or from
  # the start of the text. Positions past the end read copies of the last character, after
  # every prediction the stream scores (the windows are causal).
  stretch = -(-predictions // streams)
  rounds = -(-(warmup + stretch) // chunk)
  scored_from = np.arange(streams) * stretch
  positions = (np.maximum(scored_from - warmup, 0)[:, None]
               + np.arange(rounds * chunk + 1)[None, :])
  inputs = tokens[np.minimum(positions, len(tokens) - 1)]
  scored = ((positions[:, :-1] >= scored_from[:, None])
            & (positions[:, :-1] < np.minimum(scored_from + stretch, predictions)[:, None]))
  start = time.perf_counter()
  total = jnp.zeros((), jnp.float32)
  for r in range(rounds):
    window = slice(r * chunk, (r + 1) * chunk)
    bits, cache = _chunk_bits(model, jnp.asarray(inputs[:, window]), cache,
                              jnp.asarray(inputs[:, r * chunk + 1:(r + 1) * chunk + 1]),
                              jnp.asarray(scored[:, window], jnp.float32))
    total = total + bits
  return {"bits": float(total), "count": int(scored.sum()),
          "seconds": time.perf_counter() - start}


def streaming_sums(model, text: np.ndarray, evaluation) -> dict[str, float]:
  """A char-LM's summed metrics of `text` (`loss` in nats, `bits`, `count`) by
  `streaming_bits` with the `streams` and `chunk` of its config's `evaluation`."""
  scored = streaming_bits(model, text, streams=evaluation.streams, chunk=evaluation.chunk)
  return {"loss": scored["bits"] * math.log(2.0), "bits": scored["bits"],
          "count": scored["count"]}


@nnx.jit
def _chunk_bits(model, inputs_BxT, cache, targets_BxT, weights_BxT):
  logits, cache = model.decode(inputs_BxT, cache)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nats = -jnp.take_along_axis(log_probs, targets_BxT[..., None], axis=-1)[..., 0]
  return jnp.sum(nats * weights_BxT) / math.log(2.0), cache

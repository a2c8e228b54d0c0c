"""Attention mechanisms behind one contract, and the registry that picks them by name.

Arrays are `[batch, length, heads, head_dim]` (k and v may have fewer heads: grouped heads).
Every mechanism is a pure, jit-able, differentiable function; `reference` holds the dense
oracle they are all tested against.

The package is layered, imports pointing down only: `common` (checks, layouts, the band
plan, the softmax merge, global slots) at the bottom; `reference`, the XLA core
(`xla_core`) and the Pallas kernels (`kernels`) on it; the single-device functions
(`sliding`, `longformer`) above them; sequence parallelism (`sequence_parallel`) above
those; the public functions (`api`) that dispatch on `sequence_axis`, this registry, and the
Flax modules (`layers`) at the top.

    from lra import attention
    out = attention.sliding_window_attention(q, k, v, window=128, dilation=(1, 1, 2, 2))
    fn = attention.build({"name": "longformer", "window": 64}, num_heads=4)

The registry (`MECHANISMS`) is the one place a mechanism is named and described: its
options and their defaults, whether it takes global tokens, its pattern (what the oracle and
the pattern pictures draw), its named presets and its implementations. Configs, models,
`experiments.compare`, the benchmarks and the pattern plots iterate over it, so a new
mechanism is one `register(Mechanism(...))` call. `variants()` lists what a config may
choose: every mechanism and every preset.
"""

import contextlib
import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from lra import errors
from lra.attention import common
from lra.attention.api import full_attention
from lra.attention.common import dropped_global_tokens
from lra.attention.api import longformer_attention
from lra.attention.api import sliding_window_attention
from lra.attention.reference import dense_attention
from lra.attention.reference import longformer_reference
from lra.attention.reference import pattern_mask

__all__ = [
    "MECHANISMS", "BoundAttention", "Mechanism", "Option", "build", "dense_attention",
    "dropped_global_tokens", "full_attention", "get", "longformer_attention",
    "longformer_reference", "pattern_mask",
    "register", "registered", "sliding_window_attention", "variant_config", "variants",
    "window_pattern",
]


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of a mechanism: its default (None: required, or chosen at call time), the
  type of its config field where the default is None (a typed placeholder, so that a
  command-line override parses), and what it means."""

  default: Any
  type: type
  doc: str


def window_pattern(length: int, options: Mapping[str, Any], *, num_heads: int,
                   global_mask=None, padding_mask=None):
  """`pattern_mask` of the options `window` (None or absent: every key), `dilation`, `causal`.

  The pattern of `full`, `local` and `longformer` alike: bool `[batch, heads, L, L]`.
  """
  return pattern_mask(length, window=options.get("window"),
                      dilation=options.get("dilation", 1), causal=options.get("causal", False),
                      num_heads=num_heads, global_mask=global_mask, padding_mask=padding_mask)


@dataclasses.dataclass(frozen=True, eq=False)
class Mechanism:
  """A registered attention mechanism.

  Attributes:
    name: what configs call it (`attention.name`).
    function: the attention function of the contract, called with its options as keywords
      plus `padding_mask`, `dropout_rate`, `dropout_rng` (with `uses_global`, also
      `global_mask` and `global_q/global_k/global_v`; with `uses_segments`, `segment_ids`
      when given).
    options: the options a config may set, by name.
    pattern: `(length, options, *, num_heads, global_mask, padding_mask) -> bool
      [batch, heads, L, L]`, which keys each query sees: `dense_attention` under it is the
      oracle of `function` (for queries that are not global), and the pattern pictures draw it.
    uses_global: takes `global_mask` and separate global projections.
    implementations: the values of its `implementation` option (None picks the best for
      the backend); only mechanisms with that option have more than one.
    presets: named variants of it, a config's `attention=<preset>`: preset name ->
      `num_heads -> options` (e.g. `dilated`: `local` with per-head dilations).
    quadratic: time and memory grow as length^2 (benchmarks cap its lengths).
    uses_segments: takes `segment_ids` (packed sequences).
  """

  name: str
  function: Callable[..., Any]
  options: Mapping[str, Option]
  pattern: Callable[..., Any] = window_pattern
  uses_global: bool = False
  implementations: tuple[str, ...] = ("xla",)
  presets: Mapping[str, Callable[[int], dict]] = dataclasses.field(default_factory=dict)
  quadratic: bool = False
  uses_segments: bool = False

  @property
  def defaults(self) -> dict[str, Any]:
    return {key: option.default for key, option in self.options.items()}


def _half_dilated(num_heads: int) -> dict:
  """The first half of the heads (rounded down) dilation 1, the rest dilation 2."""
  return {"dilation": (1,) * (num_heads // 2) + (2,) * (num_heads - num_heads // 2)}


_WINDOW = Option(None, int, "one-sided window w: each query sees w keys on each side")
_DILATION = Option(1, int, "one int for every head, or one per head")
_BLOCK_SIZE = Option(None, int, "query block of the blocked loop; None: chosen from the window")
_IMPLEMENTATION = Option(None, str, "xla | pallas; None: the best for the backend")
_SEQUENCE_AXIS = Option(None, str, "mesh axis the length is split over (halo exchange); "
                                   "None: unsplit")

MECHANISMS: dict[str, Mechanism] = {}


def variants() -> dict[str, tuple[Mechanism, Callable[[int], dict] | None]]:
  """What a config may choose, in registration order: variant name -> (its mechanism, its
  preset or None). Every mechanism is a variant of itself; its presets follow it."""
  found = {}
  for mechanism in MECHANISMS.values():
    found[mechanism.name] = mechanism, None
    found.update((name, (mechanism, preset)) for name, preset in mechanism.presets.items())
  return found


def get(name: str) -> Mechanism:
  """The mechanism registered as `name`, or a ConfigError naming the choices."""
  if name not in MECHANISMS:
    raise errors.ConfigError(
        f"unknown attention {name!r}; choose one of: {', '.join(sorted(MECHANISMS))}")
  return MECHANISMS[name]


def register(mechanism: Mechanism) -> Mechanism:
  """Adds a mechanism (and its presets) to the registry; their names must be new."""
  taken = sorted(({mechanism.name} | set(mechanism.presets)) & set(variants()))
  if taken:
    raise errors.ConfigError(f"attention {', '.join(map(repr, taken))} is already registered")
  if mechanism.implementations != ("xla",) and "implementation" not in mechanism.options:
    raise errors.ConfigError(
        f"attention {mechanism.name!r} lists implementations {mechanism.implementations} "
        f"but has no 'implementation' option to choose one")
  MECHANISMS[mechanism.name] = mechanism
  return mechanism


@contextlib.contextmanager
def registered(mechanism: Mechanism):
  """Registers `mechanism` for the duration of a `with` block (tests, notebooks)."""
  register(mechanism)
  try:
    yield mechanism
  finally:
    del MECHANISMS[mechanism.name]


register(Mechanism(
    "full", full_attention,
    {"causal": Option(False, bool, "each query sees only itself and earlier keys")},
    quadratic=True, uses_segments=True))
register(Mechanism(
    "local", sliding_window_attention,
    {"window": _WINDOW, "dilation": _DILATION,
     "causal": Option(False, bool, "each query sees only itself and the w keys before it"),
     "block_size": _BLOCK_SIZE, "implementation": _IMPLEMENTATION,
     "sequence_axis": _SEQUENCE_AXIS},
    implementations=("xla", "pallas"), presets={"dilated": _half_dilated},
    uses_segments=True))
register(Mechanism(
    "longformer", longformer_attention,
    {"window": _WINDOW, "dilation": _DILATION, "block_size": _BLOCK_SIZE,
     "max_global": Option(None, int, "most global tokens of any row; None: counted from a "
                                     "concrete global_mask"),
     "implementation": _IMPLEMENTATION, "sequence_axis": _SEQUENCE_AXIS},
    uses_global=True, implementations=("xla", "pallas"), uses_segments=True))


def variant_config(variant: str, *, num_heads: int, **options) -> dict[str, Any]:
  """The registry config (`name` and options) of a variant: a mechanism or a preset.

  Starts from the mechanism's defaults, applies the preset for `num_heads`, then `options`
  that are not None; options the mechanism does not take are left out (a window means
  nothing to full attention), so callers may pass the options of every variant alike.
  """
  found = variants()
  if variant not in found:
    raise errors.ConfigError(
        f"unknown attention {variant!r}; choose one of: {', '.join(found)}")
  mechanism, preset = found[variant]
  config = {"name": mechanism.name, **mechanism.defaults,
            **(preset(num_heads) if preset else {})}
  config.update((k, v) for k, v in options.items() if v is not None and k in mechanism.options)
  return config


@dataclasses.dataclass(frozen=True)
class BoundAttention:
  """A mechanism with its options checked and bound; call it like the mechanism."""

  name: str
  mechanism: Mechanism
  num_heads: int
  options: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs: hashable, so that a
                                        # module holding it can be a static jit argument

  @property
  def uses_global(self) -> bool:
    return self.mechanism.uses_global

  def pattern(self, length: int, *, global_mask=None, padding_mask=None):
    """bool `[batch, heads, length, length]`: which keys each query sees (the oracle's)."""
    return self.mechanism.pattern(length, dict(self.options), num_heads=self.num_heads,
                                  global_mask=global_mask if self.uses_global else None,
                                  padding_mask=padding_mask)

  def __call__(self, q, k, v, *, padding_mask=None, segment_ids=None, global_mask=None,
               global_qkv=None, dropout_rate: float = 0., dropout_rng=None):
    kwargs = dict(dict(self.options), padding_mask=padding_mask, dropout_rate=dropout_rate,
                  dropout_rng=dropout_rng)
    if segment_ids is not None:
      if not self.mechanism.uses_segments:
        raise errors.ConfigError(
            f"attention {self.name!r} takes no segment_ids (packed sequences); use one of: "
            f"{', '.join(n for n, m in MECHANISMS.items() if m.uses_segments)}")
      kwargs["segment_ids"] = segment_ids
    if self.uses_global:
      if global_mask is None:
        # numpy, not jnp: a constant stays concrete under jit, so no max_global is needed.
        global_mask = np.zeros(q.shape[:2], bool)
      kwargs["global_mask"] = global_mask
      if global_qkv is not None:
        kwargs.update(zip(("global_q", "global_k", "global_v"), global_qkv))
    return self.mechanism.function(q, k, v, **kwargs)


def build(config: Mapping[str, Any], num_heads: int) -> BoundAttention:
  """Checks an attention config (`name` plus that mechanism's options) and binds it.

  `name` is any variant: a mechanism, or a preset of one (`dilated`), whose options apply
  under the config's own. Raises `lra.errors.ConfigError` naming the problem: an unknown
  name or option, a missing window, window <= 0, a dilation tuple of the wrong length, an
  implementation the mechanism does not have.
  """
  config = dict(config)
  name = config.pop("name", None)
  found = variants()
  if name not in found:
    raise errors.ConfigError(
        f"unknown attention {name!r}; choose one of: {', '.join(found)}")
  mechanism, preset = found[name]
  unknown = sorted(set(config) - set(mechanism.options))
  if unknown:
    raise errors.ConfigError(
        f"attention {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
        f"{', '.join(sorted(mechanism.options))}")
  options = {**mechanism.defaults, **(preset(num_heads) if preset else {}),
             **{k: v for k, v in config.items() if v is not None}}
  if "window" in options:
    if options["window"] is None:
      raise errors.ConfigError(f"attention {name!r} needs a window (one-sided, > 0)")
    common.check_window(options["window"])
  if "dilation" in options:
    dilation = options["dilation"]
    if isinstance(dilation, (list, tuple)):
      dilation = tuple(dilation)
    common.dilation_per_head(dilation, num_heads)
    options["dilation"] = dilation
  implementation = options.get("implementation")
  if implementation is not None and implementation not in mechanism.implementations:
    raise errors.ConfigError(
        f"attention {name!r}: unknown implementation {implementation!r}; choose one of: "
        f"{', '.join(mechanism.implementations)} (or None: the best for the backend)")
  return BoundAttention(mechanism.name, mechanism, num_heads, tuple(sorted(options.items())))

r"""Draws which keys each query sees, for each attention variant, as one PNG grid.

  python -m experiments.plot_patterns --out=DIR [--attention=<registry variants; default:
      every one> --causal=<variants also drawn causal> --length=32 --window=3 \
      --dilations=1,2 --padding=4 --block_size=0]

Writes DIR/attention_patterns.png. Each panel is the registry's pattern of a variant
(`BoundAttention.pattern`: `lra.attention.pattern_mask` for the built-in mechanisms, the
oracle that every fast path is tested against) for one head: rows are queries, columns keys;
a variant whose heads differ (per-head dilations) gets one panel per distinct head. A cell's
colour says why the key is seen: inside the window (anywhere, for full attention), or only
because one of the two is a global token; grey cells would be seen but for padding (the last
--padding positions). Mechanisms with global tokens have them at the first and the middle
position. With --block_size=b, undilated window panels also outline the tile of scores that
the blocked core computes for each query block of b queries (`lra.attention.sliding`): its
one contiguous slice of keys, the key blocks within reach.
"""

import dataclasses
import math
import os

from absl import flags
import matplotlib
import numpy as np

from experiments import cli
from lra import attention
from lra.attention import common
from lra import errors

matplotlib.use("Agg")
from matplotlib import colors  # noqa: E402  (after choosing the headless backend)
from matplotlib import patches  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Panel:
  """One drawn pattern: a bound variant, the head shown and the global positions."""

  title: str
  bound: attention.BoundAttention
  head: int = 0
  global_positions: tuple[int, ...] = ()


def _describe(bound: attention.BoundAttention, head: int) -> str:
  """The options that make this pattern what it is: those set away from their defaults."""
  parts = []
  for key, value in bound.options:
    if value is None or value == bound.mechanism.options[key].default:
      continue
    if key == "dilation" and isinstance(value, tuple):
      parts.append(f"head {head}: dilation {value[head]}")
    else:
      parts.append(key if value is True else f"{key} {value}")
  return ", ".join(parts)


def panels(variant: str, length: int, window: int, dilations: tuple[int, ...],
           causal: bool = False) -> list[Panel]:
  """The panels of one registry variant over `len(dilations)` heads (which are also the
  per-head dilations of a preset that sets a dilation): one per head whose pattern differs
  from the heads before it."""
  mechanism, preset = attention.variants()[variant]
  num_heads = len(dilations)
  given = {"window": window, "causal": True if causal else None}
  if preset and "dilation" in preset(num_heads):
    given["dilation"] = dilations
  config = attention.variant_config(variant, num_heads=num_heads, **given)
  if causal and not config.get("causal"):
    raise errors.ConfigError(f"--causal={variant}: attention {variant!r} has no causal option")
  bound = attention.build(config, num_heads)
  positions = (0, length // 2) if bound.uses_global else ()
  heads = np.asarray(bound.pattern(length))[0]
  distinct = [h for h in range(num_heads)
              if not any(np.array_equal(heads[h], heads[g]) for g in range(h))]
  suffix = f", global {', '.join(map(str, positions))}" if positions else ""
  return [Panel(f"{variant}: {_describe(bound, head) or 'every key'}{suffix}", bound, head,
                positions) for head in distinct]


_ATTENTION = flags.DEFINE_list("attention", None,
                               "Variants to draw (default: every variant of the registry, now "
                               f"{', '.join(attention.variants())}).")
_CAUSAL = flags.DEFINE_list("causal", [],
                            "Variants also drawn causal (they need a causal option).")
_LENGTH = flags.DEFINE_integer("length", 32, "Sequence length.")
_WINDOW = flags.DEFINE_integer("window", 3, "One-sided window w.")
_DILATIONS = flags.DEFINE_list(
    "dilations", ["1", "2"],
    "Dilation of each head drawn, for the presets that set a dilation (e.g. dilated).")
_PADDING = flags.DEFINE_integer("padding", 4, "Padded positions at the end (0 for none).",
                                lower_bound=0)
_BLOCK_SIZE = flags.DEFINE_integer(
    "block_size", 0, "Outline the blocked core's score tiles for query blocks of this size "
    "(0: none).", lower_bound=0)
_OUT = flags.DEFINE_string("out", "results/patterns", "Folder of attention_patterns.png.")

for _name in ("attention", "causal"):
  cli.subset_of(_name, list(attention.variants()), "the registry's variants")
flags.register_validator("length", lambda n: n >= 2, "must be >= 2")
flags.register_validator("window", lambda w: w > 0, "must be > 0 (the one-sided window w)")
cli.positive_ints("dilations", "1,2")

# Cell categories, in colour-map order.
NOT_SEEN, WINDOW, GLOBAL, PADDING = range(4)
LEGEND = {NOT_SEEN: ("not seen", "white"), WINDOW: ("window", "#3b6ea8"),
          GLOBAL: ("global", "#e08a2c"), PADDING: ("masked by padding", "#c9c9c9")}


def categories(panel: Panel, length: int, padding: int) -> np.ndarray:
  """int `[length, length]` (query, key): the category of every cell of the panel."""
  global_mask = (np.isin(np.arange(length), panel.global_positions)[None]
                 if panel.global_positions else None)
  real = (np.arange(length) < length - padding)[None]

  def pattern(**masks):
    return np.asarray(panel.bound.pattern(length, **masks))[0, panel.head]

  window = pattern()
  unpadded = pattern(global_mask=global_mask)
  seen = pattern(global_mask=global_mask, padding_mask=real)
  cells = np.full((length, length), NOT_SEEN)
  cells[unpadded & ~seen] = PADDING
  cells[seen & ~window] = GLOBAL
  cells[seen & window] = WINDOW
  return cells


def score_tiles(panel: Panel, length: int, block_size: int) -> list[tuple[int, int, int, int]]:
  """(first query, first key, queries, keys) of each query block's tile of computed scores,
  clipped to the sequence; none for full attention or a dilated head (whose tiles are
  contiguous only after the dilation fold)."""
  options = dict(panel.bound.options)
  dilation = options.get("dilation", 1)
  if isinstance(dilation, tuple):
    dilation = dilation[panel.head]
  if panel.bound.mechanism.quadratic or dilation != 1:
    return []
  plan = common.plan_band(length, options["window"], bool(options.get("causal")),
                           block_size)
  tiles = []
  for index in range(plan.num_blocks):
    query, key = index * plan.block, int(plan.window_start(index))
    tiles.append((query, key, min(plan.block, length - query), min(plan.keys, length - key)))
  return tiles


def draw(panels: list[Panel], length: int, window: int, padding: int, path: str,
         block_size: int = 0) -> None:
  columns = min(3, len(panels))
  rows = math.ceil(len(panels) / columns)
  # At least two panels wide, so that the title and the legend fit above and below one.
  fig, axes = plt.subplots(rows, columns, figsize=(3.4 * max(columns, 2), 3.5 * rows + 1.2),
                           squeeze=False, layout="constrained")
  colour_map = colors.ListedColormap([LEGEND[c][1] for c in sorted(LEGEND)])
  cells = [categories(panel, length, padding) for panel in panels]
  for ax, panel, panel_cells in zip(axes.flat, panels, cells):
    ax.imshow(panel_cells, cmap=colour_map, vmin=-0.5, vmax=len(LEGEND) - 0.5,
              interpolation="nearest")
    if block_size:
      for query, key, queries, keys in score_tiles(panel, length, block_size):
        ax.add_patch(patches.Rectangle((key - 0.5, query - 0.5), keys, queries, fill=False,
                                       edgecolor="#c0392b", linewidth=1.2))
    ax.set_title(panel.title, fontsize=9)
    ax.set(xlabel="key", ylabel="query")
    if length <= 64:  # cell borders help to count positions; beyond, they are a grey blur
      ax.set_xticks(np.arange(length + 1) - 0.5, minor=True)
      ax.set_yticks(np.arange(length + 1) - 0.5, minor=True)
      ax.grid(which="minor", color="#e6e6e6", linewidth=0.4)
      ax.tick_params(which="minor", length=0)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  shown = sorted(set(np.unique(cells)))
  handles = [patches.Patch(facecolor=LEGEND[c][1], edgecolor="#999999", label=LEGEND[c][0])
             for c in shown]
  fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
  padded = f", the last {padding} positions padding" if padding else ""
  tiles = f"; red: computed tiles of {block_size}-query blocks" if block_size else ""
  fig.suptitle(f"Which keys each query sees\nlength {length}, one-sided window {window}"
               f"{padded}{tiles}", fontsize=11)
  fig.savefig(path, dpi=130)
  plt.close(fig)


def main(argv):
  del argv
  length, window, padding = _LENGTH.value, _WINDOW.value, _PADDING.value
  if padding >= length:
    raise errors.ConfigError(f"--padding={padding} leaves no real token of --length={length}")
  dilations = tuple(int(d) for d in _DILATIONS.value)
  drawn = [panel for name in dict.fromkeys(_ATTENTION.value or attention.variants())
           for panel in panels(name, length, window, dilations)]
  drawn += [panel for name in dict.fromkeys(_CAUSAL.value)
            for panel in panels(name, length, window, dilations, causal=True)]
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, "attention_patterns.png")
  draw(drawn, length, window, padding, path, _BLOCK_SIZE.value)
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)

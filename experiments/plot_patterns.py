r"""Draws which keys each query sees, for each attention mechanism, as one PNG grid.

  python -m experiments.plot_patterns --attention=full,local,dilated,longformer --out=DIR \
      [--length=32 --window=3 --dilations=1,2 --padding=4]

Writes DIR/attention_patterns.png. Each panel is `lra.attention.pattern_mask`, the oracle
that every fast path is tested against, for one mechanism (one head for `dilated`, one panel
per head): rows are queries, columns keys. A cell's colour says why the key is seen: inside
the window (anywhere, for full attention), or only because one of the two is a global token;
grey cells would be seen but for padding (the last --padding positions).

Mechanisms: full, local, causal (causal local), dilated (one head per --dilations value),
longformer (local plus global tokens at the first and the middle position).
"""

import dataclasses
import math
import os

from absl import flags
import matplotlib
import numpy as np

from experiments import cli
from lra import attention
from lra import errors

matplotlib.use("Agg")
from matplotlib import colors  # noqa: E402  (after choosing the headless backend)
from matplotlib import patches  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Panel:
  """One drawn pattern: `pattern_mask` options and the head shown."""

  title: str
  window: int | None = None
  dilation: tuple[int, ...] = (1,)  # one per head
  head: int = 0
  causal: bool = False
  global_positions: tuple[int, ...] = ()


def _full(length, window, dilations):
  return [Panel("full: every key")]


def _local(length, window, dilations):
  return [Panel(f"local: window {window}", window=window)]


def _causal(length, window, dilations):
  return [Panel(f"causal local: window {window}", window=window, causal=True)]


def _dilated(length, window, dilations):
  return [Panel(f"dilated, head {head}: window {window}, dilation {d}", window=window,
                dilation=dilations, head=head)
          for head, d in enumerate(dilations)]


def _longformer(length, window, dilations):
  positions = (0, length // 2)
  return [Panel(f"longformer: window {window}, global {', '.join(map(str, positions))}",
                window=window, global_positions=positions)]


# Mechanism name -> (length, window, dilations) -> its panels.
PANELS = {"full": _full, "local": _local, "causal": _causal, "dilated": _dilated,
          "longformer": _longformer}

_ATTENTION = flags.DEFINE_list("attention", ["full", "local", "dilated", "longformer"],
                               f"Mechanisms to draw: {', '.join(PANELS)}.")
_LENGTH = flags.DEFINE_integer("length", 32, "Sequence length.")
_WINDOW = flags.DEFINE_integer("window", 3, "One-sided window w.")
_DILATIONS = flags.DEFINE_list("dilations", ["1", "2"],
                               "Dilation of each head drawn for `dilated`.")
_PADDING = flags.DEFINE_integer("padding", 4, "Padded positions at the end (0 for none).")
_OUT = flags.DEFINE_string("out", "results/patterns", "Folder of attention_patterns.png.")

flags.register_validator("attention", lambda names: names and set(names) <= set(PANELS),
                         f"must be a comma-separated subset of {','.join(PANELS)}")
flags.register_validator("length", lambda n: n >= 2, "must be >= 2")
flags.register_validator("window", lambda w: w > 0, "must be > 0 (the one-sided window w)")
flags.register_validator("dilations", lambda ds: ds and all(s.isdigit() and int(s) > 0
                                                            for s in ds),
                         "must be integers >= 1, e.g. 1,2")
flags.register_validator("padding", lambda n: n >= 0, "must be >= 0")

# Cell categories, in colour-map order.
NOT_SEEN, WINDOW, GLOBAL, PADDING = range(4)
LEGEND = {NOT_SEEN: ("not seen", "white"), WINDOW: ("window", "#3b6ea8"),
          GLOBAL: ("global", "#e08a2c"), PADDING: ("masked by padding", "#c9c9c9")}


def categories(panel: Panel, length: int, padding: int) -> np.ndarray:
  """int `[length, length]` (query, key): the category of every cell of the panel."""
  options = dict(window=panel.window, dilation=panel.dilation, causal=panel.causal,
                 num_heads=len(panel.dilation))
  global_mask = None
  if panel.global_positions:
    global_mask = np.zeros((1, length), bool)
    global_mask[0, list(panel.global_positions)] = True
  real = (np.arange(length) < length - padding)[None]

  def pattern(**extra):
    return np.asarray(attention.pattern_mask(length, **options, **extra))[0, panel.head]

  window = pattern()
  unpadded = pattern(global_mask=global_mask)
  seen = pattern(global_mask=global_mask, padding_mask=real)
  cells = np.full((length, length), NOT_SEEN)
  cells[unpadded & ~seen] = PADDING
  cells[seen & ~window] = GLOBAL
  cells[seen & window] = WINDOW
  return cells


def draw(panels: list[Panel], length: int, window: int, padding: int, path: str) -> None:
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
  fig.suptitle(f"Which keys each query sees\nlength {length}, one-sided window {window}"
               f"{padded}", fontsize=11)
  fig.savefig(path, dpi=130)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  length, window, padding = _LENGTH.value, _WINDOW.value, _PADDING.value
  if padding >= length:
    raise errors.ConfigError(f"--padding={padding} leaves no real token of --length={length}")
  dilations = tuple(int(d) for d in _DILATIONS.value)
  panels = [panel for name in dict.fromkeys(_ATTENTION.value)
            for panel in PANELS[name](length, window, dilations)]
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, "attention_patterns.png")
  draw(panels, length, window, padding, path)
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)

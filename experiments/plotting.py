"""Figures: a run's curves from `metrics.jsonl`, and the comparisons of variants (matplotlib,
kept out of the library and its trainer)."""

import json

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib import ticker  # noqa: E402


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of every record that has `key`."""
  points = [(r["step"], r[key]) for r in records if key in r]
  return [s for s, _ in points], [v for _, v in points]


def _save(fig, out_png: str) -> None:
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)


def _finish(fig, ax, out_png: str, **labels) -> None:
  """Labels, grid and legend of a one-panel figure, then saves it."""
  ax.set(**labels)
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, out_png)


def training_curves(metrics_path: str, out_png: str, *, title: str) -> None:
  """Loss (train and validation) and accuracy or bits per character, side by side."""
  records = read_metrics(metrics_path)
  score = next((k for k in ("accuracy", "bpc") if any(f"val_{k}" in r for r in records)), None)
  keys = ["loss", score] if score else ["loss"]
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    for split in ("train", "val"):
      ax.plot(*series(records, f"{split}_{key}"), label=split,
              marker="o" if split == "val" else None)
    ax.set(xlabel="step", ylabel=key)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0, 0].set_title(title)
  _save(fig, out_png)


def across_seeds(metrics_paths: list[str], key: str):
  """(steps, mean, min, max) of `key` over runs, at the steps that every run logged."""
  runs = [dict(zip(*series(read_metrics(path), key))) for path in metrics_paths]
  steps = sorted(set.intersection(*(set(run) for run in runs)))
  values = np.array([[run[step] for step in steps] for run in runs])
  return steps, values.mean(0), values.min(0), values.max(0)


def seed_curves(metrics_paths: dict[str, list[str]], key: str, out_png: str, *, ylabel: str,
                title: str, scale: float = 1.0, baseline: float | None = None,
                baseline_label: str = "") -> None:
  """`key` x `scale` against step, one line per name: the mean over its runs, shaded from
  min to max."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for name, paths in metrics_paths.items():
    steps, mean, low, high = across_seeds(paths, key)
    line, = ax.plot(steps, scale * mean, marker="o", markersize=3, label=name)
    if len(paths) > 1:
      ax.fill_between(steps, scale * low, scale * high, color=line.get_color(), alpha=0.2,
                      linewidth=0)
  if baseline is not None:
    ax.axhline(scale * baseline, color="grey", linestyle="--", linewidth=1, label=baseline_label)
  _finish(fig, ax, out_png, xlabel="training step", ylabel=ylabel, title=title)


def lines(points: dict[str, list[tuple[float, float]]], out_png: str, *, xlabel: str,
          ylabel: str, title: str) -> None:
  """One line per name through its `(x, y)` points."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for name, xy in points.items():
    ax.plot(*zip(*xy), marker="o", markersize=3, label=name)
  _finish(fig, ax, out_png, xlabel=xlabel, ylabel=ylabel, title=title)


def error_bar_scatter(points: dict[str, tuple[float, float, float | None]], out_png: str, *,
                      xlabel: str, ylabel: str, title: str) -> None:
  """One point per name, `(x, y, y error or None)`, in its own colour with a legend."""
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for name, (x, y, error) in points.items():
    ax.errorbar([x], [y], yerr=None if error is None else [error], fmt="o", markersize=7,
                capsize=4, label=name)
  _finish(fig, ax, out_png, xlabel=xlabel, ylabel=ylabel, title=title)


class _PlainLogFormatter(ticker.LogFormatter):
  """Log-axis labels as plain numbers (0.3, not 3e-01), on the ticks matplotlib picks."""

  def _num_to_string(self, x, vmin, vmax):
    return f"{x:g}"


def versus_length(rows: list[dict], out_png: str, *, name_key: str,
                  panels: list[tuple[str, str, str]], title: str) -> None:
  """Log-log lines against `length`, one per `row[name_key]`, one panel per
  `(row key, y label, panel title)`; rows whose `status` is not "ok" are left out."""
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6),
                           layout="constrained", squeeze=False)
  axes = axes[0]
  for name in dict.fromkeys(r[name_key] for r in rows):
    done = [r for r in rows if r[name_key] == name and r["status"] == "ok"]
    if not done:  # no line, and no legend entry for one
      continue
    for ax, (key, _, _) in zip(axes, panels):
      ax.plot([r["length"] for r in done], [r[key] for r in done], marker="o", label=name)
  lengths = sorted({r["length"] for r in rows})
  for ax, (_, ylabel, panel_title) in zip(axes, panels):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_formatter(_PlainLogFormatter())
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(minor_thresholds=(1, 0.4)))
    ax.set(xlabel="sequence length", ylabel=ylabel, title=panel_title)
    ax.grid(alpha=0.3, which="both")
  # One legend for every panel, below them, so that it never hides a line.
  handles, labels = axes[0].get_legend_handles_labels()
  # At most four names a row: the figure is no wider than its panels.
  fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(len(labels), 4)),
             frameon=False)
  fig.suptitle(title, fontsize=10)
  fig.savefig(out_png, dpi=120)
  plt.close(fig)

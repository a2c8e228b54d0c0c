"""Figures of a run: training and validation curves from `metrics.jsonl`."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of every record that has `key`."""
  points = [(r["step"], r[key]) for r in records if key in r]
  return [s for s, _ in points], [v for _, v in points]


def training_curves(metrics_path: str, out_png: str, *, title: str) -> None:
  """Loss (train and validation) and accuracy or bits per character, side by side."""
  records = read_metrics(metrics_path)
  score = next((k for k in ("accuracy", "bpc") if any(f"val_{k}" in r for r in records)), None)
  fig, axes = plt.subplots(1, 2 if score else 1, figsize=(10 if score else 5, 3.6),
                           squeeze=False)
  for split in ("train", "val"):
    axes[0, 0].plot(*series(records, f"{split}_loss"), label=split,
                    marker="o" if split == "val" else None)
  axes[0, 0].set(xlabel="step", ylabel="loss", title=title)
  axes[0, 0].legend()
  if score:
    for split in ("train", "val"):
      axes[0, 1].plot(*series(records, f"{split}_{score}"), label=split,
                      marker="o" if split == "val" else None)
    axes[0, 1].set(xlabel="step", ylabel=score)
    axes[0, 1].legend()
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)

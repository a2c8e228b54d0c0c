r"""Self-pretraining with and without packed rows: tokens per second and the loss curve.

  python -m experiments.bench.packing \
      --config=configs/listops.py:attention=longformer,size=small,pretrain=mlm \
      --steps=400 --out=docs/results/packing_listops

Runs the pretraining stage of the config (`lra.pretraining`) twice in this process, with
`pretrain.pack` off and on, for `--steps` optimizer steps each from the same
initialisation (the two runs take turns step by step, so that a shared machine's load falls
on both alike), and records per step the sequence tokens it trained on (CLS vectors and
padding aside) and its masked-token loss. Tokens per second count the steps whose batch
shape was already compiled (each new bucket length of the unpacked batches compiles once).
Writes `packing.json` (every step), `packing.md` (the table) and `packing.png` (the loss
against the tokens seen, both runs) in `--out`.
"""

import json
import os
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Task config with pretrain=mlm or causal (configs/*.py).", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 400, "Optimizer steps of each run.")
_OUT = flags.DEFINE_string("out", None, "Folder of the results.")
_WINDOW = flags.DEFINE_integer("window", 25, "Steps per point of the loss curve.")
flags.mark_flags_as_required(["config", "out"])


def sequence_tokens(batch) -> int:
  """The real tokens of a pretraining batch's sequences (neither CLS slot nor padding)."""
  if "segment_ids" in batch:
    return int(np.sum((batch["segment_ids"] > 0) & (batch["positions"] > 0)))
  return int(np.sum(batch["targets"] != 0))


class Run:
  """The pretraining stage of one config, a step at a time."""

  def __init__(self, config, data):
    from lra import pretraining  # pylint: disable=g-import-not-at-top
    from lra import sharding  # pylint: disable=g-import-not-at-top
    from lra import train  # pylint: disable=g-import-not-at-top
    stage = pretraining.stage_config(config)
    mesh = sharding.make_mesh(stage)
    built = train.build_steps(stage, data, mesh)
    self.state, self.train_step = built.state, built.train_steps[0]
    self.place = sharding.batch_placement(mesh)
    self.batches = pretraining.train_iterator(stage, data)
    self.records, self.shapes = [], set()

  def step(self) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    batch = next(self.batches)
    shape = batch["inputs"].shape
    start = time.perf_counter()
    self.state, sums = self.train_step(self.state, self.place(batch))
    sums = jax.device_get(sums)
    self.records.append({
        "step": len(self.records) + 1, "shape": list(shape), "tokens": sequence_tokens(batch),
        "seconds": time.perf_counter() - start, "compiled": shape not in self.shapes,
        "loss": float(sums["loss"] / max(float(sums["count"]), 1.0))})
    self.shapes.add(shape)
    return self.records[-1]


def summary(records: list[dict], window: int) -> dict:
  timed = [r for r in records if not r["compiled"]]
  tokens = np.cumsum([r["tokens"] for r in records])
  losses = np.array([r["loss"] for r in records])
  points = [(int(tokens[min(i + window, len(records)) - 1]),
             float(losses[i:i + window].mean())) for i in range(0, len(records), window)]
  return {"tokens_per_second": sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed),
          "tokens_per_step": float(np.mean([r["tokens"] for r in records])),
          "steps_timed": len(timed), "tokens_seen": int(tokens[-1]), "curve": points}


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  cli.log_to_file(os.path.join(_OUT.value, "packing.log"))
  from experiments.bench import harness  # pylint: disable=g-import-not-at-top
  from experiments import plotting  # pylint: disable=g-import-not-at-top
  from lra import data as lra_data  # pylint: disable=g-import-not-at-top
  from lra import errors  # pylint: disable=g-import-not-at-top
  from lra import pretraining  # pylint: disable=g-import-not-at-top
  from lra import train  # pylint: disable=g-import-not-at-top
  config = train.resolve(_CONFIG.value)
  if pretraining.objective(config) == "none":
    raise errors.ConfigError("the config has no pretraining stage: add pretrain=mlm (or "
                             "causal) to its arguments")
  data = pretraining.with_mask_token(lra_data.load(config))
  runs = {}
  for pack in (False, True):
    with config.unlocked():
      config.pretrain.pack = pack
    runs["packed" if pack else "unpacked"] = Run(config, data)
  # The two runs take turns, step by step, so that both see the same load of the machine.
  for step in range(1, _STEPS.value + 1):
    losses = {name: run.step()["loss"] for name, run in runs.items()}
    if step % 50 == 0 or step == _STEPS.value:
      print(f"step {step}/{_STEPS.value}: masked-token loss "
            + ", ".join(f"{name} {loss:.3f}" for name, loss in losses.items()))
  results = {name: {"summary": summary(run.records, _WINDOW.value), "steps": run.records}
             for name, run in runs.items()}
  gain = (results["packed"]["summary"]["tokens_per_second"]
          / results["unpacked"]["summary"]["tokens_per_second"])
  machine = {"cpu": harness.cpu_model(), "cores": harness.cores(), "commit": harness.commit()}
  with open(os.path.join(_OUT.value, "packing.json"), "w") as f:
    json.dump({"config": _CONFIG.value.to_dict(), "machine": machine, "gain": gain,
               **results}, f, indent=1, default=str)
  rows = ["| rows | tokens per step | tokens/s | loss, first window | loss, last window |",
          "|---|---:|---:|---:|---:|"]
  for name in ("unpacked", "packed"):
    s = results[name]["summary"]
    rows.append(f"| {name} | {s['tokens_per_step']:.0f} | {s['tokens_per_second']:.0f} | "
                f"{s['curve'][0][1]:.3f} | {s['curve'][-1][1]:.3f} |")
  table = "\n".join(rows) + f"\n\nPacked / unpacked tokens per second: {gain:.2f}x\n"
  with open(os.path.join(_OUT.value, "packing.md"), "w") as f:
    f.write(table)
  plotting.lines(
      {name: results[name]["summary"]["curve"] for name in results},
      os.path.join(_OUT.value, "packing.png"), xlabel="sequence tokens seen",
      ylabel="masked-token loss", title=f"{config.task}: self-pretraining")
  print(table)


if __name__ == "__main__":
  cli.run(main)

"""`train_and_evaluate(config, workdir)`: the one trainer of every task.

Tasks differ only in their data (`lra.data`) and model (`lra.models`); this loop is shared.
A workdir holds `config.json`, `vocab.json`, `metrics.jsonl` (one JSON object per logged
step), `checkpoints/` (train state + data iterator, for exact resume), `best/` (parameters
of the best validation score), and at the end `results.json` and `curves.png`.

Relaunching on the same workdir resumes from the last checkpoint: the batches, dropout
keys and metrics after it are those of an uninterrupted run. The test score is that of the
best validation checkpoint, never of the last step.
"""

import dataclasses
import json
import math
import os
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import grain
from lra import data as lra_data
from lra import errors
from lra import input_pipeline
from lra import models
from lra import plotting

# The score that picks the best checkpoint, per model kind ("higher is better").
_SELECTION_METRIC = "accuracy"


def _check_config(config) -> None:
  for key in ("num_train_steps", "eval_every_steps", "checkpoint_every_steps",
              "log_every_steps", "batch_size", "eval_batch_size"):
    if config[key] <= 0:
      raise errors.ConfigError(f"config.{key} must be > 0, got {config[key]}")
  if config.checkpoint_every_steps % config.log_every_steps:
    raise errors.ConfigError(
        f"config.checkpoint_every_steps ({config.checkpoint_every_steps}) must be a multiple "
        f"of config.log_every_steps ({config.log_every_steps}), so that a resumed run logs "
        f"the same averages as an uninterrupted one")
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % jax.device_count():
      raise errors.ConfigError(
          f"config.{key}={config[key]} does not divide over {jax.device_count()} devices; "
          f"use a multiple of {jax.device_count()}")


def make_optimizer(opt, num_train_steps: int):
  """AdamW with LRA's schedules and optional global-norm clipping; returns (tx, schedule)."""
  peak, warmup = opt.learning_rate, max(opt.warmup_steps, 1)
  if opt.schedule == "rsqrt":
    # LRA: constant * linear_warmup * rsqrt_decay, written with its peak value.
    def schedule(step):
      step = jnp.maximum(step, 1).astype(jnp.float32)
      return peak * jnp.minimum(1.0, step / warmup) * jnp.sqrt(warmup / jnp.maximum(step, warmup))
  elif opt.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(num_train_steps, warmup + 1))
  elif opt.schedule == "constant":
    schedule = optax.linear_schedule(0.0, peak, warmup)
  else:
    raise errors.ConfigError(
        f"optimizer.schedule must be rsqrt, cosine or constant, got {opt.schedule!r}")
  # Decay weight matrices only, not biases, LayerNorm scales or the CLS vector.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                   weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  return tx, schedule


class _Workdir:
  """Files of one run; writing JSON lines and resuming them at a checkpoint step."""

  def __init__(self, workdir: str, config):
    self.path = workdir
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    config_json = json.loads(config.to_json_best_effort())
    if os.path.exists(config_path):
      with open(config_path) as f:
        previous = json.load(f)
      if previous != config_json:
        changed = sorted(_diff_keys(previous, config_json))
        raise errors.ConfigError(
            f"{workdir} holds a run with a different config (changed: {', '.join(changed)}); "
            f"resume it with the same config or use a new --workdir")
    else:
      _write_json(config_path, config_json)
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def truncate_metrics(self, step: int) -> None:
    """Drops metric lines after `step` (they are recomputed when a run resumes there)."""
    if not os.path.exists(self.metrics_path):
      return
    with open(self.metrics_path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.metrics_path, "w") as f:
      f.writelines(kept)

  def log(self, record: dict[str, Any]) -> None:
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _diff_keys(a, b, prefix=""):
  for key in set(a) | set(b):
    if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
      yield from _diff_keys(a[key], b[key], f"{prefix}{key}.")
    elif a.get(key) != b.get(key):
      yield prefix + key


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


class _Checkpoints:
  """Orbax managers: `checkpoints/` (state + data iterator + progress) and `best/` (params)."""

  def __init__(self, workdir: str):
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2))
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1))

  def save(self, step: int, state, data_iterator, progress: dict) -> None:
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        progress=ocp.args.JsonSave(progress)))

  def restore_latest(self, state, data_iterator):
    """Returns (state, progress) of the latest checkpoint, or None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    try:
      restored = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(state),
          data=grain.checkpoint.CheckpointRestore(data_iterator),
          progress=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for unreadable files
      raise errors.CheckpointError(
          f"the checkpoint {self.latest.directory / str(step)} cannot be restored "
          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}); "
          f"move that folder out of the workdir to resume from an earlier checkpoint, or use "
          f"a new --workdir") from None
    return restored.state, restored.progress

  def save_best(self, step: int, params) -> None:
    self.best.save(step, args=ocp.args.StandardSave(params), force=True)

  def restore_best(self, params):
    step = self.best.latest_step()
    if step is None:
      return None, None
    return step, self.best.restore(step, args=ocp.args.StandardRestore(params))

  def close(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    self.latest.close()
    self.best.close()


def _peak_memory_gb() -> float:
  """Peak memory: the accelerator's when it reports one, else the process's resident set."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 1e9
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _summarize(sums: dict[str, float]) -> dict[str, float]:
  """Averages of summed metrics: loss and accuracy per example (or per token)."""
  count = max(float(sums["count"]), 1.0)
  out = {"loss": float(sums["loss"]) / count}
  if "correct" in sums:
    out["accuracy"] = float(sums["correct"]) / count
  return out


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


@dataclasses.dataclass
class Steps:
  """The initial train state and the jitted steps of one config on one device mesh."""

  state: dict[str, Any]  # {"step", "params", "opt_state"}, replicated over the mesh
  train_step: Callable  # (state, batch) -> (state, summed metrics); donates the state
  eval_step: Callable  # (params, batch) -> summed metrics
  schedule: Callable  # step -> learning rate
  num_params: int


def build_steps(config, data: lra_data.TaskData, mesh) -> Steps:
  """Initialises the model and optimizer and jits the steps, data parallel over `mesh`."""
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))

  model = models.build(config, data, nnx.Rngs(params=init_key))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  tx, schedule = make_optimizer(config.optimizer, config.num_train_steps)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  # Optimizer states can share one buffer between leaves (zeros made once): copy every
  # leaf so that the donated state holds each buffer once.
  state = jax.device_put(jax.tree.map(lambda x: jnp.array(x, copy=True), state), replicated)

  def metrics_fn(params, batch, deterministic, rng):
    model = nnx.merge(graphdef, params, rest)
    rngs = None if deterministic else nnx.Rngs(dropout=rng)
    return model.metrics(batch, deterministic=deterministic, rngs=rngs)

  def train_step(state, batch):
    # One dropout key per step, so a resumed run draws the same masks.
    rng = jax.random.fold_in(dropout_key, state["step"])

    def loss_fn(params):
      sums = metrics_fn(params, batch, False, rng)
      return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    sums = dict(sums, grad_norm=optax.global_norm(grads), steps=jnp.ones(()))
    new_state = {"step": state["step"] + 1, "opt_state": opt_state,
                 "params": optax.apply_updates(state["params"], updates)}
    return new_state, sums

  train_step = jax.jit(train_step, in_shardings=(replicated, batch_sharding),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(lambda params, batch: metrics_fn(params, batch, True, None),
                      in_shardings=(replicated, batch_sharding), out_shardings=replicated)
  return Steps(state, train_step, eval_step, schedule, num_params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns the results dict."""
  _check_config(config)
  run = _Workdir(workdir, config)
  data = lra_data.load(config)
  _write_json(run.file("vocab.json"), data.vocab)

  # Auto axes: XLA propagates the batch sharding through the model (data parallel).
  # Auto axes: XLA propagates the batch sharding through the model (data parallel).
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  batch_sharding = NamedSharding(mesh, P("data"))
  steps = build_steps(config, data, mesh)
  state, train_step, eval_step, schedule = (steps.state, steps.train_step, steps.eval_step,
                                            steps.schedule)

  def evaluate(params, split: str) -> dict[str, float]:
    total = None
    for batch in input_pipeline.eval_batches(data.splits[split],
                                             batch_size=config.eval_batch_size):
      sums = eval_step(params, jax.device_put(batch, batch_sharding))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return _summarize(jax.device_get(total))

  train_iterator = input_pipeline.train_iterator(
      data.splits["train"], batch_size=config.batch_size, seed=config.seed)
  checkpoints = _Checkpoints(workdir)
  progress = {"best_step": None, "best_value": None}
  restored = checkpoints.restore_latest(state, train_iterator)
  if restored is not None:
    state, progress = restored
    print(f"Resumed from the checkpoint at step {int(state['step'])}.", flush=True)
  start_step = int(state["step"])
  run.truncate_metrics(start_step)

  print(f"Training {config.task} ({config.attention.name} attention, {steps.num_params:,} "
        f"parameters) for {config.num_train_steps} steps on {jax.device_count()} "
        f"{jax.devices()[0].platform.upper()} device(s); workdir {workdir}", flush=True)
  sums, window_start, timed_steps, timed_seconds = None, time.time(), 0, 0.0
  for step in range(start_step + 1, config.num_train_steps + 1):
    batch = jax.device_put(next(train_iterator), batch_sharding)
    state, step_sums = train_step(state, batch)
    sums = step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)
    last = step == config.num_train_steps

    if step % config.log_every_steps == 0 or last:
      host = jax.device_get(sums)
      train = _summarize(host)
      if not math.isfinite(train["loss"]):
        checkpoints.close()
        raise errors.UserError(
            f"training diverged: the loss is {train['loss']} between steps "
            f"{step - int(host['steps']) + 1} and {step}. Nothing was saved after the last "
            f"good checkpoint; lower optimizer.learning_rate or set optimizer.grad_clip and "
            f"relaunch (a relaunch on this workdir resumes from that checkpoint)")
      elapsed = time.time() - window_start
      if step - int(host["steps"]) > start_step:
        # Windows after the first (compilation) window measure the training speed.
        timed_steps += int(host["steps"])
        timed_seconds += elapsed
      rate = int(host["steps"]) / max(elapsed, 1e-9)
      record = {"step": step, **{f"train_{k}": v for k, v in train.items()},
                "grad_norm": float(host["grad_norm"]) / int(host["steps"]),
                "learning_rate": float(schedule(step - 1)), "steps_per_sec": rate}
      run.log(record)
      eta = (config.num_train_steps - step) / max(rate, 1e-9)
      accuracy = f" | accuracy {train['accuracy']:.3f}" if "accuracy" in train else ""
      print(f"step {step}/{config.num_train_steps} | loss {train['loss']:.4f}{accuracy} | "
            f"{rate:.2f} steps/s | ETA {_format_duration(eta)}", flush=True)
      sums, window_start = None, time.time()

    if step % config.eval_every_steps == 0 or last:
      val = evaluate(state["params"], "val")
      run.log({"step": step, **{f"val_{k}": v for k, v in val.items()}})
      score = val.get(_SELECTION_METRIC, -val["loss"])
      if progress["best_value"] is None or score > progress["best_value"]:
        progress = {"best_step": step, "best_value": score}
        checkpoints.save_best(step, state["params"])
      print(f"  validation at step {step}: " +
            ", ".join(f"{k} {v:.4f}" for k, v in val.items()) +
            f" (best {progress['best_value']:.4f} at step {progress['best_step']})", flush=True)
      window_start = time.time()

    if step % config.checkpoint_every_steps == 0 or last:
      checkpoints.save(step, state, train_iterator, progress)

  best_step, best_params = checkpoints.restore_best(state["params"])
  test = evaluate(best_params if best_params is not None else state["params"], "test")
  checkpoints.close()
  results = {
      "task": config.task,
      "attention": config.attention.name,
      **{f"test_{k}": v for k, v in test.items()},
      "best_val_step": best_step,
      f"best_val_{_SELECTION_METRIC}": progress["best_value"],
      "majority_class_rate": _majority_rate(data.splits["test"]),
      "num_train_steps": config.num_train_steps,
      "steps_per_sec": timed_steps / timed_seconds if timed_seconds else None,
      "peak_memory_gb": _peak_memory_gb(),
      "num_params": steps.num_params,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  }
  _write_json(run.file("results.json"), results)
  plotting.training_curves(run.metrics_path, run.file("curves.png"),
                           title=f"{config.task} / {config.attention.name}")
  return results


def _majority_rate(split: dict[str, np.ndarray]) -> float | None:
  targets = split.get("targets")
  if targets is None or not len(targets):
    return None
  return float(np.bincount(targets).max() / len(targets))

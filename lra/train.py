"""`train_and_evaluate(config, workdir)`: the one trainer of every task.

Tasks differ only in their data (`lra.data`) and model (`lra.models`); this loop is shared.
A workdir holds `config.json`, `vocab.json`, `metrics.jsonl` (one JSON object per logged
step), `checkpoints/` (train state + data iterator, for exact resume), `best/` (parameters
of the best validation score), and at the end `results.json` and `curves.png`.

Staged training (`config.phases`, character-level LM): each phase has its own sequence
length, batch size, window scale and learning rate. The parameters are shared; each phase
has its own model graph (its windows) and jitted steps, and step `i`'s phase follows from `i`
alone, so resuming across a phase boundary is exact too.

Relaunching on the same workdir resumes from the last checkpoint: the batches, dropout
keys and metrics after it are those of an uninterrupted run. The test score is that of the
best validation checkpoint, never of the last step.
"""

import copy
import dataclasses
import json
import math
import os
import resource
import time
from typing import Any, Callable, NamedTuple

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
from lra.data import charlm

# Summed metric -> the per-count average reported (e.g. correct predictions -> accuracy).
_AVERAGES = {"loss": "loss", "correct": "accuracy", "bits": "bpc"}
# The validation score that picks the best checkpoint: the first one a task reports, with
# whether higher is better.
_SELECTION = (("accuracy", True), ("bpc", False))


def _check_config(config) -> None:
  for key in ("num_train_steps", "eval_every_steps", "checkpoint_every_steps",
              "log_every_steps", "batch_size", "eval_batch_size"):
    if key in config and config[key] <= 0:
      raise errors.ConfigError(f"config.{key} must be > 0, got {config[key]}")
  if config.checkpoint_every_steps % config.log_every_steps:
    raise errors.ConfigError(
        f"config.checkpoint_every_steps ({config.checkpoint_every_steps}) must be a multiple "
        f"of config.log_every_steps ({config.log_every_steps}), so that a resumed run logs "
        f"the same averages as an uninterrupted one")
  batch_sizes = {key: config[key] for key in ("batch_size", "eval_batch_size") if key in config}
  if "phases" in config:
    _check_phases(config)
    batch_sizes.update({f"phases.batch_size[{i}]": b
                        for i, b in enumerate(config.phases.batch_size)})
  for key, size in batch_sizes.items():
    if size % jax.device_count():
      raise errors.ConfigError(
          f"config.{key}={size} does not divide over {jax.device_count()} devices; "
          f"use a multiple of {jax.device_count()}")


def _check_phases(config) -> None:
  phases = config.phases
  fields = ("steps", "seq_length", "batch_size", "window_scale", "learning_rate",
            "warmup_steps")
  counts = {key: len(phases[key]) for key in fields}
  if len(set(counts.values())) != 1:
    raise errors.ConfigError(
        f"config.phases fields need one entry per phase; got {counts}")
  if sum(phases.steps) != config.num_train_steps:
    raise errors.ConfigError(
        f"config.num_train_steps ({config.num_train_steps}) must equal the sum of "
        f"config.phases.steps {tuple(phases.steps)} = {sum(phases.steps)}")
  charlm.check_evaluation(config.evaluation)


def _phase_schedule(phases):
  """Per phase: linear warmup over its `warmup_steps`, then its constant learning rate."""
  ends = np.cumsum(phases.steps)
  starts = jnp.asarray(ends - np.asarray(phases.steps))
  rates = jnp.asarray(phases.learning_rate, jnp.float32)
  warmups = jnp.maximum(jnp.asarray(phases.warmup_steps, jnp.float32), 1.0)

  def schedule(count):  # count: updates done before this one
    phase = jnp.minimum(jnp.searchsorted(jnp.asarray(ends), count, side="right"),
                        len(ends) - 1)
    into = (count - starts[phase] + 1).astype(jnp.float32)
    return rates[phase] * jnp.minimum(1.0, into / warmups[phase])

  return schedule


def make_optimizer(config):
  """AdamW with LRA's schedules (or per-phase rates) and optional global-norm clipping.

  Returns (tx, schedule).
  """
  opt, num_train_steps = config.optimizer, config.num_train_steps
  if opt.schedule == "phases":
    if "phases" not in config:
      raise errors.ConfigError("optimizer.schedule=phases needs config.phases")
    schedule = _phase_schedule(config.phases)
  else:
    schedule = _single_schedule(opt, num_train_steps)
  # Decay weight matrices only, not biases, LayerNorm scales or the CLS vector.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                   weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  return tx, schedule


def _single_schedule(opt, num_train_steps: int):
  """LRA's schedules, from `opt.learning_rate` (the peak) and `opt.warmup_steps`."""
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
        f"optimizer.schedule must be rsqrt, cosine, constant or phases, got {opt.schedule!r}")
  return schedule


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
  """Averages of summed metrics per example (or per token): loss, accuracy or bpc."""
  count = max(float(sums["count"]), 1.0)
  return {name: float(sums[key]) / count for key, name in _AVERAGES.items() if key in sums}


def _selection_metric(summary: dict[str, float]) -> tuple[str, bool]:
  """(name, higher is better) of the metric that picks the best checkpoint."""
  for name, higher_is_better in _SELECTION:
    if name in summary:
      return name, higher_is_better
  return "loss", False


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


@dataclasses.dataclass
class Steps:
  """The initial train state and the jitted steps of one config on one device mesh."""

  state: dict[str, Any]  # {"step", "params", "opt_state"}, replicated over the mesh
  train_steps: list[Callable]  # per phase: (state, batch) -> (state, summed metrics);
                               # donates the state
  eval_steps: list[Callable]  # per phase: (params, batch) -> summed metrics
  schedule: Callable  # step -> learning rate
  num_params: int


def phase_configs(config) -> list[ml_collections.ConfigDict]:
  """One config per training phase (the config itself when it has no phases)."""
  if "phases" not in config:
    return [config]
  configs = []
  for scale in config.phases.window_scale:
    phase = copy.deepcopy(config)
    phase.model.window_scale = scale
    configs.append(phase)
  return configs


def phase_of_step(config, step: int) -> int:
  """The phase (index into `phase_configs`) of optimizer step `step` (1-based)."""
  return charlm.phase_of(step, config.phases.steps) if "phases" in config else 0


def build_steps(config, data: lra_data.TaskData, mesh) -> Steps:
  """Initialises the model and optimizer and jits the steps, data parallel over `mesh`."""
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))

  # The phases' models differ only in static attention options, not in parameters.
  graphdefs = []
  for phase_config in phase_configs(config):
    model = models.build(phase_config, data, nnx.Rngs(params=init_key))
    graphdef, phase_params, rest = nnx.split(model, nnx.Param, ...)
    graphdefs.append((graphdef, rest))
    if len(graphdefs) == 1:
      params = phase_params
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  tx, schedule = make_optimizer(config)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  # Optimizer states can share one buffer between leaves (zeros made once): copy every
  # leaf so that the donated state holds each buffer once.
  state = jax.device_put(jax.tree.map(lambda x: jnp.array(x, copy=True), state), replicated)
  train_steps, eval_steps = [], []
  for graphdef, rest in graphdefs:
    train_step, eval_step = _jit_steps(graphdef, rest, tx, dropout_key, replicated,
                                       batch_sharding)
    train_steps.append(train_step)
    eval_steps.append(eval_step)
  return Steps(state, train_steps, eval_steps, schedule, num_params)


def _jit_steps(graphdef, rest, tx, dropout_key, replicated, batch_sharding):
  """The jitted train and eval steps of one model graph."""

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
  return train_step, eval_step


class _Pipelines(NamedTuple):
  """A task's data as the trainer consumes it."""

  train: grain.DatasetIterator  # batches of steps 1, 2, ...; checkpointed with the state
  evaluation: Callable  # (split name, phase) -> iterator of evaluation batches
  baseline: dict[str, float | None]  # test score of a model that ignores its input


def _classification_pipelines(config, data: lra_data.TaskData) -> _Pipelines:
  targets = data.splits["test"].get("targets")
  majority = (float(np.bincount(targets).max() / len(targets))
              if targets is not None and len(targets) else None)
  return _Pipelines(
      input_pipeline.train_iterator(data.splits["train"], batch_size=config.batch_size,
                                    seed=config.seed),
      lambda split, phase: input_pipeline.eval_batches(data.splits[split],
                                                       batch_size=config.eval_batch_size),
      {"majority_class_rate": majority})


def _charlm_pipelines(config, data: lra_data.TaskData) -> _Pipelines:
  return _Pipelines(
      charlm.train_iterator(data.splits["train"]["tokens"], config.phases, seed=config.seed),
      lambda split, phase: charlm.eval_batches(data.splits[split]["tokens"], config.evaluation,
                                               batch_size=config.eval_batch_size),
      {"unigram_entropy_bits": charlm.unigram_entropy_bits(data.splits["test"]["tokens"])})


# Training and evaluation data by model kind: classifiers read examples, language models a
# character stream.
_PIPELINES = {
    "classifier": _classification_pipelines,
    "dual_encoder": _classification_pipelines,
    "causal_lm": _charlm_pipelines,
}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns the results dict."""
  _check_config(config)
  run = _Workdir(workdir, config)
  data = lra_data.load(config)
  _write_json(run.file("vocab.json"), data.vocab)

  # Auto axes: XLA propagates the batch sharding through the model (data parallel).
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  batch_sharding = NamedSharding(mesh, P("data"))
  steps = build_steps(config, data, mesh)
  state, schedule = steps.state, steps.schedule
  pipelines = _PIPELINES[config.model.kind](config, data)
  train_iterator = pipelines.train

  def evaluate(params, split: str, phase: int) -> dict[str, float]:
    total = None
    for batch in pipelines.evaluation(split, phase):
      sums = steps.eval_steps[phase](params, jax.device_put(batch, batch_sharding))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return _summarize(jax.device_get(total))

  checkpoints = _Checkpoints(workdir)
  progress = {"best_step": None, "best_value": None}  # of the selection metric
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
    phase = phase_of_step(config, step)
    batch = jax.device_put(next(train_iterator), batch_sharding)
    state, step_sums = steps.train_steps[phase](state, batch)
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
      scores = "".join(f" | {k} {train[k]:.3f}" for k in ("accuracy", "bpc") if k in train)
      print(f"step {step}/{config.num_train_steps} | loss {train['loss']:.4f}{scores} | "
            f"{rate:.2f} steps/s | ETA {_format_duration(eta)}", flush=True)
      sums, window_start = None, time.time()

    if step % config.eval_every_steps == 0 or last:
      val = evaluate(state["params"], "val", phase)
      run.log({"step": step, **{f"val_{k}": v for k, v in val.items()}})
      metric, higher_is_better = _selection_metric(val)
      best = progress["best_value"]
      if best is None or (val[metric] > best if higher_is_better else val[metric] < best):
        progress = {"best_step": step, "best_value": val[metric]}
        checkpoints.save_best(step, state["params"])
      print(f"  validation at step {step}: " +
            ", ".join(f"{k} {v:.4f}" for k, v in val.items()) +
            f" (best {metric} {progress['best_value']:.4f} at step "
            f"{progress['best_step']})", flush=True)
      window_start = time.time()

    if step % config.checkpoint_every_steps == 0 or last:
      checkpoints.save(step, state, train_iterator, progress)

  best_step, best_params = checkpoints.restore_best(state["params"])
  if best_params is None:
    best_step, best_params = int(state["step"]), state["params"]
  # Tested with the model graph (windows) of the phase the best parameters come from.
  test = evaluate(best_params, "test", phase_of_step(config, best_step))
  checkpoints.close()
  metric, _ = _selection_metric(test)
  results = {
      "task": config.task,
      "attention": config.attention.name,
      **{f"test_{k}": v for k, v in test.items()},
      "best_val_step": best_step,
      f"best_val_{metric}": progress["best_value"],
      **pipelines.baseline,
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


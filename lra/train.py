"""`train_and_evaluate(config, workdir)`: the one trainer of every task.

Tasks differ only in their data and model; this loop is shared and knows a task only through
`lra.data.task(config)` (its phases, pipelines and metrics; see `lra/data/__init__.py`) and
`lra.models.build`. A workdir holds `config.json`, `vocab.json`, `metrics.jsonl` (one JSON
object per logged step), `checkpoints/` (train state + data iterator, for exact resume),
`best/` (parameters of the best validation score), and at the end `results.json`.

Each phase of training (one for most tasks) has its own model graph and jitted steps over
shared parameters. Progress goes to `absl.logging`.

A run is one stage, or two with self-pretraining (`config.pretrain.objective` mlm or causal;
`lra.pretraining`): the `pretrain` stage trains steps 1 .. `pretrain.num_steps` on the
training inputs alone (an LM on the task model's encoder; no validation, no labels), then
the task's stage trains the next `num_train_steps` steps from the pretrained encoder with a
fresh head, a fresh optimizer state and its own schedule. Each stage has its own
parameters, optimizer state, batches and phases; its phases and logging, evaluation and
checkpoint intervals count its own steps, while `metrics.jsonl` and the checkpoints number
the run's steps (its records are `pretrain_*` in the first stage, `train_*` and `val_*` in
the second). Both stages end with a checkpoint, so a relaunch resumes exactly across the
boundary too; `results.json` adds the pretraining loss and accuracy (of the predicted
tokens, over its last logging window), its steps/s and each stage's wall time.

Relaunching on the same workdir resumes from the last checkpoint: the batches, dropout
keys and metrics after it are those of an uninterrupted run. The test score is that of the
best validation checkpoint, never of the last step (unless `best/` was emptied by hand; then
a warning says so, and `results.json`'s `tested_step` is the last step).
"""

import copy
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
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import grain
from lra import attention as attention_lib
from lra import data as lra_data
from lra import errors
from lra import models
from lra import pretraining


MESH_AXES = ("data", "sequence")  # the axes of `config.mesh`


def make_mesh(config) -> jax.sharding.Mesh:
  """The `(data, sequence)` mesh of `config.mesh` (default: every device on data).

  A size of -1 takes the devices the other axis leaves; sizes that multiply to fewer than
  the devices use the first ones. Raises `ConfigError` for sizes that do not fit.
  """
  sizes = dict(config.get("mesh", {}))
  shape = [sizes.get(axis, 1) for axis in MESH_AXES]
  count = jax.device_count()
  if any(size == 0 or size < -1 for size in shape) or shape.count(-1) > 1:
    raise errors.ConfigError(
        f"config.mesh sizes must be positive, with at most one -1 (the devices left); got "
        f"{sizes}")
  if -1 in shape:
    given = -math.prod(shape)  # the product of the sizes given
    if count % given:
      raise errors.ConfigError(
          f"config.mesh {sizes}: -1 takes the devices the other axis leaves, but the "
          f"{count} device(s) do not divide by {given}")
    shape[shape.index(-1)] = count // given
  if math.prod(shape) > count:
    raise errors.ConfigError(
        f"config.mesh {sizes} asks for {math.prod(shape)} devices; there are {count}")
  devices = np.array(jax.devices()[:math.prod(shape)]).reshape(shape)
  return jax.sharding.Mesh(devices, MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _split_over_sequence(config, mesh):
  """`config` whose attention splits the length over the mesh's `sequence` axis."""
  if mesh.shape.get("sequence", 1) == 1:
    return config
  attention = config.attention
  if "sequence_axis" not in attention_lib.get(attention.name).options:
    raise errors.ConfigError(
        f"config.mesh.sequence={mesh.shape['sequence']} splits every sequence, which "
        f"{attention.name!r} attention cannot attend over; use local or longformer "
        f"attention, or config.mesh.sequence=1")
  if attention.get("sequence_axis") not in (None, "sequence"):
    raise errors.ConfigError(
        f"config.attention.sequence_axis={attention.sequence_axis!r}: the trainer splits "
        f"the length over its mesh axis 'sequence'; set config.mesh.sequence instead")
  config = copy.deepcopy(config)
  with config.unlocked():
    config.attention.sequence_axis = "sequence"
  return config


def _batch_placement(mesh) -> Callable:
  """`batch -> batch on the mesh`: examples over `data`; the length axis of `[batch,
  length, ...]` arrays over `sequence`, where the length divides over it (the bucketed
  lengths do; the attention pads any other, which the rest of the model then computes
  whole on every device of the axis)."""
  shards = mesh.shape["sequence"]

  def sharding(x):
    split_length = shards > 1 and x.ndim >= 2 and x.shape[1] % shards == 0
    return NamedSharding(mesh, P("data", "sequence") if split_length else P("data"))

  return lambda batch: jax.device_put(batch, jax.tree.map(sharding, batch))


def _check_config(config, phases: lra_data.Phases, mesh) -> None:
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
  batch_sizes.update(phases.batch_sizes)
  data_devices = mesh.shape["data"]
  for key, size in batch_sizes.items():
    if size % data_devices:
      raise errors.ConfigError(
          f"config.{key}={size} does not divide over the {data_devices} devices of the mesh's "
          f"data axis; use a multiple of {data_devices}")


def make_optimizer(config, phases: lra_data.Phases):
  """AdamW with LRA's schedules (or the task's per-phase rates) and optional global-norm
  clipping.

  Returns (tx, schedule).
  """
  opt, num_train_steps = config.optimizer, config.num_train_steps
  if opt.schedule == "phases":
    if phases.learning_rate is None:
      raise errors.ConfigError(
          f"optimizer.schedule=phases needs a task trained in phases; {config.task} is not")
    schedule = phases.learning_rate
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
  elif opt.schedule == "linear":  # linear decay to 0 at the last step (BERT, Longformer)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup),
         optax.linear_schedule(peak, 0.0, max(num_train_steps - warmup, 1))], [warmup])
  else:
    raise errors.ConfigError(f"optimizer.schedule must be rsqrt, cosine, constant, linear or "
                             f"phases, got {opt.schedule!r}")
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
      # The mesh says where a run computes, not what: it resumes on any mesh shape.
      changed = sorted(key for key in _diff_keys(previous, config_json)
                       if key.partition(".")[0] != "mesh")
      if changed:
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
          f"({_first_line(e)}); move that folder out of the workdir to resume from an earlier "
          f"checkpoint, or use a new --workdir") from e
    return restored.state, restored.progress

  def save_best(self, step: int, params) -> None:
    self.best.save(step, args=ocp.args.StandardSave(params), force=True)

  def restore_best(self, state):
    """Returns (step, parameters) of the best validation checkpoint; (None, None) if none.

    A damaged one is replaced by the training checkpoint of the same step (the same
    parameters) where there is one, with a warning; else it is a `CheckpointError`.
    """
    step = self.best.latest_step()
    if step is None:
      return None, None
    path = self.best.directory / str(step)
    try:
      return step, self.best.restore(step, args=ocp.args.StandardRestore(state["params"]))
    except Exception as e:  # orbax raises many types for unreadable files
      damage = e
    if step in self.latest.all_steps():
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state)))
      except Exception:  # the same damage there: the error below names the best one
        logging.exception("the training checkpoint of step %d cannot be restored either", step)
      else:
        logging.warning(
            "the best validation checkpoint %s cannot be restored (%s); testing the same "
            "parameters from the training checkpoint %s instead", path, _first_line(damage),
            self.latest.directory / str(step))
        return step, restored.state["params"]
    raise errors.CheckpointError(
        f"the best validation checkpoint {path} cannot be restored ({_first_line(damage)}), "
        f"and no training checkpoint holds step {step}; move that folder out of the workdir "
        f"and relaunch to test the last step's parameters instead, or use a new --workdir"
    ) from damage

  def close(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    self.latest.close()
    self.best.close()


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no details'}"


def _peak_memory_gb() -> float:
  """Peak memory: the accelerator's when it reports one, else the process's resident set."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 1e9
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _summarize(sums: dict[str, float], metrics: lra_data.Metrics) -> dict[str, float]:
  """Averages of summed metrics per example (or per token), e.g. loss and accuracy."""
  count = max(float(sums["count"]), 1.0)
  return {name: float(sums[key]) / count for key, name in metrics.averages.items()}


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


def build_steps(config, data: lra_data.TaskData, mesh,
                phases: lra_data.Phases | None = None, start_step: int = 0) -> Steps:
  """Initialises the model and optimizer and jits the steps on `mesh` (`make_mesh`).

  `phases` are the task's (`lra.data.task(config).phases(config)` when None); the state
  counts optimizer steps from `start_step` (the steps of the stages before it). The state
  is replicated; the steps take batches placed by `_batch_placement` and, on a mesh whose
  `sequence` axis has several devices, split the length in the attention.
  """
  if phases is None:
    phases = lra_data.task(config).phases(config)
  replicated = NamedSharding(mesh, P())
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))

  # The phases' models differ only in static attention options, not in parameters.
  graphdefs = []
  for phase_config in phases.configs:
    model = models.build(_split_over_sequence(phase_config, mesh), vocab_size=data.vocab_size,
                         num_classes=data.num_classes, rngs=nnx.Rngs(params=init_key))
    graphdef, phase_params, rest = nnx.split(model, nnx.Param, ...)
    graphdefs.append((graphdef, rest))
    if len(graphdefs) == 1:
      params = phase_params
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  tx, schedule = make_optimizer(config, phases)
  state = {"step": jnp.full((), start_step, jnp.int32), "params": params,
           "opt_state": tx.init(params)}
  # Optimizer states can share one buffer between leaves (zeros made once): copy every
  # leaf so that the donated state holds each buffer once.
  state = jax.device_put(jax.tree.map(lambda x: jnp.array(x, copy=True), state), replicated)
  train_steps, eval_steps = [], []
  for graphdef, rest in graphdefs:
    train_step, eval_step = _jit_steps(graphdef, rest, tx, dropout_key, replicated)
    train_steps.append(train_step)
    eval_steps.append(eval_step)
  return Steps(state, train_steps, eval_steps, schedule, num_params)


def _jit_steps(graphdef, rest, tx, dropout_key, replicated):
  """The jitted train and eval steps of one model graph; their inputs keep the shardings
  they are placed with."""

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

  train_step = jax.jit(train_step, out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(lambda params, batch: metrics_fn(params, batch, True, None),
                      out_shardings=replicated)
  return train_step, eval_step


@dataclasses.dataclass
class Stage:
  """A stage of a run: its own model, parameters, optimizer state and batches.

  It trains the run's optimizer steps `first_step .. last_step`; its phases number its own
  steps from 1. Every run has the task's stage (`train`), evaluated on the validation
  split; self-pretraining puts its `pretrain` stage before it (`lra.pretraining`).
  """

  name: str  # prefix of its metrics in metrics.jsonl: pretrain | train
  config: ml_collections.ConfigDict  # of its model, optimizer and batches
  first_step: int
  last_step: int
  phases: lra_data.Phases
  steps: Steps
  train: Any  # its training batches (a grain iterator, checkpointed)
  metrics: lra_data.Metrics
  evaluated: bool  # validation, the best checkpoint and the test

  def local_step(self, step: int) -> int:
    return step - self.first_step + 1


def _stage_of(stages: list[Stage], step: int) -> Stage:
  """The stage that trains step `step` (the last one for steps past the end)."""
  return next((stage for stage in stages if step <= stage.last_step), stages[-1])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns the results dict."""
  task = lra_data.task(config)
  phases = task.phases(config)
  pretraining.check(config)
  objective = pretraining.objective(config)
  pretrain_config = None
  batch_sizes = dict(phases.batch_sizes)
  if objective != "none":
    pretrain_config = pretraining.stage_config(config)
    batch_sizes["pretrain.batch_size"] = config.pretrain.batch_size
  mesh = make_mesh(config)
  _check_config(config, dataclasses.replace(phases, batch_sizes=batch_sizes), mesh)
  run = _Workdir(workdir, config)
  data = lra_data.load(config)
  if objective == "mlm":
    data = pretraining.with_mask_token(data)
  _write_json(run.file("vocab.json"), data.vocab)

  stages = []
  if pretrain_config is not None:
    pretrain_phases = lra_data.single_phase(pretrain_config)
    stages.append(Stage(
        "pretrain", pretrain_config, 1, pretrain_config.num_train_steps, pretrain_phases,
        build_steps(pretrain_config, data, mesh, pretrain_phases),
        pretraining.train_iterator(pretrain_config, data), pretraining.METRICS,
        evaluated=False))
  first_step = stages[-1].last_step + 1 if stages else 1
  pipelines = task.pipelines(config, data)
  stages.append(Stage(
      "train", config, first_step, first_step - 1 + config.num_train_steps, phases,
      build_steps(config, data, mesh, phases, start_step=first_step - 1), pipelines.train,
      task.metrics, evaluated=True))
  checkpoints = _Checkpoints(workdir)
  try:
    # Auto axes: XLA propagates the batch sharding through the model; the sequence-parallel
    # attention finds the mesh in context.
    with jax.set_mesh(mesh):
      results = _train_and_test(config, run, stages, pipelines, checkpoints,
                                _batch_placement(mesh))
  finally:  # waits for the checkpoints being written, whatever stopped the run
    checkpoints.close()
  results["mesh"] = dict(mesh.shape)
  _write_json(run.file("results.json"), results)
  return results


def _train_and_test(config, run: _Workdir, stages: list[Stage], pipelines: lra_data.Pipelines,
                    checkpoints: _Checkpoints, place: Callable) -> dict[str, Any]:
  """The training loop from the last checkpoint on, then the test of the best parameters."""
  final = stages[-1]
  metrics = final.metrics
  mesh = jax.sharding.get_abstract_mesh()  # the run's, in context

  def evaluate(params, split: str, phase: int) -> dict[str, float]:
    total = None
    for batch in pipelines.evaluation(split, phase):
      sums = final.steps.eval_steps[phase](params, place(batch))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return _summarize(jax.device_get(total), metrics)

  # Of the selection metric; and per stage: wall seconds, and its last averages.
  progress = {"best_step": None, "best_value": None}
  stage = _stage_of(stages, checkpoints.latest.latest_step() or 1)
  state = stage.steps.state
  restored = checkpoints.restore_latest(state, stage.train)
  if restored is not None:
    state, progress = restored
    logging.info("Resumed from the checkpoint at step %d.", int(state["step"]))
  start_step = int(state["step"])
  run.truncate_metrics(start_step)
  seconds = dict(progress.get("seconds", {}))
  finished = dict(progress.get("finished", {}))

  for stage in stages:
    if stage.last_step > start_step:
      logging.info(
          "%s %s (%s attention, %s parameters): steps %d-%d of %d on %d %s device(s) "
          "(mesh %s); workdir %s", "Pretraining" if stage.name == "pretrain" else "Training",
          config.task, stage.config.attention.name, f"{stage.steps.num_params:,}",
          stage.first_step, stage.last_step, final.last_step, mesh.size,
          jax.devices()[0].platform.upper(),
          " x ".join(f"{axis} {size}" for axis, size in mesh.shape.items()), run.path)
  sums, window_start, mark = None, time.time(), time.time()
  timed = {stage.name: [0, 0.0] for stage in stages}  # steps and seconds after compiling
  for step in range(start_step + 1, final.last_step + 1):
    stage = _stage_of(stages, step)
    if step == stage.first_step and stage is not stages[0]:
      state = _start_stage(stage, state)
    local = stage.local_step(step)
    phase = stage.phases.of_step(local)
    batch = place(next(stage.train))
    state, step_sums = stage.steps.train_steps[phase](state, batch)
    sums = step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)
    last = step == stage.last_step

    if local % config.log_every_steps == 0 or last:
      host = jax.device_get(sums)
      train = _summarize(host, stage.metrics)
      if not math.isfinite(train["loss"]):
        raise errors.UserError(
            f"training diverged: the loss is {train['loss']} between steps "
            f"{step - int(host['steps']) + 1} and {step}. Nothing was saved after the last "
            f"good checkpoint; lower optimizer.learning_rate or set optimizer.grad_clip and "
            f"relaunch (a relaunch on this workdir resumes from that checkpoint)")
      elapsed = time.time() - window_start
      if step - int(host["steps"]) > max(start_step, stage.first_step - 1):
        # Windows after the first (compilation) window measure the training speed.
        timed[stage.name][0] += int(host["steps"])
        timed[stage.name][1] += elapsed
      rate = int(host["steps"]) / max(elapsed, 1e-9)
      record = {"step": step, **{f"{stage.name}_{k}": v for k, v in train.items()},
                "grad_norm": float(host["grad_norm"]) / int(host["steps"]),
                "learning_rate": float(stage.steps.schedule(local - 1)),
                "steps_per_sec": rate}
      run.log(record)
      eta = (final.last_step - step) / max(rate, 1e-9)
      scores = [name for name in stage.metrics.averages.values() if name != "loss"]
      logging.info("%sstep %d/%d | loss %.4f%s | %.2f steps/s | ETA %s",
                   "" if stage.evaluated else f"{stage.name} ", step, final.last_step,
                   train["loss"], "".join(f" | {k} {train[k]:.3f}" for k in scores), rate,
                   _format_duration(eta))
      sums, window_start = None, time.time()
      if last and not stage.evaluated:
        finished[stage.name] = {**train, "steps_per_sec": _rate(*timed[stage.name])}

    if stage.evaluated and (local % config.eval_every_steps == 0 or last):
      val = evaluate(state["params"], "val", phase)
      run.log({"step": step, **{f"val_{k}": v for k, v in val.items()}})
      best, value = progress["best_value"], val[metrics.selection]
      if best is None or (value > best if metrics.higher_is_better else value < best):
        progress = {"best_step": step, "best_value": value}
        checkpoints.save_best(step, state["params"])
      logging.info("  validation at step %d: %s (best %s %.4f at step %d)", step,
                   ", ".join(f"{k} {v:.4f}" for k, v in val.items()), metrics.selection,
                   progress["best_value"], progress["best_step"])
      window_start = time.time()

    if local % config.checkpoint_every_steps == 0 or last:
      now = time.time()
      seconds[stage.name] = seconds.get(stage.name, 0.0) + now - mark
      mark = now
      progress = {"best_step": progress["best_step"], "best_value": progress["best_value"],
                  "seconds": seconds, "finished": finished}
      checkpoints.save(step, state, stage.train, progress)

  tested_step, best_params = checkpoints.restore_best(state)
  if best_params is None:
    tested_step, best_params = int(state["step"]), state["params"]
    logging.warning("best/ holds no checkpoint: testing the parameters of the last step, %d",
                    tested_step)
  # Tested with the model graph (windows) of the phase the parameters come from.
  test = evaluate(best_params, "test", final.phases.of_step(final.local_step(tested_step)))
  results = {
      "task": config.task,
      "attention": config.attention.name,
      **{f"test_{k}": v for k, v in test.items()},
      "tested_step": tested_step,
      "best_val_step": progress["best_step"],
      f"best_val_{metrics.selection}": progress["best_value"],
      metrics.baseline: pipelines.baseline,
      "num_train_steps": config.num_train_steps,
      "steps_per_sec": _rate(*timed[final.name]),
      "peak_memory_gb": _peak_memory_gb(),
      "num_params": final.steps.num_params,
      "devices": f"{mesh.size} x {jax.devices()[0].device_kind}",
  }
  if len(stages) > 1:
    pretrained = finished.get("pretrain", {})
    results.update({
        "pretrain_objective": config.pretrain.objective,
        "pretrain_steps": stages[0].last_step,
        # Averages over the stage's last logging window; accuracy of the predicted tokens.
        "pretrain_loss": pretrained.get("loss"),
        "pretrain_accuracy": pretrained.get("accuracy"),
        "pretrain_steps_per_sec": pretrained.get("steps_per_sec"),
        # Wall time of each stage's kept work (to its last checkpoint), compiles included.
        "pretrain_wall_time_s": seconds.get("pretrain"),
        "train_wall_time_s": seconds.get("train"),
    })
  return results


def _rate(steps: int, seconds: float) -> float | None:
  return steps / seconds if seconds else None


def _start_stage(stage: Stage, previous_state) -> dict[str, Any]:
  """The state of `stage` at its first step: its own fresh state, with the encoder
  parameters of the stage before (the pretrained ones)."""
  state = dict(stage.steps.state)
  params = pretraining.transplant(previous_state["params"], state["params"])
  # One buffer per leaf (the donated state must not hold one twice: Longformer's global
  # projections can start as the same pretrained arrays as the local ones).
  state["params"] = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  logging.info("Fine-tuning from the pretrained encoder at step %d.", stage.first_step)
  return state

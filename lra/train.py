"""`train_and_evaluate(config, workdir)`: the one trainer of every task.

Tasks differ only in their data and model; this loop knows a task only through
`lra.data.task(config)` (its phases, pipelines and metrics; see `lra/data/__init__.py`) and
`lra.models.build`. Here are the check of a config at launch, the jitted steps, the stages
and the loop; `lra.sharding` places the batches, `lra.optimizers` makes the optimizer,
`lra.checkpointing` keeps the workdir (`config.json`, `vocab.json`, `metrics.jsonl`,
`checkpoints/`, `best/`, at the end `results.json`) and `lra.reporting` logs the progress.
Each phase of training has its own model graph and jitted steps over shared parameters.

A run is one stage, or two with self-pretraining (`config.pretrain.objective` mlm or causal;
`lra.pretraining`): `pretrain` trains steps 1 .. `pretrain.num_steps`, then the task's stage
the next `num_train_steps` steps from the pretrained encoder with a fresh head, optimizer
state and schedule. A stage's phases and intervals count its own steps; `metrics.jsonl` and
the checkpoints number the run's (`pretrain_*` records, then `train_*` and `val_*`).

Relaunching on the same workdir resumes from the last checkpoint (across the stages'
boundary too): the batches, dropout keys and metrics after it are those of an uninterrupted
run. The test score is that of the best validation checkpoint (the last step's, with a
warning and `results.json`'s `tested_step` saying so, if `best/` was emptied by hand).
"""

import copy
import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lra import attention as attention_lib
from lra import checkpointing
from lra import data as lra_data
from lra import errors
from lra import generation
from lra import models
from lra import optimizers
from lra import pretraining
from lra import reporting
from lra import sharding


def resolve(config) -> ml_collections.ConfigDict:
  """`config` with its attention section as the registry resolves its variant
  (`lra.attention.variant_config`): the mechanism's name and defaults, a preset's options,
  and the options given that the mechanism takes. A resolved config resolves to itself."""
  options = dict(config.attention)
  attention = attention_lib.variant_config(options.pop("name"),
                                           num_heads=config.model.get("num_heads"), **options)
  config = copy.deepcopy(config)
  with config.unlocked():
    config.attention = ml_collections.ConfigDict(attention)
  return config


def check(config) -> tuple[lra_data.Phases, jax.sharding.Mesh]:
  """Checks a resolved config before any file is written, each section in the module that
  owns it: the task's by `lra.data`, `pretrain`, `optimizer` and `mesh` by `lra.pretraining`,
  `lra.optimizers` and `lra.sharding`, the trainer's fields here (`attention` and `model`:
  when `build_steps` builds the models). Returns the task's phases and the mesh."""
  phases = lra_data.task(config).phases(config)
  pretraining.check(config)
  optimizers.check(config, phases)
  for key in ("num_train_steps", "eval_every_steps", "checkpoint_every_steps",
              "log_every_steps", "batch_size", "eval_batch_size"):
    if key in config and config[key] <= 0:
      raise errors.ConfigError(f"config.{key} must be > 0, got {config[key]}")
  if config.checkpoint_every_steps % config.log_every_steps:
    raise errors.ConfigError(
        f"config.checkpoint_every_steps ({config.checkpoint_every_steps}) must be a multiple "
        f"of config.log_every_steps ({config.log_every_steps}), so that a resumed run logs "
        f"the same averages as an uninterrupted one")
  mesh = sharding.make_mesh(config)
  batch_sizes = {key: config[key] for key in ("batch_size", "eval_batch_size") if key in config}
  if pretraining.objective(config) != "none":
    batch_sizes["pretrain.batch_size"] = config.pretrain.batch_size
  sharding.check_batch_sizes({**batch_sizes, **phases.batch_sizes}, mesh)
  sharding.split_over_sequence(config, mesh)
  return phases, mesh


@dataclasses.dataclass
class Steps:
  """The initial train state and the jitted steps of one config on one device mesh."""

  state: dict[str, Any]  # {"step", "params", "opt_state"}, replicated over the mesh
  train_steps: list[Callable]  # per phase: (state, batch) -> (state, sums), state donated
  eval_steps: list[Callable]  # per phase: (params, batch) -> summed metrics
  graphs: list[tuple]  # per phase: the model's (graphdef, rest): nnx.merge(g, params, rest)
  schedule: Callable  # step -> learning rate
  num_params: int


def build_steps(config, data: lra_data.TaskData, mesh,
                phases: lra_data.Phases | None = None, start_step: int = 0) -> Steps:
  """Initialises the model and optimizer of `config` (resolved here if it is not) and jits
  the steps on `mesh`, for the task's `phases` (its own when None); the state counts
  optimizer steps from `start_step` (the steps of the stages before it). The state is
  replicated; the steps take batches placed by `lra.sharding.batch_placement` and, on a
  mesh whose `sequence` axis has several devices, split the length in the attention."""
  config = resolve(config)
  if phases is None:
    phases = lra_data.task(config).phases(config)
  replicated = NamedSharding(mesh, P())
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))

  # The phases' models differ only in static attention options, not in parameters.
  graphdefs = []
  for phase_config in phases.configs:
    model = models.build(sharding.split_over_sequence(resolve(phase_config), mesh),
                         vocab_size=data.vocab_size, num_classes=data.num_classes,
                         rngs=nnx.Rngs(params=init_key))
    graphdef, phase_params, rest = nnx.split(model, nnx.Param, ...)
    graphdefs.append((graphdef, rest))
    if len(graphdefs) == 1:
      params = phase_params
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  tx, schedule = optimizers.make_optimizer(config, phases)
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
  return Steps(state, train_steps, eval_steps, graphdefs, schedule, num_params)


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
  config = resolve(config)
  phases, mesh = check(config)
  run = checkpointing.Workdir(workdir, config)
  data, shard = lra_data.load(config), sharding.process_shard(mesh)
  if pretraining.objective(config) == "mlm":
    data = pretraining.with_mask_token(data)
  run.write_json("vocab.json", data.vocab)

  stages = []
  if pretraining.objective(config) != "none":
    pretrain_config = pretraining.stage_config(config)
    pretrain_phases = lra_data.single_phase(pretrain_config)
    stages.append(Stage(
        "pretrain", pretrain_config, 1, pretrain_config.num_train_steps, pretrain_phases,
        build_steps(pretrain_config, data, mesh, pretrain_phases),
        pretraining.train_iterator(pretrain_config, data, shard), pretraining.METRICS,
        evaluated=False))
  first_step = stages[-1].last_step + 1 if stages else 1
  task = lra_data.task(config)
  pipelines = task.pipelines(config, data, shard)
  stages.append(Stage(
      "train", config, first_step, first_step - 1 + config.num_train_steps, phases,
      build_steps(config, data, mesh, phases, start_step=first_step - 1), pipelines.train,
      task.metrics, evaluated=True))
  checkpoints = checkpointing.Checkpoints(workdir)
  try:
    # Auto axes: XLA propagates the batch sharding through the model; the sequence-parallel
    # attention finds the mesh in context.
    with jax.set_mesh(mesh):
      results = _train_and_test(config, run, stages, pipelines, checkpoints,
                                sharding.batch_placement(mesh))
  finally:  # waits for the checkpoints being written, whatever stopped the run
    checkpoints.close()
  results.update(mesh=dict(mesh.shape), processes=jax.process_count())
  run.write_json("results.json", results)
  return results


def _train_and_test(config, run: checkpointing.Workdir, stages: list[Stage],
                    pipelines: lra_data.Pipelines, checkpoints: checkpointing.Checkpoints,
                    place: Callable) -> dict[str, Any]:
  """The training loop from the last checkpoint on, then the test of the best parameters."""
  final = stages[-1]
  metrics = final.metrics
  mesh = jax.sharding.get_abstract_mesh()  # the run's, in context

  def evaluate(params, split: str, phase: int) -> dict[str, float]:
    if pipelines.texts is not None:  # one streaming pass of the model over the split
      graphdef, rest = final.steps.graphs[phase]
      return metrics.summarize(generation.streaming_sums(
          nnx.merge(graphdef, params, rest), pipelines.texts[split], config.evaluation))
    total = None
    for batch in pipelines.evaluation(split, phase):
      sums = final.steps.eval_steps[phase](params, place(batch))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return metrics.summarize(jax.device_get(total))

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
  report = reporting.Reporter(run, [stage.name for stage in stages], start_step=start_step,
                              last_step=final.last_step)
  sums, mark = None, time.time()
  for step in range(start_step + 1, final.last_step + 1):
    stage = _stage_of(stages, step)
    if step == stage.first_step and stage is not stages[0]:
      state = pretraining.fine_tuning_state(stage.steps.state, state["params"])
      logging.info("Fine-tuning from the pretrained encoder at step %d.", step)
    local = stage.local_step(step)
    phase = stage.phases.of_step(local)
    batch = place(next(stage.train))
    state, step_sums = stage.steps.train_steps[phase](state, batch)
    sums = step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)
    last = step == stage.last_step

    if local % config.log_every_steps == 0 or last:
      train = report.log_window(stage, step, sums)
      sums = None
      if last and not stage.evaluated:
        finished[stage.name] = {**train, "steps_per_sec": report.steps_per_sec(stage.name)}

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
      report.restart_window()

    if local % config.checkpoint_every_steps == 0 or last:
      now = time.time()
      seconds[stage.name] = seconds.get(stage.name, 0.0) + now - mark
      mark = now
      progress = {"best_step": progress["best_step"], "best_value": progress["best_value"],
                  "seconds": seconds, "finished": finished}
      checkpoints.save(step, state, stage.train, progress)

  tested_step, best_params = checkpoints.restore_best(state)
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
      "steps_per_sec": report.steps_per_sec(final.name),
      "peak_memory_gb": reporting.peak_memory_gb(),
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

"""The optimizer of every stage: AdamW under a learning-rate schedule, with optional clipping.

`SCHEDULES` is the one table of schedule names: `config.optimizer.schedule` and the
self-pretraining stage's `config.pretrain.schedule` (`lra.pretraining`) choose from it. A
task trained in phases may also choose `phases`: the rates its phases set
(`lra.data.Phases.learning_rate`).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lra import data as lra_data
from lra import errors

PHASES = "phases"  # the schedule of a task's phases


def _rsqrt(peak: float, warmup: int, num_steps: int) -> optax.Schedule:
  """LRA's constant * linear_warmup * rsqrt_decay, written with its peak value."""
  del num_steps  # it decays for ever

  def schedule(step):
    step = jnp.maximum(step, 1).astype(jnp.float32)
    return peak * jnp.minimum(1.0, step / warmup) * jnp.sqrt(warmup / jnp.maximum(step, warmup))

  return schedule


def _cosine(peak: float, warmup: int, num_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(num_steps, warmup + 1))


def _constant(peak: float, warmup: int, num_steps: int) -> optax.Schedule:
  del num_steps
  return optax.linear_schedule(0.0, peak, warmup)


def _linear(peak: float, warmup: int, num_steps: int) -> optax.Schedule:
  """Linear decay to 0 at the last step (BERT, Longformer)."""
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup),
       optax.linear_schedule(peak, 0.0, max(num_steps - warmup, 1))], [warmup])


# Schedule name -> `(peak, warmup_steps, num_steps) -> step -> rate`; every one rises
# linearly from 0 to the peak over the warmup (at least one step).
SCHEDULES: dict[str, Callable[[float, int, int], optax.Schedule]] = {
    "rsqrt": _rsqrt,  # then 1/sqrt decay (LRA)
    "cosine": _cosine,  # then cosine decay to 0 at the last step
    "constant": _constant,  # then the peak
    "linear": _linear,  # then linear decay to 0 at the last step
}


def check(config, phases: lra_data.Phases) -> None:
  """Raises `ConfigError` for a schedule `config.optimizer` cannot have."""
  name = config.optimizer.schedule
  if name == PHASES and phases.learning_rate is None:
    raise errors.ConfigError(
        f"optimizer.schedule={PHASES} needs a task trained in phases; {config.task} is not")
  if name != PHASES and name not in SCHEDULES:
    raise errors.ConfigError(
        f"optimizer.schedule must be one of {', '.join(SCHEDULES)} or {PHASES}, got {name!r}")


def make_optimizer(config, phases: lra_data.Phases):
  """AdamW under the schedule of `config.optimizer` (from its `learning_rate`, the peak, and
  `warmup_steps`; or the task's phases), clipping the global gradient norm at `grad_clip`
  (0: no clipping). Returns (tx, schedule)."""
  check(config, phases)
  opt = config.optimizer
  if opt.schedule == PHASES:
    schedule = phases.learning_rate
  else:
    schedule = SCHEDULES[opt.schedule](opt.learning_rate, max(opt.warmup_steps, 1),
                                       config.num_train_steps)
  # Decay weight matrices only, not biases, LayerNorm scales or the CLS vector.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                   weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  return tx, schedule

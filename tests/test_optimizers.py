"""The learning-rate schedules of `lra.optimizers.SCHEDULES`, the one table the trainer and
self-pretraining choose from, and the optimizer built on them."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lra import data as lra_data
from lra import errors
from lra import optimizers
from lra import pretraining
from lra import train
from tests.test_train import tiny_config

PEAK, WARMUP, STEPS = 2.0, 10, 100
# Rate at steps 0, 5 (mid-warmup), 10 (the peak), 40, 55 and 100 (the last).
RATES = {
    "rsqrt": [0.2, 1.0, 2.0, 1.0, 2.0 * (10 / 55) ** 0.5, 2.0 * 0.1 ** 0.5],
    "cosine": [0.0, 1.0, 2.0, 1.0 + np.cos(np.pi / 3), 1.0, 0.0],
    "constant": [0.0, 1.0, 2.0, 2.0, 2.0, 2.0],
    "linear": [0.0, 1.0, 2.0, 2.0 * 60 / 90, 1.0, 0.0],
}


def test_every_schedule_is_tested():
  assert sorted(RATES) == sorted(optimizers.SCHEDULES)


@pytest.mark.parametrize("name", sorted(RATES))
def test_schedule_values(name):
  schedule = optimizers.SCHEDULES[name](PEAK, WARMUP, STEPS)
  rates = [float(schedule(jnp.asarray(step))) for step in (0, 5, 10, 40, 55, 100)]
  np.testing.assert_allclose(rates, RATES[name], rtol=1e-5, atol=1e-6)


def _optimizer_config(schedule: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "task": "listops", "num_train_steps": STEPS,
      "optimizer": {"learning_rate": PEAK, "warmup_steps": WARMUP, "schedule": schedule,
                    "b1": 0.9, "b2": 0.98, "eps": 1e-9, "weight_decay": 0.1,
                    "grad_clip": 1.0}})


def test_the_optimizer_follows_its_schedule_or_the_phases():
  config = _optimizer_config("linear")
  _, schedule = optimizers.make_optimizer(config, lra_data.single_phase(config))
  assert float(schedule(55)) == pytest.approx(1.0)
  phases = lra_data.Phases(configs=(config,), ends=(STEPS,), learning_rate=lambda step: 0.5)
  config.optimizer.schedule = optimizers.PHASES
  assert optimizers.make_optimizer(config, phases)[1](7) == 0.5


@pytest.mark.parametrize("schedule, message", [
    ("exponential", "optimizer.schedule must be one of rsqrt, cosine, constant, linear or "
                    "phases, got 'exponential'"),
    ("phases", "optimizer.schedule=phases needs a task trained in phases; listops is not"),
])
def test_bad_schedules_are_named(schedule, message):
  config = _optimizer_config(schedule)
  with pytest.raises(errors.ConfigError, match=message):
    optimizers.check(config, lra_data.single_phase(config))


@pytest.mark.parametrize("name", sorted(RATES))
def test_self_pretraining_takes_every_schedule_of_the_table(tmp_path, name):
  config = train.resolve(tiny_config(
      tmp_path, spec="configs/listops.py:attention=longformer,size=tiny,pretrain=mlm"))
  with config.unlocked():
    config.pretrain.update(schedule=name, learning_rate=PEAK, warmup_steps=WARMUP,
                           num_steps=STEPS)
  pretraining.check(config)
  stage = pretraining.stage_config(config)
  _, schedule = optimizers.make_optimizer(stage, lra_data.single_phase(stage))
  assert float(schedule(jnp.asarray(55))) == pytest.approx(RATES[name][4], rel=1e-5)

"""Configs load without JAX, and their computed fields follow their source when it is
overridden on the command line (as `--config.<field>=...` does it, through ml_collections'
config flags), for every task."""

import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from lra import data as lra_data
from lra import models
from lra import train
from tests.data import fixtures
from tests.entry_points import REPO

CLASSIFICATION = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
CHARLM = ("enwik8", "text8")
NOT_LOADED = ("jax", "flax", "grain", "optax", "orbax")


def test_every_config_loads_without_jax():
  """Every config file, at every size (a classification config with a preset variant and
  self-pretraining too), loads in a fresh process that then holds no JAX, flax or grain:
  the names the library owns are checked when a run starts."""
  script = textwrap.dedent(f"""
      import glob, sys
      from configs import common
      files = [path for path in sorted(glob.glob("configs/*.py"))
               if "def get_config" in open(path).read()]
      for path in files:
        for size in common.SIZES:
          common.load_config(f"{{path}}:size={{size}}")
      common.load_config("configs/listops.py:attention=dilated,pretrain=mlm")
      print(len(files), [name for name in {NOT_LOADED!r} if name in sys.modules])
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [str(len(CLASSIFICATION + CHARLM) + 1), "[]"]


def parse(spec: str, *overrides: str):
  """The config that `--config=configs/<spec> <overrides>` gives an entry point."""
  argv = ["prog", f"--config={os.path.join(REPO, 'configs', spec)}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def model_max_length(config) -> int:
  """Positions the model built from `config` takes."""
  return models.build(config, vocab_size=257, num_classes=2,
                      rngs=nnx.Rngs(0)).encode.encoder.max_length


@pytest.mark.parametrize("task", CLASSIFICATION)
def test_eval_batch_size_follows_batch_size(task):
  assert parse(f"{task}.py:size=tiny", "--config.batch_size=24").eval_batch_size == 24
  config = parse(f"{task}.py:size=tiny", "--config.eval_batch_size=24")
  assert (config.batch_size, config.eval_batch_size) == (8, 24)


@pytest.mark.parametrize("task", ("listops", "text", "retrieval", "image"))
def test_model_max_length_follows_data_max_length(task):
  config = parse(f"{task}.py:size=tiny", "--config.data.max_length=200")
  assert model_max_length(config) == 201


@pytest.mark.parametrize("task, size, resolution", [
    ("pathfinder", "tiny", 32), ("pathfinder", "tiny", 64), ("pathx", "tiny", 32),
    ("pathx", "tiny", 128), ("pathx", "paper", 128), ("pathx", "paper", 64),
])
def test_pathfinder_lengths_follow_the_resolution(task, size, resolution):
  config = parse(f"{task}.py:attention=longformer,size={size}",
                 f"--config.data.resolution={resolution}")
  assert config.data.max_length == resolution ** 2
  assert model_max_length(config) == resolution ** 2 + 1
  # Set itself, the computed field keeps its value.
  config = parse(f"{task}.py:size={size}", f"--config.data.resolution={resolution}",
                 "--config.data.max_length=300")
  assert (config.data.resolution, config.data.max_length) == (resolution, 300)


@pytest.mark.parametrize("task", CHARLM)
def test_num_train_steps_and_phases_follow_the_phase_steps(task):
  config = parse(f"{task}.py:size=tiny", "--config.phases.steps=(5, 7)")
  assert config.num_train_steps == 12
  phases = lra_data.task(config).phases(config)
  assert phases.ends == (5, 12)
  assert [phases.of_step(step) for step in (1, 5, 6, 12)] == [0, 0, 1, 1]


@pytest.mark.slow  # one compile at length 16384: ~3 min on 2 cores
def test_pathx_tiny_trains_on_128_pixel_images(tmp_path):
  data_path = fixtures.write_pathfinder(tmp_path, num_images=20, resolution=128)
  config = parse("pathx.py:attention=longformer,size=tiny", "--config.data.resolution=128",
                 f"--config.data_path={data_path}",
                 f"--config.data_cache_dir={tmp_path / 'cache'}", "--config.num_train_steps=1",
                 "--config.eval_every_steps=1", "--config.checkpoint_every_steps=1",
                 "--config.log_every_steps=1")
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["tested_step"] == 1
  assert model_max_length(config) == 128 * 128 + 1

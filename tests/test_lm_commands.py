"""A trained char-LM used: its streaming evaluation in the trainer, the generation and
evaluation commands on its workdir (end to end), and their one-line errors. The decoding
itself is tested against the full forward in tests/models/test_decoding.py."""

import json

import numpy as np
import pytest
from flax import nnx

from lra import checkpointing
from lra import data as lra_data
from lra import generation
from lra import runs
from lra import train
from tests.data import fixtures
from tests.entry_points import run_module
from tests.test_charlm import tiny_lm_config


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  """A tiny char-LM trained in this process, evaluated by the streaming protocol."""
  root = tmp_path_factory.mktemp("lm")
  config = tiny_lm_config(fixtures.write_text(root, num_words=20000))
  with config.unlocked():
    config.evaluation.protocol = "streaming"
    config.evaluation.streams = 3
    config.evaluation.chunk = 16
    config.mesh.data = 2  # of the 4 simulated devices: params replicated over two
  workdir = str(root / "run")
  results = train.train_and_evaluate(config, workdir)
  return workdir, config, results


def test_streaming_protocol_scores_the_splits_with_the_best_parameters(lm_run):
  workdir, config, results = lm_run
  run = runs.load_lm(workdir)
  assert run.step == results["tested_step"]
  text = lra_data.load(config).splits["test"]["tokens"][:config.evaluation.max_chars]
  scored = generation.streaming_bits(run.model, text, streams=1, chunk=64)
  assert scored["count"] == len(text) - 1
  assert results["test_bpc"] == pytest.approx(scored["bits"] / scored["count"], rel=1e-5)
  val = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl") if "val_bpc" in line]
  assert val and all(0 < record["val_bpc"] < 8 for record in val)


def test_generate_continues_the_prompt_greedily(lm_run):
  workdir, _, _ = lm_run
  prompt = "the time "
  done = run_module("generate", f"--workdir={workdir}", f"--prompt={prompt}",
                    "--num_chars=12", "--temperature=0", "--chunk=4", timeout=300)
  assert done.returncode == 0, done.stderr
  assert "characters/s" in done.stderr
  # The argmax of the full forward recomputed on the growing text (padded at the end:
  # causal).
  model = runs.load_lm(workdir).model
  forward = nnx.jit(lambda model, tokens: model(tokens))
  text = np.zeros((1, len(prompt) + 12), np.int32)
  text[0, :len(prompt)] = list(prompt.encode())
  for position in range(len(prompt), text.shape[1]):
    text[0, position] = np.argmax(forward(model, text)[0, position - 1])
  expected = bytes(text[0].astype(np.uint8)).decode("utf-8", errors="replace")
  assert done.stdout.splitlines()[0] == expected.splitlines()[0]
  assert expected in done.stdout


def test_evaluate_lm_reports_both_protocols(lm_run, tmp_path):
  workdir, _, results = lm_run
  done = run_module("evaluate_lm", f"--workdir={workdir}", f"--out={tmp_path}",
                    "--streams=2", timeout=300)
  assert done.returncode == 0, done.stderr
  report = json.load(open(tmp_path / "evaluation_test.json"))
  # The trainer's test score, by streams 3; here by streams 2: the same predictions.
  assert report["streaming"]["bpc"] == pytest.approx(results["test_bpc"], rel=1e-5)
  assert report["strided"]["count"] == report["streaming"]["count"]
  assert 0 < report["strided"]["bpc"] < 8
  assert "streaming: " in done.stdout and "strided: " in done.stdout


def test_commands_on_a_workdir_that_is_not_a_char_lm_run(tmp_path):
  listops = tmp_path / "listops"
  listops.mkdir()
  checkpointing.write_json(str(listops / "config.json"),
                           {"task": "listops", "model": {"kind": "classifier"}})
  for name, workdir, message in (
      ("generate", listops, "is a run of task 'listops'"),
      ("evaluate_lm", tmp_path / "missing", "is not a folder"),
      ("evaluate_lm", tmp_path, "holds no config.json")):
    args = ["--prompt=a"] if name == "generate" else []
    done = run_module(name, f"--workdir={workdir}", *args, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr

"""`experiments.reproduce` on the CPU at size=tiny: skipping what does not fit the budget
(the reason recorded), running what does with its estimate beside its wall time (slow), the
estimates' arithmetic, and bad input."""

import json
import tarfile
import types

import pytest

from experiments import estimate
from tests import entry_points


def run_reproduce(tmp_path, *args, timeout=600):
  return entry_points.run_module(
      "reproduce", "--allow_cpu", "--size=tiny", f"--out={tmp_path / 'out'}",
      f"--workdir={tmp_path / 'work'}", *args, timeout=timeout)


def test_a_budget_too_small_skips_every_run_and_says_why(tmp_path):
  # The start-up probe and a train step alone take longer than this budget.
  completed = run_reproduce(tmp_path, "--experiments=listops", "--budget_minutes=0.2")
  assert completed.returncode == 0, completed.stderr[-3000:]
  out = tmp_path / "out"
  assert sorted(p.name for p in out.iterdir()) == ["reproduce.json", "reproduce.md",
                                                   "runs.tar.gz"]
  record = json.loads((out / "reproduce.json").read_text())
  assert [(r["name"], r["status"].split(":")[0]) for r in record["runs"]] == [
      ("longformer", "skipped"), ("full", "skipped")]
  for run in record["runs"]:
    assert run["estimate_s"] == pytest.approx(run["estimate"]["total_s"])
    assert run["estimate_s"] > _left(run["status"])
  assert "ListOps longformer: training" not in completed.stdout
  assert "elapsed," in completed.stdout and "left]" in completed.stdout  # progress lines
  markdown = (out / "reproduce.md").read_text()
  assert "## 3. ListOps against LRA's Table 1" in markdown
  assert "not LRA's release file" in markdown
  assert "| full | none | skipped: estimated" in markdown


def _left(status: str) -> float:
  """The seconds left that a skip's reason names ("..., 12 s left")."""
  return float(status.rsplit(", ", 1)[1].split(" s left")[0])


@pytest.mark.slow
def test_every_experiment_runs_what_fits_and_skips_the_rest(tmp_path):
  # Three seeds of both arms and two ListOps runs do not all fit; the first seed does.
  completed = run_reproduce(tmp_path, "--budget_minutes=4", "--step_tasks=listops",
                            "--seeds=3", "--parallel=2", timeout=900)
  assert completed.returncode == 0, completed.stderr[-3000:]
  out = tmp_path / "out"
  assert sorted(p.name for p in out.iterdir()) == [
      "pathfinder_val_accuracy.png", "reproduce.json", "reproduce.md", "runs.tar.gz"]
  record = json.loads((out / "reproduce.json").read_text())
  assert [(r["task"], r["implementation"], r["status"]) for r in record["steps"]] == [
      ("listops", "pallas", "ok"), ("listops", "xla", "ok")]
  assert all(r["full_run_hours"] > 0 for r in record["steps"])
  statuses = [r["status"].split(":")[0] for r in record["runs"]]
  assert "done" in statuses and "skipped" in statuses, statuses
  assert statuses[:2] == ["done", "done"]  # the first seed of both arms
  for run in record["runs"]:
    if run["status"] == "done":  # the estimate and the time it took, side by side
      assert run["wall_s"] > 0 and run["estimate_over_wall"] == pytest.approx(
          run["estimate_s"] / run["wall_s"])
    else:
      assert run["status"].startswith("skipped")
  with tarfile.open(out / "runs.tar.gz") as archive:
    names = archive.getnames()
  for name in ("results.json", "metrics.jsonl"):
    assert f"runs/pathfinder/longformer_mlm_seed0/{name}" in names
  assert not any("/checkpoints" in n or "/best" in n or "/data/" in n for n in names)
  markdown = (out / "reproduce.md").read_text()
  for heading in ("## 1. Train step", "## 2. Pathfinder", "## 3. ListOps", "## Runs"):
    assert heading in markdown


def config(steps=100, pretrain="none"):
  return types.SimpleNamespace(
      num_train_steps=steps, eval_every_steps=50, eval_batch_size=8, batch_size=4,
      pretrain=types.SimpleNamespace(objective=pretrain, num_steps=60))


def test_estimate_parts():
  cost = estimate.StepCost(setup_s=2.0, step_s=0.1, device_s=0.04, host_cores=1.5, cores=3)
  parts = estimate.run_seconds(config(), cost, startup_s=5.0, eval_examples=(16, 8))
  # 2 evaluations of 2 batches and the test's 1, each a third of a step of twice the batch.
  assert parts == pytest.approx({
      "startup_s": 5.0, "compile_s": 2.0 * estimate.COMPILES_PER_STAGE, "train_s": 10.0,
      "eval_s": 5 * 0.1 / 3 * 2, "total_s": 5.0 + 4.0 + 10.0 + 1 / 3})
  pretrained = estimate.run_seconds(config(pretrain="mlm"), cost, startup_s=5.0,
                                    eval_examples=(0, 0), processes=4)
  assert pretrained["train_s"] == pytest.approx(160 * 0.16)  # the device shared by 4
  # 4 processes want 6 of the 3 cores: the host's work takes twice as long.
  assert pretrained["compile_s"] == pytest.approx(2 * 2.0 * (estimate.COMPILES_PER_STAGE + 1))
  assert pretrained["startup_s"] == pytest.approx(2 * 5.0)
  assert cost.shared_step_s(2) == 0.1  # the host's step is the longer
  assert cost.host_slowdown(2) == 1.0  # 3 cores wanted, 3 there


def test_side_by_side_and_what_fits():
  assert estimate.side_by_side_s([10, 30, 20, 5, 7], 2) == 30 + 20 + 7
  group = lambda count: 10.0 * count
  assert estimate.most_that_fit(group, 4, 25) == 2
  assert estimate.most_that_fit(group, 4, 100) == 4
  assert estimate.most_that_fit(group, 4, 9) == 0


@pytest.mark.parametrize("args, message", [
    (["--budget_minutes=0"], "--budget_minutes=0.0: must be > 0"),
    (["--experiments=steps,lisstops"], "subset of the experiments"),
    (["--step_tasks=enwik8"], "subset of the LRA tasks"),
])
def test_bad_input_ends_in_one_line(tmp_path, args, message):
  completed = run_reproduce(tmp_path, *args, timeout=120)
  assert completed.returncode == 2
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_no_accelerator_without_allow_cpu(tmp_path):
  completed = entry_points.run_module("reproduce", f"--out={tmp_path}", timeout=120)
  assert completed.returncode == 2
  assert "no GPU or TPU here" in completed.stderr.strip().splitlines()[-1]

"""The comparison of attention variants end to end on size=tiny ListOps: sweep, reuse,
efficiency, and bad input."""

import csv
import os

import pytest

from PIL import Image

from tests import entry_points

COMPARISON_COLUMNS = ["variant", "pretrain", "seeds", "test_accuracy_mean", "test_accuracy_std",
                      "best_val_accuracy_mean", "best_val_accuracy_std", "steps_per_sec",
                      "peak_memory_gb", "num_params", "wall_time_s"]


def run_compare(tmp_path, *args):
  return entry_points.run_module(
      "compare", "--config=configs/listops.py", "--size=tiny",
      f"--override=data_cache_dir={tmp_path / 'cache'}", *args, timeout=600)


def read_csv(path):
  with open(path) as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


def assert_png(path):
  with Image.open(path) as image:
    image.verify()


def test_two_variants_then_reuse(tmp_path):
  out = tmp_path / "compare"
  completed = run_compare(tmp_path, "--attention=full,local", "--seeds=1", f"--workdir={out}")
  assert completed.returncode == 0, completed.stderr
  assert "[run 1/2] full seed 0: training" in completed.stdout
  assert "[run 2/2] local seed 0: training" in completed.stdout
  assert "local seed 0 | step 6/6" in completed.stdout  # the trainer's progress, forwarded

  columns, rows = read_csv(out / "comparison.csv")
  assert columns == COMPARISON_COLUMNS
  assert [row["variant"] for row in rows] == ["full", "local"]
  for row in rows:
    assert row["seeds"] == "1" and row["test_accuracy_std"] == ""  # no spread of one seed
    assert 0 <= float(row["test_accuracy_mean"]) <= 1
    for key in ("steps_per_sec", "peak_memory_gb", "num_params", "wall_time_s"):
      assert float(row[key]) > 0, (key, row)
  markdown = (out / "comparison.md").read_text()
  assert "python -m experiments.compare --config=configs/listops.py" in markdown
  assert "| variant | pretrain | seeds | test accuracy |" in markdown
  assert markdown.count("| full | none |") == markdown.count("| local | none |") == 1
  for name in ("val_accuracy.png", "accuracy_vs_throughput.png"):
    assert_png(out / name)
  for run in ("full_seed0", "local_seed0"):
    for name in ("results.json", "metrics.jsonl", "log.txt", "wall_time.json"):
      assert (out / run / name).exists(), (run, name)

  results = out / "local_seed0" / "results.json"
  finished_at = os.path.getmtime(results)
  again = run_compare(tmp_path, "--attention=full,local", "--seeds=1", f"--workdir={out}")
  assert again.returncode == 0, again.stderr
  assert "[run 2/2] local seed 0: reusing the finished run" in again.stdout
  assert "seed 0 | step" not in again.stdout  # nothing trained
  assert os.path.getmtime(results) == finished_at
  assert read_csv(out / "comparison.csv")[1] == rows

  other_size = entry_points.run_module(
      "compare", "--config=configs/listops.py", "--size=small", "--attention=full",
      f"--workdir={out}", timeout=120)
  assert other_size.returncode == 2
  assert "holds a run of another config" in other_size.stderr


@pytest.mark.slow  # the sweep machinery: test_two_variants_then_reuse
def test_from_scratch_against_self_pretrained(tmp_path):
  out = tmp_path / "compare"
  completed = run_compare(tmp_path, "--attention=local", "--pretrain=none,mlm", "--seeds=1",
                          "--override=pretrain.num_steps=2", "--parallel=2", f"--workdir={out}")
  assert completed.returncode == 0, completed.stderr
  assert "[run 1/2] local seed 0: training" in completed.stdout
  assert "[run 2/2] local + mlm seed 0: training" in completed.stdout
  # Side by side: the second run starts before the first has finished.
  assert (completed.stdout.index("[run 2/2]")
          < completed.stdout.index("local seed 0 | results:")), completed.stdout
  _, rows = read_csv(out / "comparison.csv")
  assert [(row["variant"], row["pretrain"]) for row in rows] == [("local", "none"),
                                                                 ("local", "mlm")]
  assert "| local | mlm | 1 |" in (out / "comparison.md").read_text()
  assert (out / "local_mlm_seed0" / "results.json").exists()
  for name in ("val_accuracy.png", "accuracy_vs_throughput.png"):
    assert_png(out / name)


@pytest.mark.slow  # a sweep of step times against length
def test_efficiency_against_length(tmp_path):
  out = tmp_path / "efficiency"
  completed = run_compare(tmp_path, "--efficiency", "--attention=full,local",
                          "--lengths=64,128", "--full_max_length=64", "--steps=1",
                          f"--workdir={out}")
  assert completed.returncode == 0, completed.stderr
  columns, rows = read_csv(out / "efficiency.csv")
  assert columns[:4] == ["variant", "length", "batch", "status"]
  assert [(r["variant"], r["length"], r["status"]) for r in rows] == [
      ("full", "64", "ok"), ("local", "64", "ok"),
      ("full", "128", "skipped: length > --full_max_length=64"), ("local", "128", "ok")]
  assert float(rows[0]["steps_per_sec_vs_full"]) == 1.0
  assert float(rows[1]["steps_per_sec_vs_full"]) > 0 and float(rows[1]["memory_vs_full"]) > 0
  assert rows[3]["steps_per_sec_vs_full"] == ""  # no full attention to compare with
  markdown = (out / "efficiency.md").read_text()
  assert "| variant | length | steps/s | steps/s vs full |" in markdown
  assert "local, from length 64 to 128: peak memory grows as length^" in markdown
  assert "local is" in markdown and "than full" in markdown  # where it overtakes full
  assert_png(out / "efficiency.png")


def test_bad_input_ends_in_one_line(tmp_path):
  for args, message in [
      (["--attention=full,flash"], "must be a comma-separated subset of"),
      (["--config=configs/listops.py:attention=full"], "choose the variants with --attention"),
      (["--config=configs/listops.py:pretrain=mlm"], "the pretraining with --pretrain"),
      (["--pretrain=none,bert"], "subset of the pretraining objectives (none,mlm,causal)"),
      (["--config=configs/listops.py:windw=3"], "unknown config argument 'windw'"),
  ]:
    completed = run_compare(tmp_path, *args, f"--workdir={tmp_path / 'out'}")
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines

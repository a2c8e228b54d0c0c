"""The entry points' terminal: one clear line for every mistake, its cause kept, and no other
library's INFO logging (it goes to the workdir's log)."""

import re

from tests.entry_points import run_module

TINY = "--config=configs/listops.py:attention=longformer,size=tiny"
# absl's prefix of a log line: level letter, date, time, thread, file:line.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]")


def one_error_line(result) -> str:
  """The `error:` line of a failed run, checked to be its only output and no traceback."""
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr + result.stdout
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


def test_missing_config_file_is_named_with_the_files_there(tmp_path):
  line = one_error_line(run_module("train", "--config=configs/listopz.py:size=tiny",
                                   f"--workdir={tmp_path / 'run'}", timeout=120))
  assert "config file configs/listopz.py not found" in line
  assert "configs/listops.py" in line  # what there is
  assert not (tmp_path / "run").exists()


def test_workdir_that_is_a_file_is_named_and_kept(tmp_path):
  workdir = tmp_path / "notes.txt"
  workdir.write_text("mine")
  line = one_error_line(run_module("train", TINY, f"--workdir={workdir}", timeout=120))
  assert f"--workdir={workdir} is a file, not a folder" in line
  assert workdir.read_text() == "mine"


def test_override_under_a_missing_section_names_the_sections(tmp_path):
  line = one_error_line(run_module("train", TINY, "--config.model.attention.dilation=2",
                                   f"--workdir={tmp_path / 'run'}", timeout=120))
  assert "config.model has no section 'attention'" in line
  assert "config.attention, config.data, config.mesh, config.model, config.optimizer" in line
  assert "did you mean --config.attention.dilation?" in line


def test_missing_field_suggests_the_close_one(tmp_path):
  line = one_error_line(run_module("train", TINY, "--config.model.num_layerz=2",
                                   f"--workdir={tmp_path / 'run'}", timeout=120))
  assert "no such config field 'num_layerz' in config.model" in line
  assert "did you mean 'num_layers'?" in line


def test_attribute_error_in_a_config_file_is_not_called_a_missing_field(tmp_path):
  config_file = tmp_path / "broken.py"
  config_file.write_text("def get_config(arg=None):\n  return None.lock\n")
  line = one_error_line(run_module("train", f"--config={config_file}",
                                   f"--workdir={tmp_path / 'run'}", timeout=120))
  assert "no such config field" not in line
  assert "AttributeError" in line and "has no attribute 'lock'" in line


def test_verbosity_shows_the_cause_above_the_line(tmp_path):
  result = run_module("train", TINY, "--config.model.attention.dilation=2", "--verbosity=0",
                      f"--workdir={tmp_path / 'run'}", timeout=120)
  assert result.returncode == 2
  assert "Traceback" in result.stderr and "config_path.py" in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.model has no")


def test_a_run_prints_only_its_own_lines_and_logs_the_rest(tmp_path):
  result = run_module("train", TINY, f"--workdir={tmp_path / 'run'}",
                      f"--config.data_cache_dir={tmp_path / 'cache'}", timeout=300)
  assert result.returncode == 0, result.stderr
  lines = (result.stdout + result.stderr).splitlines()
  assert not [line for line in lines if ABSL_LINE.match(line)], lines
  assert lines[0].startswith("ListOps: ") and "examples in" in lines[0]  # generated here
  assert any(line.startswith("Training listops (longformer attention") for line in lines)
  assert any(line.startswith("step 6/6 | loss ") for line in lines)
  assert any(line.startswith("  validation at step 6: ") for line in lines)
  assert lines[-2].startswith("test accuracy: ") and lines[-1].startswith("results: ")
  log = (tmp_path / "run" / "train.log").read_text()
  assert "checkpoint_manager.py" in log  # orbax's INFO lines are in the log
  assert "step 6/6 | loss " in log  # and so are the run's own lines

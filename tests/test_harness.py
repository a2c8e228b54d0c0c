"""The benchmarks' shared harness: a measurement in a child process, its failure in one
line, timing, memory, and the Markdown tables."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import harness
from tests.entry_points import REPO


def test_a_child_record_is_its_last_stdout_line():
  script = "print('library chatter'); print('{\"median_s\": 0.5}')"
  assert harness.measure_in_child([sys.executable, "-c", script]) == {"status": "ok",
                                                                     "median_s": 0.5}


def test_a_failed_child_is_one_status_line():
  script = "import sys; sys.stderr.write('ValueError: too long\\n'); sys.exit(1)"
  record = harness.measure_in_child([sys.executable, "-c", script])
  assert record == {"status": "failed: exit 1: ValueError: too long"}
  killed = harness.measure_in_child([sys.executable, "-c",
                                     "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
  assert killed["status"].startswith("failed: killed by signal 9")


def test_child_failure_names_the_error_line_and_shows_the_tail(capsys):
  script = ("import sys; sys.stderr.write('Traceback (most recent call last):\\n  File x\\n"
            "ValueError: the real cause\\nW1203 12:00:00.000000 1 atexit.py:1] late chatter\\n')"
            "; sys.exit(3)")
  completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             cwd=REPO, check=False)
  assert harness.child_failure(completed) == "exit 3: ValueError: the real cause"
  shown = capsys.readouterr().err
  assert "  |   File x" in shown and "late chatter" in shown


@pytest.mark.parametrize("stderr, expected", [
    ("I1203 chatter\nerror: config.batch_size=3 does not divide\n", "exit 2: error: config."),
    ("", "exit 2: no output"),
])
def test_child_failure_without_a_traceback(stderr, expected):
  completed = subprocess.CompletedProcess([], 2, stdout="", stderr=stderr)
  assert harness.child_failure(completed).startswith(expected)


def test_huge_pages_are_added_to_the_tunables_already_set(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  env = harness.child_env(huge_pages=True, JAX_PLATFORMS="cpu")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert env["JAX_PLATFORMS"] == "cpu"
  assert harness.child_env()["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"


def test_time_calls_times_the_calls_after_the_warmup():
  calls = []
  timing = harness.time_calls(lambda: calls.append(1), warmup=2, repeats=3)
  assert len(calls) == 5
  assert (len(timing["warmup_s"]), len(timing["times_s"])) == (2, 3)
  assert timing["median_s"] == sorted(timing["times_s"])[1]


def test_compiled_memory_counts_arguments_outputs_and_temporaries():
  x = jnp.ones((256, 256), jnp.float32)
  memory = harness.compiled_memory_gb(jax.jit(lambda a: a @ a).lower(x).compile())
  assert memory["argument_gb"] == memory["output_gb"] == 256 * 256 * 4 / 1e9
  assert memory["memory_gb"] >= memory["argument_gb"] + memory["output_gb"]


def test_the_peak_rss_is_at_least_the_rss_now():
  now_gb = harness.rss_gb()  # psutil's import grows the RSS, so it is read first
  assert harness.peak_rss_gb() >= now_gb > 0


def test_quadratic_skip_names_the_limit_it_passes():
  skip = lambda length, gb: harness.quadratic_skip(length, gb, full_max_length=64,
                                                    memory_limit_gb=1.0, what="score tensor")
  assert skip(64, 0.5) is None
  assert skip(128, 0.5) == "skipped: length > --full_max_length=64"
  assert skip(64, 2.0) == "skipped: its 2.0 GB score tensor > --memory_limit_gb=1.0"
  assert harness.quadratic_skip(64, 1e6, full_max_length=64, memory_limit_gb=None,
                                what="score tensor").startswith("skipped: its 1000000.0 GB")


def test_markdown_table():
  lines = harness.markdown_table(["name", "time (s)"], "lr",
                                 [["local", harness.fmt(0.12345, ".3f")],
                                  ["full", harness.fmt(None, ".3f")]])
  assert lines == ["| name | time (s) |", "|---|---:|", "| local | 0.123 |", "| full |  |"]


def test_write_outputs_writes_what_it_is_given(tmp_path):
  rows = [{"name": "a", "length": 8, "status": "ok", "s": 1.0, "extra": 3}]
  harness.write_outputs(str(tmp_path / "out"), "bench", markdown="# table\n",
                        columns=("name", "s"), rows=rows, record={"rows": rows})
  assert (tmp_path / "out" / "bench.md").read_text() == "# table\n"
  assert (tmp_path / "out" / "bench.csv").read_text().splitlines() == ["name,s", "a,1.0"]
  assert json.loads((tmp_path / "out" / "bench.json").read_text()) == {"rows": rows}
  assert not (tmp_path / "out" / "bench.png").exists()

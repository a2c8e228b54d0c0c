"""The benchmarks' shared harness: a measurement in a child process, its failure in one
line, rounds pooled, host and device timing, memory, the rows and their FLOP count, and the
Markdown tables."""

import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import harness
from lra import attention
from lra.attention.kernels import gpu as gpu_kernels
from lra.attention.kernels import launch
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


def test_rounds_pool_their_calls_and_keep_the_largest_memory():
  slow_round = {"status": "ok", "times_s": [5.0, 6.0, 7.0], "warmup_s": [9.0],
                "median_s": 6.0, "setup_rss_gb": 0.2, "peak_rss_gb": 0.5}
  fast_round = {"status": "ok", "times_s": [1.0, 2.0], "warmup_s": [8.0], "median_s": 1.5,
                "setup_rss_gb": 0.1, "peak_rss_gb": 0.7}
  failed = {"status": "failed: exit 1"}
  pooled = harness.pool_rounds([failed, slow_round, fast_round])
  assert pooled["median_s"] == 5.0  # the median of 1, 2, 5, 6, 7
  assert (pooled["peak_rss_gb"], pooled["setup_rss_gb"], pooled["rounds"]) == (0.7, 0.2, 2)
  assert pooled["warmup_s"][0] == 9.0  # the first round's compiling call
  assert harness.pool_rounds([failed, failed]) == failed


def test_time_calls_times_the_calls_after_the_warmup():
  calls = []
  timing = harness.time_calls(lambda: calls.append(1), warmup=2, repeats=3)
  assert len(calls) == 5
  assert (len(timing["warmup_s"]), len(timing["times_s"])) == (2, 3)
  assert timing["median_s"] == sorted(timing["times_s"])[1]


def test_cupti_timings_are_summed_per_call_and_kept_per_kernel():
  calls = [[("band_attention_forward", 1.0), ("fusion", 0.5), ("fusion", 0.25)],
           [("band_attention_forward", 3.0), ("fusion", 0.5), ("fusion", 0.5)],
           [("band_attention_forward", 2.0), ("fusion", 1.0), ("fusion", 1.0)]]
  record = harness.cupti_record(calls)
  assert record["timer"] == "cupti"
  assert record["times_s"] == pytest.approx([1.75e-3, 4e-3, 4e-3])
  assert record["median_s"] == pytest.approx(4e-3)
  # Each kernel's median over the calls, its launches in one call summed first.
  assert record["kernel_s"] == pytest.approx({"band_attention_forward": 2e-3, "fusion": 1e-3})


def test_device_time_without_cupti_is_the_host_time_of_queued_calls():
  calls = []
  add = jax.jit(lambda x: x + 1)
  add(jnp.ones(4))  # compiled before, as time_on_device expects

  def slow(x):  # 10 ms of host time per call
    calls.append(1)
    time.sleep(0.01)
    return add(x)

  record = harness.time_on_device(slow, (jnp.ones(4),), repeats=3)
  assert len(calls) == 3
  assert record["timer"] == "host, queued" and "no CUPTI on the cpu backend" in record["fallback"]
  assert 0.01 <= record["median_s"] == record["times_s"][0] < 0.025  # per call, not for 3


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


@pytest.mark.parametrize("length,window,dilations,global_positions,causal", [
    (64, 8, (1,), (), False),
    (10, 4, (1,), (), False),  # a window wider than half the sequence
    (37, 3, (1, 2, 3), (), False),
    (40, 5, (1, 2), (0,), False),
    (33, 4, (2,), (0, 16, 17), False),
    (29, 3, (1, 3), (), True),
    (17, None, (1,), (), False),
    (17, None, (1, 1), (), True),
])
def test_pattern_pairs_counts_the_oracle_pattern(length, window, dilations, global_positions,
                                                 causal):
  global_mask = None
  if global_positions:
    global_mask = np.zeros((1, length), bool)
    global_mask[0, list(global_positions)] = True
  mask = attention.pattern_mask(length, window=window, dilation=dilations, causal=causal,
                                num_heads=len(dilations), global_mask=global_mask)
  assert harness.pattern_pairs(length, window, dilations, global_positions,
                               causal=causal) == int(np.sum(mask))


@pytest.mark.parametrize("dilations", [(), (1, 3, 3, 3)])
def test_every_registry_variant_is_a_row_counted_by_its_pattern(dilations):
  setup = harness.Setup(window=3, heads=4, head_dim=8, batch=1, dtype="float32",
                        dilations=dilations)
  rows = harness.rows(setup)
  length = 23
  global_mask = np.zeros((1, length), bool)
  global_mask[0, 0] = True
  for name, (mechanism, preset) in attention.variants().items():
    causal = (False, True) if "causal" in mechanism.options else (False,)
    implementations = (None, *mechanism.implementations)
    if "implementation" not in mechanism.options:
      implementations = (None,)
    for is_causal in causal:
      config = attention.variant_config(name, num_heads=4, window=3, max_global=1,
                                        causal=is_causal or None)
      if preset and dilations:
        config["dilation"] = dilations
      pattern = attention.build(config, 4).pattern(length, global_mask=global_mask)
      for implementation in implementations:
        row_name = "_".join(p for p in (name, is_causal and "causal", implementation) if p)
        row = rows[row_name]
        assert row.count_pairs(length) == int(np.sum(pattern)), row_name
        assert row.inputs == (6 if mechanism.uses_global else 3)
        assert row.quadratic == mechanism.quadratic
        if implementation == "pallas":
          assert rows[row_name + "_fused"].backward == "fused"


def test_a_row_traces_its_implementation_backward_and_launch_settings():
  """`local_causal_pallas_fused` traces the Pallas kernels with the fused backward (no dQ
  kernel) at the launch settings asked for; the same row on `xla` traces no kernel."""
  rows = harness.rows(harness.Setup(window=4, heads=2, head_dim=8, batch=1, dtype="float32"))
  q = jnp.zeros((1, 32, 2, 8))
  settings = {kernel: launch.Settings(2, 5) for kernel in launch.KERNELS}

  def traced(name, **options):
    return str(harness.trace_forward_backward(rows[name], (q, q, q, q), **options).jaxpr)

  fused = traced("local_causal_pallas_fused", settings=settings)
  assert "band_attention_d_key_value" in fused and "band_attention_d_query" not in fused
  assert "num_warps=2, num_stages=5" in fused
  split = traced("local_causal_pallas")
  assert "band_attention_d_query" in split and "num_warps=2" not in split
  assert "pallas_call" not in traced("local_causal_xla")
  assert gpu_kernels.BACKWARD == "split"  # restored


def test_rows_that_need_what_is_missing_say_so():
  assert harness.unmet(()) is None
  assert harness.unmet(("gpu",)) == "skipped: needs a GPU"
  assert harness.unmet(("no_such_package",)) == (
      "skipped: no_such_package is not installed for this Python")

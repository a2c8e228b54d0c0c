"""The attention-pattern figure end to end, and its flag errors."""

from PIL import Image

from tests import entry_points


def run_plot(*args):
  return entry_points.run_module("plot_patterns", *args, timeout=120)


def test_every_mechanism_draws_one_png(tmp_path):
  completed = run_plot("--attention=full,local,dilated,longformer", "--causal=local",
                       "--length=24", "--block_size=4",
                       f"--out={tmp_path}")
  assert completed.returncode == 0, completed.stderr
  path = tmp_path / "attention_patterns.png"
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG"
    width, height = image.size
    assert width > 600 and height > 600  # a 2 x 3 grid of readable panels


def test_unknown_mechanism_ends_in_one_line(tmp_path):
  completed = run_plot("--attention=local,flash", f"--out={tmp_path}")
  assert completed.returncode == 2
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and "flash" in lines[0], lines
  assert not (tmp_path / "attention_patterns.png").exists()


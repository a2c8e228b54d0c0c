"""The project's import arrows, read from the source (every import statement, those inside
functions too, so that a lazy import cannot cross a layer either).

- Packages: attention <- models <- trainer -> data, nothing across.
- Inside `lra.attention`, a total order: each module imports only modules before it.
- No import cycle anywhere in `lra/`.
- No module takes another module's private name (`from m import _x`, or `m._x`).
"""

import ast
import os

import pytest

from tests.entry_points import REPO

# Package -> the project modules its files may import (a name covers its submodules).
ALLOWED = {
    "lra.attention": ("lra.errors", "lra.attention"),
    "lra.models": ("lra.errors", "lra.tokens", "lra.attention", "lra.models"),
    "lra.data": ("lra.errors", "lra.tokens", "lra.data", "lra.input_pipeline"),
}

# The layers of `lra.attention`, bottom first: shared helpers; the oracle, the XLA core and
# the Pallas kernels; the single-device functions (and decoding over a rolling cache);
# sequence parallelism; the public functions, the registry and the Flax modules.
ATTENTION_ORDER = [
    "lra.attention.common",
    "lra.attention.reference",
    "lra.attention.xla_core",
    "lra.attention.kernels.launch",
    "lra.attention.kernels.tiles",
    "lra.attention.kernels.walks",
    "lra.attention.kernels.call",
    "lra.attention.kernels.gpu",
    "lra.attention.kernels.tpu",
    "lra.attention.kernels",
    "lra.attention.sliding",
    "lra.attention.decoding",
    "lra.attention.longformer",
    "lra.attention.sequence_parallel",
    "lra.attention.api",
    "lra.attention",
    "lra.attention.layers",
]


def module_name(path: str) -> str:
  name = os.path.relpath(path, REPO)[:-len(".py")].replace(os.sep, ".")
  return name[:-len(".__init__")] if name.endswith(".__init__") else name


def is_module(name: str) -> bool:
  path = os.path.join(REPO, *name.split("."))
  return os.path.isdir(path) or os.path.exists(path + ".py")


def _parse(path: str) -> ast.Module:
  with open(path) as f:
    return ast.parse(f.read(), path)


def project_imports(path: str) -> set[str]:
  """The project modules a file imports; `from a import b` counts as `a.b` when that is a
  module, else as `a`."""
  found = set()
  for node in ast.walk(_parse(path)):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        found.add(submodule if is_module(submodule) else node.module)
  return {name for name in found if name.split(".")[0] in ("lra", "experiments")}


def private_names_taken(path: str) -> list[str]:
  """`from m import _x` and `m._x` for project modules `m` imported by the file."""
  tree = _parse(path)
  bound, taken = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        ("lra", "experiments")):
      for alias in node.names:
        if alias.name.startswith("_"):
          taken.append(f"{node.module}.{alias.name}")
        if is_module(f"{node.module}.{alias.name}"):
          bound.add(alias.asname or alias.name)
    elif isinstance(node, ast.Import):
      bound |= {alias.asname for alias in node.names
                if alias.asname and alias.name.startswith(("lra", "experiments"))}
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in bound and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      taken.append(f"{node.value.id}.{node.attr}")
  return taken


def package_files(package: str) -> list[str]:
  folder = os.path.join(REPO, *package.split("."))
  return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                for name in names if name.endswith(".py"))


def test_project_imports_reads_every_form(tmp_path, monkeypatch):
  source = tmp_path / "module.py"
  source.write_text("import lra.data\nfrom lra import models as m, errors\n"
                    "from lra.attention import common\nfrom lra.attention import nothing\n"
                    "import numpy\n\ndef lazy():\n  from lra import train\n")
  assert project_imports(str(source)) == {"lra.data", "lra.models", "lra.errors",
                                          "lra.attention.common", "lra.attention", "lra.train"}


def test_private_names_are_found(tmp_path):
  source = tmp_path / "module.py"
  source.write_text("from lra.attention import sliding\nfrom lra.data import _helper\n"
                    "import lra.train as train\n\n"
                    "def f():\n  return sliding._fold(train._step, sliding.__name__)\n")
  assert sorted(private_names_taken(str(source))) == [
      "lra.data._helper", "sliding._fold", "train._step"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below(package):
  files = package_files(package)
  assert files, package
  crossing = {}
  for path in files:
    bad = sorted(name for name in project_imports(path)
                 if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED[package]))
    if bad:
      crossing[os.path.relpath(path, REPO)] = bad
  assert not crossing, f"{package} may import only {ALLOWED[package]}; found {crossing}"


def test_attention_imports_point_down():
  modules = {module_name(path): path for path in package_files("lra.attention")}
  assert sorted(modules) == sorted(ATTENTION_ORDER), "list every module in ATTENTION_ORDER"
  upward = {}
  for name, path in modules.items():
    below = ATTENTION_ORDER[:ATTENTION_ORDER.index(name)]
    bad = sorted(imported for imported in project_imports(path)
                 if imported.startswith("lra.attention") and imported not in below)
    if bad:
      upward[name] = bad
  assert not upward, f"imports of a module at or above the importer's layer: {upward}"


def test_no_import_cycle():
  graph = {module_name(path): {name for name in project_imports(path) if name.startswith("lra")}
           for path in package_files("lra")}
  state = {}

  def visit(name, trail):
    if state.get(name) == "done" or name not in graph:
      return
    assert state.get(name) != "open", f"import cycle: {' -> '.join(trail + [name])}"
    state[name] = "open"
    for imported in sorted(graph[name]):
      # A package's own submodules are imported through it by construction.
      if not imported.startswith(name + "."):
        visit(imported, trail + [name])
    state[name] = "done"

  for name in sorted(graph):
    visit(name, [])


@pytest.mark.parametrize("folder", ["lra", "experiments"])
def test_no_private_name_crosses_a_module(folder):
  taken = {os.path.relpath(path, REPO): names for path in package_files(folder)
           if (names := private_names_taken(path))}
  assert not taken, f"private names of other modules: {taken}"

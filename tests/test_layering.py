"""The package's import arrows: attention <- models <- trainer -> data, nothing across.

Read from the source (every import statement, those inside functions too), so that a
lazy import cannot cross a layer either.
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


def project_imports(path: str) -> set[str]:
  """The `lra...` modules a file imports; `from lra import x` counts as `lra.x`."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found |= {f"{node.module}.{alias.name}" if node.module == "lra" else node.module
                for alias in node.names}
  return {name for name in found if name == "lra" or name.startswith("lra.")}


def package_files(package: str) -> list[str]:
  folder = os.path.join(REPO, *package.split("."))
  return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                for name in names if name.endswith(".py"))


def test_project_imports_reads_every_form(tmp_path):
  source = tmp_path / "module.py"
  source.write_text("import lra.data\nfrom lra import models as m, errors\n"
                    "from lra.attention import common\nimport numpy\n\n"
                    "def lazy():\n  from lra import train\n")
  assert project_imports(str(source)) == {"lra.data", "lra.models", "lra.errors",
                                          "lra.attention", "lra.train"}


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

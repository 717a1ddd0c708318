"""The installed stockflow works without a checkout: package-data names files that exist, and
bench (`stockflow bench`) imports nothing from tests/. tests/integration/test_wheel.py builds
and runs the wheel itself."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "schemas", "connectors", "topologies", "bench")


def test_every_package_data_entry_names_files_that_exist() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    for package, globs in package_data.items():
        folder = ROOT / package.replace(".", "/")
        assert (folder / "__init__.py").exists(), f"package-data names no package: {package}"
        for pattern in globs:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches no file"


def test_no_installed_module_imports_tests() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                          for n in names if n == "tests" or n.startswith("tests.")]
    assert not found, "\n".join(found)

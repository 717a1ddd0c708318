"""Folder imports run one way: ground (schemas, pipeline) <- runtime | connectors <- topologies
<- bench <- shell (pipeline/shell); and the ground floor imports no Faust, not even lazily, so
importing it installs no Faust extension (those live in topologies/runtime/)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "pipeline", "connectors", "topologies", "bench")

# (part, floor) by the longest matching module prefix. A module may import its own part and
# the parts of lower floors; runtime and connectors share a floor and must not import each other.
PARTS: dict[str, tuple[str, int]] = {
    "schemas": ("ground", 0),
    "pipeline": ("ground", 0),
    "topologies.runtime": ("runtime", 1),
    "connectors": ("connectors", 1),
    "topologies": ("topologies", 2),
    "bench": ("bench", 3),
    "pipeline.shell": ("shell", 4),
}


# Faust and its runtime library. (aiokafka is allowed: schemas/fastcode.py uses its compiled
# varint codec, a plain function that patches nothing.)
FAUST = ("faust", "mode")


def part_of(module: str) -> tuple[str, int]:
    best = max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len)
    return PARTS[best]


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in a file, function-local ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pipeline import tracing` names a module too: judge the longer name.
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def arrows() -> list[tuple[str, int, str, str, str]]:
    """(file, line, imported module, from part, to part) of every cross-part import."""
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            mine = part_of(module_of(path))
            for line, name in imports_of(path):
                if name.split(".")[0] not in PACKAGES:
                    continue
                theirs = part_of(name)
                if theirs[0] != mine[0]:
                    out.append((str(path.relative_to(ROOT)), line, name, mine[0], theirs[0]))
    return out


def test_no_import_runs_up_or_sideways() -> None:
    floors = {part: floor for part, floor in PARTS.values()}
    wrong = [f"{file}:{line} imports {name} ({src} -> {dst})"
             for file, line, name, src, dst in arrows() if floors[dst] >= floors[src]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from pipeline.shell.cli import main\n")
    ((_, name),) = imports_of(source)
    assert part_of(name) == ("shell", 4) and part_of("pipeline.step") == ("ground", 0)
    assert part_of("topologies.runtime.worker") == ("runtime", 1)


def test_ground_floor_names_no_faust() -> None:
    found = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if part_of(module_of(path))[0] == "ground"
             for line, name in imports_of(path)
             if name.split(".")[0] in FAUST]
    assert not found, "\n".join(found)


def ground_modules() -> list[str]:
    return sorted(module_of(p) for package in ("schemas", "pipeline")
                  for p in (ROOT / package).rglob("*.py")
                  if part_of(module_of(p))[0] == "ground")


@pytest.mark.parametrize("modules", [["pipeline"], ground_modules()], ids=["pipeline", "ground"])
def test_importing_the_ground_floor_loads_no_faust(modules: list[str]) -> None:
    # A fresh interpreter: this test process has imported the app already.
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules\n"
            f"    if m.split('.')[0] in {(*FAUST, 'topologies')!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert json.loads(proc.stdout.splitlines()[-1]) == []

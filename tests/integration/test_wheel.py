"""`stockflow bench` from the installed wheel: built from the tracked files, unpacked outside
the checkout, its benchmarks imported and its command run (about 40 s, no services)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_the_wheel_runs_bench_outside_the_checkout(tmp_path: Path) -> None:
    # Build from a copy of the tracked files, so the checkout gets no build/ folder.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    # Build isolation: pip brings the setuptools pyproject.toml asks for (from its cache).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("stockflow-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    for shipped in ("connectors/redis/cache.lua", "schemas/supplier_delta.avsc",
                    "pipeline/shell/stack_files/kafka-server.properties",
                    "pipeline/shell/stack_files/cassandra.yaml"):
        assert shipped in names
    assert not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "stockflow = pipeline.shell.cli:main" in (site / entry).read_text()
    # The wheel's files first on the path, run from a folder that is not the checkout (the
    # dependencies still come from this interpreter's site-packages).
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = ("import bench.end_to_end, bench.topology, pipeline, bench\n"
             f"assert pipeline.__file__.startswith({str(site)!r}), pipeline.__file__\n"
             f"assert bench.__file__.startswith({str(site)!r}), bench.__file__\n"
             "from pipeline.shell.stack import _kafka_properties\n"
             "from pathlib import Path\n"
             "assert 'node.id=1' in _kafka_properties(Path('/d'))\n"
             "import connectors.redis.cache\n")
    subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "pipeline.shell.cli", "bench", "--help"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Usage" in proc.stdout

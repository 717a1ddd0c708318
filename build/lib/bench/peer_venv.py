"""The Quix Streams baseline's own venv, built on demand (Quix pins its own confluent-kafka).

    python -m bench.peer_venv        # build or check .stockflow/bench-venvs/quix

`python -m venv` + `pip install` of Quix Streams, and of the fastavro version of stockflow's
own venv: the Quix process runs stockflow's codec (schemas/codec.py) and rules, so the Avro
work is the same code.
A stamp file holding the requirements marks a finished venv; a different or missing stamp
rebuilds it. Without a network (or with any pip failure) the caller gets the reason instead
of a venv, and the benchmark goes on without Quix.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.harness import ROOT

QUIX_VENV = ROOT / ".stockflow" / "bench-venvs" / "quix"
QUIXSTREAMS = "quixstreams==3.28.*"
STAMP = "stockflow-bench-requirements.txt"


@dataclass(frozen=True)
class PeerVenv:
    """A usable venv (python set) or why there is none (reason set)."""

    python: Path | None
    reason: str = ""
    built: bool = False


def quix_requirements() -> list[str]:
    """Quix Streams plus stockflow's codec dependencies at the versions of this venv."""
    reqs = [QUIXSTREAMS]
    for dist in ("fastavro",):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def ensure_quix_venv(venv: Path = QUIX_VENV, *, timeout_s: float = 900) -> PeerVenv:
    """The Quix venv, built if missing or stale; never raises for a failed build."""
    reqs = quix_requirements()
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    wanted = "\n".join(reqs) + "\n"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Two benchmarks started together must not build into the same directory.
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted and python.exists():
            return PeerVenv(python)
        shutil.rmtree(venv, ignore_errors=True)
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--retries", "1", "--timeout", "20", *reqs]]
        for cmd in steps:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                      check=False)
            except subprocess.TimeoutExpired:
                return PeerVenv(None, f"`{' '.join(cmd[:4])} ...` did not finish in "
                                      f"{timeout_s:.0f} s (no network?)")
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                shutil.rmtree(venv, ignore_errors=True)
                return PeerVenv(None, f"could not build {venv} (no network?): "
                                      f"`{' '.join(cmd[2:5])} ...` exited {proc.returncode}: "
                                      + " | ".join(tail))
        stamp.write_text(wanted)
        return PeerVenv(python, built=True)


def main() -> None:
    """Build (or check) the venv and say where it is or why it cannot be made."""
    got = ensure_quix_venv()
    if got.python is None:
        print(f"Quix Streams venv: {got.reason}", file=sys.stderr)
        raise SystemExit(1)
    print(f"Quix Streams venv {'built' if got.built else 'ready'}: {got.python}")


if __name__ == "__main__":
    main()

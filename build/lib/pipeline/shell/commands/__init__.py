"""Sub-commands of `stockflow`, one module per area; each module exposes `register(app)`.

Modules are discovered, so an area adds its commands without touching the others.
Keep heavy imports inside the command bodies: `stockflow --help` must stay fast.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register(app: typer.Typer) -> None:
    """Import every module of this package and let it add its commands to `app`."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app)

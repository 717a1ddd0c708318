"""The app's boot strategy: Faust's sensors, web server and agents, then the batch runtime.

Faust's own Kafka consumer, producer, conductor and table manager are not started: the batch
runtime (worker.py) consumes, produces and restores the tables. The versions this was written
and tested against are pinned here and checked when the app is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Any

from faust.app.base import BootStrategy

from pipeline.errors import StockflowError

# The Faust and client versions whose internals the runtime relies on (tests/unit/
# test_runtime_faust.py checks each behaviour). pyproject.toml pins the same.
PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "confluent-kafka": "2.16.1"}


class VersionError(StockflowError):
    """An installed library is not the version the runtime was tested with."""


def check_versions(pinned: dict[str, str] = PINNED) -> None:
    """Refuse to start on a library version the runtime was not tested with."""
    wrong = []
    for package, version in pinned.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            wrong.append(f"{package} {installed} (tested: {version})")
    if wrong:
        raise VersionError(
            "stockflow's worker runtime extends these libraries and was tested with other "
            "versions: " + ", ".join(wrong) + ". Install from the lock file "
            "(pip install -c constraints.txt -e .).")


class BatchBootStrategy(BootStrategy):
    """Start sensors, the web server, the agents and then the batch runtime."""

    def __init__(self, app: Any, *, runtime: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.runtime = runtime

    def server(self) -> Iterable[Any]:
        return self._chain(self.sensors(), self.web_server(), self.agents(), [self.runtime])

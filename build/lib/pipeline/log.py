"""structlog, configured once at the entry point: JSON lines in production, a terminal console."""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure_logging(*, json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog and stdlib logging once; later calls are ignored.

    json=None picks JSON when stderr is not a terminal (production, CI, pipes).
    """
    global _configured
    if _configured:
        return
    _configured = True
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer
        ])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in ("aiokafka", "kafka", "cassandra", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
    # Except table recovery: a few lines per rebalance that tell on-call where a slow start
    # goes ("Restoring state from changelog topics...", "Recovery complete", "Worker ready").
    logging.getLogger("faust.tables.recovery").setLevel(root.level)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger; bind supplier/sku/event_id/topic/partition/offset per event."""
    return structlog.get_logger(name)

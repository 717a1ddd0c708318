"""The worker process (`stockflow worker`): the app's metrics endpoint and tracing set up, then
the app run by Faust's Worker. Imports the app only when called, after the malloc arenas are
capped."""

from __future__ import annotations


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before librdkafka and RocksDB start their threads: with one
    arena per thread (glibc's default, up to 8 per core) their freed buffers stay spread over
    many arenas and the worker's RSS grows far past what it uses."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return


def run_worker() -> None:
    """Run the worker process until it is stopped: metrics, tracing, then the app's agents
    and its batch runtime under Faust's Worker."""
    _limit_malloc_arenas()
    from prometheus_client import REGISTRY, start_http_server

    from pipeline import tracing
    from pipeline.log import get_logger
    from topologies.app import app, settings
    from topologies.runtime import lag
    from topologies.runtime.metrics import UncommittedOffsetsCollector

    # Consumer lag per topic-partition, looked up when Prometheus scrapes
    # (topologies/runtime/lag.py), and how far processing ran past the committed offsets
    # (the runtime's own view).
    lag.install(settings)
    tracing.configure(settings, "stockflow-worker")
    REGISTRY.register(UncommittedOffsetsCollector(app))
    start_http_server(settings.metrics_port, addr=settings.bind_host)
    get_logger("stockflow.worker").info(
        "worker.starting", app_id=settings.app_id, broker=settings.kafka_bootstrap_servers,
        guarantee=settings.processing_guarantee, metrics_port=settings.metrics_port,
        topic_prefix=settings.topic_prefix, tracing=tracing.ENABLED)
    from faust.worker import Worker

    app.discover()
    from pipeline import gc_tuning

    thresholds = gc_tuning.tune(settings.gc_young_threshold)
    get_logger("stockflow.worker").debug("worker.gc", thresholds=thresholds)
    Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
           override_logging=False).execute_from_commandline()

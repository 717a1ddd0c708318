"""The composition root: the one Faust app of stockflow; agents are discovered from topologies/."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from pipeline.settings import Settings, get_settings


def _credentials(settings: Settings) -> Any:
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    ssl_context: ssl.SSLContext | None = None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        ssl_context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
        if settings.kafka_ssl_certfile:
            ssl_context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password.get_secret_value() \
            if settings.kafka_sasl_password else ""
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username or "", password=password,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN", ssl_context=ssl_context)
    return faust.SSLCredentials(ssl_context)


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app from settings, with the batch runtime installed (topologies/runtime)."""
    from topologies import runtime

    app = faust.App(
        settings.app_id,
        broker=settings.kafka_broker_url,
        broker_credentials=_credentials(settings),
        datadir=str(settings.data_dir),
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        web_port=settings.web_port,
        web_bind=settings.bind_host,
        autodiscover=["topologies"],
        origin="topologies",
    )
    runtime.install(app, settings)
    return app


settings = get_settings()
app = create_app(settings)


def avro_table(name: str, record: str, *, help: str) -> Any:
    """A table keyed by raw bytes whose values are Avro records (in RocksDB and the changelog),
    kept decoded in memory by the batch runtime (topologies/runtime/table.py)."""
    # TableT (Faust's stub) lacks the BatchTable keywords.
    table: Any = app.Table(name, default=None, key_type=bytes, partitions=settings.partitions,
                           help=help, record=record)
    return table

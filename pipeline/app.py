"""The composition root: the one Faust app of stockflow; agents are discovered from topologies/."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from pipeline import offsets, recovery, transactions
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
    """Build the Faust app from settings (tests pass their own settings: memory store etc.)."""
    return faust.App(
        settings.app_id,
        broker=settings.kafka_broker_url,
        broker_credentials=_credentials(settings),
        store=table_store(settings),
        datadir=str(settings.data_dir),
        processing_guarantee=settings.processing_guarantee,
        broker_commit_interval=settings.commit_interval_s,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        web_port=settings.web_port,
        web_bind=settings.bind_host,
        autodiscover=["topologies"],
        origin="pipeline",
        # The Kafka timestamp of each delta starts the freshness clock; keep it from the
        # producer rather than the broker.
        producer_acks=-1,
        # Batch the many small records an agent sends (changelog + outputs) into fewer produce
        # requests: with linger 0 every send is its own request and socket writes dominate.
        producer_linger=settings.producer_linger_s,
        # A SIGKILLed worker's partitions are reassigned after the session timeout: keep it
        # short so recovery is seconds, not Faust's default minute.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 3),
        # ... and with a static member id a restarted worker does not wait for it at all.
        consumer_group_instance_id=settings.worker_instance_id(),
        stream_wait_empty=False,
    )


def table_store(settings: Settings) -> str:
    """The tables' store URL: under exactly-once, RocksDB with an undo log, so that a crashed
    worker rolls its stores back to the last commit instead of restoring every key from the
    changelogs (pipeline/undo_store.py)."""
    if settings.processing_guarantee == "exactly_once" and settings.store == "rocksdb://":
        from pipeline import undo_store

        return undo_store.register()
    return settings.store


settings = get_settings()
app = create_app(settings)
transactions.install(app, settings.transaction_timeout_s)
recovery.install(settings.confluent_config())
offsets.install()


def avro_table(name: str, record: str, *, help: str) -> Any:
    """A table keyed by raw bytes whose values (in the store and the changelog) are Avro records.

    Faust derives a table's serializers from key_type/value_type models only; set them before
    the store and the changelog topic are created (both lazily, at worker start).
    """
    from schemas.codec import faust_codec_name

    # TableT (Faust's stub) lacks the Table attributes set below.
    table: Any = app.Table(name, default=None, key_type=bytes,
                           partitions=settings.partitions, help=help)
    table.value_serializer = faust_codec_name(record)
    # Registering the table already built its changelog topic with the JSON default; build it
    # again so recovery decodes the changelog with the Avro codec.
    table.changelog_topic = table._new_changelog_topic()
    return table

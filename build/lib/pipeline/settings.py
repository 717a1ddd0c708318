"""The one frozen settings object: the only code in stockflow that reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProcessingGuarantee = Literal["exactly_once", "at_least_once"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class Settings(BaseSettings):
    """Every knob of stockflow; defaults point at the local stack (`stockflow stack up`)."""

    model_config = SettingsConfigDict(
        env_prefix="STOCKFLOW_", frozen=True, extra="ignore", env_file=None
    )

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_replication_factor: int = Field(default=1, ge=1)
    # min.insync.replicas of every topic stockflow creates (None: the broker's default). With
    # acks=all a write then needs this many replicas: 2 of 3 survives one broker down.
    # Both are capped at the number of live brokers when topics are created.
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)
    partitions: int = Field(default=4, ge=1, le=1024)
    topic_prefix: str = ""
    deltas_retention_ms: int = Field(
        default=-1, description="retention of inventory.deltas, the replay log; -1 = forever"
    )

    # --- Cassandra ---------------------------------------------------------------
    cassandra_contact_points: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1",)
    cassandra_port: int = 9042
    cassandra_keyspace: str = "stockflow"
    cassandra_username: str | None = None
    cassandra_password: SecretStr | None = None
    cassandra_local_dc: str | None = None
    cassandra_replication: str = Field(
        default="{'class': 'SimpleStrategy', 'replication_factor': 1}",
        description="CQL replication map used by `stockflow db migrate`",
    )

    # --- Cassandra sink (connectors/cassandra/sink.py) -------------------------------
    cassandra_max_in_flight: int = Field(
        default=128, ge=1, le=4096, description="async requests in flight per sink"
    )
    cassandra_batch_rows: int = Field(
        default=50, ge=1, le=1000,
        description="rows per unlogged batch (and about 32 KiB of values at most)",
    )
    cassandra_batch_scope: Literal["replica", "partition"] = Field(
        default="replica",
        description="what one unlogged batch may hold: rows of partitions with the same "
        "replicas (fewest requests; raise Cassandra's batch warn thresholds, docs/cassandra.md) "
        "or rows of one partition only",
    )
    cassandra_retry_base_delay_s: float = Field(default=0.05, gt=0)
    cassandra_max_retry_delay_s: float = Field(
        default=5.0, gt=0, description="cap of the sink's exponential backoff between retries"
    )
    cassandra_request_timeout_s: float = Field(default=10.0, gt=0)
    cassandra_reconnect_max_delay_s: float = Field(
        default=5.0, gt=0, description="cap of the driver's reconnection backoff to a down node"
    )
    cassandra_outage_log_interval_s: float = Field(
        default=10.0, gt=0, description="while Cassandra is unreachable, log at most this often"
    )
    cassandra_consistency: str = Field(default="LOCAL_QUORUM", pattern=r"^[A-Z_]+$")
    cassandra_protocol_version: Literal[4, 5] = Field(
        default=4, description="native protocol version: 5 adds a CRC32 over every frame, "
        "which the driver computes per frame in Python (3 percent of the worker's CPU under "
        "load); 4 relies on TCP's checksum, or TLS's MAC with cassandra_ssl_*",
    )
    cassandra_history_ttl_s: int = Field(
        default=30 * 24 * 3600, ge=0, description="default TTL of change_history; 0 = keep"
    )
    cassandra_stock_buckets: int = Field(
        default=64, ge=1, le=65536,
        description="buckets of stock_by_supplier; fixed by the first migrate (schema_version)",
    )
    cassandra_ssl_cafile: Path | None = None
    cassandra_ssl_certfile: Path | None = None
    cassandra_ssl_keyfile: Path | None = None

    # --- Redis --------------------------------------------------------------------
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")

    # --- Redis cache (connectors/redis/cache.py) ---------------------------------------
    # (cache settings go here)
    redis_cache_key_prefix: str = Field(
        default="stockflow:", description="prefix of every cache key (isolates tests and tenants)"
    )
    redis_cache_ttl_s: int | None = Field(
        default=7 * 24 * 3600, ge=1,
        description="safety-net expiry of a platform SKU hash after its last write; None = never",
    )
    redis_cache_initial_retry_delay_s: float = Field(default=0.05, gt=0)
    redis_cache_max_retry_delay_s: float = Field(
        default=5.0, gt=0, description="cap of the backoff between retries while Redis is down"
    )
    redis_cache_socket_timeout_s: float = Field(default=5.0, gt=0)

    # --- Supplier connectors and simulator (connectors/) -------------------------------
    # (connector settings go here)
    suppliers_config: Path = Field(
        default=Path("examples/suppliers.yaml"),
        description="suppliers YAML of `stockflow connectors run` and `stockflow simulate`",
    )
    connectors_state_file: Path | None = Field(
        default=None, description="cursors and CSV snapshots; default data_dir/connectors.sqlite"
    )
    connectors_metrics_port: int = Field(default=9109, ge=0, le=65535)

    @property
    def connectors_state_path(self) -> Path:
        """Where the connectors keep their cursors and snapshots."""
        return self.connectors_state_file or self.data_dir / "connectors.sqlite"

    @property
    def tables_dir(self) -> Path:
        """Where the worker keeps its tables' RocksDB stores (one folder per table)."""
        return self.data_dir / "tables"

    # --- Pipeline semantics ---------------------------------------------------------
    catalog_path: Path | None = Field(
        default=None, description="CSV/YAML mapping (supplier_id, sku) -> platform_sku")
    dedup_ttl_s: int = Field(default=7 * 24 * 3600, gt=0,
                             description="how long an event_id is remembered for dedup")
    sink_enabled: bool = True
    cache_enabled: bool = True
    cache_writer: Literal["inline", "agent"] = Field(
        default="inline",
        description="who writes Redis: the aggregate agent right after Cassandra acknowledged "
        "a batch (inline: one Kafka hop less, the freshest cache) or the refresh_cache agent "
        "from inventory.changes (agent: the cache follows the committed change log)")

    # --- Worker runtime (topologies/runtime/) ------------------------------------------
    batch_max_records: int = Field(
        default=2000, ge=1, le=100_000, description="records fetched per poll and batch")
    batch_max_wait_s: float = Field(
        default=0.02, gt=0, description="how long a poll waits for records before it returns")
    batch_max_failures: int = Field(
        default=8, ge=1, description="a batch that fails this often in a row stops the worker")
    table_cache_keys: int = Field(
        default=25_000, ge=100, description="decoded values kept in memory per table")
    kafka_watchdog_s: float = Field(
        default=900.0, ge=10, description="a Kafka call that has not returned after this long "
        "means librdkafka is stuck: the worker exits for its supervisor to restart it")
    kafka_call_margin_s: float = Field(
        default=15.0, ge=1, description="how long a blocking Kafka call may run past its own "
        "timeout (send_offsets_to_transaction: 20 s) before the worker exits (code 70) for its "
        "supervisor to restart it; librdkafka does not honour every timeout")
    batch_overlap: bool = Field(
        default=True, description="under load, read and hand out the next poll while an agent "
        "still waits for Cassandra or Redis (every commit waits for all batches first)")
    gc_young_threshold: int = Field(
        default=50_000, ge=0, description="allocations between young garbage collections in "
        "the worker and the API (0: CPython's default, 700); a full collection with the "
        "default stopped the worker for ~90 ms every few seconds (pipeline/gc_tuning.py)")
    commit_max_delay_s: float = Field(
        default=0.5, gt=0, description="under load, how long after the last commit a due "
        "commit may be put off while a batch still waits for Cassandra or Redis (with "
        "batch_overlap): the next polls are processed meanwhile instead of waiting for it")
    commit_min_interval_s: float = Field(
        default=0.02, gt=0, description="commit this soon when the worker keeps up (a poll "
        "returned less than a full batch); commit_interval_s is the interval under load")

    # --- Faust --------------------------------------------------------------------
    app_id: str = "stockflow"
    processing_guarantee: ProcessingGuarantee = "exactly_once"
    commit_interval_s: float = Field(default=0.1, gt=0)
    data_dir: Path = Path(".stockflow/worker")
    producer_linger_s: float = Field(default=0.01, ge=0)
    session_timeout_s: float = Field(default=10.0, ge=6.0)
    # How long an exactly-once transaction may stay open (a unit waiting for a slow or absent
    # Cassandra keeps it open) before the broker aborts it and fences the worker.
    transaction_timeout_s: float = Field(default=300.0, gt=0, le=900.0)
    # Static group membership (KIP-345): a restarted worker takes its old place in the group at
    # once instead of waiting for the dead member's session to time out. The id must be unique
    # per worker and stable across its restarts; default: app id, host name and data dir.
    static_membership: bool = True
    group_instance_id: str | None = None
    web_port: int = 6066
    metrics_port: int = 9108
    # Where the worker's (and connectors') metrics and web ports listen. Loopback by default;
    # 0.0.0.0 in a container whose ports are published (docker/compose.yml) or for a
    # Prometheus on another host.
    bind_host: str = "127.0.0.1"

    # --- Local stack (`stockflow stack ...`) ------------------------------------------
    stack_dir: Path = Path(".stockflow/stack")
    stack_kafka_heap: str = "512m"
    stack_cassandra_heap: str = "1G"
    stack_start_timeout_s: float = 240.0
    # `stockflow stack up --brokers N`: a separate KRaft cluster beside the default stack.
    # Node i listens on port_base + i - 1 (broker) and port_base + 100 + i - 1 (controller).
    stack_cluster_dir: Path = Path(".stockflow/kafka-cluster")
    stack_cluster_port_base: int = Field(default=19092, ge=1024, le=65000)

    # --- Tracing (pipeline/tracing.py, docs/observability.md) ------------------------
    # Off by default: then no span is ever created and no header is read or written.
    tracing_enabled: bool = False
    # "otlp": OTLP over HTTP to tracing_endpoint (Jaeger, Tempo, an OpenTelemetry Collector);
    # "file": one JSON line per span appended to tracing_file (tests, a laptop without Jaeger).
    tracing_exporter: Literal["otlp", "file"] = "otlp"
    tracing_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    tracing_file: Path | None = None
    # Share of supplier records whose trace is recorded, decided once where a record enters
    # (the connector) and carried in its traceparent's sampled flag.
    tracing_sample_ratio: float = Field(default=0.01, ge=0.0, le=1.0)
    # Recorded whatever the ratio says: dead letters, and records that waited in a topic
    # longer than tracing_slow_record_s (0 turns that off).
    tracing_always_sample_dead_letters: bool = True
    tracing_slow_record_s: float = Field(default=1.0, ge=0.0)
    # Where `stockflow trace` asks for a trace's spans: Jaeger's query API.
    tracing_query_url: str = "http://127.0.0.1:16686"

    # --- Reservations and the public API (pipeline/reservations.py, connectors/api/) -----------
    reservation_default_ttl_s: float = Field(default=900.0, gt=0,
                                             description="a hold's TTL when the request has none")
    reservation_max_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    reservation_reflect_bound_s: float = Field(
        default=1800.0, gt=0,
        description="a confirmed sale stops counting against availability after this long "
                    "even if no snapshot of its supplier reflected it")
    reservation_answer_ttl_s: float = Field(
        default=24 * 3600.0, gt=0,
        description="how long an idempotency key's answer and an ended reservation are kept")
    reservation_max_answers: int = Field(default=10_000, ge=100,
                                         description="answers kept per platform SKU at most")
    reservation_lane: Literal["own", "first", "shared"] = Field(
        default="own",
        description="how the worker consumes reservation commands: `own`, a lane of their own "
        "(own consumer, transactional producer and thread; a decision waits for no supplier "
        "record; exactly-once only, else `first`); `first`, in the main loop, each poll's "
        "commands decided and committed before its supplier records; `shared`, in the main "
        "loop with everything else")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # "name:sha256-hex-of-the-key" entries, comma-separated: only hashes are configured.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    api_rate_per_s: float = Field(default=50.0, gt=0, description="requests/s per API key")
    api_rate_burst: int = Field(default=100, ge=1)
    api_decision_timeout_s: float = Field(
        default=10.0, gt=0, description="how long a request waits for the agent's decision")
    api_tick_interval_s: float = Field(
        default=1.0, gt=0, description="how often the API moves the reservation clock on")
    api_cache_ttl_s: int = Field(default=30, ge=1,
                                 description="a cache-aside entry's life in Redis")
    api_stream_buffer: int = Field(default=50_000, ge=100,
                                   description="events kept for Last-Event-ID resumes")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    # --- Logging ------------------------------------------------------------------
    log_json: bool | None = None
    log_level: str = "INFO"
    # Production unless told otherwise: the suppliers file's demo secrets (public, in the
    # repository) are used only in development, so a deployment that forgets to set a secret
    # stops with an error instead of running on the demo value. `stockflow demo` sets
    # development for its children; by hand: STOCKFLOW_ENVIRONMENT=development.
    environment: Literal["development", "production"] = "production"

    def worker_instance_id(self) -> str | None:
        """This worker's group.instance.id (None: dynamic membership)."""
        if not self.static_membership:
            return None
        if self.group_instance_id:
            return self.group_instance_id
        import hashlib
        import socket

        where = hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        return f"{self.app_id}-{socket.gethostname()}-{where}"

    @field_validator("cassandra_contact_points", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(h.strip() for h in value.split(",") if h.strip())
        return value

    @property
    def kafka_broker_url(self) -> str:
        """The bootstrap servers in Faust's URL form."""
        return ";".join(f"kafka://{h.strip()}" for h in self.kafka_bootstrap_servers.split(","))

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka configuration for confluent-kafka clients (secrets included, never log it)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol.lower(),
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            conf["ssl.key.location"] = str(self.kafka_ssl_keyfile)
        return conf

    def aiokafka_config(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (secrets included, never log it)."""
        conf: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl_mechanism"] = self.kafka_sasl_mechanism
            conf["sasl_plain_username"] = self.kafka_sasl_username
            if self.kafka_sasl_password:
                conf["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            conf["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
                certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
                keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        return conf

    def topic(self, name: str) -> str:
        """The physical topic name for a logical one (a prefix isolates tests and tenants)."""
        return f"{self.topic_prefix}{name}"

    def worker_input_topics(self) -> tuple[str, ...]:
        """The logical topics the worker's supplier pipeline consumes: inventory.changes only
        when the refresh_cache agent writes the cache (`cache_writer` agent)."""
        topics = ("inventory.deltas", "inventory.stock-updates")
        return (*topics, "inventory.changes") if self.cache_writer == "agent" else topics


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()

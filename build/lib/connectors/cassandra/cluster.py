"""Builds the Cassandra driver's Cluster for the sink, the migrations and the readers."""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import StockflowError
from pipeline.log import get_logger

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

    from pipeline.settings import Settings

log = get_logger(__name__)

# Keyspace names cannot be bound as parameters, so they are the one identifier stockflow
# puts into CQL text: only after this check (Cassandra's own rule, unquoted form).
_KEYSPACE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


class CassandraError(StockflowError):
    """Cassandra could not be reached or refused a schema or read request."""


def check_keyspace_name(name: str) -> str:
    """Return `name` if it is a plain Cassandra identifier, else raise CassandraError."""
    if not _KEYSPACE_NAME.fullmatch(name):
        raise CassandraError(
            f"invalid keyspace name {name!r}: letters, digits and '_', starting with a letter, "
            "at most 48 characters"
        )
    return name.lower()


@dataclass(frozen=True)
class ClusterConfig:
    """Everything needed to open a Cluster; built from Settings or given explicitly."""

    contact_points: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    username: str | None = None
    password: str | None = None
    local_dc: str | None = None
    consistency: str = "LOCAL_QUORUM"
    request_timeout_s: float = 10.0
    reconnect_max_delay_s: float = 5.0
    connect_timeout_s: float = 5.0
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    protocol_version: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> ClusterConfig:
        """The cluster configuration of `settings` (secrets included, never log it)."""
        return cls(
            contact_points=tuple(settings.cassandra_contact_points),
            port=settings.cassandra_port,
            username=settings.cassandra_username,
            password=(settings.cassandra_password.get_secret_value()
                      if settings.cassandra_password else None),
            local_dc=settings.cassandra_local_dc,
            consistency=settings.cassandra_consistency,
            request_timeout_s=settings.cassandra_request_timeout_s,
            reconnect_max_delay_s=settings.cassandra_reconnect_max_delay_s,
            ssl_cafile=settings.cassandra_ssl_cafile,
            ssl_certfile=settings.cassandra_ssl_certfile,
            ssl_keyfile=settings.cassandra_ssl_keyfile,
            protocol_version=settings.cassandra_protocol_version,
        )


class _BatchWarningFilter(logging.Filter):
    """Counts, instead of logging, Cassandra's warnings about the sink's batches.

    The driver logs every warning a response carries (logger `cassandra.protocol`). A
    cluster with the default batch thresholds (5 KiB, 10 partitions) warns about every
    replica batch the sink sends, which would be a log line per batch; the first one is
    logged with what to do, the rest are counted."""

    _MARKERS = ("Unlogged batch covering", "Batch for [")

    def __init__(self) -> None:
        super().__init__()
        self.told = False

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        if not any(marker in text for marker in self._MARKERS):
            return True
        from pipeline.metrics import CASSANDRA_BATCH_WARNINGS

        CASSANDRA_BATCH_WARNINGS.inc()
        if not self.told:
            self.told = True
            log.warning("cassandra.batch_warnings", example=text[:200],
                        hint="the sink's unlogged batches group rows by replica set "
                        "(cassandra_batch_scope); raise batch_size_warn_threshold and "
                        "unlogged_batch_across_partitions_warn_threshold in cassandra.yaml "
                        "(docs/cassandra.md) or set STOCKFLOW_CASSANDRA_BATCH_SCOPE=partition; "
                        "further warnings are counted in "
                        "stockflow_cassandra_batch_warnings_total, not logged")
        return False


_BATCH_WARNINGS = _BatchWarningFilter()


def build_cluster(config: ClusterConfig) -> Cluster:
    """A Cluster with protocol v5, an explicit load-balancing policy and bounded reconnects."""
    protocol_log = logging.getLogger("cassandra.protocol")
    if _BATCH_WARNINGS not in protocol_log.filters:
        protocol_log.addFilter(_BATCH_WARNINGS)
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import (
        DCAwareRoundRobinPolicy,
        ExponentialReconnectionPolicy,
        RoundRobinPolicy,
        TokenAwarePolicy,
    )

    try:
        consistency = ConsistencyLevel.name_to_value[config.consistency]
    except KeyError as exc:
        raise CassandraError(f"unknown consistency level {config.consistency!r}") from exc
    child = (DCAwareRoundRobinPolicy(local_dc=config.local_dc) if config.local_dc
             else RoundRobinPolicy())
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(child),
        consistency_level=consistency,
        request_timeout=config.request_timeout_s,
    )
    auth = (PlainTextAuthProvider(username=config.username, password=config.password or "")
            if config.username else None)
    ssl_context = None
    if config.ssl_cafile or config.ssl_certfile:
        ssl_context = ssl.create_default_context(
            cafile=str(config.ssl_cafile) if config.ssl_cafile else None)
        if config.ssl_certfile:
            ssl_context.load_cert_chain(
                str(config.ssl_certfile),
                str(config.ssl_keyfile) if config.ssl_keyfile else None)
    return Cluster(
        list(config.contact_points),
        port=config.port,
        protocol_version=config.protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        auth_provider=auth,
        ssl_context=ssl_context,
        # The driver's default caps reconnection at 10 minutes: after an outage the sink
        # would sit idle long after Cassandra is back.
        reconnection_policy=ExponentialReconnectionPolicy(
            base_delay=0.5, max_delay=config.reconnect_max_delay_s),
        connect_timeout=config.connect_timeout_s,
        control_connection_timeout=config.connect_timeout_s,
    )


def connect(config: ClusterConfig, keyspace: str | None = None) -> tuple[Cluster, Session]:
    """Open a Cluster and a Session (fails fast: for commands, not for the sink)."""
    from cassandra.cluster import NoHostAvailable

    cluster = build_cluster(config)
    try:
        session = cluster.connect(check_keyspace_name(keyspace) if keyspace else None)
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise CassandraError(
            f"Cassandra is not reachable at {', '.join(config.contact_points)}:{config.port} "
            "(is `stockflow stack up cassandra` running?)") from exc
    except Exception as exc:
        cluster.shutdown()
        raise CassandraError(f"could not open a Cassandra session: {exc}") from exc
    return cluster, session

"""Prometheus metrics of the supplier connectors, declared once here."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTOR_DELTAS = Counter(
    "stockflow_connector_deltas_total", "Deltas a connector produced (acknowledged by Kafka)",
    ["supplier", "connector"],
)
CONNECTOR_DEAD_LETTERS = Counter(
    "stockflow_connector_dead_letters_total", "Supplier records a connector dead-lettered",
    ["supplier", "connector", "reason"],
)
CONNECTOR_REQUESTS = Counter(
    "stockflow_connector_requests_total",
    "Requests to supplier endpoints by outcome: ok, not_modified, retryable, error, circuit_open",
    ["supplier", "connector", "outcome"],
)
CONNECTOR_RETRIES = Counter(
    "stockflow_connector_retries_total", "Retried supplier requests (429, 5xx, timeouts)",
    ["supplier", "connector"],
)
CIRCUIT_STATE = Gauge(
    "stockflow_connector_circuit_state",
    "Circuit breaker state per supplier: 0 closed, 1 half-open, 2 open",
    ["supplier"],
)
CIRCUIT_OPENED = Counter(
    "stockflow_connector_circuit_opened_total", "Times a supplier's circuit breaker opened",
    ["supplier"],
)
REQUEST_SECONDS = Histogram(
    "stockflow_connector_request_seconds", "Latency of supplier requests",
    ["supplier", "connector"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_REJECTED = Counter(
    "stockflow_connector_webhook_rejected_total",
    "Webhook requests refused: bad_signature, expired, too_large, unknown_supplier",
    ["supplier", "reason"],
)
FILES_PROCESSED = Counter(
    "stockflow_connector_files_total", "CSV drop files processed", ["supplier", "connector"],
)
LAST_POLL = Gauge(
    "stockflow_connector_last_success_timestamp_seconds",
    "When a supplier feed last completed a poll or delivery",
    ["supplier"],
)
PAGINATION_STOPPED = Counter(
    "stockflow_connector_pagination_stopped_total",
    "Page walks a connector ended early: repeated_token (the supplier sent a cursor or token "
    "again), page_limit (more pages than one poll may walk)",
    ["supplier", "connector", "reason"],
)

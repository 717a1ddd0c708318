"""One root exception for stockflow, one subclass per area."""

from __future__ import annotations

# Defined with the codec, which sits below pipeline/ and imports nothing of it.
from schemas.errors import SchemaError, StockflowError

__all__ = ["ConfigurationError", "ConnectorError", "PrerequisiteMissing", "SchemaError",
           "SinkError", "StackError", "StockflowError", "ValidationError"]


class ConfigurationError(StockflowError):
    """Settings or a configuration file are wrong; the message says which line or key."""


class StackError(StockflowError):
    """The local stack (Kafka, Cassandra, Redis processes) could not be managed."""


class PrerequisiteMissing(StackError):
    """A program the local stack needs is not installed; the message says what to install."""


class ValidationError(StockflowError):
    """A supplier event broke a business rule; `code` is the dead-letter reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SinkError(StockflowError):
    """Cassandra or Redis refused a write after retries."""


class ConnectorError(StockflowError):
    """A supplier feed failed in a way the connector cannot retry past."""

"""The root of stockflow's errors and the codec's own, on the lowest floor (schemas imports nothing
of stockflow); pipeline.errors re-exports both with the other areas' errors."""

from __future__ import annotations


class StockflowError(Exception):
    """Root of every error stockflow raises on purpose."""


class SchemaError(StockflowError):
    """A record could not be encoded or decoded with its Avro schema."""

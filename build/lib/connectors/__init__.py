"""stockflow: connectors."""

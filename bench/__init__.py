"""stockflow: bench."""

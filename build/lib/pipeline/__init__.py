"""stockflow: pipeline."""

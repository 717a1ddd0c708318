"""stockflow: schemas."""

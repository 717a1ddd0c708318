"""stockflow: topologies."""

"""The public HTTP API (`stockflow api`): inventory reads, reservations and a live stream."""

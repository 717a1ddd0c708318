"""The storefront's HTTP edge (`stockflow api`): inventory reads, reservations and a live stream."""

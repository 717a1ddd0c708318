"""Supplier sources: one adapter per feed kind (REST, webhook, FTP/SFTP CSV, GraphQL)."""

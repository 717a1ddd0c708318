"""A supplier simulator: real local REST, GraphQL, webhook, FTP and SFTP endpoints with faults."""

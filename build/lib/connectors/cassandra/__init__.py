"""Cassandra: the cluster connection, the schema migrations, the availability sink and reads."""

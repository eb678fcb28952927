"""The config file: its schema, loading, resolving into scheduler specs, the builder and the default."""

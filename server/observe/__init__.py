"""Process-wide observability: structured logs."""

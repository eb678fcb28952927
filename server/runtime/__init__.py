"""The asyncio runtime: the core's plans carried out on the backends, and what a request ends as."""

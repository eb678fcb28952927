"""Triton Inference Server as a backend: the executor, its health watch, model repositories, the launcher."""

"""Choosing each device's executor by its backend: the one place that knows every backend.

Here rather than in backends/base.py so that the executor seam does not import the backends built
on it (backends/triton/ imports base.py; base.py importing it back made the two packages one).
"""

from __future__ import annotations

from heddle.backends.base import BackendError, Executor
from heddle.scheduler import DeviceSpec

__all__ = ["make_executor"]


def make_executor(device: DeviceSpec) -> Executor:
    """The executor for a device, chosen by `device.backend`."""
    # Imported here so that importing the seam does not import every backend's runtime.
    if device.backend == "onnxruntime":
        from heddle.backends.onnxruntime import OrtExecutor

        return OrtExecutor(device)
    if device.backend == "python":
        from heddle.backends.python import PythonExecutor

        return PythonExecutor(device)
    if device.backend == "triton":
        from heddle.backends.triton.executor import TritonExecutor

        return TritonExecutor(device)
    raise BackendError(
        f"device {device.id}: unknown backend {device.backend!r}; expected onnxruntime, python or triton"
    )

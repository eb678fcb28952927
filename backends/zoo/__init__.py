"""The model zoo: small ONNX models with real architectures and the Python stages of the default pipelines."""

from __future__ import annotations

from heddle.backends.zoo.build import MODEL_NAMES, build_default_models, build_model

__all__ = ["MODEL_NAMES", "build_default_models", "build_model"]

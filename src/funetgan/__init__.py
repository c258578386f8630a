"""funetgan: F-UNetGAN for unsupervised anomaly detection and segmentation."""

__version__ = "0.1.0"

from .config import Config  # noqa: E402
from .data import ImageSet, Splits, load_dataset, load_unlabelled  # noqa: E402
from .scoring.scorer import Scores  # noqa: E402

__all__ = [
    "Config",
    "FUNetGAN",
    "ImageSet",
    "OnnxScorer",
    "Scores",
    "Splits",
    "load_dataset",
    "load_unlabelled",
    "__version__",
]

# Imported on first use: FUNetGAN needs PyTorch, OnnxScorer onnxruntime; scoring an exported
# model must work where PyTorch is not installed.
_LAZY = {"FUNetGAN": "model", "OnnxScorer": "deploy.onnx_scorer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

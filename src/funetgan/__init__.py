"""funetgan: F-UNetGAN for unsupervised anomaly detection and segmentation."""
__version__ = "0.1.0"

from .config import Config  # noqa: E402
from .data import ImageSet, Splits, load_dataset, load_unlabelled  # noqa: E402
from .model import FUNetGAN, Scores  # noqa: E402

__all__ = ["Config", "FUNetGAN", "ImageSet", "Scores", "Splits", "load_dataset", "load_unlabelled", "__version__"]

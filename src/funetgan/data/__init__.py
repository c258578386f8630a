"""Data sources: each reads one layout into the common in-memory form (`base.ImageSet`)."""
from .base import DataError, ImageSet, Splits, to_tensor, to_uint8

__all__ = ["DataError", "ImageSet", "Splits", "to_tensor", "to_uint8"]

"""GROVE: grounded video caption generation (model, data formats, video decoding, training, inference)."""

__version__ = "0.1.0"

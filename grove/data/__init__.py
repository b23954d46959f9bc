"""Canonical data formats, converters, video decoding and the synthetic dataset."""

"""Training data made on the fly: procedural faces whose eyes must match."""

from .faces import EYE_COLORS, KINDS, SHAPES, FaceBatch, make_faces

__all__ = ["EYE_COLORS", "KINDS", "SHAPES", "FaceBatch", "make_faces"]

"""Training data made on the fly: procedural faces whose eyes must match."""

from .faces import EYE_COLORS, KINDS, LATE_KINDS, SHAPES, Edit, FaceBatch, blur, make_faces, shape_masks

__all__ = [
    "EYE_COLORS",
    "KINDS",
    "LATE_KINDS",
    "SHAPES",
    "Edit",
    "FaceBatch",
    "blur",
    "make_faces",
    "shape_masks",
]

"""The bundled models (DDPM, SAGAN, ViT trained on procedural faces) and how to load them."""

from .bundle import JUDGE, BundledModel, Prepared, available_models, load_model

__all__ = ["JUDGE", "BundledModel", "Prepared", "available_models", "load_model"]

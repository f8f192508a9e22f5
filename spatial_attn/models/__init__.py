"""The bundled models (DDPM, SAGAN, ViT trained on procedural faces) and how to load them."""

from .bundle import BundledModel, Prepared, available_models, load_model

__all__ = ["BundledModel", "Prepared", "available_models", "load_model"]

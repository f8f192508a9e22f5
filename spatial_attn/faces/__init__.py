"""The bundled faces models' training (``train/``) and evaluation (``evaluate``, ``eye_attention``,
``sample_eval``, ``cards``). It stands beside the app: the app never imports it, and nothing below it
imports it either.
"""

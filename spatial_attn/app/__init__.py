"""The web app (imports gradio): ``blocks`` composes the page from the views (``views/``), each a small
module of widgets and handlers; ``state`` holds what they share (the models loaded once, the session,
how a view follows the pinned pixel); ``serving`` and ``images`` guard a public server. No attention
math lives here: every map comes from :mod:`spatial_attn.analysis`.
"""

from .blocks import build_demo, launch

__all__ = ["build_demo", "launch"]

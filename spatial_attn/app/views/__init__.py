"""The app's views, one small module each (panels, mechanics, ...): widgets and the HTML they show.

``spatial_attn.app.blocks`` composes them; none of them computes attention (that is the core's job: the
numbers arrive here ready to show).
"""

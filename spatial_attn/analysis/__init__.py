"""What you do with a capture from Python: one run explored click by click (``explore``), the maps
drawn (``render``) and packed for a browser (``payload``), how a row is made (``mechanics``), a layer
switched off (``ablation``), rows across timesteps (``timesteps``) and prompt tokens (``text``), and a
click exported as files (``export``). Built on the engine and the models; knows nothing of the app.
"""

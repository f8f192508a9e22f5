"""Example faces for the app's gallery (``spatial-attn faces``)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .faces import KINDS, make_faces

#: How many examples of each kind go into the gallery (valid faces are what most clicks are about).
PER_KIND = {"valid": 4, "eye_color": 2, "eye_shape": 2, "missing_eye": 2}


def write_examples(out_dir: Path, seed: int = 0) -> list[Path]:
    """``<kind>-<i>.png`` at the native 32 x 32 (the app scales them; models get them unresized)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, count in PER_KIND.items():
        faces = make_faces(count, seed + KINDS.index(kind), (kind,))
        for i, img in enumerate(faces.images):
            path = out_dir / f"{kind}-{i}.png"
            Image.fromarray(img).save(path)
            paths.append(path)
    return paths

"""What made a click's maps, said once for every place that shows them: ``rows.json``, the figure's
title, the standalone page's heading (export, ``sa.show``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .explore import Exploration, View


def provenance(exploration: Exploration, point: tuple[int, int], view: View) -> dict[str, Any]:
    """What made a click's maps: enough to make them again (``rows.json``, the figure's title, the page)."""
    model = exploration.model
    return {
        "model": model.name,
        "pretrained": model.pretrained,
        "timestep": exploration.timestep,
        "seed": exploration.seed,
        "pixel": [int(point[0]), int(point[1])],  # (y, x) in the model's input
        "head": view.head,
        "mode": view.mode,
        "version": version(),
        "input": "input.png",
        "input_note": exploration.prepared.note,
    }


def title(described: dict[str, Any]) -> str:
    """One line saying what a figure shows, from :func:`provenance`."""
    y, x = described["pixel"]
    parts = [described["model"] + ("" if described["pretrained"] else " (untrained)")]
    if described["timestep"] is not None:
        parts.append(f"t = {described['timestep']}")
    parts += [
        f"seed {described['seed']}",
        f"pixel (y, x) = ({y}, {x})",
        f"head {described['head']}" if described["head"] in ("mean", "max") else described["head"],
        "row: where it looks" if described["mode"] == "row" else "column: who looks at it",
        f"spatial-attn {described['version']}",
    ]
    return " · ".join(parts)


def version() -> str:
    """The installed spatial-attn's version ("unknown" when run from a checkout never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("spatial-attn")
    except PackageNotFoundError:
        return "unknown"

"""The README's examples run as written: a newcomer copies them first, so they must not rot.

Each example is the ```python block under its heading, executed verbatim; only the HTTP example's
server address is pointed at the test server.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(heading: str) -> str:
    """The first ```python block after the line ``heading``."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    return out.getvalue()


def test_python_api_example_runs():
    printed = _run(_example("## Python API"))
    assert "mid_block.attentions.0 (8, 8) (8, 8)" in printed  # one line per captured layer
    assert printed.count("\n") == 7  # the DDPM's 7 attention layers


def test_http_api_example_runs(app_url):
    code = _example("## HTTP API")
    assert '"http://127.0.0.1:7860/"' in code
    printed = _run(code.replace('"http://127.0.0.1:7860/"', repr(app_url)))
    layers = [line for line in printed.splitlines() if not line.startswith("Loaded as API")]
    assert len(layers) == 7 and layers[0].startswith("down_blocks.1.attentions.0 [16, 16] [6, 10] 106 ")

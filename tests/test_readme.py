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


def test_json_api_curl_example_runs(app_url):
    import json
    import subprocess

    text = README.read_text()
    start = text.index("\n### Plain JSON: `POST /api/v1/attend`\n")
    code = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    assert code.count("http://127.0.0.1:7860/") == 2
    out = subprocess.run(
        ["bash", "-c", code.replace("http://127.0.0.1:7860/", app_url)],
        cwd=README.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    answers, at = [], 0
    while at < len(out):
        answer, at = json.JSONDecoder().raw_decode(out, at)
        answers.append(answer)
    assert [a["model"] for a in answers] == ["ddpm-faces", "vit-faces"]
    assert len(answers[0]["layers"]) == 7 and len(answers[1]["upload"]) == 64


def test_launch_example_runs_and_serves_the_model(monkeypatch):
    """The ``sa.launch(...)`` snippet as written, served for real (on a free port, not blocking) and
    clicked through ``/attend``."""
    import socket

    from gradio_client import Client

    import spatial_attn.app.blocks as app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = []
    real_launch = app.launch

    def launch(model, **kwargs):
        served.append(real_launch(model, port=port, prevent_thread_lock=True, quiet=True, **kwargs))

    monkeypatch.setattr(app, "launch", launch)
    _run(_example("### From Python"))
    try:
        _, rows = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            None, "my-net", 0, 20, 9, "mean", 0, api_name="/attend"
        )
    finally:
        served[0].close()
    assert [(layer["name"], layer["query_grid"]) for layer in rows["layers"]] == [("attn", [8, 8])]


def test_own_model_commands_that_need_only_the_checkout_open():
    """The "Your own model" table's commands whose model is in the checkout open as the CLI opens them."""
    import sys

    from spatial_attn.cli import open_models

    text = README.read_text()
    table = text[text.index("\n## Your own model\n") : text.index("\n### From Python\n")]
    specs = re.findall(r"python app\.py --model (\S+)`", table)
    local = [s for s in specs if Path(s).exists() or s.startswith("tiny_models:")]
    assert local == ["checkpoints/ddpm-faces", "checkpoints/ddpm-faces/unet", "tiny_models:make_net"]
    sys.path.insert(0, str(README.parent / "tests"))  # the command's PYTHONPATH=tests
    models = open_models([[spec, None] for spec in local])
    # a folder named like a bundled model keeps its path; a pipeline's part says whose it is
    assert [m.name for m in models] == ["checkpoints/ddpm-faces", "ddpm-faces/unet", "tiny_models:make_net"]


def test_ci_runs_the_readmes_own_test_command():
    """CI must test what a newcomer runs: the quick start's test line, not a command of its own."""
    text = README.read_text()
    start = text.index("\n## Quick start\n")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    (command,) = [line.split("#")[0].strip() for line in block.splitlines() if "pytest" in line]
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert ci[-1].strip() == command
    assert "python3 -m venv .venv" in ci and ". .venv/bin/activate" in ci  # in a virtualenv of its own

"""A real server (``python app.py``) in a subprocess on 127.0.0.1, stopped the ways servers are
stopped: ``kill -9`` (its files are removed by the next server to start), SIGTERM and Ctrl-C (SIGINT)
while requests are in flight (each answered or refused with a message, the process exits 0 and its
files are gone). The second server is also flooded with oversize values from many sessions: refused
before they are read, so its memory does not grow."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from spatial_attn.app import guard
from spatial_attn.app.public import PREFIX

ROOT = Path(__file__).resolve().parents[1]
FACE = sorted((ROOT / "assets" / "faces").glob("valid-*.png"))[0]
IMAGE = base64.b64encode(FACE.read_bytes()).decode()


class Server:
    """``python app.py --model vit-faces`` on a free loopback port, its Gradio temp folder ``base``."""

    def __init__(self, base: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        env = os.environ | {"GRADIO_TEMP_DIR": str(base)}
        command = [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--model", "vit-faces"]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.folder = base / f"{PREFIX}{self.process.pid}"
        deadline = time.time() + 240
        while time.time() < deadline:
            assert self.process.poll() is None, self.process.stderr.read().decode()[-2000:]
            try:
                httpx.get(self.url, timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.process.kill()
        raise RuntimeError("the app did not start within 4 minutes")

    def attend(self, seed: int = 0) -> httpx.Response:
        body = {"model": "vit-faces", "x": 3, "y": 4, "seed": seed, "image": IMAGE}
        return httpx.post(self.url + "api/v1/attend", json=body, timeout=60)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gradio-temp")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_server_answers_what_is_in_flight_exits_0_and_leaves_no_file(base, signum):
    """SIGTERM: after a server killed with -9 (its files are removed by this one, at its start);
    SIGINT (Ctrl-C): on its own."""
    if signum == signal.SIGTERM:
        killed = Server(base)
        assert killed.attend().status_code == 200
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait(30)
        assert any(killed.folder.rglob("image"))  # left behind: nobody ran its cleanup
    server = Server(base)
    if signum == signal.SIGTERM:
        assert not killed.folder.exists() and server.folder.is_dir()
    assert server.attend().status_code == 200
    upload = httpx.post(
        server.url + "gradio_api/upload", files={"files": (FACE.name, FACE.read_bytes())}, timeout=30
    )
    assert upload.status_code == 200 and any(server.folder.rglob("*.png"))
    if signum == signal.SIGTERM:
        check_sessions_do_not_pin_memory(server)
    answered: list[int] = []
    refused: list[str] = []

    def keep_asking() -> None:
        for seed in range(1, 200):  # each a new capture: a model run in flight when the signal comes
            try:
                answer = server.attend(seed)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as gone:  # closed before reading it
                refused.append(type(gone).__name__)
                return
            assert answer.status_code in (200, 503), answer.text
            assert "error" in answer.json() or "layers" in answer.json()
            answered.append(answer.status_code)

    asking = threading.Thread(target=keep_asking)
    asking.start()
    time.sleep(1.0)
    server.process.send_signal(signum)
    code = server.process.wait(60)
    asking.join(60)
    assert code == 0, server.process.stderr.read().decode()[-2000:]
    assert answered and 200 in answered
    assert not server.folder.exists()
    assert not [p for p in base.rglob("*") if p.name.startswith(PREFIX)]


def check_sessions_do_not_pin_memory(server: Server, sessions: int = 64) -> None:
    """64 sessions each sending a 4 MB prompt through the queue, Gradio's REST call and the JSON API:
    each refused before its body is read (413), and the server's memory stays where it was."""
    before = server.rss_mb()
    prompt = "x" * (4 * 2**20)
    data = [None, "vit-faces", 0, 3, 4, "mean", 0, prompt, False]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for s in range(sessions):
            answers = [
                http.post(
                    "gradio_api/queue/join", json={"data": data, "fn_index": 0, "session_hash": f"big{s}"}
                ),
                http.post("gradio_api/call/attend", json={"data": data}),
                http.post("api/v1/attend", json={"model": "vit-faces", "x": 3, "y": 4, "prompt": prompt}),
            ]
            assert [a.status_code for a in answers] == [413] * 3, [a.text[:100] for a in answers]
            assert all("limit" in a.json()["error"] for a in answers)
    grown = server.rss_mb() - before
    assert grown < 40, f"the server grew {grown:.0f} MB after {sessions} sessions' oversize prompts"
    assert len(prompt) > guard.MAX_TEXT

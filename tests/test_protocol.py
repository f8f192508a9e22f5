"""The sealed protocol: its seeds are new, its bytes are the committed ones, its seeds run once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from spatial_attn.faces import evaluate, protocol
from spatial_attn.faces.evaluate import Estimate, Report, Row, sealed_run

#: protocol.py as committed when the protocol was fixed (see README, "Bundled models"). Changing the
#: protocol after its seeds were run breaks the seal: this test says so instead of letting it pass.
PROTOCOL_SHA256 = "819e7710897e84cad66c687d47f9d97b77efc262049fdb34b70aa8b3af3074a9"


def test_the_protocol_is_the_committed_one():
    digest = hashlib.sha256(Path(protocol.__file__).read_bytes()).hexdigest()
    assert digest == PROTOCOL_SHA256 == evaluate.protocol_digest()


def test_the_sealed_seeds_share_nothing_with_the_seeds_used_before():
    used = {
        *protocol.DEV_SEEDS,
        *protocol.SPENT_SEEDS,
        *protocol.FIRST_SEALED_SEEDS,
        *protocol.SECOND_SEALED_SEEDS,
        *protocol.THIRD_SEALED_SEEDS,
    }
    # every seed a run derives from one of its seeds: probes (+100 k, +1000 k), drawn faces (+50)
    derived = {s + d for s in used for d in [0, 50, *range(100, 1000, 100), 1000, 2000, 3000]}
    assert not derived & {s + d for s in protocol.SEALED_SEEDS for d in range(0, 3001)}
    assert evaluate.SPLITS["sealed"] == protocol.SEALED_SEEDS and "sealed" not in evaluate.SPLITS["dev"]


@pytest.fixture
def fake_eval(monkeypatch):
    """evaluate_all replaced by a recorder: the test is about the seal, not about the models."""
    calls = []

    def fake(checkpoints: Path, split: str, samples: int, faces: int, threads: int) -> Report:
        calls.append((split, samples, faces))
        return Report(split, [Row("m", "x", ">= 1", Estimate(1.0, 1.0, 1.0), "")], [])

    monkeypatch.setattr(evaluate, "evaluate_all", fake)
    return calls


def test_the_sealed_seeds_run_once_and_the_record_says_when_and_under_what(tmp_path, fake_eval):
    sealed_run(tmp_path)
    assert fake_eval == [("sealed", protocol.SAMPLES_PER_SEED, protocol.FACES_PER_SEED)]
    (run,) = json.loads((tmp_path / protocol.SEALED_RECORD).read_text())["runs"]
    assert run["protocol_sha256"] == evaluate.protocol_digest() and run["seeds"] == list(
        protocol.SEALED_SEEDS
    )
    assert run["forced"] is False and "Seeds: sealed (26516" in run["table"] and run["finished"]
    with pytest.raises(SystemExit, match="already run"):
        sealed_run(tmp_path)
    assert len(fake_eval) == 1  # refused before anything ran
    sealed_run(tmp_path, force=True)
    runs = json.loads((tmp_path / protocol.SEALED_RECORD).read_text())["runs"]
    assert [r["forced"] for r in runs] == [False, True]


def test_a_sealed_run_that_crashed_has_still_been_run(tmp_path, monkeypatch):
    def crash(*args: object, **kwargs: object) -> Report:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(evaluate, "evaluate_all", crash)
    with pytest.raises(RuntimeError):
        sealed_run(tmp_path)
    (run,) = json.loads((tmp_path / protocol.SEALED_RECORD).read_text())["runs"]
    assert "finished" not in run
    with pytest.raises(SystemExit, match="already run"):
        sealed_run(tmp_path)


def test_the_verdict_reads_the_interval_not_the_point():
    assert Row("m", "x", ">= 98%", Estimate(0.99, 0.97, 1.0), "").met is False  # point 99%, bound 97%
    assert Row("m", "x", ">= 98%", Estimate(0.99, 0.98, 1.0), "").met is True
    assert Row("m", "x", "<= 10%", Estimate(0.05, 0.01, 0.11), "").met is False  # upper bound 11%
    assert Row("m", "x", ">= 50%", Estimate(0.6, float("nan"), float("nan")), "").met is True  # no interval

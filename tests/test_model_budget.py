"""Model folders are judged before anything is built: a config or a safetensors header that would
not fit in memory is refused with the estimate, remote code is refused without a prompt, a factory
that needs arguments or fails is a message, and a failed download says what failed."""

from __future__ import annotations

import builtins
import json
import struct
import sys
import time
from pathlib import Path

import pytest
import tiny_models

from spatial_attn.models import budget
from spatial_attn.models.sources import open_model

GB = 2**30


@pytest.fixture
def vit(tmp_path) -> Path:
    return tiny_models.vit_classifier(tmp_path / "vit")


@pytest.fixture
def nothing_built(monkeypatch):
    """Building or prompting fails the test: a refusal must come first."""
    import transformers

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the folder was judged")

    for cls in (transformers.AutoModel, transformers.AutoModelForImageClassification):
        monkeypatch.setattr(cls, "from_pretrained", built)
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("asked on the terminal"))
    monkeypatch.setattr(budget, "available_bytes", lambda: 8 * GB)


def _edit(folder: Path, name: str, **changes) -> None:
    path = folder / name
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"num_hidden_layers": 10**6}, r"would take about .* GB .*8\.0 GB of memory is available"),
        ({"hidden_size": 10**9}, r"would take about .* GB"),
        ({"auto_map": {"AutoModel": "modeling.Net"}}, r"names code of its own \(auto_map"),
    ],
    ids=["layers 10^6", "hidden 10^9", "auto_map"],
)
def test_a_config_is_judged_before_the_model_is_built(vit, nothing_built, changes, words):
    _edit(vit, "config.json", **changes)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=words):
        open_model(str(vit))
    assert time.perf_counter() - start < 5


def test_a_preprocessor_size_of_a_billion_is_refused_at_start(vit, nothing_built):
    _edit(
        vit,
        "preprocessor_config.json",
        size={"shortest_edge": 10**9},
        crop_size={"height": 10**9, "width": 10**9},
    )
    with pytest.raises(ValueError, match=r"an input side of 1000000000 pixels; this app serves 1 to 4096"):
        open_model(str(vit))


def test_a_safetensors_header_declaring_terabytes_is_refused_from_its_first_bytes(vit, nothing_built):
    weights = vit / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}})
    weights.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64)
    with pytest.raises(ValueError, match=r"declares 3725\.3 GB of tensors but the file holds"):
        open_model(str(vit))


def test_the_real_header_is_read_as_the_library_would(vit):
    from safetensors.torch import load_file

    declared = budget.safetensors_bytes(vit / "model.safetensors")
    assert declared == sum(
        t.numel() * t.element_size() for t in load_file(vit / "model.safetensors").values()
    )


def test_an_honest_model_still_opens(vit, monkeypatch):
    monkeypatch.setattr(budget, "available_bytes", lambda: 8 * GB)
    assert open_model(str(vit)).image_size == 64


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("os:system", r"os:system takes arguments \(command\); a factory takes none"),
        ("tiny_models:failing", r"calling failing\(\) failed \(RuntimeError: no weights here\)"),
        ("tiny_models:FakeTimm", "returned FakeTimm, not a torch.nn.Module"),
    ],
)
def test_a_factory_that_is_not_one_is_a_message(monkeypatch, spec, words):
    monkeypatch.setitem(sys.modules, "timm", tiny_models.FakeTimm())
    monkeypatch.setattr(tiny_models, "failing", _failing, raising=False)
    with pytest.raises(ValueError, match=words):
        open_model(spec)


def _failing():
    raise RuntimeError("no weights here")


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("RepositoryNotFoundError", "the Hub has no such repository"),
        ("GatedRepoError", "it is gated"),
        ("LocalEntryNotFoundError", "the Hub could not be reached"),
    ],
)
def test_a_failed_download_says_what_failed(monkeypatch, error, words):
    import httpx
    import huggingface_hub

    def fake_download(repo_id, **kwargs):  # no network: the error the Hub client would raise
        cls = getattr(huggingface_hub.errors, error)
        if error == "LocalEntryNotFoundError":
            raise cls("offline")
        request = httpx.Request("GET", "https://huggingface.co/api/models/nobody/absent")
        raise cls("404", response=httpx.Response(404, request=request))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(ValueError, match=words) as refused:
        open_model("nobody/absent", allow_download=True)
    assert "--allow-download" not in str(refused.value)

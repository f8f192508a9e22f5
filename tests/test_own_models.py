"""Your own model in the app: every kind of ``--model`` served through the CLI's own code path and
clicked through ``/attend``, its rows compared with the model's attention computed independently
(transformers' eager ``output_attentions``; ``softmax(q k^T / sqrt(d))`` from diffusers' own
projections), plus the messages for what cannot be opened.
"""

from __future__ import annotations

import pickle
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_models
import torch
from conftest import reference_probs
from PIL import Image

from spatial_attn import cli
from spatial_attn.models.preprocess import Preprocess, from_transformers, square
from spatial_attn.models.sources import HUB_FILES, open_model

pytestmark = pytest.mark.slow

# A 300 x 200 (tall) photo, clicked at x=150, y=120. By hand, for the ViT (shortest edge -> 72, crop 64):
# resized to 108 x 72, window at top (108-64)//2 = 22, left (72-64)//2 = 4; the click lands on
# floor(120.5 * 108/300) - 22 = 21, floor(150.5 * 72/200) - 4 = 50: patch (21//16, 50//16) = (1, 3),
# token 1 + 1*4 + 3 = 8. For 32 px diffusion models (shortest edge -> 32, square crop): resized 48 x 32,
# top 8, pixel (floor(120.5 * 48/300) - 8, floor(150.5 * 32/200)) = (11, 24).
PHOTO_HW = (300, 200)
CLICK_XY = (150, 120)
VIT_TOKEN = 8
DIFFUSION_PIXEL = (11, 24)
T, SEED, PROMPT = 300, 3, "a red cat"


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*PHOTO_HW, 3), dtype=np.uint8)).save(path)
    return path


def _hub_cache(root: Path, repo_id: str, source: Path) -> Path:
    """A Hugging Face cache holding ``repo_id`` (the layout huggingface_hub itself writes)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own")
    made = {
        "vit": tiny_models.vit_classifier(root / "vit"),
        "ddpm": tiny_models.ddpm_pipeline(root / "ddpm"),
        "sd": tiny_models.sd_pipeline(root / "sd"),
        "dit": tiny_models.dit(root / "dit"),
        "sd3": tiny_models.sd3_pipeline(root / "sd3"),
        "photo": _photo(root / "photo.png"),
        "weights": root / "net.safetensors",
    }
    from safetensors.torch import save_file

    torch.manual_seed(5)
    save_file(tiny_models.make_net().state_dict(), str(made["weights"]))
    made["cache"] = _hub_cache(root / "hub", "someone/tiny-vit", made["vit"])
    return made


@pytest.fixture(scope="module")
def served(folders):
    """``spatial-attn serve --model ...`` for every kind at once; ``launch`` kept from blocking."""
    import huggingface_hub

    import spatial_attn.app.blocks as app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = {}
    real_launch = app.launch

    def launch(models, **kwargs):
        started["models"] = models
        started["demo"] = real_launch(models, prevent_thread_lock=True, quiet=True, **kwargs)

    args = ["serve", "--port", str(port)]
    for spec in (folders["vit"], folders["ddpm"], folders["sd"], folders["dit"], folders["sd3"]):
        args += ["--model", str(spec)]
    args += ["--model", "timm:tiny_patch_attn", "--weights", str(folders["weights"])]
    args += ["--model", "tiny_models:make_net", "--weights", str(folders["weights"])]
    args += ["--model", "someone/tiny-vit", "--model", "vit-faces"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app, "launch", launch)
        mp.setitem(sys.modules, "timm", tiny_models.FakeTimm())
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folders["cache"]))
        assert cli.main(args) == 0
    yield f"http://127.0.0.1:{port}/", started["models"]
    started["demo"].close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def _attend(client, folders, model: str, prompt: str | None = None) -> dict:
    from gradio_client import handle_file

    x, y = CLICK_XY
    extra = () if prompt is None else (prompt,)
    photo = handle_file(str(folders["photo"]))
    return client.predict(photo, model, T, x, y, "mean", SEED, *extra, api_name="/attend")[1]


def test_served_models_are_listed_first_in_the_order_given(served):
    _, models = served
    names = [m if isinstance(m, str) else m.name for m in models]
    assert names == [
        "vit",
        "ddpm",
        "sd",
        "dit",
        "sd3",
        "timm:tiny_patch_attn",
        "tiny_models:make_net",
        "someone/tiny-vit",
        "vit-faces",
    ]


@pytest.mark.parametrize("name", ["vit", "someone/tiny-vit"])
def test_transformers_rows_equal_eager_output_attentions(client, folders, name):
    from transformers import ViTForImageClassification, ViTImageProcessor

    rows = _attend(client, folders, name)
    image = Image.open(folders["photo"])
    pixel_values = ViTImageProcessor.from_pretrained(folders["vit"])(image, return_tensors="pt").pixel_values
    reference = ViTForImageClassification.from_pretrained(folders["vit"], attn_implementation="eager")
    with torch.no_grad():
        attentions = reference(pixel_values=pixel_values, output_attentions=True).attentions
    assert rows["model_pixel"] == [21, 50] and len(rows["layers"]) == len(attentions) == 2
    for layer, probs in zip(rows["layers"], attentions, strict=True):  # probs: (1, heads, 17, 17)
        assert layer["token"] == VIT_TOKEN and layer["cell"] == [1, 3]
        expected = probs[0, :, VIT_TOKEN, 1:].mean(0).reshape(4, 4).numpy()
        np.testing.assert_allclose(layer["values"], expected, atol=1e-6)
        assert layer["special"]["CLS"] == pytest.approx(float(probs[0, :, VIT_TOKEN, 0].mean()), abs=1e-6)


def _diffusers_reference(module: torch.nn.Module, *args, **kwargs) -> dict[str, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) of every diffusers Attention, from its own to_q / to_k outputs."""
    from diffusers.models.attention_processor import Attention

    taps, hooks = {}, []
    for name, attn in module.named_modules():
        if isinstance(attn, Attention):
            for part in ("to_q", "to_k"):
                hooks.append(
                    getattr(attn, part).register_forward_hook(
                        lambda m, i, o, key=(name, part): taps.__setitem__(key, o.detach())
                    )
                )
    with torch.no_grad():
        module(*args, **kwargs)
    for h in hooks:
        h.remove()
    probs = {}
    for name, attn in module.named_modules():
        if (name, "to_q") in taps:
            q, k = (taps[name, p].unflatten(-1, (attn.heads, -1)).transpose(1, 2) for p in ("to_q", "to_k"))
            if q.ndim == 5:  # UNet2DModel's attention sees (B, C, H, W): tokens are flattened inside
                q, k = q.flatten(2, 3), k.flatten(2, 3)
            probs[name] = reference_probs(q, k, q.shape[-1] ** -0.5)
    return probs


@pytest.mark.parametrize(("name", "spec", "prompt"), [("ddpm", "ddpm", None), ("sd", "sd", PROMPT)])
def test_diffusers_rows_equal_softmax_of_their_own_projections(client, folders, name, spec, prompt):
    rows = _attend(client, folders, name, prompt)
    model = open_model(str(folders[spec]))
    prepared = model.prepare(Image.open(folders["photo"]), timestep=T, seed=SEED, prompt=prompt)
    reference = _diffusers_reference(model.module, *prepared.args, **prepared.kwargs)
    assert rows["model_pixel"] == list(DIFFUSION_PIXEL)
    assert sorted(layer["name"] for layer in rows["layers"]) == sorted(
        reference
    )  # call order vs module order
    side = model.image_size
    for layer in rows["layers"]:
        probs = reference[layer["name"]]  # (1, heads, N, N')
        h, w = layer["query_grid"]
        cell = [int((DIFFUSION_PIXEL[0] + 0.5) * h // side), int((DIFFUSION_PIXEL[1] + 0.5) * w // side)]
        assert layer["cell"] == cell
        expected = probs[0, :, cell[0] * w + cell[1]].mean(0).numpy()
        np.testing.assert_allclose(np.ravel(layer["values"]), expected, atol=1e-6, err_msg=layer["name"])
    if prompt is not None:
        assert rows["tokens"] == ["<|startoftext|>", "a</w>", "red</w>", "cat</w>"] + ["<|endoftext|>"] * 8
        assert any(layer["key_grid"] is None for layer in rows["layers"])  # cross-attention: over tokens


def test_sd_prompt_is_encoded_as_the_pipeline_encodes_it(folders):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folders["sd"], use_safetensors=True)
    embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    model = open_model(str(folders["sd"]))
    prepared = model.prepare(Image.open(folders["photo"]), timestep=T, seed=SEED, prompt=PROMPT)
    torch.testing.assert_close(prepared.kwargs["encoder_hidden_states"], embeds)


@pytest.mark.parametrize("name", ["dit", "timm:tiny_patch_attn", "tiny_models:make_net"])
def test_other_kinds_answer_attend_with_rows_on_their_grid(client, folders, name):
    rows = _attend(client, folders, name)
    assert rows["layers"], name
    for layer in rows["layers"]:
        values = np.array(layer["values"])
        assert (
            values.shape == tuple(layer["key_grid"])
            and 0.99 < values.sum() + sum(layer["special"].values()) < 1.01
        )


def test_factory_weights_are_loaded_and_rows_match_the_modules_own_weights(client, folders):
    from safetensors.torch import load_file

    rows = _attend(client, folders, "tiny_models:make_net")
    net = tiny_models.make_net()
    net.load_state_dict(load_file(str(folders["weights"])))
    x, _, _ = square(64).apply(Image.open(folders["photo"]))  # the protocol's default preprocessing
    t = net.embed(x).flatten(2).transpose(1, 2)  # (1, 64, 32)
    _, probs = net.attn(t, t, t, need_weights=True, average_attn_weights=True)  # (1, 64, 64)
    # 300x200 -> 96x64, top 16: pixel (floor(120.5*96/300) - 16, floor(150.5*64/200)) = (22, 48): cell (2, 6)
    expected = probs[0, 2 * 8 + 6].detach().reshape(8, 8).numpy()
    np.testing.assert_allclose(rows["layers"][0]["values"], expected, atol=1e-6)


def test_hub_id_missing_from_the_cache_is_a_message_never_a_download(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ValueError, match=r"not in the local Hugging Face cache.*hf download nobody/absent"):
        open_model("nobody/absent")
    asked = {}

    def fake_download(repo_id, **kwargs):  # what --allow-download would fetch, without a network
        asked.update(kwargs, repo_id=repo_id)
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline test")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(ValueError):
        open_model("nobody/absent", allow_download=True)
    assert asked["local_files_only"] is False and asked["allow_patterns"] == HUB_FILES
    assert not any(p.endswith(s) for p in HUB_FILES for s in (".bin", ".pt", ".ckpt", ".pth"))


class _Trap:
    """Unpickling this writes a file: proof that nothing was unpickled if the file never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.mark.parametrize("layout", ["transformers", "diffusers-pipeline", "weights-file", "bare-file"])
def test_pickles_are_refused_and_never_unpickled(tmp_path, folders, layout):
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Trap(marker))
    if layout == "transformers":
        folder = tmp_path / "vit"
        folder.mkdir()
        for name in ("config.json", "preprocessor_config.json"):
            (folder / name).write_bytes((folders["vit"] / name).read_bytes())
        (folder / "pytorch_model.bin").write_bytes(payload)
        spec, weights = str(folder), None
    elif layout == "diffusers-pipeline":
        folder = tmp_path / "ddpm"
        for file in folders["ddpm"].rglob("*.json"):
            (folder / file.relative_to(folders["ddpm"])).parent.mkdir(parents=True, exist_ok=True)
            (folder / file.relative_to(folders["ddpm"])).write_bytes(file.read_bytes())
        (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(payload)
        spec, weights = str(folder), None
    elif layout == "weights-file":
        (tmp_path / "net.pt").write_bytes(payload)
        spec, weights = "tiny_models:make_net", tmp_path / "net.pt"
    else:
        (tmp_path / "model.ckpt").write_bytes(payload)
        spec, weights = str(tmp_path / "model.ckpt"), None
    with pytest.raises(ValueError, match=r"is a pickle.*never does.*safetensors"):
        open_model(spec, weights)
    assert not marker.exists()


def test_timm_missing_is_a_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match="needs timm, which is not installed: pip install timm"):
        open_model("timm:vit_base_patch16_224")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("timm:no_such_net", "Unknown model"),
        ("tiny_models:nothing_here", "cannot import it"),
        ("tiny_models:PROMPT_WORDS", "is not callable"),
        ("tiny_models:FakeTimm", "returned FakeTimm, not a torch.nn.Module"),
        ("no/such/place", "is not a folder here"),
    ],
)
def test_specs_that_cannot_be_opened_say_why(monkeypatch, spec, message):
    monkeypatch.setitem(sys.modules, "timm", tiny_models.FakeTimm())
    with pytest.raises(ValueError, match=message):
        open_model(spec)


def test_a_latent_denoiser_alone_asks_for_its_pipeline(folders):
    with pytest.raises(ValueError, match="open the whole pipeline folder"):
        open_model(str(folders["sd"] / "unet"))


def test_cli_refuses_a_bad_model_before_serving(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["serve", "--model", "/no/such/folder"])
    assert stop.value.code == 2 and "is not a folder here" in capsys.readouterr().err


def test_weights_need_a_model_before_them(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--weights", "x.safetensors"])
    assert "--weights must follow the --model" in capsys.readouterr().err


def test_preprocessing_matches_the_transformers_processor_and_shows_the_crop(folders):
    from transformers import ViTImageProcessor

    image = Image.open(folders["photo"])
    config = ViTImageProcessor.from_pretrained(folders["vit"]).to_dict()
    x, pixels, geometry = from_transformers(config).apply(image)
    expected = ViTImageProcessor.from_pretrained(folders["vit"])(image, return_tensors="pt").pixel_values
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    assert pixels.shape == (64, 64, 3) and "centre-cropped to 64x64" in geometry.describe()


def test_clicks_land_on_the_pixel_the_model_saw_through_crop_and_pad():
    # a grey photo with a red block: wherever the block ends up, a click on it must land on red
    photo = np.full((300, 200, 3), 128, np.uint8)
    photo[140:180, 60:100] = (255, 0, 0)
    image = Image.fromarray(photo)
    for steps in (
        Preprocess(("shortest_edge", 72), (64, 64)),  # crop
        Preprocess(("longest_edge", 64), (64, 64)),  # pad: 64 x 43 in a 64 x 64 canvas
    ):
        _, pixels, geometry = steps.apply(image)
        for py, px in ((145, 65), (160, 80), (175, 95)):
            y, x = geometry.to_input((py, px))
            assert tuple(pixels[y, x]) == (255, 0, 0), (steps.resize, py, px)
    padded = Preprocess(("longest_edge", 64), (64, 64)).apply(image)[1]
    assert (padded[:, :5] == 0).all() and "padded to 64x64" in Preprocess(
        ("longest_edge", 64), (64, 64)
    ).geometry((300, 200)).describe()
    with pytest.raises(ValueError, match="cropped away"):
        Preprocess(("shortest_edge", 72), (64, 64)).geometry((300, 200)).to_input((5, 100))


def test_prompt_view_bars_and_token_maps_equal_the_cross_attention(folders):
    import re

    from spatial_attn.analysis.text import PromptTokens, token_map
    from spatial_attn.app.blocks import Handlers, Library, run
    from spatial_attn.app.views import prompt as view

    library = Library(["vit-faces"])
    library.add(open_model(str(folders["sd"])))
    source = Image.open(folders["photo"])
    session = run(library, "sd", T, SEED, source, "", PROMPT)
    session.point = DIFFUSION_PIXEL
    ex = session.exploration
    assert ex.prepared.tokens[:4] == ("<|startoftext|>", "a</w>", "red</w>", "cat</w>")
    _group, prompt, bars, tokens, maps = view.refresh(session, None, "mean", "viridis")
    assert prompt == PROMPT and tokens.choices[:4] == [
        ("<|startoftext|>",) * 2,
        *((w, w) for w in ("a", "red", "cat")),
    ]
    model = library["sd"].with_prompt(PROMPT)
    reference = _diffusers_reference(model.module, *ex.prepared.args, **ex.prepared.kwargs)
    cross = [layer for layer in ex.layers if layer.key_grid is None]
    figures = re.findall(r'<figure class="sa-bars" data-layer="([^"]+)".*?</figure>', bars)
    assert figures == [layer.name for layer in cross] and len(cross) == 4
    prompt_tokens = PromptTokens.of(ex.prepared.tokens)
    for layer, chunk in zip(cross, bars.split('class="sa-bars"')[1:], strict=True):
        probs = reference[layer.name][0]  # (heads, N, 12 tokens)
        h, w = layer.query_grid
        cell = (int((DIFFUSION_PIXEL[0] + 0.5) * h // 32), int((DIFFUSION_PIXEL[1] + 0.5) * w // 32))
        row = probs[:, cell[0] * w + cell[1]].mean(0).numpy()
        drawn = [float(v) for v in re.findall(r'data-value="([0-9.]+)"', chunk)]
        np.testing.assert_allclose(drawn, [*row[:4], row[4:].sum()], atol=2e-6)  # end + padding: one bar
        column = probs[:, :, 2].mean(0).reshape(h, w).numpy()  # where "red" lands
        np.testing.assert_allclose(token_map(layer, prompt_tokens, 2), column, atol=1e-6)
    assert maps.count('class="sa-token-map"') == 4 and "where a lands" in maps  # the first word
    assert "where red lands" in view.draw_maps(session, "red", "mean", "viridis")
    with pytest.raises(ValueError, match="not in the prompt"):
        view.draw_maps(session, "dog", "mean", "viridis")
    # a new timestep keeps the user's prompt
    VIEW = ("mean", "row: where it looks", "viridis", "per map", "nearest", 0.65, "per layer", "image")
    rerun = Handlers(library).rerun(session, "sd", 500, SEED, *VIEW)[0]
    assert rerun.exploration.prepared.tokens == ex.prepared.tokens and rerun.exploration.timestep == 500
    # a model without a prompt hides the view
    plain = run(library, "vit-faces", 0, 0, source, "")
    assert view.refresh(plain, "red", "mean", "viridis")[0].visible is False


def test_a_pixel_of_an_input_larger_than_the_display_is_still_outlined():
    from spatial_attn.analysis import render
    from spatial_attn.app.blocks import DISPLAY

    shown = Image.new("RGB", (DISPLAY, DISPLAY))
    for pixel in ((0, 0), (511, 511), (200, 301)):  # a 512 px input: a pixel is 0.75 display px
        render.draw_cell(shown, pixel, (512, 512))
    assert np.asarray(shown).any()


def test_the_loaders_and_the_text_reading_import_no_ui_and_no_model_library():
    import subprocess

    code = (
        "import sys, spatial_attn.analysis.text, spatial_attn.models.sources, "
        "spatial_attn.models.preprocess; "
        "print(sorted({'gradio', 'matplotlib', 'transformers', 'timm'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_transformers_backbone_opens_and_its_attention_is_captured(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from spatial_attn.analysis.explore import Exploration

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4
    )
    ViTModel(config).save_pretrained(tmp_path / "backbone")
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "backbone")
    model = open_model(str(tmp_path / "backbone"))
    ex = Exploration(model, Image.new("RGB", (200, 300), "gray"))
    assert [layer.query_grid for layer in ex.layers] == [(4, 4), (4, 4)] and ex.summary == {}
    assert "stretched" in ex.prepared.note  # ViT's processor resizes to 64x64 whatever the aspect: said


def test_sd3_joint_rows_equal_softmax_over_image_and_text_and_the_bars_read_the_text_part(client, folders):
    from diffusers.models.attention_processor import Attention

    import spatial_attn as sa
    from spatial_attn.analysis.text import PromptTokens, token_bars

    rows = _attend(client, folders, "sd3", PROMPT)
    model = open_model(str(folders["sd3"]))
    prepared = model.prepare(Image.open(folders["photo"]), timestep=T, seed=SEED, prompt=PROMPT)
    taps, hooks = {}, []
    for name, attn in model.module.named_modules():
        if isinstance(attn, Attention):
            for part in ("to_q", "to_k", "add_q_proj", "add_k_proj"):
                hooks.append(
                    getattr(attn, part).register_forward_hook(
                        lambda m, i, o, key=(name, part): taps.__setitem__(key, o.detach())
                    )
                )
    with torch.no_grad(), sa.capture(model.module) as cap:
        model.module(*prepared.args, **prepared.kwargs)
    for h in hooks:
        h.remove()
    captured = {layer.name: layer for layer in cap.layers}
    prompt = PromptTokens.of(rows["tokens"])
    assert prompt.labels()[:5] == ["<|startoftext|>", "a", "red", "cat", "<|endoftext|> ×8"]
    assert rows["model_pixel"] == list(DIFFUSION_PIXEL) and len(rows["layers"]) == 2
    for layer in rows["layers"]:
        heads = 2
        q, k = (
            torch.cat([taps[layer["name"], a], taps[layer["name"], b]], dim=1)
            .unflatten(-1, (heads, -1))
            .transpose(1, 2)
            for a, b in (("to_q", "add_q_proj"), ("to_k", "add_k_proj"))
        )  # (1, heads, 16 image + 268 text, 8): the processor puts the image first
        probs = reference_probs(q, k, q.shape[-1] ** -0.5)[0].mean(0)  # (284, 284)
        h, w = layer["query_grid"]
        cell = (int((DIFFUSION_PIXEL[0] + 0.5) * h // 32), int((DIFFUSION_PIXEL[1] + 0.5) * w // 32))
        row = probs[cell[0] * w + cell[1]].numpy()
        np.testing.assert_allclose(layer["values"], row[:16].reshape(4, 4), atol=1e-6)
        text = np.array([layer["special"][f"text {i}"] for i in range(268)])
        np.testing.assert_allclose(text, row[16:], atol=1e-6)
        bars = token_bars(captured[layer["name"]], tuple(cell), prompt)
        np.testing.assert_allclose(bars, [row[16 + a : 16 + b].sum() for a, b in prompt.runs], atol=1e-6)


def test_a_masked_text_encoder_hides_the_padding_from_the_encoder_and_the_cross_attention(tmp_path):
    """PixArt's pipeline passes the prompt's mask to its T5 encoder and to the transformer's
    cross-attention: the padding then gets no attention at all."""
    from diffusers import DDPMScheduler, PixArtTransformer2DModel
    from transformers import CLIPTextModel

    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.models.own import DiffusionModel, TextEncoder

    tok = tiny_models.tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    encoder = CLIPTextModel(tiny_models.clip_config(tok, 12)).eval()
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=3,
        out_channels=6,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=16,
        caption_channels=12,
        norm_num_groups=8,
    ).eval()
    model = DiffusionModel(
        name="pixart",
        kind="PixArtTransformer2DModel",
        pretrained=False,
        module=transformer,
        image_size=8,
        num_timesteps=1000,
        preprocess=square(8),
        scheduler=DDPMScheduler(),
        text=TextEncoder(tok, encoder, masked=True),
        call="conditioned",
    )
    ex = Exploration(model.with_prompt(PROMPT), Image.new("RGB", (8, 8), "white"), timestep=T)
    cross = [layer for layer in ex.layers if layer.key_grid is None]
    assert len(cross) == 1 and ex.prepared.kwargs["encoder_attention_mask"][0].tolist() == [1] * 5 + [0] * 7
    row = cross[0].token_probs(1, 2)
    assert row[5:].max() < 1e-6 and abs(row[:5].sum() - 1) < 1e-5


def test_a_token_across_timesteps_is_its_column_at_each_step(folders):
    import re

    from spatial_attn.app.blocks import Library, run
    from spatial_attn.app.views import prompt as view

    library = Library(["vit-faces"])
    library.add(open_model(str(folders["sd"])))
    source = Image.open(folders["photo"])
    session = run(library, "sd", T, SEED, source, "", PROMPT)
    out = view.across(session, "red", 3, "viridis")
    assert re.findall(r'data-timestep="(\d+)"', out) == ["0", "500", "999"]  # spread over 1,000 steps
    assert out.count('class="sa-token-map"') == 3 * 4  # every step, every cross-attention layer
    model = library["sd"]
    frames = view.token_across(model.with_prompt(PROMPT), source, "red", [0, 500, 999], SEED)
    for t, maps in frames:
        prepared = model.prepare(source, timestep=t, seed=SEED, prompt=PROMPT)
        reference = _diffusers_reference(model.module, *prepared.args, **prepared.kwargs)
        for layer, values in maps:
            h, w = layer.query_grid
            expected = reference[layer.name][0, :, :, 2].mean(0).reshape(h, w).numpy()  # key 2: "red"
            np.testing.assert_allclose(values, expected, atol=1e-6, err_msg=f"{layer.name} t={t}")

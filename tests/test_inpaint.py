"""The in-painter (vit-inpaint): its captured rows are its own softmax(q k^T) with the mask token in,
the evaluation hides exactly the query eye's patches, and its trainer learns.

Tiny configs throughout (width 16, two blocks): what is checked is the arithmetic and the masking,
not the bundled weights (tests/test_models.py loads those with pickle refused).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_rows_match, reference_probs
from PIL import Image

import spatial_attn as sa
from spatial_attn.data import Edit, FaceBatch, make_faces
from spatial_attn.data.eyes import locate_eyes
from spatial_attn.faces.eye_attention import eye_cells, measure, variants
from spatial_attn.faces.train.common import Settings
from spatial_attn.faces.train.vit_inpaint import InpaintTrainer
from spatial_attn.models.bundle import InpaintModel
from spatial_attn.models.vit_inpaint import EYE_REACH, InpaintConfig, InpaintViT, eye_mask

TINY = InpaintConfig(dim=16, depth=2, heads=2, mlp_ratio=2)


def _tiny_model() -> InpaintViT:
    torch.manual_seed(0)
    model = InpaintViT(TINY).eval()
    with torch.no_grad():  # a mask token far from any patch's embedding: its rows must differ
        model.mask_token.normal_(0, 2.0)
    return model


def _bundled(model: InpaintViT) -> InpaintModel:
    return InpaintModel("vit-inpaint", "vit-inpaint", True, model, config=TINY.to_dict())


def _by_hand(
    model: InpaintViT, x: torch.Tensor, mask: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's probabilities ``(B, h, N, N)`` and the painted image, from the weights alone."""
    p, g, d = TINY.patch, TINY.grid, TINY.dim
    tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=p)  # (B, D, g, g)
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, D)
    h = torch.where(mask[..., None], model.mask_token, tokens) + model.pos_embed  # (B, N, D)
    probs = []
    for block in model.blocks:
        mha, hd = block.self_attn, d // TINY.heads
        a = F.layer_norm(h, (d,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        q, k, v = (
            a @ w.T + b for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3), strict=True)
        )
        q, k, v = (t.view(len(x), -1, TINY.heads, hd).transpose(1, 2) for t in (q, k, v))  # (B, h, N, hd)
        probs.append(reference_probs(q, k, hd**-0.5))
        mixed = (probs[-1] @ v).transpose(1, 2).reshape(len(x), -1, d)  # (B, N, D)
        h = h + mixed @ mha.out_proj.weight.T + mha.out_proj.bias
        b2 = F.layer_norm(h, (d,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
        h = h + block.linear2(F.gelu(block.linear1(b2)))
    out = model.decoder(
        F.layer_norm(h, (d,), model.norm.weight, model.norm.bias, model.norm.eps)
    )  # (B, N, 3pp)
    image = out.view(len(x), g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(len(x), 3, g * p, g * p)
    return probs, image


def test_rows_are_its_own_softmax_with_the_mask_token_in():
    model = _tiny_model()
    faces = make_faces(2, 3, layout="wide")
    x = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (2, 3, 32, 32)
    mask = torch.from_numpy(eye_mask(faces.eyes[:, 0], faces.eye_radius[:, 0], TINY))  # (2, 64)
    with torch.no_grad():
        probs, painted = _by_hand(model, x, mask)
        unmasked, _ = _by_hand(model, x, torch.zeros_like(mask))
        with sa.capture(model) as cap:
            out = model(x, mask)
    torch.testing.assert_close(out, painted, atol=1e-5, rtol=1e-4)  # the hand-made forward is the model's
    assert cap.layers.names() == ["blocks.0.self_attn", "blocks.1.self_attn"]
    for layer, expected, bare in zip(cap.layers, probs, unmasked, strict=True):
        assert layer.query_grid == layer.key_grid == (8, 8) and layer.heads == 2
        assert_rows_match(layer, expected, cells=64)
        assert not torch.allclose(expected, bare, atol=1e-3)  # the mask token changed the rows


def test_the_mask_is_every_patch_the_eye_can_reach():
    faces = make_faces(64, 5, layout="wide")
    for e in (0, 1):
        got = eye_mask(faces.eyes[:, e], faces.eye_radius[:, e], InpaintConfig())  # (64, 64)
        for i in range(len(faces)):
            reach = EYE_REACH[0] * faces.eye_radius[i, e] + EYE_REACH[1]
            want = eye_cells(faces.eyes[i, e], reach, (8, 8)).reshape(-1)
            np.testing.assert_array_equal(got[i], want)
            # no pixel the eye painted lies outside its mask: the other eye is the only place to read it
            drawn = _eye_pixels(faces, 5, i, e, "wide")
            assert (drawn <= np.kron(got[i].reshape(8, 8), np.ones((4, 4), bool))).all(), (i, e)


def test_the_eval_hides_the_query_eye_in_every_run():
    """Each of measure's runs hides one eye's patches on every face: the query eye's. Two runs of
    the valid faces (one per query eye), one per erased, moved and decoy face set, two of the blank."""
    bm = _bundled(_tiny_model())
    v = variants(3, 4)
    seen: list[np.ndarray] = []
    handle = bm.module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["mask"].numpy().copy()), with_kwargs=True
    )
    measure(bm, v)
    handle.remove()
    eyes = [eye_mask(v.valid.eyes[:, e], v.valid.eye_radius[:, e], TINY) for e in (0, 1)]
    queried = [0, 1, 1, 1, 1, 0, 0, 0, 0, 1]  # valid x2, (erased, moved, decoy) of eye 0 then 1, blank x2
    assert len(seen) == len(queried)
    for mask, src in zip(seen, queried, strict=True):
        np.testing.assert_array_equal(mask, eyes[src])


def test_the_app_masks_the_left_eye_and_says_so():
    """Around the located left eye: every pixel it drew is under the mask, none of the right eye's."""
    bm = _bundled(_tiny_model())
    faces = make_faces(8, 0)
    located = [i for i in range(len(faces)) if locate_eyes(faces.images[i]) is not None]
    assert len(located) >= 4
    for i in located:
        prepared = bm.prepare(Image.fromarray(faces.images[i]))
        grey = np.kron(prepared.kwargs["mask"][0].numpy().reshape(8, 8), np.ones((4, 4), bool))  # (32, 32)
        left, right = (_eye_pixels(faces, 0, i, e) for e in (0, 1))
        assert left.any() and (left <= grey).all() and not (right & grey).any()
        assert "left eye masked" in prepared.note and "mask token" in prepared.note
        assert (prepared.display[grey] == 128).all() and (
            prepared.display[~grey] == faces.images[i][~grey]
        ).all()
        assert bm.run(prepared) == {"masked_patches": int(grey.sum() // 16)}
    for lost in (faces.images[sorted(set(range(len(faces))) - set(located))[0]], np.full((32, 32, 3), 90)):
        bare = bm.prepare(Image.fromarray(lost.astype(np.uint8)))  # no two eyes found: nothing hidden
        assert not bare.kwargs["mask"].any() and "nothing masked" in bare.note


def _eye_pixels(faces: FaceBatch, seed: int, i: int, e: int, layout: str = "standard") -> np.ndarray:
    """(32, 32) bool: the pixels of face ``i`` (of ``faces``, drawn from ``seed``) that eye ``e``
    painted: where the same face with that eye erased differs."""
    hide = np.zeros((len(faces), 2), dtype=bool)
    hide[:, e] = True
    erased = make_faces(len(faces), seed, layout=layout, edit=Edit(erase=hide)).images[i]
    return np.abs(faces.images[i].astype(int) - erased).max(-1) > 0


def test_the_trainer_paints_better_after_a_few_steps():
    trainer = InpaintTrainer(Settings(steps=40, batch_size=16, lr=3e-3), cfg=TINY)
    batch = make_faces(16, 7, layout="wide")
    losses = [trainer.step(s, batch, torch.Generator().manual_seed(s))["loss"] for s in range(40)]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])  # still in the warm-up: lr <= 4e-4


def test_a_model_that_hides_no_eye_refuses_to():
    from spatial_attn.models import load_model

    judge = load_model("vit-faces")
    with pytest.raises(ValueError, match="hides no eye"):
        judge.mask_eye(judge.prepare(Image.new("RGB", (32, 32))), np.array([10.0, 10.0]), 3.0)


def test_eval_of_some_models_names_known_ones_and_never_the_sealed_seeds(tmp_path):
    from spatial_attn.cli import main
    from spatial_attn.faces.evaluate import evaluate_all

    with pytest.raises(SystemExit, match="unknown model"):
        evaluate_all(tmp_path, models=("vit-inpainter",))
    with pytest.raises(SystemExit, match="--sealed runs every model"):
        main(["eval", "--sealed", "--models", "vit-inpaint", "--checkpoints", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before any record was written


def test_a_table_of_some_models_goes_into_their_cards_only(monkeypatch, tmp_path):
    from spatial_attn.cli import main
    from spatial_attn.faces import evaluate

    written = []
    monkeypatch.setattr(
        evaluate,
        "evaluate_all",
        lambda *a, **k: evaluate.Report("dev", [], [], models=k.get("models", evaluate.NAMES)),
    )
    monkeypatch.setattr(evaluate, "write_cards", lambda root, table, report, readme: written.append(readme))
    main(["eval", "--models", "vit-inpaint", "--write-cards", "--checkpoints", str(tmp_path)])
    main(["eval", "--write-cards", "--checkpoints", str(tmp_path)])
    assert written == [None, Path("README.md")]  # README.md's table is of every model


def test_training_moves_only_the_kept_eye_and_never_into_the_mask():
    from spatial_attn.faces.train.vit_inpaint import KEEP_APART, SHIFT_PX, SHIFT_SHARE, masked_side

    trainer = InpaintTrainer(Settings(steps=1, batch_size=256, lr=1e-3), cfg=TINY)
    seed, n = 11, 256
    plain = make_faces(n, seed, trainer.kinds, layout="wide")
    moved = trainer.augment(plain, seed, "wide")
    rows, side = np.arange(n), masked_side(seed, n)
    np.testing.assert_array_equal(moved.eyes[rows, side], plain.eyes[rows, side])  # the painted eye stays
    step = moved.eyes[rows, 1 - side] - plain.eyes[rows, 1 - side]  # (n, (dy, dx))
    assert (np.abs(step) <= np.array(SHIFT_PX) + 1e-5).all()
    assert abs((np.abs(step).sum(1) > 0).mean() - SHIFT_SHARE) < 0.08
    before = np.abs(plain.eyes[:, 1, 1] - plain.eyes[:, 0, 1])
    after = np.abs(moved.eyes[:, 1, 1] - moved.eyes[:, 0, 1])
    assert (after >= np.minimum(KEEP_APART, before) - 1e-4).all()

"""The SAGAN's issue-23 recipe: position channels in the generator's attention, AC-GAN conditioning
read from z, the losses on the generator's attention, and fine-tuning from a trained model.

Each piece is checked against hand math written here (never the code under test); the rows of a
layer with position channels against a softmax of its own convolutions on ``[x, position]``, in
a separate forward; tiny configurations throughout.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_rows_match, reference_probs

import spatial_attn as sa
from spatial_attn.data import EYE_COLORS, SHAPES, Edit, make_faces, shape_masks
from spatial_attn.data.eyes import locate_eyes
from spatial_attn.faces.cards import write_card
from spatial_attn.faces.train.common import Settings, run
from spatial_attn.faces.train.sagan import (
    GANRecipe,
    SAGANTrainer,
    asked_eyes,
    class_loss,
    collapse_penalty,
    eye_classes,
    eye_seeking_loss,
    moved_eye_faces,
    shape_hinge_loss,
    shape_template_loss,
    stray_loss,
    widened,
)
from spatial_attn.models import load_model
from spatial_attn.models.sagan import SAGAN, SAGANConfig, SelfAttn, condition, position_channels

TINY = {"g_ch": 8, "d_ch": 8, "minibatch_std": 4}


def test_position_channels_are_sin_cos_of_the_cell_centres():
    x = torch.zeros(2, 3, 4, 6)
    pos = position_channels(x, 2)  # (2, 8, 4, 6): sin y f1, f2, cos y f1, f2, sin x f1, f2, cos x f1, f2
    assert pos.shape == (2, 8, 4, 6)
    y, col = 1, 4
    uy, ux = (y + 0.5) / 4, (col + 0.5) / 6
    want = [math.sin(2 * math.pi * uy), math.sin(4 * math.pi * uy), math.cos(2 * math.pi * uy)]
    want += [math.cos(4 * math.pi * uy), math.sin(2 * math.pi * ux), math.sin(4 * math.pi * ux)]
    want += [math.cos(2 * math.pi * ux), math.cos(4 * math.pi * ux)]
    torch.testing.assert_close(pos[1, :, y, col], torch.tensor(want), atol=1e-6, rtol=0)
    mirror = pos[0, :, y, 6 - 1 - col]  # the mirrored column: x sines flip sign, cosines stay
    torch.testing.assert_close(mirror[4:6], -pos[0, 4:6, y, col], atol=1e-6, rtol=0)
    torch.testing.assert_close(mirror[6:], pos[0, 6:, y, col], atol=1e-6, rtol=0)


def test_rows_of_a_layer_with_position_channels_are_what_it_computed():
    torch.manual_seed(0)
    attn = SelfAttn(16, coords=2).eval()
    attn.gamma.data.fill_(0.7)
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        plain = attn(x)
        with sa.capture(attn) as cap:
            out = attn(x)
        qk_in = torch.cat([x, _hand_positions(6, 5, 2).expand(2, -1, -1, -1)], 1)  # separate forward
        queries = attn.query_conv(qk_in).flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, d)
        keys = attn.key_conv(qk_in).flatten(2).transpose(1, 2)[:, None]
        probs = reference_probs(queries, keys, 1.0)
    assert torch.equal(out, plain)
    (layer,) = cap.layers
    assert layer.family == "sagan" and layer.query_grid == (6, 5)
    assert_rows_match(layer, probs)
    assert layer.verified is True
    no_pos = reference_probs(  # the same convolutions without the position channels: other rows
        attn.query_conv(torch.cat([x, torch.zeros_like(qk_in[:, 16:])], 1))
        .flatten(2)
        .transpose(1, 2)[:, None],
        keys,
        1.0,
    )
    assert not torch.allclose(no_pos, probs, atol=1e-3)


def _hand_positions(h: int, w: int, coords: int) -> torch.Tensor:
    """(1, 4 coords, h, w), written out channel by channel."""
    chans = []
    for axis, size in ((0, h), (1, w)):
        for fn in (math.sin, math.cos):
            for f in range(1, coords + 1):
                vals = [fn(2 * math.pi * f * (i + 0.5) / size) for i in range(size)]
                t = torch.tensor(vals)
                chans.append(t[:, None].expand(h, w) if axis == 0 else t[None, :].expand(h, w))
    return torch.stack(chans)[None]


def test_condition_reads_colour_and_shape_from_z_evenly():
    z = torch.zeros(3, 4)
    z[1, :2] = torch.tensor([-9.0, 9.0])
    z[2, :2] = torch.tensor([-0.5, 0.3])
    colour, shape = condition(z)
    phi = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (-0.5, 0.3)]
    assert colour.tolist() == [3, 0, int(phi[0] * 6)]  # Phi(0) = 0.5 -> the middle class
    assert shape.tolist() == [2, 4, int(phi[1] * 5)]
    many = condition(torch.randn(60000, 4, generator=torch.Generator().manual_seed(1)))
    for idx, k in zip(many, (len(EYE_COLORS), len(SHAPES)), strict=True):
        np.testing.assert_allclose(np.bincount(idx.numpy(), minlength=k) / 60000, 1 / k, atol=0.01)


def test_the_conditional_generator_adds_its_conditions_columns_and_a_seed_keeps_it():
    torch.manual_seed(0)
    g = SAGAN(SAGANConfig(**TINY, conditional=True)).generator.eval()
    z = torch.randn(3, 128)
    seen = []
    g.block1.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        before = g(z)
        g.embed.weight.normal_()
        after = g(z)
        assert not torch.allclose(before, after)  # the embedding reaches the image
        torch.testing.assert_close(g(z), after, atol=0, rtol=0)  # same z, same condition, same image
        colour, shape = condition(z)
        w = g.embed.weight  # (4ch * 16, 6 + 5): the colour's column plus the shape's, by hand
        want = (g.linear(z) + w[:, colour].T + w[:, 6 + shape].T).view(3, -1, 4, 4)
    torch.testing.assert_close(seen[1], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        seen[0], g.linear(z).detach().view(3, -1, 4, 4), atol=1e-6, rtol=0
    )  # zero at start
    logits = SAGAN(SAGANConfig(**TINY, conditional=True)).discriminator.eval()(after, aux=True)[1]
    assert logits.shape == (3, len(EYE_COLORS) + len(SHAPES))


def test_class_loss_is_the_two_cross_entropies():
    torch.manual_seed(0)
    logits = torch.randn(3, 11)
    colour, shape = torch.tensor([0, 5, 3]), torch.tensor([4, 0, 2])
    want = 0.0
    for b in range(3):
        lc, ls = logits[b, :6], logits[b, 6:]
        want += -(lc[colour[b]] - torch.logsumexp(lc, 0)) / 3 - (ls[shape[b]] - torch.logsumexp(ls, 0)) / 3
    torch.testing.assert_close(class_loss(logits, colour, shape), want)


def test_class_loss_with_a_fake_class_by_hand():
    torch.manual_seed(1)
    logits = torch.randn(2, 13)  # colours 0..5, shapes 6..10, colour-fake 11, shape-fake 12
    colour, shape = torch.tensor([-1, 2]), torch.tensor([-1, 4])  # -1: the fake class
    lc = [logits[b, [0, 1, 2, 3, 4, 5, 11]] for b in range(2)]
    ls = [logits[b, [6, 7, 8, 9, 10, 12]] for b in range(2)]
    want = 0.0
    for b, (c, s_) in enumerate(((6, 5), (2, 4))):
        want += -(lc[b][c] - torch.logsumexp(lc[b], 0)) / 2 - (ls[b][s_] - torch.logsumexp(ls[b], 0)) / 2
    torch.testing.assert_close(class_loss(logits, colour, shape), want)
    cfg = SAGANConfig(**TINY, conditional=True, aux_fake=True)
    assert SAGAN(cfg).discriminator.aux.out_features == cfg.n_classes == 13


def test_eye_classes_name_the_drawn_colour_and_shape():
    faces = make_faces(12, 5)
    colour, shape = eye_classes(faces)
    drawn = faces.eye_color[:, 0].astype(float)
    for b in range(12):  # the nearest palette entry, by hand
        dist = [sum(abs(drawn[b, c] - EYE_COLORS[k, c]) for c in range(3)) for k in range(len(EYE_COLORS))]
        assert colour[b] == int(np.argmin(dist))
    assert shape.tolist() == faces.eye_shape[:, 0].tolist()


def test_collapse_penalty_by_hand():
    attention = torch.full((1, 4, 4), 0.25)  # grid (2, 2): rows are keys {0, 1} and {2, 3}
    attention[0, 0] = torch.tensor([0.45, 0.45, 0.05, 0.05])  # 0.9 on grid row 0
    attention[0, 1] = torch.tensor([0.05, 0.0, 0.6, 0.35])  # 0.95 on grid row 1
    attention[0, 2] = torch.tensor([0.3, 0.3, 0.2, 0.2])  # 0.6 on grid row 0
    want = ((0.9 - 0.7) ** 2 + (0.95 - 0.7) ** 2 + 0.0 + 0.0) / 4  # row 3 spread evenly: 0.5 < 0.7
    torch.testing.assert_close(collapse_penalty(attention, (2, 2), 0.7), torch.tensor(want))


def _eye_terms_by_hand(rows: torch.Tensor, eyes: np.ndarray, radius: float) -> list[float]:
    """-log(mass on the other eye's 2 px cells) from each eye's cell of a (256, 256) attention."""
    terms = []
    for src in (0, 1):
        qy, qx = (int(v) // 2 for v in np.floor(eyes[src]))  # pixel -> 2 px cell
        other = eyes[1 - src]
        cells = [
            y * 16 + x
            for y in range(16)
            for x in range(16)
            if (np.clip(other[0], 2 * y, 2 * y + 2) - other[0]) ** 2
            + (np.clip(other[1], 2 * x, 2 * x + 2) - other[1]) ** 2
            < radius**2
        ]
        terms.append(-math.log(float(rows[qy * 16 + qx, cells].sum()) + 1e-6))
    return terms


def test_eye_seeking_loss_by_hand():
    drawn = make_faces(16, 3).images
    keep = [i for i, img in enumerate(drawn) if locate_eyes(img) is not None][:3]
    assert len(keep) == 3
    images = np.concatenate([drawn[keep], np.full((1, 32, 32, 3), 128, np.uint8)])  # grey: no eyes
    found = [locate_eyes(img) for img in images]
    grid, n = (16, 16), 256
    attention = torch.softmax(torch.randn(4, n, n, generator=torch.Generator().manual_seed(0)), -1)
    loss, located = eye_seeking_loss(attention, grid, images)
    assert located == 3
    terms = []
    for b in range(3):
        eyes, radius = found[b]
        terms += _eye_terms_by_hand(attention[b], eyes, radius)
    torch.testing.assert_close(loss, torch.tensor(float(np.mean(terms))), atol=1e-5, rtol=0)
    nothing, none_located = eye_seeking_loss(attention, grid, images[3:])
    assert none_located == 0 and float(nothing) == 0.0


def test_widened_starts_where_the_trained_model_was(tmp_path):
    torch.manual_seed(0)
    old = SAGAN(SAGANConfig(**TINY))
    with torch.no_grad():  # a trained-looking generator: attention switched on
        old.generator.attn.gamma.fill_(0.5)
        old.discriminator.attn.gamma.fill_(0.5)
    old.eval()
    new = SAGAN(SAGANConfig(**TINY, attn_coords=2, conditional=True))
    new.load_state_dict(widened(old.state_dict(), new.state_dict()))
    new.eval()
    z, x = torch.randn(3, 128), torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(new(z=z), old(z=z), atol=1e-6, rtol=0)
        torch.testing.assert_close(new(image=x), old(image=x), atol=1e-6, rtol=0)
    w = new.generator.attn.query_conv.parametrizations.weight.original
    assert w.shape[1] == 16 + 8 and (w[:, 16:] == 0).all()
    with pytest.raises(SystemExit, match="does not fit"):
        widened(new.state_dict(), old.state_dict())


def test_the_default_recipe_is_the_old_one_and_unknown_fields_are_refused(tmp_path):
    s = Settings(steps=1, batch_size=4, lr=1e-4, out=tmp_path / "out")
    trainer = SAGANTrainer(s)
    assert trainer.cfg == SAGANConfig(g_ch=32, d_ch=32, minibatch_std=4)
    assert trainer.recipe == GANRecipe() and not trainer.model.generator.attn.keep
    run(trainer, s, tmp_path / "run")
    assert "recipe" not in json.loads((tmp_path / "out" / "sagan-faces" / "config.json").read_text())
    card = write_card(tmp_path / "out", "sagan-faces", "| m |", []).read_text()
    assert "`discriminator.attn`. The generator weights are an EMA" in card  # as the old card said
    with pytest.raises(SystemExit, match="unknown --set"):
        SAGANTrainer(Settings(steps=1, batch_size=4, lr=1e-4, extra={"head_shift_px": "4"}))


@pytest.mark.parametrize(
    ("shape_loss", "shape_find", "words"),
    [
        (
            "template",
            "reader",
            "located eyes were pushed towards the template of the shape asked for "
            "(plus; weight 10; a soft colour mask against it)",
        ),
        (
            "hinge",
            "asked",
            "asked-colour eyes were pushed towards the template of the shape asked for "
            "(plus; weight 10; a hinge on the eval reader's own colour test, pixel by pixel)",
        ),
    ],
)
def test_fine_tuning_with_the_recipe_trains_exports_and_loads(tmp_path, shape_loss, shape_find, words):
    first = Settings(steps=1, batch_size=4, lr=1e-4, out=tmp_path / "a")
    run(SAGANTrainer(first), first, tmp_path / "run-a")
    extra = {
        "init_from": str(tmp_path / "a" / "sagan-faces"),
        "attn_coords": "1",
        "aux_weight": "1",
        "aux_fake": "1",
        "eye_attn_weight": "0.5",
        "collapse_weight": "1",
        "d_eye_attn_weight": "0.5",
        "shape_weight": "10",
        "shape_only": "plus",
        "shape_loss": shape_loss,
        "shape_find": shape_find,
    }
    s = Settings(steps=2, batch_size=4, lr=1e-4, out=tmp_path / "b", extra=extra)
    trainer = SAGANTrainer(s)
    record = run(trainer, s, tmp_path / "run-b")
    assert {"aux", "eye", "located", "collapse", "d_eye", "shape"} <= set(record["final_logs"])
    bm = load_model("sagan-faces", root=tmp_path / "b")
    assert bm.module.cfg.attn_coords == 1 and bm.module.cfg.conditional and bm.module.cfg.aux_fake
    assert bm.config["recipe"]["aux_weight"] == 1.0
    assert bm.sample(0, 2).shape == (2, 32, 32, 3)
    prepared = bm.prepare(seed=3)
    with sa.capture(bm.module) as cap, torch.no_grad():
        bm.run(prepared)
    assert cap.layers.names() == ["generator.attn"]
    card = write_card(tmp_path / "b", "sagan-faces", "| m |", []).read_text()
    assert "also read 4 sin-cos position channels" in card and "Conditional (AC-GAN)" in card
    assert "onto the other eye (weight 0.5)" in card and "beyond 0.5 (weight 1)" in card
    assert "The discriminator's attention was trained with the same cross-entropy (weight 0.5)" in card
    assert "up to 6 px" in card and words in card
    # a fine-tune's budget is the chain's: the run it started from is in its record and on its card
    first_record = json.loads((tmp_path / "a" / "sagan-faces" / "training.json").read_text())
    assert record["started_from"] == first_record
    assert record["chain_seconds"] == round(first_record["train_seconds"] + record["train_seconds"], 1)
    assert f"- **Started from:** the model made by `{first_record['command']}`" in card


def test_train_cli_passes_set_to_the_sagan_only(tmp_path, capsys):
    from spatial_attn.cli import main

    with pytest.raises(SystemExit, match="only `spatial-attn train vit`, `train judge`, `train sagan` and "):
        main(["train", "ddpm", "--steps", "1", "--set", "x=1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown --set"):
        main(["train", "sagan", "--steps", "1", "--set", "nope=1", "--out", str(tmp_path)])


@pytest.mark.parametrize("coords", [0, 2])
def test_the_mechanics_tab_says_when_the_queries_also_see_positions(coords):
    from types import SimpleNamespace

    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.app.views.mechanics import MechanicsView
    from spatial_attn.models.bundle import SAGANModel

    torch.manual_seed(0)
    module = SAGAN(SAGANConfig(**TINY, attn_coords=coords)).eval()
    model = SAGANModel(
        name="sagan-faces",
        kind="sagan",
        pretrained=False,
        module=module,
        image_size=32,
        config={"z_dim": 128},
    )
    _, _, body = MechanicsView.show(
        SimpleNamespace(exploration=Exploration(model, None, seed=3), point=(10, 10)), None, None, 1.0
    )
    said = "its row <b>and</b> 8 more numbers that say where its cell is"
    assert (said in body) == bool(coords)
    assert ("made from its row alone" in body) == (not coords)


@pytest.mark.parametrize("aux_fake", [0, 1])
def test_the_discriminator_learns_the_fake_class_on_generated_faces_only_when_asked(aux_fake, monkeypatch):
    from spatial_attn.faces.train import sagan as sagan_train

    calls = []
    real = sagan_train.class_loss

    def spy(logits, colour, shape):
        calls.append((logits.shape, colour.tolist(), shape.tolist()))
        return real(logits, colour, shape)

    monkeypatch.setattr(sagan_train, "class_loss", spy)
    extra = {"aux_weight": "1", "aux_fake": str(aux_fake)}
    trainer = SAGANTrainer(Settings(steps=1, batch_size=4, lr=1e-4, extra=extra))
    batch = make_faces(4, 7)
    trainer.step(0, batch, torch.Generator().manual_seed(0))
    width = 11 + 2 * aux_fake
    colour, shape = eye_classes(batch)
    assert calls[0] == (torch.Size([4, width]), colour.tolist(), shape.tolist())  # D on real faces
    fake_calls = [c for c in calls if c[1] == [-1] * 4]
    assert fake_calls == ([(torch.Size([4, width]), [-1] * 4, [-1] * 4)] if aux_fake else [])
    assert len(calls) == 2 + aux_fake  # and G's term on its conditions


def test_the_condition_embedding_learns_at_its_own_rate_and_the_default_keeps_one_group():
    extra = {"aux_weight": "1", "embed_lr_factor": "10"}
    trainer = SAGANTrainer(Settings(steps=1, batch_size=4, lr=2e-4, extra=extra))
    groups = trainer.opt_g.param_groups
    embed = trainer.model.generator.embed.weight
    assert [g["lr"] for g in groups] == [2e-4, 2e-3] and groups[1]["params"] == [embed]
    assert all(p is not embed for p in groups[0]["params"])
    plain = SAGANTrainer(Settings(steps=1, batch_size=4, lr=2e-4))
    (group,) = plain.opt_g.param_groups  # the old recipe: one group, in the generator's order
    assert group["params"] == list(plain.model.generator.parameters())


def test_moved_eye_faces_move_one_eye_up_or_down_within_the_shift():
    n, seed = 12, 5
    plain, moved = make_faces(n, seed), moved_eye_faces(n, seed, 6.0)
    dy = moved.eyes - plain.eyes  # (n, 2, 2)
    assert (dy[..., 1] == 0).all() and (np.abs(dy[..., 0]) <= 6.0).all()
    assert ((dy[..., 0] != 0).sum(1) == 1).all()  # exactly one eye per face moved
    assert (dy[..., 0] > 0).any() and (dy[..., 0] < 0).any()  # both ways


def test_the_discriminators_eye_loss_is_the_cross_entropy_of_its_attention_on_moved_eye_faces(monkeypatch):
    from spatial_attn.faces.train import sagan as sagan_train

    trainer = SAGANTrainer(Settings(steps=1, batch_size=8, lr=1e-4, extra={"d_eye_attn_weight": "0.5"}))
    D = trainer.model.discriminator
    with torch.no_grad():
        D.attn.gamma.fill_(0.5)
    before = copy.deepcopy(D)
    seen = []
    real = sagan_train.moved_eye_faces

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(sagan_train, "moved_eye_faces", spy)
    logs = trainer.step(0, make_faces(8, 7), torch.Generator().manual_seed(0))
    (faces,) = seen
    assert len(faces) == 4  # half a batch
    # reference: D's attention on those faces, from its own convolutions in a separate forward
    x = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = before.block1(x)
        q = before.attn.query_conv(h).flatten(2).transpose(1, 2)  # (B, N, c)
        k = before.attn.key_conv(h).flatten(2)  # (B, c, N)
    probs = torch.softmax((q.float() @ k.float()).double(), -1)
    terms = []
    for b in range(4):
        eyes, radius = faces.eyes[b], float(faces.eye_radius[b, 0])
        terms += _eye_terms_by_hand(probs[b], eyes, radius)
    assert logs["d_eye"] == pytest.approx(float(np.mean(terms)), abs=2e-3)  # bf16 forwards (1e-4 seen)
    assert not D.attn.keep and D.attn.kept is None


def test_the_default_recipe_draws_no_moved_eye_faces_and_no_shape_loss(monkeypatch):
    from spatial_attn.faces.train import sagan as sagan_train

    monkeypatch.setattr(sagan_train, "moved_eye_faces", lambda *a, **k: pytest.fail("drawn by default"))
    monkeypatch.setattr(sagan_train, "shape_template_loss", lambda *a, **k: pytest.fail("used by default"))
    logs = SAGANTrainer(Settings(steps=1, batch_size=4, lr=1e-4)).step(
        0, make_faces(4, 7), torch.Generator().manual_seed(0)
    )
    assert "d_eye" not in logs and "shape" not in logs


def _soft_by_hand(image: np.ndarray, rgb: np.ndarray, softness: float = 8.0) -> np.ndarray:
    diff = np.abs(image.astype(np.float64) - rgb).max(-1)  # (32, 32)
    return 1 / (1 + np.exp(-(45 - diff) / softness))


def test_shape_template_loss_by_hand():
    faces = make_faces(16, 3)
    keep = [i for i, img in enumerate(faces.images) if locate_eyes(img) is not None][:2]
    images = faces.images[keep]
    found = [locate_eyes(img) for img in images] + [None]
    colour, shape = eye_classes(make_faces(16, 3))
    colour, shape = colour[keep], shape[keep]
    asked = torch.cat([shape, torch.tensor([0])])
    colours = torch.cat([colour, torch.tensor([0])])
    x = torch.from_numpy(np.concatenate([images, images[:1]])).permute(0, 3, 1, 2).float() / 127.5 - 1
    loss = shape_template_loss(x, found, colours, asked, list(range(len(SHAPES))))
    terms = []
    for b in range(2):
        soft = _soft_by_hand(images[b], EYE_COLORS[int(colour[b])])
        for centre in found[b][0]:
            y, x0 = (int(v) for v in np.floor(centre))
            template = shape_masks(centre, 3.0)[int(shape[b])].astype(np.float64)
            win = (slice(y - 5, y + 6), slice(x0 - 5, x0 + 6))
            terms.append(((soft[win] - template[win]) ** 2).mean())
    assert float(loss) == pytest.approx(float(np.mean(terms)), abs=1e-5)
    # a drawn eye is nearer its own shape's template than another shape's
    other = (shape + 2) % len(SHAPES)
    worse = shape_template_loss(x[:2], found[:2], colour, other, list(range(len(SHAPES))))
    assert float(worse) > float(loss)
    # shapes left out count nothing; none left: zero with a graph
    only = [s for s in range(len(SHAPES)) if s != int(shape[0])]
    part = shape_template_loss(x[:1], found[:1], colour[:1], shape[:1], only)
    assert float(part) == 0.0


def test_shape_only_names_shapes_and_refuses_unknown_ones():
    assert GANRecipe().template_shapes == list(range(len(SHAPES)))
    assert GANRecipe(shape_only="plus, ring").template_shapes == [SHAPES.index("plus"), SHAPES.index("ring")]
    with pytest.raises(SystemExit, match="unknown shape"):
        _ = GANRecipe(shape_only="star").template_shapes


def test_shape_hinge_loss_by_hand_and_it_pulls_a_skin_pixel_the_template_wants():
    """Round 4's loss: per window pixel, levels on the wrong side of the reader's test (45) with a
    margin of 12, over 100, averaged. An eye drawn crisp as a template costs nothing for its own
    shape and something for each other; a skin pixel the asked template covers is pulled."""
    faces = make_faces(8, 5)
    colour, _ = eye_classes(faces)
    found = [(faces.eyes[b], 3.0) for b in range(len(faces))]
    x = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    every = list(range(len(SHAPES)))
    for b in range(len(faces)):
        for asked in range(len(SHAPES)):
            diff = np.abs(faces.images[b].astype(np.float64) - EYE_COLORS[int(colour[b])]).max(-1)
            by_hand = []
            for centre in faces.eyes[b]:
                y, x0 = (int(v) for v in np.floor(centre))
                inside = shape_masks(centre, 3.0)[asked]
                win = (slice(max(0, y - 5), y + 6), slice(max(0, x0 - 5), x0 + 6))
                wrong = np.where(inside[win], np.maximum(0, diff[win] - 33), np.maximum(0, 57 - diff[win]))
                by_hand.append(wrong.mean() / 100)
            one = slice(b, b + 1)
            got = shape_hinge_loss(x[one], found[one], colour[one], torch.tensor([asked]), every)
            assert float(got) == pytest.approx(np.mean(by_hand), rel=1e-5, abs=1e-7)
    # crisp templates on faces without eyes: zero for the shape drawn, more for any other
    bare = make_faces(len(SHAPES), 5, edit=Edit(erase=np.ones((len(SHAPES), 2), bool)))
    crisp, eyes = bare.images.copy(), np.array([[12.3, 10.6], [12.3, 21.6]])
    for k in range(len(SHAPES)):
        for centre in eyes:
            crisp[k][shape_masks(centre, 3.0)[k]] = EYE_COLORS[1]
    xc = torch.from_numpy(crisp).permute(0, 3, 1, 2).float() / 127.5 - 1
    blue = torch.ones(1, dtype=torch.long)
    for k in range(len(SHAPES)):
        costs = [
            float(shape_hinge_loss(xc[k : k + 1], [(eyes, 3.0)], blue, torch.tensor([j]), every))
            for j in range(len(SHAPES))
        ]
        assert costs[k] == 0 and min(c for j, c in enumerate(costs) if j != k) > 0.01
    # a skin-coloured pixel inside the asked template gets a full-strength gradient (round 3's soft
    # mask gave it none): on a face without eyes, ask for a plus
    xb = (torch.from_numpy(bare.images[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1).requires_grad_(True)
    plus = torch.tensor([SHAPES.index("plus")])
    shape_hinge_loss(xb, [(eyes, 3.0)], blue, plus, every).backward()
    assert xb.grad[0, :, 12, 10].abs().max() > 1e-4  # the plus's centre pixel, skin now


def test_asked_eyes_finds_the_asked_colour_and_falls_back_to_the_usual_place():
    faces = make_faces(64, 8)
    colour, _ = eye_classes(faces)
    found = asked_eyes(faces.images, colour)
    assert {radius for _, radius in found} == {3.0}
    off = np.array([np.abs(centres - faces.eyes[b]).max() for b, (centres, _) in enumerate(found)])
    assert (off <= 0.6).mean() >= 0.9  # the rest: a background patch of the eye's colour nearby
    # a patch of the eye's colour elsewhere in the half (the background, a generator's smudge) does
    # not drag the centre: a plain mean of the pixels would move it by over a pixel here
    smudged = np.full((1, 32, 32, 3), (250, 214, 180), np.uint8)
    eyes = np.array([[12.5, 10.5], [12.5, 21.5]])
    for centre in eyes:
        smudged[0][shape_masks(centre, 3.0)[SHAPES.index("disc")]] = EYE_COLORS[1]
    smudged[0, 20:22, 3:7] = EYE_COLORS[1]
    centres, _ = asked_eyes(smudged, torch.tensor([1]))[0]
    np.testing.assert_allclose(centres, eyes, atol=0.05)
    skin = np.full((len(EYE_COLORS), 32, 32, 3), (250, 214, 180), np.uint8)  # no eye colour anywhere
    for centres, _ in asked_eyes(skin, torch.arange(len(EYE_COLORS))):
        np.testing.assert_array_equal(centres, [[12.5, 10.0], [12.5, 22.0]])


def test_shape_loss_and_shape_find_are_checked():
    assert (GANRecipe().shape_loss, GANRecipe().shape_find) == ("template", "reader")
    with pytest.raises(SystemExit, match="shape_loss"):
        GANRecipe(shape_loss="l2")
    with pytest.raises(SystemExit, match="shape_find"):
        GANRecipe(shape_find="metadata")


def test_stray_loss_counts_palette_pixels_away_from_the_eyes_only():
    """By hand: a skin face with two blue discs costs nothing; one blue pixel far from both eyes
    costs (45 + 12 - 0) / 100 over the region's 17 x 26 pixels; a pixel at an eye costs nothing."""
    img = np.full((1, 32, 32, 3), (250, 214, 180), np.uint8)
    eyes = np.array([[12.5, 10.5], [12.5, 21.5]])
    for centre in eyes:
        img[0][shape_masks(centre, 3.0)[SHAPES.index("disc")]] = EYE_COLORS[1]
    x = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    assert float(stray_loss(x(img), [(eyes, 3.0)])) == 0
    far = img.copy()
    far[0, 20, 4] = EYE_COLORS[4]  # purple, 8+ px from both eyes, inside the reader's region
    assert float(stray_loss(x(far), [(eyes, 3.0)])) == pytest.approx(57 / 100 / (17 * 26), rel=1e-4)
    outside = img.copy()
    outside[0, 25, 4] = EYE_COLORS[4]  # below the region the reader searches
    assert float(stray_loss(x(outside), [(eyes, 3.0)])) == 0
    assert float(stray_loss(x(far), [None])) == 0


def test_the_stray_loss_alone_reads_the_generators_pixels_itself():
    """``stray_weight`` with no shape or attention loss on: the step still finds the eyes it needs."""
    s = Settings(steps=1, batch_size=4, lr=1e-4, extra={"stray_weight": "1", "shape_find": "asked"})
    logs = SAGANTrainer(s).step(0, make_faces(4, 7), torch.Generator().manual_seed(0))
    assert "stray" in logs and "shape" not in logs

"""The evaluation's own pieces: its controls tell a layer that looks for the other eye from one that
looks at a fixed place, targets are read right, and the eye readers find what the faces drew."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spatial_attn.data import EYE_COLORS, SHAPES, make_faces
from spatial_attn.faces.evaluate import (
    NONE,
    README_BEGIN,
    README_END,
    Estimate,
    Report,
    Row,
    bootstrap,
    format_table,
    headline_rule,
    judge_rows,
    layer_rows,
    noise_levels,
    pooled_figures,
    probes,
    ratio,
    verdict,
    write_cards,
)
from spatial_attn.faces.eye_attention import (
    FIGURES,
    black_eyes,
    collapsed,
    eye_cells,
    follows,
    measure,
    variants,
)
from spatial_attn.faces.sample_eval import coverage, eye_traits, locate_eyes
from spatial_attn.models import BundledModel, Prepared


class ColourMatch(nn.Module):
    """Attention by colour alone: each 2 x 2 cell attends to cells of its own colour (exp(-20 d^2)).

    It has no idea where anything is, so from one eye it finds the other wherever it is drawn.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # (B, 256, 3)
        s = 20.0 * 2  # SDPA divides the logits by sqrt(4)
        q = torch.cat([2 * s * c, -s * torch.ones_like(c[..., :1])], -1)[:, None]  # (B, 1, 256, 4)
        k = torch.cat([c, (c**2).sum(-1, keepdim=True)], -1)[:, None]  # (B, 1, 256, 4)
        return F.scaled_dot_product_attention(q, k, k)


class Mirror(nn.Module):
    """Attention by position alone: each cell looks around its mirror image about the middle
    column (a Gaussian of 1.5 cells), whatever the image holds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s = 16, 3**0.5 / (2 * 1.5**2)  # SDPA divides the logits by sqrt(3)
        yx = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).flatten(0, 1)
        mirror = yx * torch.tensor([1, -1]) + torch.tensor([0, n - 1])  # (256, 2) cell units
        q = torch.cat([2 * s * mirror, -s * torch.ones(n * n, 1)], -1).float()  # (256, 3)
        k = torch.cat([yx, (yx**2).sum(-1, keepdim=True)], -1).float()  # (256, 3)
        return F.scaled_dot_product_attention(q.expand(len(x), 1, -1, -1), k.expand(len(x), 1, -1, -1), k)


class Wrapped(BundledModel):
    def run(self, prepared: Prepared) -> dict:
        self.module(*prepared.args)
        return {}


def _figures(module: nn.Module, n: int = 6, **control: object) -> dict[str, float]:
    """Mean figures over the faces whose eyes are not rings (a ring's centre pixel is skin, so a
    colour matcher queried there looks for skin). ``cheek_px=0`` or ``decoy=False`` feed a control
    the eye itself."""
    bm = Wrapped("toy", "toy", True, module)
    v = variants(n, 3, decoy=control.get("decoy", True))
    (figs,) = measure(bm, v, cheek_px=control.get("cheek_px", 5.0)).values()
    solid = v.valid.eye_shape[:, 0] != SHAPES.index("ring")
    assert solid.sum() >= n // 2
    return {k: float(v[solid].mean()) for k, v in figs.items()}


def test_a_layer_that_looks_for_the_colour_follows_the_eye():
    f = _figures(ColourMatch())
    assert f["valid"] > 5 and f["valid"] / f["erased"] > 3  # the eye's cells, not the place
    assert f["follows"] == 1 and f["stays"] == 0  # peak moves with the eye; never there by position
    assert 0 < f["chance"] < 0.1 and f["collapsed"] == 0
    # the controls: from the cheek (skin) it does not look for the eye; a decoy is not an eye colour
    assert f["cheek"] / f["valid"] < 0.3 and f["decoy"] == 0


def test_each_control_fails_when_it_is_fed_the_eye():
    """The cheek queried at the eye, or the decoy drawn as the eye, must give a share of ~1: a
    control that could not come out so would pass a layer whatever it looked at."""
    f = _figures(ColourMatch(), cheek_px=0.0)
    assert f["cheek"] == pytest.approx(f["valid"])
    g = _figures(ColourMatch(), decoy=False)
    assert g["decoy"] == g["follows"] == 1
    for figs in (f, g):  # and the table's verdict reads them: the layer no longer meets the targets
        one = np.ones(4)
        per_face = {k: figs[k] * one for k in FIGURES}
        (row,) = layer_rows("toy", [{"a": per_face}], [{"a": per_face}], "a")
        assert row.content.low > 2 and row.follows.low == 1 and row.met is False
    ok = {k: _figures(ColourMatch())[k] * np.ones(4) for k in FIGURES}
    assert layer_rows("toy", [{"a": ok}], [{"a": ok}], "a")[0].met is True


def test_a_layer_that_looks_at_a_place_has_content_lift_one_and_never_follows():
    f = _figures(Mirror())
    assert f["valid"] > 3  # a high lift: the eyes are mirror images, so position alone gets it
    assert f["valid"] / f["erased"] == pytest.approx(1) and f["blank"] == pytest.approx(f["valid"])
    assert f["follows"] == 0


def test_controls_differ_from_the_face_only_where_they_should():
    v = variants(16, 3)
    eye0 = np.zeros((16, 32, 32), dtype=bool)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    for i in range(16):
        eye0[i] = np.hypot(yy - v.valid.eyes[i, 0, 0], xx - v.valid.eyes[i, 0, 1]) < 4.5
    changed = (v.erased[0].images != v.valid.images).any(-1)
    assert changed.any() and not changed[~eye0].any()  # erasing eye 0 touches eye 0 only
    assert v.erased[0].eye_missing[:, 0].all() and not v.erased[0].eye_missing[:, 1].any()
    moved = v.moved[1].eyes - v.valid.eyes
    assert (np.abs(moved[:, 1, 0]) == 5).all() and not moved[:, 0].any() and not moved[:, 1, 1].any()
    assert (v.blank.images != v.valid.images).any(-1).mean() > 0.3 and v.blank.eye_missing.all()


def test_following_needs_the_peak_on_the_moved_eye_and_the_mass_off_its_old_place():
    own, old, moved = (np.zeros((8, 8), dtype=bool) for _ in range(3))
    own[3, 1], old[3:5, 5], moved[4:6, 5] = True, True, True  # the eye moved down one cell
    row = np.full((8, 8), 0.01)
    row[3, 1] = 1.0  # its own cell: never the peak
    row[5, 5] = 0.5
    assert follows(row, own, old, moved) == 1
    row[4, 5], row[3, 5] = 0.6, 0.55  # peak on a cell both cover, most mass where the eye was
    assert follows(row, own, old, moved) == 0
    row[3, 5] = 0.1
    assert follows(row, own, old, moved) == 1


def test_collapse_is_a_row_that_misses_the_other_eye():
    eye = np.zeros((8, 8), dtype=bool)
    eye[3, 5] = True
    top = np.full((8, 8), 0.001)
    top[0] = 1.0
    along = np.full((8, 8), 0.001)
    along[3] = 1.0
    assert collapsed(top, eye) == 1 and collapsed(along, eye) == 0
    assert collapsed(np.ones((8, 8)), eye) == 0


def test_bootstrap_interval_holds_the_figure_and_pairs_faces():
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 3, 200)
    est = ratio(2 * a, a)  # resampled face by face, the ratio is exactly 2 every time
    assert est.value == est.low == est.high == pytest.approx(2)
    spread = bootstrap(lambda x: x.mean(-1), a)
    assert spread.low < spread.value < spread.high and spread.high - spread.low < 0.3
    assert np.isnan(bootstrap(lambda x: x.mean(-1), np.array([])).value)
    # a control share over a figure that is sometimes 0: never an undefined bound the verdict skips
    rare = np.zeros(40)
    rare[0] = 1.0
    share = ratio(0.25 * rare, rare)  # resamples that miss face 0 are 0 / 0: counted as 1
    assert share.value == 0.25 and share.high == 1 and not np.isnan(share.low)
    assert ratio(np.ones(4), np.zeros(4)).high == np.inf


def test_targets_are_read_and_shown():
    hit = Row("m", "valid", ">= 98%", Estimate(0.987, 0.98, 0.99), "twin 2.0%")
    probe = Row("m", "probe", "<= 10%", Estimate(0.12, 0.1, 0.14), "twin 0.0%")
    none = Row("m", "blurred", "-", Estimate(0.5, 0.4, 0.6), "")
    lift = Row("m", "coverage", ">= 50%", Estimate(0.5, 0.5, 0.5), "", percent=True)
    assert (hit.met, probe.met, none.met, lift.met) == (True, False, None, True)
    assert hit.cells() == ["m", "valid", ">= 98%", "98.7% [98.0%, 99.0%]", "yes", "twin 2.0%"]
    assert probe.cells()[4] == "**no**" and NONE.show() == "n/a"
    assert Estimate(0.25, float("nan"), float("nan")).show(True) == "25.0%"
    assert Estimate(2.1e8, 0.003, 1234.5).show() == "2.1e+08 [0.003, 1.2e+03]"  # not 0.00 or 9 digits
    assert Estimate(0.0, 0.01, 999.0).show() == "0.00 [0.01, 999.00]"


def _figs(content: float, follows: float) -> dict[str, dict[str, np.ndarray]]:
    one = np.ones(4)
    keys = {"valid": content * one, "erased": one, "blank": one, "follows": follows * one}
    controls = {"cheek": 0.2 * content * one, "decoy": 0.1 * follows * one}
    return {
        **keys,
        **controls,
        "stays": 0 * one,
        "chance": 0.05 * one,
        "collapsed": 0 * one,
        "black_eye": 0 * one,
    }


def test_headline_is_the_layer_nearest_both_targets_and_the_table_says_what_is_met():
    dev = [{"a": _figs(6.0, 0.2), "b": _figs(2.2, 0.7), "c": _figs(1.0, 1.0)}]
    assert headline_rule(dev) == "b"  # min(3, 0.25)=0.25, min(1.1, 0.875)=0.875, min(0.5, 1.25)=0.5
    reaches = _figs(2.2, 0.7)
    reaches["cheek"] = reaches["valid"]  # as far from the cheek as from the eye: 0.5 / share 1 = 0.5
    assert headline_rule([{"reaches": reaches, "b": _figs(2.2, 0.7)}]) == "b"
    rows = layer_rows(
        "vit-faces",
        [{"a": _figs(2.5, 0.9), "b": _figs(2.5, 0.5)}],
        [{"a": _figs(1, 0), "b": _figs(1, 0)}],
        "b",
    )
    assert [r.met for r in rows] == [True, False] and [r.headline for r in rows] == [False, True]
    table = format_table(Report("dev", [], rows))
    assert "| vit-faces | `a` | 2.50 [2.50, 2.50] | 1.00 [1.00, 1.00] |" in table
    assert "**`b`** (headline)" in table
    # the verdict is the headline's: a row that passes without having been picked is named, not counted
    assert "- vit-faces: the headline layer `b` (picked on the dev seeds) **does not meet**" in table
    assert "also meeting them here, not picked in advance: `a`" in table
    assert "- ddpm-faces: no headline layer measured" in table and "**collapse**" not in table
    rows[1].headline, rows[0].headline = False, True
    assert "- vit-faces: the headline layer `a` (picked on the dev seeds) meets content" in format_table(
        Report("dev", [], rows)
    )
    rows[0].collapsed = 0.38
    assert "- **collapse** in vit-faces `a`: 38% of eye queries" in format_table(Report("dev", [], rows))


def test_a_diffusion_model_is_measured_at_every_noise_level_layer_by_layer(monkeypatch):
    asked = []

    def fake_measure(bm: BundledModel, v: object, timestep: int | None) -> dict:
        asked.append(timestep)
        return {"down": _figs(timestep or 1, 0.5), "up": _figs(1.0, 0.5)}

    monkeypatch.setattr("spatial_attn.faces.evaluate.measure", fake_measure)
    ddpm = Wrapped("toy", "ddpm", True, nn.Identity(), num_timesteps=1000)
    assert noise_levels(ddpm) == (100, 250, 500)
    (figs,) = pooled_figures(ddpm, (3,), 2, noise_levels(ddpm))
    assert asked == [100, 250, 500]
    assert list(figs) == [f"{layer} @ t={t}" for layer in ("down", "up") for t in (100, 250, 500)]
    assert figs["down @ t=250"]["valid"][0] == 250  # each name holds its own noise level's figures
    plain = Wrapped("toy", "vit", True, nn.Identity())
    assert noise_levels(plain) == (None,) and list(pooled_figures(plain, (3,), 2)[0]) == ["down", "up"]


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr("spatial_attn.faces.evaluate.NAMES", ())
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    write_cards(tmp_path, "| new |", Report("heldout", [], []), readme=readme)
    assert readme.read_text() == f"intro\n{README_BEGIN}\n\n| new |\n\n{README_END}\noutro\n"


def test_eye_cells_are_the_cells_the_disc_touches():
    cells = eye_cells(np.array([10.0, 10.0]), 3.0, (8, 8))  # 4 px cells; the disc spans 7..13 px
    assert sorted(zip(*np.nonzero(cells), strict=True)) == [(y, x) for y in (1, 2, 3) for x in (1, 2, 3)]
    one = eye_cells(np.array([10.0, 10.0]), 1.0, (8, 8))  # inside cell (2, 2), 2 px from every edge
    assert one.sum() == 1 and one[2, 2]


def test_located_eyes_and_their_traits_are_what_the_faces_drew():
    faces = make_faces(100, 5)
    found = [(i, f) for i, img in enumerate(faces.images) if (f := locate_eyes(img)) is not None]
    assert len(found) >= 50  # 56 of these 100: a background near an eye colour makes it give up
    error = np.array([np.abs(eyes - faces.eyes[i]).max() for i, (eyes, _) in found])  # pixels
    assert (error < 1.5).mean() >= 0.97  # a background blob can pull one eye off, rarely (1 in ~400)
    palette = np.abs(faces.eye_color[:, 0, None].astype(int) - EYE_COLORS.astype(int)).max(-1).argmin(-1)
    traits = np.array([eye_traits(faces.images[i], eyes[0]) for i, (eyes, _) in found])
    truth = np.array([(palette[i], faces.eye_shape[i, 0]) for i, _ in found])
    assert (traits[:, 0] == truth[:, 0]).all() and (traits[:, 1] == truth[:, 1]).mean() >= 0.95


#: A SAGAN sample's ring, as its eye-coloured pixels came out (dev seed 3): thick, with a two-pixel hole.
SAGAN_RING = np.array(
    [
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
        [1, 1, 1, 1, 1],
    ],
    dtype=bool,
)


def test_a_thick_ring_with_a_small_hole_is_a_ring_and_without_it_a_disc():
    """The disc template overlaps such a ring more than the ring template does: the hole decides."""
    for blob, shape in ((SAGAN_RING, "ring"), (np.pad(np.ones((3, 3), bool), 1) | SAGAN_RING, "disc")):
        img = np.full((32, 32, 3), (200, 160, 130), dtype=np.uint8)
        img[10:15, 7:12][blob] = EYE_COLORS[4]
        _, read = eye_traits(img, np.array([12.64, 9.5]))  # where locate_eyes put that eye
        assert SHAPES[read] == shape


def test_coverage_is_one_for_the_data_and_zero_for_a_missing_colour():
    same = coverage(make_faces(300, 6).images, make_faces(300, 7).images)
    assert set(same.shapes) == set(SHAPES) and same.worst[1] > 0.5
    faces = make_faces(600, 8)
    purple = np.abs(faces.eye_color[:, 0].astype(int) - EYE_COLORS[4].astype(int)).max(-1) < 20
    name, share = coverage(faces.images[~purple], make_faces(300, 7).images).worst
    assert name == "purple" and share < 0.1  # a purple-ish background blob, now and then


class CallsEverythingValid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.zeros(len(x), dtype=torch.long), 9).float()


def test_the_probes_cover_the_judges_blind_spots_and_pair_each_change_with_its_undoing():
    p = probes(3, 8)
    for name in ("mouthless", "valid, head moved 4 px", "valid, head scaled 0.8-0.9x"):
        assert name in p and p[name].control is not None
        assert (p[name].images != p[name].control).any((1, 2, 3)).all()  # every face was changed
    for a, b in (("ring", "vbar"), ("disc", "plus"), ("plus", "ring")):
        assert p[f"{a}/{b}"].target == p[f"{a}/{b}, blurred"].target == "<= 10%"
    assert p["valid"].target == ">= 98%" and p["valid, head moved 4 px"].target == ">= 90%"
    rows = judge_rows(Wrapped("toy", "vit", True, CallsEverythingValid()), (3,), 8)
    met = {r.metric.split(":")[0]: r for r in rows}
    assert met["valid"].met and met["valid, head scaled 0.8-0.9x"].met and met["mouthless"].met is False
    assert met["mouthless"].control == "same faces with a mouth: 100.0%" and met["eye_color"].control == ""


def test_black_eyes_are_the_faces_whose_eye_colour_is_nearest_the_palettes_black():
    faces = make_faces(96, 3)
    rgb = faces.eye_color[:, 0].astype(float)
    nearest = np.argmin(((rgb[:, None] - EYE_COLORS[None]) ** 2).sum(-1), 1)  # squared distance, by hand
    assert EYE_COLORS[0].max() < 40  # the palette's first colour is the black one
    want = (nearest == 0).astype(float)
    assert 0 < want.sum() < 96
    np.testing.assert_array_equal(black_eyes(faces), want)


def test_the_decoy_share_without_black_eyes_leaves_those_faces_out_and_the_verdict_says_it():
    """Black-eyed faces follow both the eye and their near-black decoy; the others follow the eye
    only. Their share is 0, every face's 0.5 (and the protocol's verdict still reads that one)."""
    black = np.array([1.0, 1.0, 0.0, 0.0])
    figs = {k: np.ones(4) for k in FIGURES} | {"black_eye": black, "decoy": black, "cheek": np.zeros(4)}
    figs |= {"valid": np.full(4, 8.0), "erased": np.ones(4), "stays": np.zeros(4), "collapsed": np.zeros(4)}
    (row,) = layer_rows("toy", [{"a": figs}], [{"a": figs}], "a")
    assert row.decoy_share.value == 0.5 and row.decoy_share_no_black.value == 0
    assert row.decoy_share_no_black.high == 0  # no resample brings a black-eyed face back in
    line = verdict("toy", [row])
    assert "black-eyed faces left out is 0.00 [0.00, 0.00]" in line
    assert row.met is (row.decoy_share.high <= 0.5)  # the verdict is the protocol's, all faces counted

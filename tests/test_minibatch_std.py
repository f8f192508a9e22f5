"""The SAGAN discriminator's minibatch standard deviation (against mode collapse): the feature is
the spread of each group of images in training, the real faces' spread kept for eval, and in eval
mode the discriminator judges each image alone, as the app asks it to."""

from __future__ import annotations

import pytest
import torch

from spatial_attn.models.sagan import SAGAN, MinibatchStd, SAGANConfig


def test_in_training_each_image_gets_its_groups_spread():
    torch.manual_seed(0)
    h = torch.randn(8, 3, 4, 4)
    layer = MinibatchStd(4).train()
    out = layer(h)
    assert out.shape == (8, 4, 4, 4) and torch.equal(out[:, :3], h)
    for j in range(2):  # groups of 4 from 8 images: {0, 2, 4, 6} and {1, 3, 5, 7}
        members = [j, j + 2, j + 4, j + 6]
        spread = torch.sqrt(h[members].var(0, unbiased=False) + 1e-8).mean()
        for i in members:
            assert torch.allclose(out[i, 3], spread.expand(4, 4))
    assert float(layer.real_std) == 0  # not a real batch: nothing kept


def test_a_batch_that_is_not_a_multiple_of_the_group_uses_the_largest_group_that_divides_it():
    h = torch.randn(6, 2, 4, 4)
    out = MinibatchStd(4).train()(h)  # groups of 3: {0, 2, 4} and {1, 3, 5}
    spread = torch.sqrt(h[[0, 2, 4]].var(0, unbiased=False) + 1e-8).mean()
    assert torch.allclose(out[4, 2], spread.expand(4, 4))


def test_real_batches_spread_is_kept_and_used_in_eval():
    layer = MinibatchStd(4).train()
    h = 3 * torch.randn(8, 2, 4, 4)
    layer(h, record=True)
    kept = float(layer.real_std)
    assert kept > 0
    layer(10 * h)  # a fake batch: not kept
    assert float(layer.real_std) == kept
    out = layer.eval()(torch.zeros(1, 2, 4, 4))
    assert torch.allclose(out[0, 2], torch.full((4, 4), kept))


@pytest.mark.parametrize("group", [0, 4])
def test_in_eval_the_discriminator_judges_each_image_alone(group):
    torch.manual_seed(0)
    model = SAGAN(SAGANConfig(g_ch=8, d_ch=8, minibatch_std=group))
    if group:
        model.discriminator.mbstd.real_std.fill_(0.7)
    model.eval()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        together = model(image=x)
        alone = torch.cat([model(image=x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_training_marks_the_real_batch_and_only_it(monkeypatch):
    from spatial_attn.data import make_faces
    from spatial_attn.faces.train.common import Settings, batch_seed, to_tensor
    from spatial_attn.faces.train.sagan import SAGANTrainer
    from spatial_attn.models.sagan import Discriminator

    seen: list[tuple[torch.Tensor, bool]] = []
    judge = Discriminator.forward

    def spy(self: Discriminator, x: torch.Tensor, real: bool = False) -> torch.Tensor:
        seen.append((x.detach().clone(), real))
        return judge(self, x, real=real)

    monkeypatch.setattr(Discriminator, "forward", spy)
    trainer = SAGANTrainer(Settings(steps=1, batch_size=4, lr=1e-4))
    assert trainer.model.discriminator.mbstd is not None  # the bundled recipe has one
    batch = make_faces(4, batch_seed(0, 0), trainer.kinds)
    trainer.step(0, batch, torch.Generator().manual_seed(0))
    marked = [x for x, real in seen if real]
    assert len(seen) == 4 and len(marked) == 1  # fakes, negatives, reals; the generator's fakes
    assert torch.equal(marked[0], to_tensor(batch.images))
    assert float(trainer.model.discriminator.mbstd.real_std) > 0

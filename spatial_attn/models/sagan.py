"""SAGAN (Zhang et al. 2019) at 32 x 32: residual generator and discriminator with self-attention.

``SelfAttn`` is written the way SAGAN's reference ``Self_Attn`` is: 1x1 convolutions make queries
and keys with C/8 channels and values with C, the energy is the plain product ``q^T k``, softmax
runs over the keys, and a learned ``gamma`` (initialised to 0) mixes the result into the input, so
the network starts purely convolutional and lets attention in as it learns to use it. The capture
engine recognises it by those attribute names.

The generator attends at 16 x 16, where a 3 px eye covers a couple of cells and the other eye is
~6 cells away; the discriminator attends at 16 x 16 too, to judge whether the two eyes match.
Every weight layer is spectrally normalised (both networks, as in SAGAN). ``SAGAN`` holds the two so
that one ``sa.capture`` root names layers ``generator.attn`` and ``discriminator.attn``.

Issue 23's options (all off by default, so older checkpoints load as they were): ``attn_coords``
gives the generator's attention queries and keys sin-cos position channels
(:func:`position_channels`); ``conditional`` makes the generator draw the eye colour and shape that
:func:`condition` reads from its latent (so a seed still fixes the whole sample) and gives the
discriminator an auxiliary head naming them (AC-GAN), ``aux_fake`` a "generated" class in it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..data import EYE_COLORS, SHAPES


@dataclass(frozen=True)
class SAGANConfig:
    z_dim: int = 128
    g_ch: int = 64  # generator width at 32 x 32; x2 at 16, x4 at 8 and 4
    d_ch: int = 64  # discriminator width at 16 x 16; x2 at 8, x4 at 4
    image_size: int = 32
    minibatch_std: int = 0  # group size of D's minibatch standard deviation at 4 x 4 (0: none)
    attn_coords: int = 0  # sin-cos frequencies per axis the generator's queries and keys also see
    conditional: bool = False  # eye colour and shape read from z (G) and classified by D (AC-GAN)
    aux_fake: bool = False  # D's classifier also has a "fake" class for colour and one for shape

    @property
    def n_classes(self) -> int:
        """Logits of D's auxiliary head: eye colours, eye shapes, then (``aux_fake``) the colour
        head's and the shape head's "fake" logits (0 if not conditional)."""
        return (len(EYE_COLORS) + len(SHAPES) + 2 * self.aux_fake) if self.conditional else 0

    def to_dict(self) -> dict:
        return asdict(self)


def sn_conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
    return spectral_norm(nn.Conv2d(c_in, c_out, k, padding=k // 2))


class SelfAttn(nn.Module):
    """SAGAN's self-attention over the H*W positions of a feature map (token i = y*W + x).

    ``coords > 0`` also gives ``query_conv`` and ``key_conv`` (not ``value_conv``) the map's
    position as :func:`position_channels` (``4 * coords`` more input channels): 1x1 convolutions of
    the features alone cannot say *where* a key is relative to the query, so a generator's row can
    only look at content or at fixed cells; with sin-cos channels of integer frequencies, ``q . k``
    can hold ``cos(2 pi f (x_q + x_k))`` and so find the mirrored cell (the other eye) from either
    eye. The convolutions' outputs are still exactly the queries and keys multiplied (the capture
    engine reads them there). ``keep = True`` (training only) keeps the last attention matrix, with
    its graph, in ``kept`` for a loss on it.
    """

    def __init__(self, in_dim: int, coords: int = 0) -> None:
        super().__init__()
        self.coords = coords
        self.query_conv = sn_conv(in_dim + 4 * coords, in_dim // 8, 1)
        self.key_conv = sn_conv(in_dim + 4 * coords, in_dim // 8, 1)
        self.value_conv = sn_conv(in_dim, in_dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.keep = False
        self.kept: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qk_in = x if not self.coords else torch.cat([x, position_channels(x, self.coords)], 1)
        q = self.query_conv(qk_in).view(B, -1, H * W).permute(0, 2, 1)  # (B, N, C/8)
        k = self.key_conv(qk_in).view(B, -1, H * W)  # (B, C/8, N)
        attention = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N, N): row i sums to 1 over keys
        if self.keep:
            self.kept = attention
        v = self.value_conv(x).view(B, -1, H * W)  # (B, C, N)
        out = torch.bmm(v, attention.permute(0, 2, 1))  # (B, C, N): out_i = sum_j a_ij v_j
        return self.gamma * out.view(B, C, H, W) + x  # (B, C, H, W)


def position_channels(x: torch.Tensor, coords: int) -> torch.Tensor:
    """(B, 4 * coords, H, W) for a (B, C, H, W) map: per frequency f = 1..coords, sin and cos of
    ``2 pi f u`` for the cell centre's row then column position ``u = (i + 0.5) / size``.

    Integer frequencies make the mirror image of a column (``u -> 1 - u``) an exact sign flip of
    its sine and the same cosine, so the mirror relation is linear in these channels."""
    B, _, H, W = x.shape
    f = torch.arange(1, coords + 1, dtype=torch.float32, device=x.device)  # (coords,)
    uy = (torch.arange(H, dtype=torch.float32, device=x.device) + 0.5) / H
    ux = (torch.arange(W, dtype=torch.float32, device=x.device) + 0.5) / W
    ay, ax = 2 * torch.pi * f[:, None] * uy, 2 * torch.pi * f[:, None] * ux  # (coords, H), (coords, W)
    rows = torch.cat([ay.sin(), ay.cos()])[:, :, None].expand(-1, H, W)  # (2 coords, H, W)
    cols = torch.cat([ax.sin(), ax.cos()])[:, None, :].expand(-1, H, W)
    return torch.cat([rows, cols]).to(x.dtype).expand(B, -1, H, W)


class GBlock(nn.Module):
    """BN-ReLU-upsample-conv-BN-ReLU-conv with an upsampled 1x1 shortcut (BigGAN's G block)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1, self.conv2 = sn_conv(c_in, c_out), sn_conv(c_out, c_out)
        self.skip = sn_conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2)  # (B, c_in, 2H, 2W)
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))  # (B, c_out, 2H, 2W)
        return h + self.skip(F.interpolate(x, scale_factor=2))


class DBlock(nn.Module):
    """ReLU-conv-ReLU-conv-avgpool with a 1x1 pooled shortcut; ``first`` skips the opening ReLU."""

    def __init__(self, c_in: int, c_out: int, down: bool = True, first: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2 = sn_conv(c_in, c_out), sn_conv(c_out, c_out)
        self.skip = sn_conv(c_in, c_out, 1)
        self.down, self.first = down, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))  # (B, c_out, H, W)
        s = self.skip(x)
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)  # (B, c_out, H/2, W/2)
        return h + s


class Generator(nn.Module):
    """z (B, z_dim) -> 4x4 -> 8x8 -> 16x16 (self-attention) -> 32x32 RGB in [-1, 1]."""

    def __init__(self, cfg: SAGANConfig) -> None:
        super().__init__()
        ch = cfg.g_ch
        self.cfg = cfg
        self.linear = spectral_norm(nn.Linear(cfg.z_dim, 4 * ch * 4 * 4))
        if cfg.conditional:  # zero: a generator fine-tuned from an unconditional one starts as it
            self.embed = nn.Linear(len(EYE_COLORS) + len(SHAPES), 4 * ch * 4 * 4, bias=False)
            nn.init.zeros_(self.embed.weight)
        self.block1 = GBlock(4 * ch, 4 * ch)  # 4 -> 8
        self.block2 = GBlock(4 * ch, 2 * ch)  # 8 -> 16
        self.attn = SelfAttn(2 * ch, cfg.attn_coords)  # at 16 x 16
        self.block3 = GBlock(2 * ch, ch)  # 16 -> 32
        self.bn = nn.BatchNorm2d(ch)
        self.to_rgb = sn_conv(ch, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.linear(z)  # (B, 4ch * 16)
        if self.cfg.conditional:
            colour, shape = condition(z)
            h = h + self.embed(
                torch.cat([F.one_hot(colour, len(EYE_COLORS)), F.one_hot(shape, len(SHAPES))], 1).to(h.dtype)
            )
        h = h.view(len(z), -1, 4, 4)  # (B, 4ch, 4, 4)
        h = self.block2(self.block1(h))  # (B, 2ch, 16, 16)
        h = self.block3(self.attn(h))  # (B, ch, 32, 32)
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))  # (B, 3, 32, 32)


def condition(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eye colour and shape a conditional generator draws for latents ``z`` (B, z_dim): read
    from ``z[:, 0]`` and ``z[:, 1]`` through the normal CDF, so each class comes with the
    probability the data draws it (evenly) and a seed's sample keeps one condition (the app and the
    eval draw only z). Returns (colour, shape) indices into ``EYE_COLORS`` and ``SHAPES``."""
    u = torch.special.ndtr(z[:, :2].float())  # (B, 2) uniform in (0, 1)
    colour = (u[:, 0] * len(EYE_COLORS)).long().clamp(0, len(EYE_COLORS) - 1)
    shape = (u[:, 1] * len(SHAPES)).long().clamp(0, len(SHAPES) - 1)
    return colour, shape


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al. 2018): one more feature map holding how
    much the images of a group of ``group`` differ (the per-feature std across the group, averaged
    over features and positions). A discriminator judging one image at a time cannot see that a
    generator draws one eye colour where the data has six; given this, it can.

    In eval mode (the app judges one image) the feature is the running mean of what *real* batches
    gave in training, kept like BatchNorm's statistics, so the score is a function of the one image.
    """

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group
        self.register_buffer("real_std", torch.zeros(()))

    def forward(self, h: torch.Tensor, record: bool = False) -> torch.Tensor:
        B, _, H, W = h.shape
        if self.training:
            g = max(d for d in range(1, self.group + 1) if B % d == 0)  # a group size dividing B
            y = h.float().view(g, B // g, *h.shape[1:])  # image k * (B // g) + j is member k of group j
            std = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (B // g,)
            stat = std.repeat(g)  # (B,)
            if record:
                with torch.no_grad():
                    self.real_std.lerp_(std.mean(), 0.01)
        else:
            stat = self.real_std.expand(B)
        return torch.cat([h, stat.to(h.dtype).view(B, 1, 1, 1).expand(B, 1, H, W)], 1)


class Discriminator(nn.Module):
    """32x32 -> 16x16 (self-attention) -> 8x8 -> 4x4 (minibatch std) -> sum-pooled features -> score."""

    def __init__(self, cfg: SAGANConfig) -> None:
        super().__init__()
        ch = cfg.d_ch
        self.block1 = DBlock(3, ch, first=True)  # 32 -> 16
        self.attn = SelfAttn(ch)  # at 16 x 16
        self.block2 = DBlock(ch, 2 * ch)  # 16 -> 8
        self.block3 = DBlock(2 * ch, 4 * ch)  # 8 -> 4
        self.mbstd = MinibatchStd(cfg.minibatch_std) if cfg.minibatch_std else None
        self.block4 = DBlock(4 * ch + bool(cfg.minibatch_std), 4 * ch, down=False)  # 4 x 4
        self.linear = spectral_norm(nn.Linear(4 * ch, 1))
        if cfg.n_classes:  # AC-GAN's auxiliary classifier: eye colour and shape logits
            self.aux = spectral_norm(nn.Linear(4 * ch, cfg.n_classes))

    def forward(self, x: torch.Tensor, real: bool = False, aux: bool = False) -> torch.Tensor:
        """``real=True`` (training only) marks a batch of real faces, whose spread the minibatch
        std keeps for eval mode. ``aux=True`` (a conditional D) returns (score, class logits)."""
        h = self.attn(self.block1(x))  # (B, ch, 16, 16)
        h = self.block3(self.block2(h))  # (B, 4ch, 4, 4)
        if self.mbstd is not None:
            h = self.mbstd(h, record=real)  # (B, 4ch + 1, 4, 4)
        h = self.block4(h)  # (B, 4ch, 4, 4)
        h = F.relu(h).sum(dim=(2, 3))  # (B, 4ch): global sum pooling
        score = self.linear(h).squeeze(1)  # (B,): > 0 real, < 0 fake (hinge)
        return (score, self.aux(h)) if aux else score


class SAGAN(nn.Module):
    """Both networks under one root: ``SAGAN(z=z)`` generates, ``SAGAN(image=x)`` judges."""

    def __init__(self, cfg: SAGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)

    def forward(self, z: torch.Tensor | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        if (z is None) == (image is None):
            raise ValueError("pass exactly one of z= (generate) or image= (discriminate)")
        return self.generator(z) if image is None else self.discriminator(image)

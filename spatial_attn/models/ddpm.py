"""The DDPM: Ho et al.'s 32 x 32 layout in miniature, built from diffusers parts.

A ``UNet2DModel`` with three resolutions, 32 -> 16 -> 8, and self-attention at 16 x 16 and 8 x 8 (the
paper's 32 x 32 model has it at 16 x 16; 8 x 8 is where one eye can see the other in a single
step). Attention layers get diffusers' names, e.g. ``down_blocks.1.attentions.0`` (16 x 16),
``mid_block.attentions.0`` (8 x 8), ``up_blocks.1.attentions.1`` (16 x 16).

Training uses ``DDPMScheduler`` (1,000 steps, cosine betas, which leave a 32 x 32 image visible for
longer than linear ones); the app samples with DDIM in 50 steps, made from the same config. (Not
DPM-Solver: at t = 999 the cosine schedule leaves alpha_bar ~ 2e-9, and DPM-Solver, which does not
clip its x0 estimate, diverges there; DDIM clips it to [-1, 1] like the training scheduler.) DDIM
runs with eta = 1, i.e. fresh noise at each step, drawn from the sample's seed: on 256 samples of
a first (2,172-step) model it gave 44% valid faces against 35% for deterministic DDIM (eta = 0);
the injected noise lets later steps correct earlier mistakes.
The model is saved in the diffusers pipeline layout, so ``DDPMPipeline.from_pretrained`` opens it.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

#: Kept small so a 2-core CPU trains it in an hour (widths 24/48/64 for 32/16/8 px).
UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (24, 48, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),  # 32, 16, 8
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),  # 8, 16, 32
    "attention_head_dim": 32,  # channels per head: 2 heads at 64 channels
    "norm_num_groups": 8,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}
FAST_STEPS = 50
FAST_ETA = 1.0


def make_unet(config: dict | None = None, seed: int = 0) -> UNet2DModel:
    """A freshly initialised UNet (the random twin when not loaded with weights afterwards)."""
    torch.manual_seed(seed)
    return UNet2DModel(**(config or UNET_CONFIG))


def make_scheduler(config: dict | None = None) -> DDPMScheduler:
    return DDPMScheduler(**(config or SCHEDULER_CONFIG))


def fast_sampler(scheduler: DDPMScheduler) -> DDIMScheduler:
    """DDIM on the training schedule: faces in 50 steps instead of 1,000.

    "trailing" spacing starts at t = 999, the pure noise the sampler actually begins from.
    """
    return DDIMScheduler.from_config(scheduler.config, timestep_spacing="trailing")


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    seed: int,
    n: int = 1,
    steps: int = FAST_STEPS,
    batch: int = 64,
) -> torch.Tensor:
    """``n`` faces from noise drawn with ``seed`` (the start and every step's); (n, 3, 32, 32) in [-1, 1]."""
    size = unet.config.sample_size
    weight = next(unet.parameters())  # the device and dtype the UNet runs in
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same faces on every device
    noise = torch.randn(n, 3, size, size, generator=gen)  # (n, 3, 32, 32), all drawn up front
    out = []
    for chunk in noise.split(batch):
        solver = fast_sampler(scheduler)
        solver.set_timesteps(steps)
        x = chunk * solver.init_noise_sigma
        for t in solver.timesteps:
            eps = unet(x.to(weight.device, weight.dtype), t).sample.float().cpu()
            # the solver's arithmetic in float32 on the CPU, as in training: a half-precision model
            # only predicts the noise
            x = solver.step(eps, t, x, eta=FAST_ETA, generator=gen).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def add_noise(scheduler: DDPMScheduler, x0: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
    """The forward process q(x_t | x_0) at one timestep with noise from ``seed``; shape of ``x0``."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.full((len(x0),), timestep, dtype=torch.long)
    return scheduler.add_noise(x0, noise, t)


def signal_fraction(scheduler: DDPMScheduler, timestep: int) -> float:
    """sqrt(alpha_bar_t): how much of the image is left at ``timestep`` (for the app's note)."""
    return float(scheduler.alphas_cumprod[timestep].sqrt())

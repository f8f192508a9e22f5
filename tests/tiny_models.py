"""Tiny random-weight models saved the way their libraries save them (``save_pretrained``), one folder
per kind that ``--model PATH`` opens; and a factory for ``package.module:factory``.

Everything is seeded, a few thousand parameters, and built in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

PROMPT_WORDS = ("a", "red", "cat", "on", "the", "mat", "photo", "of", "dog")
LABELS = {0: "cat", 1: "dog", 2: "fish"}


def vit_classifier(folder: Path, layers: int = 2, size: int = 64) -> Path:
    """transformers ViT classifier at ``size`` px (16 px patches: a 4x4 grid + CLS at 64 px), and a
    processor that resizes the shortest edge to ``size + 8`` and centre-crops (so crops are visible)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=size,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    processor = ViTImageProcessor(
        size={"shortest_edge": size + 8}, crop_size={"height": size, "width": size}, do_center_crop=True
    )
    processor.save_pretrained(folder)
    return folder


def ddpm_pipeline(folder: Path) -> Path:
    """A DDPM pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``) at 32 px."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")).save_pretrained(
        folder
    )
    return folder


def tokenizer(folder: Path, max_length: int = 12):
    """A hand-made CLIP tokenizer: its merges rebuild whole words only, so each word is one token."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    merges, pieces_seen = [], []  # left to right: r e -> re, re d</w> -> red</w>
    for word in PROMPT_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        pieces_seen += pieces
        for piece in pieces[1:]:
            merges.append(f"{pieces[0]} {piece}")
            pieces[0] += piece
            pieces_seen.append(pieces[0])
    tokens = ["<|startoftext|>", "<|endoftext|>", *dict.fromkeys(pieces_seen)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def clip_config(tok, hidden: int, heads: int = 2, **extra):
    """A one-layer CLIP text encoder's config over the hand-made tokenizer ``tok``."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=heads,
        max_position_embeddings=tok.model_max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **extra,
    )


def small_vae(widths: tuple[int, ...] = (8, 16, 16), sample_size: int = 32):
    """An ``AutoencoderKL`` with 4 latent channels, downsampling by 2 ** (len(widths) - 1)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=widths,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size,
    )


def sd_pipeline(folder: Path) -> Path:
    """A Stable-Diffusion-shaped pipeline: VAE (32 px -> 8x8 latents), text encoder, tokenizer,
    a cross-attention UNet and a DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tok = tokenizer(folder.parent / f"{folder.name}-tokenizer-src")
    torch.manual_seed(0)
    text = CLIPTextModel(clip_config(tok, 16))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = small_vae()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def dit(folder: Path) -> Path:
    """A bare DiT transformer on 16 px RGB (2 px patches: an 8x8 grid)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=3,
        out_channels=6,
        num_layers=2,
        sample_size=16,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=8,
    ).save_pretrained(folder)
    return folder


class PatchAttention(nn.Module):
    """The factory protocol's example: 64 px in, 8 px patches (8x8 tokens), one MultiheadAttention."""

    image_size = 64
    labels = ("yes", "no")

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 8, stride=8)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 64, 32): token y*8 + x
        t = self.attn(t, t, t)[0]  # (B, 64, 32)
        return self.head(t.mean(1))  # (B, 2)


def make_net() -> nn.Module:
    """``tiny_models:make_net``: a factory as ``--model package.module:factory`` calls it."""
    return PatchAttention()


class FakeTimm:
    """Stands in for the ``timm`` package (not installable here: it needs torchvision)."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create_model(self, name: str, pretrained: bool = False) -> nn.Module:
        if name != "tiny_patch_attn":
            raise RuntimeError(f"Unknown model ({name})")
        assert not pretrained  # weights come from --weights only
        self.created.append(name)
        net = PatchAttention()
        net.pretrained_cfg = {
            "input_size": (3, 64, 64),
            "crop_pct": 0.875,
            "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
        net.num_classes = 2
        return net


def sd3_pipeline(folder: Path) -> Path:
    """An SD3-shaped pipeline: two CLIP encoders with projections (no T5: the pipeline pads with
    zeros), a VAE with 4 latent channels, a joint-attention transformer, flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tok = tokenizer(folder.parent / f"{folder.name}-tokenizer-src")
    torch.manual_seed(0)
    encoders = [CLIPTextModelWithProjection(clip_config(tok, 8, projection_dim=4)) for _ in range(2)]
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=8,
    )
    vae = small_vae()
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=tok,
        text_encoder_2=encoders[1],
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    ).save_pretrained(folder)
    return folder

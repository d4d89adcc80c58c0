"""Registered Infinity generators: the released 2B/8B checkpoints and a tiny random configuration."""

from __future__ import annotations

import math

import torch

from ...core.checkpoint import load_strict, read_state_dict
from ...core.device import resolve_device, resolve_dtype
from ...core.generator import SamplingConfig
from ..registry import ModelConfig, ModelDefaults, register_generator, require_file
from ..text import T5TextEncoder, WordEncoderConfig, WordTextEncoder
from .generator import InfinityGenerator
from .model import Infinity, InfinityConfig, official_state_dict_to_ours
from .schedules import scale_schedule
from .vae import BSQVAE, TINY_SCALE_SCHEDULE, BSQVAEConfig


def load_vae(path, config: BSQVAEConfig, device) -> BSQVAE:
    from .vae import load_bsq_vae

    return load_bsq_vae(path, config, device=device)


def check_released_options(options: dict) -> None:
    """`model.options` of a released Infinity, checked before anything loads (errors start with the option)."""
    h = options.get("h_div_w", 1.0)
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
        raise ValueError(f"h_div_w={h!r}: must be a number > 0 (height / width)")
    scale_schedule(h, options.get("pixels", "1M"))  # raises "pixels=...: not a known budget"


def _released(cfg: ModelConfig, sampling: SamplingConfig | None, icfg: InfinityConfig, vcfg: BSQVAEConfig,
              names: tuple[str, str], vae_weights: str | None, text_encoder: str | None, h_div_w: float,
              pixels: str) -> InfinityGenerator:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    wpath = require_file(cfg.weights, "model.weights", f"the Infinity checkpoint ({names[0]})")
    vpath = require_file(vae_weights, "model.options.vae_weights", f"the BSQ-VAE checkpoint ({names[1]})")
    tpath = require_file(text_encoder, "model.options.text_encoder", "a local flan-t5-xl directory")
    with torch.device("meta"):
        model = Infinity(icfg)
    model = load_strict(model, read_state_dict(wpath), wpath, official_state_dict_to_ours, assign=True,
                        hint=f"Expected the released {names[0]} (depth {icfg.depth}, width {icfg.embed_dim}).")
    # assign=True keeps the file's dtype: float32 first (a bf16 or fp16 file too), then model.dtype for the blocks
    model = model.float().to(device).eval().requires_grad_(False)
    model.cast_blocks(dtype)
    vae = load_vae(vpath, vcfg, device).eval().requires_grad_(False)
    text = T5TextEncoder(tpath, device=device)
    return InfinityGenerator(model, vae, text, scale_schedule(h_div_w, pixels), sampling, device)


_RELEASED = ModelDefaults(reward="imagereward", features="dinov2", preview_size=224,
                          check_options=check_released_options,
                          num_scales=lambda o: len(scale_schedule(o.get("h_div_w", 1.0), o.get("pixels", "1M"))))


# model.options of a released Infinity: vae_weights (BSQ-VAE checkpoint), text_encoder (local flan-t5-xl
# directory), h_div_w (aspect ratio, snapped to the templates), pixels (budget: 0.06M, 0.25M, 0.60M, 1M)
@register_generator("infinity-2b", _RELEASED)
def infinity_2b(cfg: ModelConfig, sampling: SamplingConfig | None, vae_weights: str | None = None,
                text_encoder: str | None = None, h_div_w: float = 1.0, pixels: str = "1M") -> InfinityGenerator:
    return _released(cfg, sampling, InfinityConfig.infinity_2b(), BSQVAEConfig.infinity_d32(),
                     ("infinity_2b_reg.pth", "infinity_vae_d32reg.pth"), vae_weights, text_encoder, h_div_w, pixels)


@register_generator("infinity-8b", _RELEASED)
def infinity_8b(cfg: ModelConfig, sampling: SamplingConfig | None, vae_weights: str | None = None,
                text_encoder: str | None = None, h_div_w: float = 1.0, pixels: str = "1M") -> InfinityGenerator:
    return _released(cfg, sampling, InfinityConfig.infinity_8b(), BSQVAEConfig.infinity_d14_patchify(),
                     ("infinity_8b_weights", "infinity_vae_d56_f8_14_patchify.pth"), vae_weights, text_encoder,
                     h_div_w, pixels)


def tiny_random(seed: int = 0, device="cpu", sampling: SamplingConfig | None = None, vocab=()) -> InfinityGenerator:
    """A tiny Infinity with random weights: 32x32 images over scales 1,2,3,4,6,8 (for tests and demos)."""
    torch.manual_seed(seed)
    vcfg = BSQVAEConfig.tiny()
    model = Infinity(InfinityConfig.tiny(codebook_dim=vcfg.codebook_dim)).eval().requires_grad_(False)
    text = WordTextEncoder(WordEncoderConfig(vocab=tuple(vocab), dim=model.config.text_channels,
                                             max_len=model.config.text_maxlen)).eval()
    vae = BSQVAE(vcfg).eval().requires_grad_(False)
    return InfinityGenerator(model.to(device), vae.to(device), text.to(device), list(TINY_SCALE_SCHEDULE),
                             sampling, device)


@register_generator("infinity-tiny-random", ModelDefaults(reward="shapes-clip", features="shapes-clip",
                                                          reads=("device",),
                                                          num_scales=lambda o: len(TINY_SCALE_SCHEDULE)))
def infinity_tiny_random(cfg: ModelConfig, sampling: SamplingConfig | None) -> InfinityGenerator:
    return tiny_random(0, resolve_device(cfg.device), sampling)

"""Registered VAR generators: the released var_d16/20/24/30 (256 px) and var_d36 (512 px), and a tiny random
configuration for tests.

model.weights is the VAR checkpoint (var_d{depth}.pth), model.options.vae_weights the VQ-VAE checkpoint
(vae_ch160v4096z32.pth, shared by all depths; at 512 px only its scales differ), both local files.
"""

from __future__ import annotations

import torch

from search.schedule import map_paper_by_side, tts_var_family

from ...core.checkpoint import load_strict, read_state_dict
from ...core.classes import imagenet_classes
from ...core.device import resolve_device, resolve_dtype
from ...core.generator import SamplingConfig
from ..registry import ModelConfig, ModelDefaults, register_generator, require_file
from .generator import VARGenerator
from .model import VAR, VARConfig, official_state_dict_to_ours
from .vqvae import VQVAE, VQVAEConfig, load_vqvae


def _released(cfg: ModelConfig, sampling: SamplingConfig | None, depth: int, vae_weights: str | None,
              more_smooth: bool) -> VARGenerator:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    vcfg = VARConfig.released(depth)
    wpath = require_file(cfg.weights, "model.weights", f"the VAR checkpoint (var_d{depth}.pth)")
    vpath = require_file(vae_weights, "model.options.vae_weights", "the VAR VQ-VAE checkpoint (vae_ch160v4096z32.pth)")
    with torch.device("meta"):
        model = VAR(vcfg)
    load_strict(model, read_state_dict(wpath), wpath, official_state_dict_to_ours, assign=True,
                hint=f"Expected the released var_d{depth}.pth (depth {depth}, width {vcfg.embed_dim}, "
                     f"{'shared' if vcfg.shared_aln else 'per-block'} AdaLN); check model.name against the file.")
    model = model.to(device).float().eval().requires_grad_(False).cast_blocks(dtype)
    vae = load_vqvae(vpath, VQVAEConfig(v_patch_nums=vcfg.patch_nums), device)
    return VARGenerator(model, vae, sampling, device, more_smooth, imagenet_classes())


# the official demo's sampling (cfg=4 there is a last-scale weight of 5 here, see generator.py); the reward:
# the target class's log-probability under an ImageNet classifier (reward.options.weights: a local file)
def tts_var_defaults(sides) -> dict:
    """TTS-VAR and its ablations on a VAR pyramid: the paper's decisions mapped by token-grid resolution
    (`search.schedule.map_paper_by_side`; docs/var.md says why)."""
    return tts_var_family(map_paper_by_side(sides))


def _released_defaults(depth: int) -> ModelDefaults:
    return ModelDefaults(reward="classifier", features="dinov2", preview_size=224,
                         sampling=dict(cfg=5.0, tau=1.0, top_k=900, top_p=0.95), classes=imagenet_classes,
                         search=tts_var_defaults(VARConfig.released(depth).patch_nums),
                         num_scales=lambda o: len(VARConfig.released(depth).patch_nums))


# model.options of a released VAR: vae_weights (the VQ-VAE checkpoint), more_smooth (the official Gumbel
# smoothing for visualisation; off for benchmarks)
@register_generator("var-d16", _released_defaults(16))
def var_d16(cfg: ModelConfig, sampling: SamplingConfig | None, vae_weights: str | None = None,
            more_smooth: bool = False) -> VARGenerator:
    return _released(cfg, sampling, 16, vae_weights, more_smooth)


@register_generator("var-d20", _released_defaults(20))
def var_d20(cfg: ModelConfig, sampling: SamplingConfig | None, vae_weights: str | None = None,
            more_smooth: bool = False) -> VARGenerator:
    return _released(cfg, sampling, 20, vae_weights, more_smooth)


@register_generator("var-d24", _released_defaults(24))
def var_d24(cfg: ModelConfig, sampling: SamplingConfig | None, vae_weights: str | None = None,
            more_smooth: bool = False) -> VARGenerator:
    return _released(cfg, sampling, 24, vae_weights, more_smooth)


@register_generator("var-d30", _released_defaults(30))
def var_d30(cfg: ModelConfig, sampling: SamplingConfig | None, vae_weights: str | None = None,
            more_smooth: bool = False) -> VARGenerator:
    return _released(cfg, sampling, 30, vae_weights, more_smooth)


@register_generator("var-d36", _released_defaults(36))
def var_d36(cfg: ModelConfig, sampling: SamplingConfig | None, vae_weights: str | None = None,
            more_smooth: bool = False) -> VARGenerator:
    return _released(cfg, sampling, 36, vae_weights, more_smooth)


def tiny_random(seed: int = 0, device="cpu", sampling: SamplingConfig | None = None, shared_aln: bool = False,
                more_smooth: bool = False) -> VARGenerator:
    """A tiny VAR with random weights: 10 classes, scales 1,2,3,4, 64 codes, 16 px images (tests and demos).
    Every parameter is drawn at a scale where the rows depend on their class, history and sampling."""
    g = torch.Generator().manual_seed(seed)
    model = VAR(VARConfig.tiny(shared_aln=shared_aln))
    vae = VQVAE(VQVAEConfig.tiny())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, p in vae.named_parameters():
            if not name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_out.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model = model.eval().requires_grad_(False).to(device)
    vae = vae.eval().requires_grad_(False).to(device)
    return VARGenerator(model, vae, sampling, device, more_smooth, _tiny_classes())


def _tiny_classes():
    """The tiny model's 10 classes: labelled as the first 10 ImageNet classes (tench .. ostrich)."""
    return imagenet_classes().first(VARConfig.tiny().num_classes)


# the paper's four decisions do not fit 4 scales: one clustering after 2x2, one resampling after 3x3
_TINY_TTS_VAR = {"batch_schedule": (4, 2, 1, 1), "cluster_scales": (1,), "resample_scales": (2,)}


@register_generator("var-tiny-random", ModelDefaults(
    reward="classifier", features="dinov2", reads=("device",), classes=_tiny_classes,
    search=tts_var_family(_TINY_TTS_VAR), num_scales=lambda o: len(VARConfig.tiny().patch_nums)))
def var_tiny_random(cfg: ModelConfig, sampling: SamplingConfig | None) -> VARGenerator:
    return tiny_random(0, resolve_device(cfg.device), sampling)

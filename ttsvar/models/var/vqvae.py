"""VAR's multi-scale VQ-VAE (`vae_ch160v4096z32.pth`): a VQGAN-f16 encoder/decoder and a residual quantizer.

An image is encoded to f [B,Cvae,16,16] (256 px). The quantizer writes f as a sum over scales: at scale k the
residual is area-downsampled to pn_k x pn_k, each position takes its nearest code, and the codes, bicubic-
upsampled back to 16 x 16 and passed through a shared 3x3 conv `phi` (0.5 * x + 0.5 * conv(x)), are added to
f_hat. The transformer predicts the codes of scale k from f_hat so far, area-downsampled to pn_k.

Parameter names equal the official checkpoint keys; `official_vae_state_dict_to_ours` is the one exception
list. Facts from FoundationVision/VAR (MIT): models/vqvae.py, models/quant.py, models/basic_vae.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.checkpoint import load_strict, read_state_dict

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096
    Cvae: int = 32  # code width (the official `z_channels`)
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 5 levels: 16x down-sampling (from latent-diffusion's vq-f16)
    num_res_blocks: int = 2
    quant_resi: float = 0.5  # phi(x) = (1 - r) x + r conv(x)
    share_quant_resi: int = 4  # 4 phi convs shared by all scales (each scale uses the one nearest its depth)
    v_patch_nums: tuple[int, ...] = PATCH_NUMS_256  # the token grid side of each scale; the last is f's side
    # GroupNorm groups (32 in every release); a 32-channel tiny VAE with 32 groups would normalise each channel
    # alone per image and lose every flat colour's offset, so the testbed's VAE uses 8
    norm_groups: int = 32

    @classmethod
    def tiny(cls, **kw) -> VQVAEConfig:
        """A test-sized VAE: 32 channels (GroupNorm needs 32), 4x down-sampling, 64 codes of width 8, 16 px."""
        return cls(**{**dict(vocab_size=64, Cvae=8, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
                             v_patch_nums=(1, 2, 3, 4)), **kw})

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# ----------------------------------------------------------------------------- encoder / decoder layers


def _norm(C: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(groups, C, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int = 32):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        # the official module keeps an Identity (no key) when the widths agree
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map."""

    def __init__(self, C: int, groups: int = 32):
        super().__init__()
        self.norm = _norm(C, groups)
        self.qkv = nn.Conv2d(C, 3 * C, 1)
        self.proj_out = nn.Conv2d(C, C, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)  # [B,3,C,HW]
        q, k, v = qkv.transpose(-1, -2).unsqueeze(2).unbind(1)  # each [B,1,HW,C]
        h = F.scaled_dot_product_attention(q, k, v)  # [B,1,HW,C], softmax scale C^-0.5
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)  # [B,C,H,W]
        return x + self.proj_out(h)


class Downsample2x(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in taming's VQGAN


class Upsample2x(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder or decoder (the official `down[i]` / `up[i]` namespace)."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)  # empty except at the coarsest level

    def run(self, h):
        for i, b in enumerate(self.block):
            h = b(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, C: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(C, C, groups)
        self.attn_1 = AttnBlock(C, groups)
        self.block_2 = ResnetBlock(C, C, groups)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, n, G = cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.norm_groups
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            last = i == len(mult) - 1
            blocks, attn = [], []
            for _ in range(n):
                blocks.append(ResnetBlock(cin, ch * m, G))
                cin = ch * m
                if last:
                    attn.append(AttnBlock(cin, G))
            level = _Level(blocks, attn)
            if not last:
                level.downsample = Downsample2x(cin)
            self.down.append(level)
        self.mid = _Mid(cin, G)
        self.norm_out = _norm(cin, G)
        self.conv_out = nn.Conv2d(cin, cfg.Cvae, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, n, G = cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.norm_groups
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.Cvae, cin, 3, 1, 1)
        self.mid = _Mid(cin, G)
        levels = []
        for i in reversed(range(len(mult))):  # built coarse to fine, stored fine to coarse (official `up[i]`)
            blocks, attn = [], []
            for _ in range(n + 1):
                blocks.append(ResnetBlock(cin, ch * mult[i], G))
                cin = ch * mult[i]
                if i == len(mult) - 1:
                    attn.append(AttnBlock(cin, G))
            level = _Level(blocks, attn)
            if i != 0:
                level.upsample = Upsample2x(cin)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, G)
        self.conv_out = nn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- residual quantizer


class Phi(nn.Conv2d):
    """The residual refinement of an up-sampled code map: (1 - r) x + r conv3x3(x)."""

    def __init__(self, C: int, ratio: float):
        super().__init__(C, C, 3, 1, 1)
        self.ratio = abs(ratio)

    def forward(self, h):
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiPartiallyShared(nn.Module):
    """K phi convs for any number of scales: scale k of S uses the conv whose tick is nearest k / (S - 1)."""

    def __init__(self, C: int, ratio: float, K: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(C, ratio) for _ in range(K))
        # the official ticks (K = 4 is spaced with 1/3K margins, other K with 1/2K)
        m = 1 / 3 / K if K == 4 else 1 / 2 / K
        self.ticks = np.linspace(m, 1 - m, K)

    def at(self, si: int, num_scales: int) -> Phi:
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - si / (num_scales - 1))))]


class MultiScaleQuantizer(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        if cfg.share_quant_resi < 2:
            raise ValueError(f"share_quant_resi={cfg.share_quant_resi}: only partially shared phi (>= 2 convs, "
                             "the released VAE has 4) is implemented")
        if len(cfg.v_patch_nums) < 2:
            raise ValueError(f"v_patch_nums={cfg.v_patch_nums}: need at least 2 scales")
        self.v_patch_nums = tuple(cfg.v_patch_nums)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.Cvae)
        self.quant_resi = PhiPartiallyShared(cfg.Cvae, cfg.quant_resi, cfg.share_quant_resi)

    def phi(self, si: int) -> Phi:
        return self.quant_resi.at(si, len(self.v_patch_nums))

    def codes_to_fhat_part(self, si: int, h: torch.Tensor) -> torch.Tensor:
        """Codes of scale si [B,Cvae,pn,pn] -> their contribution to f_hat [B,Cvae,H,W]: bicubic up, then phi
        (the last scale is already full size)."""
        H = self.v_patch_nums[-1]
        if si != len(self.v_patch_nums) - 1:
            h = F.interpolate(h, size=(H, H), mode="bicubic")
        return self.phi(si)(h)

    def lookup(self, idx: torch.Tensor, pn: int) -> torch.Tensor:
        """Indices [B,pn*pn] -> code map [B,Cvae,pn,pn]."""
        B = idx.shape[0]
        return self.embedding(idx).transpose(1, 2).reshape(B, -1, pn, pn)  # [B,l,Cvae] -> [B,Cvae,pn,pn]

    def f_to_idx(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features f [B,Cvae,H,W] -> per-scale indices [B,pn*pn] (nearest code of each residual)."""
        B, C, H, W = f.shape
        if H != self.v_patch_nums[-1] or W != H:
            raise ValueError(f"features of {H}x{W} do not match the last scale {self.v_patch_nums[-1]}")
        f = f.float()
        rest, out = f.clone(), []
        E = self.embedding.weight.float()  # [V,Cvae]
        for si, pn in enumerate(self.v_patch_nums):
            z = rest if si == len(self.v_patch_nums) - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
            z = z.permute(0, 2, 3, 1).reshape(-1, C)  # [B*pn*pn,Cvae]
            # squared distances as the official computes them (|z|^2 + |e|^2 - 2 z.e), so argmin ties agree
            d = (z.square().sum(1, keepdim=True) + E.square().sum(1)).addmm_(z, E.T, alpha=-2, beta=1)
            idx = d.argmin(1).view(B, pn * pn)  # [B,l]
            rest = rest - self.codes_to_fhat_part(si, self.lookup(idx, pn))
            out.append(idx)
        return out


# ----------------------------------------------------------------------------- the VAE


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.Cvae, cfg.Cvae, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.Cvae, cfg.Cvae, 3, 1, 1)

    @property
    def v_patch_nums(self) -> tuple[int, ...]:
        return self.quantize.v_patch_nums

    def img_to_idx(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Images [B,3,H,W] in [-1,1] -> per-scale code indices [B,pn*pn] (teacher forcing, tests)."""
        return self.quantize.f_to_idx(self.quant_conv(self.encoder(img)))

    def add_scale(self, si: int, f_hat: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        """f_hat [B,Cvae,H,W] (None before scale 0) plus the codes `idx` [B,pn*pn] of scale si."""
        part = self.quantize.codes_to_fhat_part(si, self.quantize.lookup(idx, self.v_patch_nums[si]))
        return part if f_hat is None else f_hat + part

    def add_scale_codes(self, si: int, f_hat: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """Like `add_scale` for a code map h [B,Cvae,pn,pn] (soft codes: the sampler's `more_smooth`)."""
        part = self.quantize.codes_to_fhat_part(si, h)
        return part if f_hat is None else f_hat + part

    def next_input(self, f_hat: torch.Tensor, si: int) -> torch.Tensor:
        """The transformer's input for scale si >= 1: f_hat area-downsampled to pn_si, as tokens [B,l,Cvae]
        (the official `get_next_autoregressive_input`, split from the accumulation)."""
        pn = self.v_patch_nums[si]
        x = F.interpolate(f_hat, size=(pn, pn), mode="area")  # [B,Cvae,pn,pn]
        return x.flatten(2).transpose(1, 2)  # [B,pn*pn,Cvae]

    def idx_to_fhat(self, idx: list[torch.Tensor]) -> torch.Tensor:
        f_hat = None
        for si, i in enumerate(idx):
            f_hat = self.add_scale(si, f_hat, i)
        return f_hat

    def idx_to_var_input(self, idx: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of scales 1..S-1 [B, L - 1, Cvae] from the indices of all scales."""
        f_hat, xs = None, []
        for si in range(len(self.v_patch_nums) - 1):
            f_hat = self.add_scale(si, f_hat, idx[si])
            xs.append(self.next_input(f_hat, si + 1))
        return torch.cat(xs, dim=1)

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat [B,Cvae,H,W] -> images [B,3,16H,16W] in [-1,1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)


# ----------------------------------------------------------------------------- checkpoints

# Buffers of the official VQVAE that hold training statistics only (codebook usage per scale).
_TRAINING_BUFFERS = ("quantize.ema_vocab_hit_SV",)


def official_vae_state_dict_to_ours(sd: dict[str, torch.Tensor], model: VQVAE) -> dict[str, torch.Tensor]:
    """The one place where VAE checkpoint keys are adapted: drop the training-only codebook-usage buffer."""
    return {k: v for k, v in sd.items() if k not in _TRAINING_BUFFERS}


def load_vqvae(path: str | Path, config: VQVAEConfig | None = None, device: str | torch.device = "cpu") -> VQVAE:
    """Build `config` (default: the released vae_ch160v4096z32) and load `path` strictly, in float32: the VAE
    is small, and its decoder runs once per preview."""
    config = config or VQVAEConfig()
    with torch.device("meta"):
        model = VQVAE(config)
    load_strict(model, read_state_dict(path), path, official_vae_state_dict_to_ours, assign=True,
                hint="Expected the VAR VQ-VAE vae_ch160v4096z32.pth (4096 codes, Cvae 32, ch 160).")
    return model.to(device).float().eval().requires_grad_(False)

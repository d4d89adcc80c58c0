"""Infinity's BSQ-VAE: a flux-style conv autoencoder with multi-scale binary spherical quantisation.

Our own 2D implementation of the tokenizer behind the released Infinity checkpoints
(FoundationVision/Infinity, `infinity/models/bsq_vae/`, MIT). The official code is written for video
(B,C,T,H,W) and runs images with T=1; this file drops the T axis. Where a T=1 3D op is not bit-identical
to its 2D counterpart (trilinear vs bilinear resizing differs by ~1 ulp, and so does 'area' on
channels-last tensors) we run the 3D op on a unit depth, and we keep the official memory layouts, so
codes and bits match the official ones to the last bit. Convs, norms and nearest upsampling run in 2D
(the official runs them in 2D too for images).

Released checkpoints (vae_type = codebook_dim):
  * `infinity_vae_d32reg.pth` (Infinity-2B): d=32, 16x16 pixels per latent, ch_mult (1,2,4,4,4)
  * `infinity_vae_d56_f8_14_patchify.pth` (Infinity-8B): d=14, 8x8 pixels per latent, ch_mult (1,2,4,4)
Both: base width 128, 2 res blocks per level, GroupNorm, no attention (cnn_attention='no').

Parameter names equal the official AutoEncoder's state-dict keys (`encoder.down.0.block.0.conv1.conv.weight`),
so loading is a key copy; `vae_state_dict_from_official` is the one place where file layouts are adapted.

Who calls what:
  * the Infinity generator: `bits_to_codes` -> `upsample_codes` (accumulate per scale) -> `decode`
  * anything that needs ground-truth tokens of an image: `encode_bits`
  * `ttsvar.testbed.train_vae`: `forward` (straight-through training path)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ttsvar.core.checkpoint import CheckpointError, load_strict, read_state_dict

# ----------------------------------------------------------------------------- layers


def swish(x: Tensor) -> Tensor:
    # the official x * sigmoid(x); F.silu rounds differently in the last ulp
    if _needs_grad(x):
        return x * torch.sigmoid(x)
    # the same two ops (the product is commutative, bit for bit) into one new tensor instead of two: a fresh
    # image-sized tensor costs more in page faults on the CPU than the sigmoid itself
    return torch.sigmoid(x).mul_(x)


def _needs_grad(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def upsample2x_nearest(x: Tensor) -> Tensor:
    """[B,C,H,W] -> [B,C,2H,2W], each pixel repeated 2x2: F.interpolate(scale_factor=2, mode='nearest') exactly,
    values (a copy, so bit for bit) and memory layout, in a fifth of its time on contiguous CPU tensors."""
    # the convolution after this picks its kernel, hence its rounding, by the layout: a channels-last latent keeps
    # the decoder channels-last. Read F.interpolate's layout off a meta tensor; its channels-last kernel is fast
    like = F.interpolate(torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta"), scale_factor=2.0,
                         mode="nearest")
    if not like.is_contiguous():
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)


def _num_groups(channels: int) -> int:
    # the official Normalize picks 32 groups, else 24, else refuses
    if channels % 32 == 0:
        return 32
    if channels % 24 == 0:
        return 24
    raise ValueError(f"GroupNorm over {channels} channels: the official VAE needs a multiple of 32 or 24; "
                     "choose ch and ch_mult so every level width is one")


class Conv(nn.Module):
    """nn.Conv2d one level down, because the official checkpoint keys read `<name>.conv.weight`."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """GroupNorm one level down (checkpoint keys `<name>.norm.weight`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_num_groups(channels), channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = Normalize(c_in)
        self.conv1 = Conv(c_in, c_out, 3, padding=1)
        self.norm2 = Normalize(c_out)
        self.conv2 = Conv(c_out, c_out, 3, padding=1)
        self.nin_shortcut = Conv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        # h is this block's own fresh tensor: adding into it saves an allocation (x + h == h + x, bit for bit); only
        # when both share a layout, since x + h could lay its result out otherwise and the next conv's kernel with it
        if _needs_grad(h) or _needs_grad(x) or h.stride() != x.stride():
            return x + h
        return h.add_(x)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv(c, c, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        # pad right/bottom only (torch convs pad symmetrically), so H -> H/2 exactly
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(upsample2x_nearest(x))


class Level(nn.Module):
    """One resolution of the encoder (`down.i`) or decoder (`up.i`): res blocks, then an optional resample."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)])
        # attribute names are the checkpoint's: down.i.downsample / up.i.upsample
        if resample == "down":
            self.downsample = Downsample(c_out)
        elif resample == "up":
            self.upsample = Upsample(c_out)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    """[B,3,H,W] -> [B,d,H/p,W/p]; levels 0..log2(p)-1 halve the resolution."""

    def __init__(self, cfg: BSQVAEConfig):
        super().__init__()
        ch, mult, n_down = cfg.ch, cfg.ch_mult, cfg.num_downsamples
        self.conv_in = Conv(cfg.in_channels, ch, 3, padding=1)
        widths = [ch * m for m in mult]
        self.down = nn.ModuleList([
            Level(ch if i == 0 else widths[i - 1], widths[i], cfg.num_res_blocks,
                  "down" if i < n_down else None)
            for i in range(len(mult))
        ])
        self.mid = Mid(widths[-1])
        self.norm_out = Normalize(widths[-1])
        self.conv_out = Conv(widths[-1], cfg.codebook_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """[B,d,h,w] -> [B,3,h*p,w*p]; runs levels from last to first, levels 1..log2(p) double the resolution."""

    def __init__(self, cfg: BSQVAEConfig):
        super().__init__()
        ch, mult, n_up = cfg.ch, cfg.ch_mult, cfg.num_downsamples
        widths = [ch * m for m in mult]
        self.conv_in = Conv(cfg.codebook_dim, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1])
        # up[i] is stored in level order but run in reverse; its input is the width of level i+1
        self.up = nn.ModuleList([
            Level(widths[min(i + 1, len(mult) - 1)], widths[i], cfg.num_res_blocks + 1,
                  "up" if 1 <= i <= n_up else None)
            for i in range(len(mult))
        ])
        self.norm_out = Normalize(widths[0])
        self.conv_out = Conv(widths[0], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


# ----------------------------------------------------------------------------- quantiser


def resize_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The official z_interplote_up: 'trilinear' on a unit time axis (~1 ulp away from 'bilinear')."""
    return F.interpolate(x.unsqueeze(2), size=(1, *size), mode="trilinear").squeeze(2)


def resize_down(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The official z_interplote_down: 'area' on a unit time axis (3D adaptive average pooling; on
    channels-last inputs the 2D kernel rounds differently)."""
    return F.interpolate(x.unsqueeze(2), size=(1, *size), mode="area").squeeze(2)


@dataclass
class QuantizerOutput:
    """What `MultiScaleBSQ.forward` returns; losses are means over scales."""

    z_hat: Tensor  # [B,d,h,w] sum of the upsampled per-scale codes (straight-through in training)
    bits: list[Tensor]  # per scale [B,h_s,w_s,d] long in {0,1}
    codes: list[Tensor]  # per scale [B,d,h,w]: its codes upsampled to the latent grid; they sum to z_hat
    commit_loss: Tensor  # scalar: ||u - sg(q)||^2 between the unit residual and its code
    entropy_loss: Tensor  # scalar: per-sample bit entropy - codebook bit entropy (BSQ's factorised form)


class MultiScaleBSQ(nn.Module):
    """Residual binary spherical quantisation over a schedule of scales (no parameters).

    Per scale: area-downsample the residual, put each position on the unit sphere, snap every
    coordinate to +-1/sqrt(d) (bit = coordinate > 0), upsample the code to the latent size, subtract.
    """

    def __init__(self, codebook_dim: int, inv_temperature: float = 100.0):
        super().__init__()
        self.codebook_dim = codebook_dim
        self.codebook_scale = 1.0 / math.sqrt(codebook_dim)
        self.inv_temperature = inv_temperature

    def quantize_scale(self, r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """r [B,d,h,w] -> (codes [B,d,h,w], bits [B,h,w,d] long, commit, entropy) for one scale."""
        # [B,h,w,d] made contiguous as the official does: the norm's reduction order, and the memory layout
        # of the codes (which picks the resize kernel later), then match it to the last bit
        u = F.normalize(r.permute(0, 2, 3, 1).contiguous(), dim=-1)
        q = torch.where(u > 0, 1.0, -1.0).to(u.dtype) * self.codebook_scale
        codes = u + (q - u).detach()  # straight-through; the official formula, so values match to the bit
        bits = (codes > 0).long()
        commit = F.mse_loss(u, q.detach())
        # soft bit probabilities q(bit=1|u) = sigmoid(2*tau*u_i/sqrt(d)) (BSQ paper, factorised codebook)
        p = torch.sigmoid(2.0 * self.inv_temperature * self.codebook_scale * u)
        per_sample = _binary_entropy(p).sum(-1).mean()
        codebook = _binary_entropy(p.reshape(-1, self.codebook_dim).mean(0)).sum()
        return codes.permute(0, 3, 1, 2), bits, commit, per_sample - codebook

    def forward(self, h: Tensor, scale_schedule: list[tuple[int, int]]) -> QuantizerOutput:
        B, d, H, W = h.shape
        h = h.float()  # the official quantiser always runs in fp32
        residual, z_hat = h, torch.zeros_like(h)
        bits, codes_per_scale, commits, entropies = [], [], [], []
        for hs, ws in scale_schedule:
            r = resize_down(residual, (hs, ws)) if (hs, ws) != (H, W) else residual
            codes, b, commit, ent = self.quantize_scale(r)
            if (hs, ws) != (H, W):
                # .contiguous() as the official: the next 'area' resize then runs the same kernel, bit for bit
                codes = resize_up(codes, (H, W)).contiguous()
            residual = residual - codes.detach()
            z_hat = z_hat + codes
            bits.append(b)
            codes_per_scale.append(codes)
            commits.append(commit)
            entropies.append(ent)
        commit, entropy = torch.stack(commits).mean(), torch.stack(entropies).mean()
        return QuantizerOutput(z_hat.contiguous(), bits, codes_per_scale, commit, entropy)


def _binary_entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p + 1e-8) + (1 - p) * torch.log(1 - p + 1e-8))


# ----------------------------------------------------------------------------- model


# the testbed's 8x8 latent is built up over these grids (the official 16x16 table starts 1,2,3,4,5,6,8)
TINY_SCALE_SCHEDULE: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8))


@dataclass(frozen=True)
class BSQVAEConfig:
    codebook_dim: int = 32  # bits per latent position (d); the official `vae_type`
    patch_size: int = 16  # pixels per latent position along each side = 2 ** number of downsamplings
    ch: int = 128  # base width (official base_ch)
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)  # level widths ch*m (encoder and decoder use the same)
    num_res_blocks: int = 2  # per encoder level; decoder levels have one more
    in_channels: int = 3
    # scale grid used by forward() (training) when none is passed; the last entry is the latent size
    scale_schedule: tuple[tuple[int, int], ...] | None = None
    inv_temperature: float = 100.0  # sharpness of the soft bit assignment in the entropy loss
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if self.codebook_dim < 1:
            raise ValueError(f"codebook_dim must be >= 1 bit, got {self.codebook_dim}")
        p = self.patch_size
        if p < 1 or p & (p - 1):
            raise ValueError(f"patch_size must be a power of two (1, 2, 4, 8, 16, ...), got {p}")
        if len(self.ch_mult) < self.num_downsamples + 1:
            raise ValueError(f"patch_size={p} needs {self.num_downsamples} downsamplings, so ch_mult needs "
                             f"at least {self.num_downsamples + 1} levels; got {self.ch_mult}")
        for w in (self.ch, *(self.ch * m for m in self.ch_mult)):
            _num_groups(w)
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.scale_schedule is not None:
            object.__setattr__(self, "scale_schedule", _check_schedule(self.scale_schedule))

    @property
    def num_downsamples(self) -> int:
        return int(math.log2(self.patch_size))

    @classmethod
    def from_vae_type(cls, vae_type: int, apply_spatial_patchify: bool = False) -> BSQVAEConfig:
        """The config the official `load_visual_tokenizer` builds for --vae_type/--apply_spatial_patchify."""
        if vae_type not in (14, 16, 18, 20, 24, 32, 64):
            raise ValueError(f"vae_type={vae_type} is not a released Infinity VAE; "
                             "use 14, 16, 18, 20, 24, 32 or 64")
        if apply_spatial_patchify:
            return cls(codebook_dim=vae_type, patch_size=8, ch_mult=(1, 2, 4, 4),
                       name=f"infinity_d{vae_type}_patchify")
        return cls(codebook_dim=vae_type, patch_size=16, ch_mult=(1, 2, 4, 4, 4),
                   name=f"infinity_d{vae_type}")

    @classmethod
    def infinity_d32(cls) -> BSQVAEConfig:
        """Infinity-2B's `infinity_vae_d32reg.pth`."""
        return cls.from_vae_type(32, apply_spatial_patchify=False)

    @classmethod
    def infinity_d14_patchify(cls) -> BSQVAEConfig:
        """Infinity-8B's `infinity_vae_d56_f8_14_patchify.pth` (the transformer sees 2x2x14 = 56 bits)."""
        return cls.from_vae_type(14, apply_spatial_patchify=True)

    @classmethod
    def tiny(cls, codebook_dim: int = 6, ch: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
             num_res_blocks: int = 1) -> BSQVAEConfig:
        """Testbed VAE: 32x32 RGB -> 8x8 latent of `codebook_dim` bits, scales 1,2,3,4,6,8."""
        return cls(codebook_dim=codebook_dim, patch_size=4, ch=ch, ch_mult=ch_mult,
                   num_res_blocks=num_res_blocks, scale_schedule=TINY_SCALE_SCHEDULE, name="tiny")

    @classmethod
    def preset(cls, name: str) -> BSQVAEConfig:
        if name not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; known: {sorted(VAE_PRESETS)}")
        return VAE_PRESETS[name]()

    def replace(self, **changes) -> BSQVAEConfig:
        return dc_replace(self, **changes)


VAE_PRESETS = {
    "infinity_d32": BSQVAEConfig.infinity_d32,
    "infinity_d14_patchify": BSQVAEConfig.infinity_d14_patchify,
    "tiny": BSQVAEConfig.tiny,
}


def list_vae_presets() -> list[str]:
    return sorted(VAE_PRESETS)


def _check_schedule(schedule) -> tuple[tuple[int, int], ...]:
    out = []
    for s in schedule:
        s = tuple(s)
        if len(s) != 2 or not all(isinstance(v, int) and v >= 1 for v in s):
            hint = " (drop the leading T=1 of the official (t, h, w) triples)" if len(s) == 3 else ""
            raise ValueError(f"scale_schedule entries must be (h, w) pairs of positive ints, got {s}{hint}")
        out.append(s)
    if not out:
        raise ValueError("scale_schedule is empty; pass at least the latent size, e.g. [(h, w)]")
    return tuple(out)


@dataclass
class VAEOutput:
    """Training-path result of `BSQVAE.forward`."""

    recon: Tensor  # [B,3,H,W] unclamped decoder output
    z_hat: Tensor  # [B,d,h,w] quantised latent (straight-through)
    bits: list[Tensor]  # per scale [B,h_s,w_s,d] long
    commit_loss: Tensor  # scalar
    entropy_loss: Tensor  # scalar


class BSQVAE(nn.Module):
    """The Infinity tokenizer. Images are [B,3,H,W] in [-1,1] with H, W multiples of patch_size."""

    def __init__(self, config: BSQVAEConfig):
        super().__init__()
        self.config = config
        self.codebook_dim = config.codebook_dim
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = MultiScaleBSQ(config.codebook_dim, config.inv_temperature)

    # --- encoding -----------------------------------------------------------------------------------

    def encode_features(self, img: Tensor) -> Tensor:
        """img [B,3,H,W] -> continuous latent [B,d,H/p,W/p] in fp32 (official encode_for_raw_features)."""
        self._check_image(img)
        return self.encoder(img.to(self.encoder.conv_in.conv.weight.dtype)).float()

    def encode_bits(self, img: Tensor, scale_schedule: list[tuple[int, int]]) -> tuple[Tensor, list[Tensor]]:
        """img [B,3,H,W] in [-1,1] -> (z_hat [B,d,h,w], per-scale bits [B,h_s,w_s,d] long in {0,1}).

        z_hat is the sum of the per-scale codes upsampled to the latent size (h, w) = (H/p, W/p), which is
        the last grid of a full schedule. Call under torch.inference_mode() when no gradient is needed.
        """
        h = self.encode_features(img)
        q = self.quantizer(h, self._schedule_for(h, scale_schedule))
        return q.z_hat, q.bits

    def quantize(self, h: Tensor, scale_schedule: list[tuple[int, int]]) -> QuantizerOutput:
        """Multi-scale BSQ of continuous latents h [B,d,h,w] (e.g. from `encode_features`)."""
        if h.ndim != 4 or h.shape[1] != self.codebook_dim:
            raise ValueError(f"expected latents [B,{self.codebook_dim},h,w], got {tuple(h.shape)}")
        return self.quantizer(h, self._schedule_for(h, scale_schedule))

    # --- codes --------------------------------------------------------------------------------------

    def bits_to_codes(self, bits: Tensor) -> Tensor:
        """bits [B,h,w,d] in {0,1} -> codes [B,d,h,w] = +-1/sqrt(d), then l2-normalised like the official
        indices_to_codes(label_type='bit_label')."""
        if bits.ndim != 4 or bits.shape[-1] != self.codebook_dim:
            raise ValueError(f"expected bits [B,h,w,{self.codebook_dim}], got {tuple(bits.shape)}")
        s = self.quantizer.codebook_scale
        codes = bits.to(torch.float32) * s * 2 - s  # same op order as the official, so equal to the bit
        return F.normalize(codes, dim=-1).permute(0, 3, 1, 2)

    def upsample_codes(self, codes: Tensor, size: tuple[int, int]) -> Tensor:
        """Resize codes [B,d,h,w] to `size` with the official up-mode (z_interplote_up, trilinear at T=1).

        Infinity uses this mode both to bring each scale's codes to the final grid and to resize the
        running sum down to the next scale's grid (its next-scale input).
        """
        return resize_up(codes, tuple(size))

    def downsample_codes(self, codes: Tensor, size: tuple[int, int]) -> Tensor:
        """Resize codes [B,d,h,w] to `size` with the official down-mode (z_interplote_down, 'area')."""
        return resize_down(codes, tuple(size))

    # --- decoding -----------------------------------------------------------------------------------

    def decode(self, z: Tensor, clamp: bool = True) -> Tensor:
        """z [B,d,h,w] -> image [B,3,h*p,w*p]; clamped to [-1,1] like the official `decode`."""
        if z.ndim != 4 or z.shape[1] != self.codebook_dim:
            raise ValueError(f"expected codes [B,{self.codebook_dim},h,w], got {tuple(z.shape)}")
        x = self.decoder(z.to(self.decoder.conv_in.conv.weight.dtype))
        return x.clamp(-1.0, 1.0) if clamp else x

    # --- training -----------------------------------------------------------------------------------

    def forward(self, img: Tensor, scale_schedule: list[tuple[int, int]] | None = None) -> VAEOutput:
        """Straight-through training pass over `scale_schedule` (default: config.scale_schedule)."""
        schedule = scale_schedule if scale_schedule is not None else self.config.scale_schedule
        if schedule is None:
            raise ValueError("forward() needs a scale schedule: pass one or set BSQVAEConfig.scale_schedule")
        h = self.encode_features(img)
        q = self.quantizer(h, self._schedule_for(h, schedule))
        recon = self.decoder(q.z_hat.to(self.decoder.conv_in.conv.weight.dtype))
        return VAEOutput(recon, q.z_hat, q.bits, q.commit_loss, q.entropy_loss)

    # --- checks -------------------------------------------------------------------------------------

    def _check_image(self, img: Tensor) -> None:
        p = self.config.patch_size
        if img.ndim != 4 or img.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images [B,{self.config.in_channels},H,W], got {tuple(img.shape)}")
        if img.shape[2] % p or img.shape[3] % p:
            raise ValueError(f"image size {tuple(img.shape[2:])} is not a multiple of patch_size={p}; "
                             "resize or crop it first")

    def _schedule_for(self, h: Tensor, scale_schedule) -> list[tuple[int, int]]:
        schedule = _check_schedule(scale_schedule)
        H, W = h.shape[-2:]
        for hs, ws in schedule:
            if hs > H or ws > W:
                raise ValueError(f"scale {(hs, ws)} is larger than the latent grid {(H, W)}; the schedule "
                                 f"must end at the image size / patch_size={self.config.patch_size}")
        return list(schedule)


# ----------------------------------------------------------------------------- checkpoints

_MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")


def vae_state_dict_from_official(state: Mapping, model: BSQVAE) -> dict[str, Tensor]:
    """Turn what an official VAE file holds into our state dict; the one place where layouts are adapted.

    * Top level: the official loader reads `ckpt["vae"]`; a flat dict of tensors is taken as is.
    * `quantizer.lfq.mask` / `quantize.lfq.mask` (the same buffer under two names; powers of two used for
      integer labels) are checked against their definition and dropped: we derive them.
    * Keys without the Conv/Normalize wrapper level (flux layout, `conv1.weight` for `conv1.conv.weight`),
      which the official load_cnn also accepts, gain it. Everything else is passed through, so a missing
      or unexpected key still fails in the strict load.
    """
    if "vae" in state and isinstance(state["vae"], Mapping):
        state = state["vae"]
    elif not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"expected a VAE state dict or a dict with a 'vae' entry; the file's top-level "
                              f"keys are {sorted(state)[:10]}")
    if "cfg_uncond" in state or any(k.startswith(("block_chunks.", "blocks.")) for k in state):
        raise CheckpointError("this is an Infinity transformer checkpoint: pass it as model.weights, and the BSQ-VAE "
                              "(infinity_vae_d32reg.pth, ...) as model.options.vae_weights")
    ours = set(model.state_dict())
    d = model.codebook_dim
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k in _MASK_KEYS:
            want = 2 ** torch.arange(d - 1, -1, -1)
            if tuple(v.shape) != (d,) or not torch.equal(v.long().cpu(), want):
                raise CheckpointError(f"{k} has shape {tuple(v.shape)}; a {d}-bit VAE has {list(want.shape)} "
                                      f"powers of two. Is the config's codebook_dim right?")
            continue
        if k not in ours and "." in k:
            for wrap in (".conv", ".norm"):
                cand = k.rsplit(".", 1)[0] + wrap + "." + k.rsplit(".", 1)[1]
                if cand in ours and cand not in state:
                    k = cand
                    break
        out[k] = v
    return out


def vae_state_dict_to_official(model: BSQVAE) -> dict[str, Tensor]:
    """Our state dict in the official AutoEncoder layout (wrapper keys plus the two mask buffers).

    Save it as `torch.save({"vae": sd}, path)` to get a file the official `vae_model()` loads.
    """
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mask = 2 ** torch.arange(model.codebook_dim - 1, -1, -1)
    for k in _MASK_KEYS:
        sd[k] = mask.clone()
    return sd


def load_bsq_vae(path: str | Path, config: BSQVAEConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> BSQVAE:
    """Build `config` and load weights strictly from a local .safetensors or official .pth file.

    Raises CheckpointError naming the file and every missing/unexpected key or wrong shape.
    """
    state = read_state_dict(path)
    model = BSQVAE(config)
    try:
        load_strict(model, state, source=path, adapt=vae_state_dict_from_official)
    except CheckpointError as e:
        hint = _config_hint(state, config)
        raise CheckpointError(f"{e}{hint}") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _config_hint(state: Mapping, config: BSQVAEConfig) -> str:
    sd = state["vae"] if isinstance(state.get("vae"), Mapping) else state
    w = sd.get("encoder.conv_out.conv.weight", sd.get("encoder.conv_out.weight"))
    if isinstance(w, Tensor) and w.ndim == 4 and w.shape[0] != config.codebook_dim:
        return (f" The file's encoder emits {w.shape[0]} channels, i.e. codebook_dim={w.shape[0]}; "
                f"the config says {config.codebook_dim} (try BSQVAEConfig.from_vae_type({w.shape[0]}, ...)).")
    return ""

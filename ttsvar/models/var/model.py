"""The VAR transformer (class-conditional next-scale prediction), native and flash-attn free.

A GPT-2-like decoder over the concatenated token maps of all scales: a token of scale k attends to every
token of scales <= k (block-causal). The class embedding is both the start token and the AdaLN condition of
every block; class `num_classes` is the null class of classifier-free guidance. Sampling runs one scale at a
time with explicit key/value caches (`forward_scale`); training-style teacher forcing runs all scales at once
under the block-causal mask (`forward`); tests check that the two agree.

Parameter names equal the official checkpoint keys (`var_d{16,20,24,30,36}.pth`);
`official_state_dict_to_ours` is the one exception list. Facts from FoundationVision/VAR (MIT):
models/var.py, models/basic_var.py, models/__init__.py (build_vae_var), utils/arg_util.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kv import SharedKV
from .vqvae import PATCH_NUMS_256, PATCH_NUMS_512


def _ada_ln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine weights, modulated by the condition: LN(x) * (1 + scale) + shift."""
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (scale + 1) + shift


class SelfAttention(nn.Module):
    """Multi-head self-attention; with `attn_l2_norm` q and k are L2-normalised and q is multiplied by a
    learned per-head scale (clamped at 100), so the softmax scale is 1."""

    def __init__(self, embed_dim: int, num_heads: int, attn_l2_norm: bool):
        super().__init__()
        assert embed_dim % num_heads == 0, f"embed_dim {embed_dim} not divisible by num_heads {num_heads}"
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        # k has no bias (it would cancel in the softmax); the official zero_k_bias buffer is not kept
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x, past=None, attn_mask=None):
        """x [B,L,C]; past: None, or a function (k, v) -> (k, v) that puts the earlier scales' keys and values
        [B,H,L_past,hd] before this call's (`SharedKV.with_past`). Returns (out [B,L,C] float32, (k, v) of this
        call's tokens only)."""
        B, L, C = x.shape
        w = self.mat_qkv.weight
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias)).to(w.dtype)
        qkv = F.linear(x.to(w.dtype), w, bias).view(B, L, 3, self.num_heads, self.head_dim)  # [B,L,3,H,hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B,H,L,hd]
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = (F.normalize(q.float(), dim=-1) * scale_mul).to(v.dtype)
            k = F.normalize(k.float(), dim=-1).to(v.dtype)
        new = (k, v)
        if past is not None:
            k, v = past(k, v)  # [B,H,L_past+L,hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)  # [B,H,L,hd]
        out = out.transpose(1, 2).reshape(B, L, C)  # [B,L,C]
        return self.proj(out).float(), new


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        x = x.to(self.fc1.weight.dtype)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh")).float()


class AdaLNSelfAttn(nn.Module):
    """Pre-norm block whose norms are modulated by the class: 6 vectors (gamma1, gamma2, scale1, scale2,
    shift1, shift2) from its own `ada_lin`, or (shared AdaLN, d36) a learned `ada_gss` plus one projection
    of the class shared by all blocks."""

    def __init__(self, C: int, D: int, num_heads: int, mlp_ratio: float, eps: float, shared_aln: bool,
                 attn_l2_norm: bool):
        super().__init__()
        self.C, self.eps, self.shared_aln = C, eps, shared_aln
        self.attn = SelfAttention(C, num_heads, attn_l2_norm)
        self.ffn = FFN(C, round(C * mlp_ratio))
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * C))

    def forward(self, x, cond, past=None, attn_mask=None):
        """x [B,L,C]; cond: the class embedding [B,D], or with shared AdaLN the shared projection [B,1,6,C];
        past: see `SelfAttention.forward`."""
        if self.shared_aln:
            ada = self.ada_gss + cond  # [B,1,6,C]
        else:
            ada = self.ada_lin(cond).view(-1, 1, 6, self.C)  # [B,1,6,C]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)  # each [B,1,C]
        a, kv = self.attn(_ada_ln(x, scale1, shift1, self.eps), past, attn_mask)
        x = x + a * gamma1
        x = x + self.ffn(_ada_ln(x, scale2, shift2, self.eps)) * gamma2
        return x, kv


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, eps: float):
        super().__init__()
        self.C, self.eps = C, eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def forward(self, x, cond_BD):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)  # each [B,1,C]
        return _ada_ln(x, scale, shift, self.eps)


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD):
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)  # [B,1,6,C]


@dataclass
class VARConfig:
    depth: int = 16
    embed_dim: int = 1024  # 64 * depth in every release
    num_heads: int = 16  # = depth in every release (head width 64)
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # ImageNet; the class embedding has one more row, the null class
    vocab_size: int = 4096  # the VAE's codebook
    Cvae: int = 32  # the VAE's code width
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    shared_aln: bool = False  # d36 (trained with --saln=1) shares one AdaLN projection across blocks
    attn_l2_norm: bool = True  # the training default (--anorm=1) of every release
    norm_eps: float = 1e-6

    @classmethod
    def released(cls, depth: int) -> VARConfig:
        """var_d16/20/24/30 (256 px, per-block AdaLN) and var_d36 (512 px, shared AdaLN)."""
        if depth not in RELEASED_DEPTHS:
            raise ValueError(f"no released VAR of depth {depth}; released: {RELEASED_DEPTHS}")
        big = depth == 36
        return cls(depth=depth, embed_dim=64 * depth, num_heads=depth, shared_aln=big,
                   patch_nums=PATCH_NUMS_512 if big else PATCH_NUMS_256)

    @classmethod
    def tiny(cls, **kw) -> VARConfig:
        """A test-sized VAR matching `VQVAEConfig.tiny()`: 2 blocks of width 64, 10 classes, scales 1,2,3,4."""
        return replace(cls(depth=2, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, Cvae=8,
                           patch_nums=(1, 2, 3, 4)), **kw)

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)


RELEASED_DEPTHS = (16, 20, 24, 30, 36)


class VAR(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        self.config = cfg = config
        C = D = cfg.embed_dim
        self.C, self.D, self.V = C, D, cfg.vocab_size
        if cfg.patch_nums[0] != 1:
            raise ValueError(f"patch_nums must start with 1 (the class token's scale), got {cfg.patch_nums}")
        init_std = math.sqrt(1 / C / 3)
        self.word_embed = nn.Linear(cfg.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.randn(1, 1, C) * init_std)
        self.pos_1LC = nn.Parameter(torch.randn(1, cfg.L, C) * init_std)  # absolute positions of all scales
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)  # which scale a token belongs to
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(D, 6 * C)) if cfg.shared_aln else nn.Identity()
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(C, D, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, cfg.shared_aln, cfg.attn_l2_norm)
            for _ in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(C, D, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.begins = [0]
        for pn in cfg.patch_nums:
            self.begins.append(self.begins[-1] + pn * pn)

    def cast_blocks(self, dtype: torch.dtype) -> VAR:
        """Put the blocks' matmul weights in `dtype` (bfloat16 on GPU, like the official autocast sampler);
        embeddings, norms, AdaLN, the residual stream and the head stay float32."""
        for b in self.blocks:
            for m in (b.attn.mat_qkv, b.attn.proj, b.ffn):
                m.to(dtype)
        return self

    # -- pieces shared by both paths -------------------------------------------------------------------

    def scale_id(self) -> torch.Tensor:
        """The scale of each token [L]; recomputed (not a buffer), as it derives from the config."""
        lens = torch.tensor([pn * pn for pn in self.config.patch_nums], device=self.pos_1LC.device)
        return torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens)

    def lvl_pos(self, si: int | None = None) -> torch.Tensor:
        """Level + position embedding [1,l,C] of scale si (all scales if None), summed as the official does."""
        if si is None:
            return self.lvl_embed(self.scale_id()).unsqueeze(0) + self.pos_1LC  # [1,L,C]
        b, e = self.begins[si], self.begins[si + 1]
        return self.lvl_embed.weight[si].view(1, 1, -1) + self.pos_1LC[:, b:e]  # [1,l,C]

    def class_cond(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices [B] (num_classes = the null class) -> the condition cond_BD [B,D]."""
        return self.class_emb(labels).float()

    def sos(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """The scale-0 token [B,1,C] (without its level/position embedding): class embedding + pos_start."""
        return cond_BD.unsqueeze(1) + self.pos_start

    def embed_scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """Next-scale input codes [B,l,Cvae] -> token embeddings [B,l,C] (without level/position)."""
        return self.word_embed(x.float())

    def logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x.float(), cond_BD)).float()  # [B,l,V]

    # -- sampling path ---------------------------------------------------------------------------------

    def forward_scale(self, x: torch.Tensor, si: int, cond_BD: torch.Tensor, caches: SharedKV | None,
                      keep: bool = True):
        """Run the tokens of scale si (embeddings [B,l,C] from `sos` or `embed_scale_input`) through all blocks,
        attending to `caches` (the earlier scales' keys and values, None at scale 0). Returns (logits [B,l,V]
        float32, the caches extended by this scale, or unchanged with `keep=False`)."""
        x = x + self.lvl_pos(si)
        cond = self.shared_ada_lin(cond_BD)
        new = []
        for i, b in enumerate(self.blocks):
            x, kv = b(x, cond, None if caches is None else partial(caches.with_past, i))
            if keep:
                new.append(kv)
        if keep:
            caches = (caches if caches is not None else SharedKV.empty(x.shape[0])).extend(new)
        return self.logits(x, cond_BD), caches

    # -- teacher-forced path ---------------------------------------------------------------------------

    def forward(self, labels: torch.Tensor, x_wo_first: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of all scales [B,L,V]. labels [B]; x_wo_first [B,L-1,Cvae]: the next-scale
        inputs of scales 1..S-1 (`VQVAE.idx_to_var_input`). No class dropout: that belongs to a trainer."""
        L = self.config.L
        if x_wo_first.shape[1] != L - 1:
            raise ValueError(f"x_wo_first has {x_wo_first.shape[1]} tokens; patch_nums {self.config.patch_nums} "
                             f"need {L - 1}")
        cond_BD = self.class_cond(labels)
        x = torch.cat((self.sos(cond_BD), self.embed_scale_input(x_wo_first)), dim=1)  # [B,L,C]
        x = x + self.lvl_pos()
        sid = self.scale_id()
        mask = sid[:, None] >= sid[None, :]  # [L,L] a token sees its scale and coarser ones
        cond = self.shared_ada_lin(cond_BD)
        for b in self.blocks:
            x, _ = b(x, cond, None, mask)
        return self.logits(x, cond_BD)


# ----------------------------------------------------------------------------- checkpoints

# Official buffers that are constants derived from the config (the scale of each token, the block-causal
# training mask) or zeros (the k bias): recomputed here, so dropped on load.
_DERIVED_BUFFERS = ("lvl_1L", "attn_bias_for_masking")
_DERIVED_SUFFIXES = (".attn.zero_k_bias",)


def official_state_dict_to_ours(sd: dict[str, torch.Tensor], model: VAR) -> dict[str, torch.Tensor]:
    """The one place where VAR checkpoint keys are adapted: drop the derived buffers. Everything else is a
    plain key copy."""
    return {k: v for k, v in sd.items() if k not in _DERIVED_BUFFERS and not k.endswith(_DERIVED_SUFFIXES)}

"""Infinity text-to-image transformer (bitwise next-scale prediction), written for step-wise search.

Our own implementation of the architecture released in FoundationVision/Infinity (MIT). Parameter names
equal the keys of the official checkpoints (`infinity_2b_reg.pth`, the 8B release), so loading is a
key copy; the only remapping lives in `official_state_dict_to_ours`.

Classes run bottom-up: norms -> RoPE -> attention -> FFN -> block -> head -> config -> Infinity.
The model exposes three entry points:
  * `encode_text`   text features -> conditioning (pooled cond, ada-LN params, per-block cross K/V)
  * `forward_scale` one scale of tokens through the blocks with a KV cache (what sampling uses)
  * `forward`       a teacher-forced pass over all scales with the block-causal mask (training, tests)
Sampling state, CFG pairing and per-row randomness live in `generator.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache, partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.checkpoint import CheckpointError
from ..kv import SharedKV
from .schedules import rope_reference

# ----------------------------------------------------------------------------- norms


class FastRMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32 (official `text_norm`)."""

    def __init__(self, C: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


def ada_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then x * (1 + scale) + shift, in float32 (as the official fused op)."""
    x = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return x * (scale + 1) + shift


# ----------------------------------------------------------------------------- 2D RoPE


@lru_cache(maxsize=64)
def _rope_cos_sin_cpu(
    head_dim: int, schedule: tuple[tuple[int, int], ...], ref: tuple[int, int], base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [L, head_dim/2] for every token of `schedule`, positions normalised to the `ref` grid.

    Half of each head's rotary pairs rotate with the row index, half with the column index; a grid
    (ph, pw) samples the ref grid at round(i * ref_h / ph), round(j * ref_w / pw) ('star' RoPE).
    """
    with torch.inference_mode(False):  # cached tables must stay usable by autograd (training) too
        return _rope_tables(head_dim, schedule, ref, base)


def _rope_tables(head_dim, schedule, ref, base):
    quarter = head_dim // 4
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim // 2, 2, dtype=torch.int64).float() / (head_dim // 2)))
    uh, uw = ref
    angles = []
    for ph, pw in schedule:
        ih = (torch.arange(ph) * (uh / ph)).round().int().float()  # [ph]
        iw = (torch.arange(pw) * (uw / pw)).round().int().float()  # [pw]
        fh = torch.outer(ih, inv_freq)[:, None, :].expand(ph, pw, quarter)  # [ph, pw, hd/4]
        fw = torch.outer(iw, inv_freq)[None, :, :].expand(ph, pw, quarter)  # [ph, pw, hd/4]
        angles.append(torch.cat([fh, fw], dim=-1).reshape(ph * pw, 2 * quarter))  # [ph*pw, hd/2]
    ang = torch.cat(angles, dim=0)
    return ang.cos(), ang.sin()


def rope_cos_sin(head_dim: int, schedule, base: float = 10000.0, device=None):
    sched = tuple((int(h), int(w)) for h, w in schedule)
    return _rope_on_device(head_dim, sched, base, str(torch.device(device or "cpu")))


@lru_cache(maxsize=64)
def _rope_on_device(head_dim: int, sched: tuple, base: float, device: str):
    """The tables on `device`, cached so sampling does not copy them to the GPU at every scale."""
    cos, sin = _rope_cos_sin_cpu(head_dim, sched, tuple(rope_reference(list(sched))), base)
    with torch.inference_mode(False):
        return cos.to(device), sin.to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B,H,L,hd] by angles with cos/sin [L, hd/2]."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)  # [B,H,L,hd/2,2]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.reshape(x.shape)  # [B,H,L,hd]


# ----------------------------------------------------------------------------- attention


class SelfAttention(nn.Module):
    """Multi-head self-attention with L2-normalised q/k, a learned per-head scale and 2D RoPE."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        assert embed_dim % num_heads == 0, f"embed_dim {embed_dim} not divisible by num_heads {num_heads}"
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x, cos, sin, past=None, attn_mask=None):
        """x [B,L,C]; past: None, or a function (k, v) -> (k, v) that puts the earlier scales' keys and values
        [B,H,L_past,hd] before this call's (inference: `SharedKV.with_past` of this block's layer).

        Returns (out [B,L,C], (k, v) of this call's tokens only).
        """
        B, L, C = x.shape
        w = self.mat_qkv.weight
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)).to(w.dtype)
        qkv = F.linear(x.to(w.dtype), w, bias).view(B, L, 3, self.num_heads, self.head_dim)  # [B,L,3,H,hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B,H,L,hd]
        scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        q = F.normalize(q.float(), dim=-1, eps=1e-12) * scale_mul
        k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k = q.to(v.dtype), k.to(v.dtype)
        new = (k, v)
        if past is not None:
            k, v = past(k, v)  # [B,H,L_past+L,hd]
        # cos-attention: logits are already scaled by scale_mul, so the softmax scale is 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)  # [B,H,L,hd]
        out = out.transpose(1, 2).reshape(B, L, C)  # [B,L,C]
        return self.proj(out), new


class CrossAttention(nn.Module):
    """Attention from image tokens (or one learned query, for pooling) to variable-length text tokens."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int, for_attn_pool: bool = False):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.for_attn_pool = for_attn_pool
        if for_attn_pool:
            self.mat_q = nn.Parameter(torch.empty(1, num_heads, self.head_dim).normal_(0, (1 / embed_dim / 3) ** 0.5))
        else:
            self.mat_q = nn.Linear(embed_dim, embed_dim, bias=True)
        self.mat_kv = nn.Linear(kv_dim, embed_dim * 2, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B,T,kv_dim] -> k, v each [B,H,T,hd] (computed once per prompt, cached by the sampler)."""
        B, T, _ = text.shape
        w = self.mat_kv.weight
        bias = torch.cat((self.zero_k_bias, self.v_bias)).to(w.dtype)
        kv = F.linear(text.to(w.dtype), w, bias).view(B, T, 2, self.num_heads, self.head_dim)  # [B,T,2,H,hd]
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B,H,T,hd]
        return k, v

    def forward(self, x, k, v, text_mask):
        """x [B,L,C] (ignored when pooling); k, v [B,H,T,hd]; text_mask [B,T] bool (True = real token)."""
        B = k.shape[0]
        if self.for_attn_pool:
            q = self.mat_q.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1).transpose(1, 2)  # [B,H,1,hd]
            L = 1
        else:
            L = x.shape[1]
            q = self.mat_q(x.to(self.mat_q.weight.dtype)).view(B, L, self.num_heads, self.head_dim)
            q = q.transpose(1, 2)  # [B,H,L,hd]
        mask = text_mask[:, None, None, :]  # [B,1,1,T]
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask)  # [B,H,L,hd]
        out = out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim)  # [B,L,C]
        return self.proj(out)


class TextAttentivePool(nn.Module):
    """Pools the text tokens into one vector with a learned query: the start token and the AdaLN cond."""

    def __init__(self, Ct5: int, D: int, num_heads: int):
        super().__init__()
        self.ca = CrossAttention(D, Ct5, num_heads, for_attn_pool=True)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        k, v = self.ca.kv(text)
        return self.ca(None, k, v, text_mask).squeeze(1)  # [B,D]


# ----------------------------------------------------------------------------- FFN, blocks, head


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.to(self.fc1.weight.dtype))))


class CrossAttnBlock(nn.Module):
    """Pre-norm block: shared-AdaLN self-attention, cross-attention to text, shared-AdaLN FFN."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.C, self.eps = embed_dim, eps
        self.sa = SelfAttention(embed_dim, num_heads)
        self.ca = CrossAttention(embed_dim, embed_dim, num_heads)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio / 256) * 256)
        self.ca_norm = nn.LayerNorm(embed_dim, eps=eps)
        # the per-block offset added to the shared AdaLN output: gamma1, gamma2, scale1, scale2, shift1, shift2
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim**0.5)

    def forward(self, x, gss, ca_k, ca_v, text_mask, cos, sin, past=None, attn_mask=None):
        """x [B,L,C] float32 residual stream; gss [B,1,6,C]; past: see `SelfAttention.forward`. Returns (x,
        self-attention (k, v) of these tokens)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss).unbind(2)  # each [B,1,C]
        h, kv = self.sa(ada_layer_norm(x, scale1, shift1, self.eps), cos, sin, past, attn_mask)
        x = x + h.float() * gamma1
        x = x + self.ca(self.ca_norm(x).to(ca_k.dtype), ca_k, ca_v, text_mask).float()
        x = x + self.ffn(ada_layer_norm(x, scale2, shift2, self.eps)).float() * gamma2
        return x, kv


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, eps: float):
        super().__init__()
        self.C, self.eps = C, eps
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def forward(self, x, cond_BD):
        scale, shift = self.ada_lin(cond_BD.float()).view(-1, 1, 2, self.C).unbind(2)  # each [B,1,C]
        return ada_layer_norm(x, scale, shift, self.eps)


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD):
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).reshape(-1, 1, 6, C)  # [B,1,6,C]


class MultipleLayers(nn.Module):
    """A chunk of blocks; exists only so parameter names match the checkpoints (`block_chunks.i.module.j`)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


# ----------------------------------------------------------------------------- config + model


@dataclass
class InfinityConfig:
    depth: int = 32
    embed_dim: int = 2048
    num_heads: int = 16
    mlp_ratio: float = 4.0
    text_channels: int = 2048  # width of the text encoder's features (Flan-T5-XL: 2048)
    text_maxlen: int = 512  # rows of the learned unconditional text embedding
    codebook_dim: int = 32  # bits per VAE token (vae_type)
    apply_spatial_patchify: bool = False  # 8B: 2x2 VAE tokens per transformer token, so 4*d bits
    block_chunks: int = 8  # checkpoint layout only: blocks are stored as block_chunks.i.module.j
    norm_eps: float = 1e-6
    pool_head_dim: int = 0  # head width of the text pooling attention; 0 = official rule (128, or 64 above 4096)
    rope_base: float = 10000.0
    num_lvl_embeds: int = 15  # rows of the scale-index embedding

    @property
    def d_vae(self) -> int:
        return self.codebook_dim * (4 if self.apply_spatial_patchify else 1)

    @classmethod
    def infinity_2b(cls) -> InfinityConfig:
        return cls(depth=32, embed_dim=2048, num_heads=16, codebook_dim=32, block_chunks=8)

    @classmethod
    def infinity_8b(cls) -> InfinityConfig:
        return cls(depth=40, embed_dim=3584, num_heads=28, codebook_dim=14, apply_spatial_patchify=True, block_chunks=8)

    @classmethod
    def tiny(cls, **kw) -> InfinityConfig:
        base = dict(depth=2, embed_dim=64, num_heads=4, text_channels=32, text_maxlen=16, codebook_dim=6,
                    block_chunks=1, pool_head_dim=16)
        base.update(kw)
        return cls(**base)

    def validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError(f"head_dim={self.embed_dim // self.num_heads} must be a multiple of 4 for 2D RoPE")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth={self.depth} must be divisible by block_chunks={self.block_chunks}")
        if round(self.embed_dim * self.mlp_ratio / 256) * 256 <= 0:
            raise ValueError(f"embed_dim*mlp_ratio={self.embed_dim * self.mlp_ratio} rounds to an empty FFN; "
                             "the FFN width is round(C*mlp_ratio/256)*256, so use C*mlp_ratio >= 128")
        if self.text_channels % self.pool_heads_dim():
            raise ValueError(f"text_channels={self.text_channels} must be divisible by pool_head_dim="
                             f"{self.pool_heads_dim()}")

    def pool_heads_dim(self) -> int:
        return self.pool_head_dim or (64 if self.embed_dim > 4096 else 128)


@dataclass
class TextCond:
    """Text conditioning, computed once per distinct text and carried by the sampler's state. `rows` maps each
    batch row to its text, so the rows of one prompt share one copy: a selection moves indices, not keys, and
    `forward_scale` gathers a block's keys per row only while that block runs."""

    cond_BD: torch.Tensor  # [U,D] pooled text: start token and head AdaLN input
    gss: torch.Tensor  # [U,1,6,C] shared AdaLN output
    ca_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block (k, v) [U,H,T,hd] of the cross-attention
    text_mask: torch.Tensor  # [U,T] bool
    rows: torch.Tensor | None = None  # [B] long: the text of each row; None: row i has text i

    def __len__(self) -> int:
        return len(self.cond_BD) if self.rows is None else len(self.rows)

    def per_row(self, t: torch.Tensor) -> torch.Tensor:
        """One of the per-text tensors above, gathered to the rows ([U,...] -> [B,...])."""
        return t if self.rows is None else t[self.rows]


class Infinity(nn.Module):
    def __init__(self, config: InfinityConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        C, D, Ct5 = cfg.embed_dim, cfg.embed_dim, cfg.text_channels
        self.C, self.D, self.V = C, D, 2 * cfg.d_vae
        self.cfg_uncond = nn.Parameter(nn.init.trunc_normal_(torch.empty(cfg.text_maxlen, Ct5), std=1.2) / Ct5**0.5)
        self.text_norm = FastRMSNorm(Ct5, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(Ct5, D, Ct5 // cfg.pool_heads_dim())
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        init_std = math.sqrt(1 / C / 3)
        self.pos_start = nn.Parameter(torch.randn(1, 1, C) * init_std)
        self.lvl_embed = nn.Embedding(cfg.num_lvl_embeds, C)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=init_std)
        self.word_embed = nn.Linear(cfg.d_vae, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(D, 6 * C))
        per_chunk = cfg.depth // cfg.block_chunks
        blocks = [CrossAttnBlock(C, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.depth)]
        self.block_chunks = nn.ModuleList(
            MultipleLayers(blocks[i * per_chunk:(i + 1) * per_chunk]) for i in range(cfg.block_chunks)
        )
        self.head_nm = AdaLNBeforeHead(C, D, cfg.norm_eps)
        self.head = nn.Linear(C, self.V)

    def cast_blocks(self, dtype: torch.dtype) -> Infinity:
        """Put the blocks' matmul weights in `dtype` (bfloat16 on GPU), as the released sampler does;
        norms, AdaLN, the residual stream and the head stay float32."""
        for b in self.blocks:
            for m in (b.sa.mat_qkv, b.sa.proj, b.ca.mat_q, b.ca.mat_kv, b.ca.proj, b.ffn):
                m.to(dtype)
        return self

    @property
    def blocks(self) -> list[CrossAttnBlock]:
        return [b for chunk in self.block_chunks for b in chunk.module]

    # -- conditioning ---------------------------------------------------------------------------------

    def uncond_text(self, lens: torch.Tensor, T: int) -> torch.Tensor:
        """The learned unconditional text: row i gets cfg_uncond[:lens[i]] (same length as its prompt)."""
        if T > self.cfg_uncond.shape[0]:
            raise ValueError(f"text length {T} exceeds text_maxlen={self.cfg_uncond.shape[0]}")
        return self.cfg_uncond[:T].unsqueeze(0).expand(len(lens), -1, -1)  # [B,T,Ct5]; padding masked out

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> TextCond:
        """text [B,T,Ct5] raw encoder features, text_mask [B,T] bool -> conditioning for all blocks."""
        text = self.text_norm(text.float())
        cond_BD = self.text_proj_for_sos(text, text_mask).float()  # [B,D]
        ca_text = self.text_proj_for_ca(text)  # [B,T,D]
        gss = self.shared_ada_lin(cond_BD).float()  # [B,1,6,C]
        ca_kv = [b.ca.kv(ca_text) for b in self.blocks]
        return TextCond(cond_BD, gss, ca_kv, text_mask)

    # -- sampling path --------------------------------------------------------------------------------

    def embed_scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """Next-scale input codes [B,l,d_vae] -> token embeddings [B,l,C]."""
        return self.word_embed(x.to(self.word_embed.weight.dtype)).float()

    def sos(self, cond: TextCond) -> torch.Tensor:
        return (cond.per_row(cond.cond_BD).unsqueeze(1) + self.pos_start).float()  # [B,1,C]

    def forward_scale(self, x: torch.Tensor, si: int, schedule, cond: TextCond, caches: SharedKV | None,
                      keep: bool = True):
        """Run the tokens of scale `si` ([B,l,C] embeddings) through all blocks, attending to `caches` (the
        earlier scales' keys and values, None at scale 0). Returns (logits [B,l,V] float32, the caches extended
        by this scale, or unchanged with `keep=False`: the last scale's are never read).
        """
        start = sum(h * w for h, w in schedule[:si])
        h, w = schedule[si]
        # positions are normalised to the whole schedule's reference grid, so take them from the full table
        cos, sin = rope_cos_sin(self.C // self.config.num_heads, schedule, self.config.rope_base, x.device)
        cos, sin = cos[start:start + h * w], sin[start:start + h * w]
        x = x + self.lvl_embed.weight[si].float()
        new = []
        gss, mask = cond.per_row(cond.gss), cond.per_row(cond.text_mask)
        for i, b in enumerate(self.blocks):
            past = None if caches is None else partial(caches.with_past, i)
            k, v = cond.ca_kv[i]
            x, kv = b(x, gss, cond.per_row(k), cond.per_row(v), mask, cos, sin, past)
            if keep:
                new.append(kv)
        if keep:
            caches = (caches if caches is not None else SharedKV.empty(x.shape[0])).extend(new)
        return self.logits(x, cond.per_row(cond.cond_BD)), caches

    def logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        h = self.head_nm(x.float(), cond_BD)
        return F.linear(h, self.head.weight.float(), self.head.bias.float())  # [B,l,V]

    # -- teacher-forced path --------------------------------------------------------------------------

    def forward(self, text, text_mask, x_wo_prefix: torch.Tensor, schedule) -> torch.Tensor:
        """Teacher-forced logits over all scales.

        text [B,T,Ct5], text_mask [B,T]; x_wo_prefix [B, L-1, d_vae]: the next-scale inputs of scales
        1..S-1 concatenated; returns logits [B, L, V] where L = sum(h*w). Scale k attends to scales <= k.
        """
        cond = self.encode_text(text, text_mask)
        x = torch.cat((self.sos(cond), self.embed_scale_input(x_wo_prefix)), dim=1)  # [B,L,C]
        lens = [h * w for h, w in schedule]
        L = sum(lens)
        if x.shape[1] != L:
            raise ValueError(f"x_wo_prefix has {x.shape[1] - 1} tokens; schedule {schedule} needs {L - 1}")
        scale_id = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(x.device)  # [L]
        x = x + self.lvl_embed(scale_id).float()
        mask = scale_id[:, None] >= scale_id[None, :]  # [L,L] block-causal: a token sees its scale and coarser
        cos, sin = rope_cos_sin(self.C // self.config.num_heads, schedule, self.config.rope_base, x.device)
        for i, b in enumerate(self.blocks):
            x, _ = b(x, cond.gss, *cond.ca_kv[i], cond.text_mask, cos, sin, None, mask)
        return self.logits(x, cond.cond_BD)


# ----------------------------------------------------------------------------- checkpoints

# Constant buffers that older checkpoints may omit; they are zeros by construction.
_OPTIONAL_BUFFERS = ("zero_k_bias",)


def official_state_dict_to_ours(sd: dict[str, torch.Tensor], model: Infinity) -> dict[str, torch.Tensor]:
    """The one place where checkpoint keys are adapted. `model` may live on the meta device (the builders load
    with `assign=True`): only its shapes and dtypes are read here, never its data.

    * A full training checkpoint nests the weights (`trainer.gpt_fsdp`); a slim one is the dict itself.
    * `cfg_uncond` is trimmed to this model's text_maxlen, or padded with rows drawn as the official model
      initialises them (trunc-normal, std 1.2 / sqrt(Ct5)), from a fixed seed so a load is reproducible.
    * `zero_k_bias` buffers are constant zeros and filled in when absent.
    """
    if "trainer" in sd and isinstance(sd["trainer"], dict):
        sd = sd["trainer"].get("gpt_fsdp", sd["trainer"])
    sd = dict(sd)
    if isinstance(sd.get("vae"), dict) and "cfg_uncond" not in sd:
        raise CheckpointError("this is a BSQ-VAE checkpoint (its weights are under 'vae'): pass it as "
                              "model.options.vae_weights, and the Infinity transformer (infinity_2b_reg.pth, ...) "
                              "as model.weights")
    ours = model.state_dict()
    old, new = sd.get("cfg_uncond"), ours["cfg_uncond"]
    if isinstance(old, torch.Tensor) and old.ndim == 2 and old.shape[1] == new.shape[1] and old.shape != new.shape:
        n, (rows, ct5) = min(old.shape[0], new.shape[0]), new.shape
        g = torch.Generator().manual_seed(0)
        pad = nn.init.trunc_normal_(torch.empty(rows - n, ct5), std=1.2, generator=g) / ct5**0.5
        sd["cfg_uncond"] = torch.cat((old[:n].float(), pad)).to(old.dtype)
    for k, v in ours.items():
        if k not in sd and k.rsplit(".", 1)[-1] in _OPTIONAL_BUFFERS:
            sd[k] = torch.zeros(v.shape, dtype=v.dtype)
    return sd

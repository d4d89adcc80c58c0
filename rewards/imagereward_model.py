"""ImageReward v1.0 network: BLIP ViT image encoder, BERT text encoder with cross-attention, MLP head.

Our own implementation of the architecture of THUDM/ImageReward (which adapts salesforce/BLIP).
Parameter names equal the keys of the official ``ImageReward.pt``, e.g.
``blip.visual_encoder.blocks.0.attn.qkv.weight``,
``blip.text_encoder.encoder.layer.0.crossattention.self.query.weight``, ``mlp.layers.0.weight``, so
loading it is a plain key copy; the one exception is handled in :func:`official_to_native`.

Inference only (no dropout, no gradient checkpointing). The reward wrapper lives in ``imagereward.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# output normalisation of ImageReward v1.0 (ImageReward/ImageReward.py: self.mean / self.std)
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072


# ----------------------------------------------------------------------------- BLIP ViT (timm-style)


@dataclass
class BlipViTConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 1024  # BLIP 'large'; 'base' is 768 wide, 12 deep, 12 heads
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    eps: float = 1e-6  # timm ViT LayerNorm eps used by BLIP


VIT_PRESETS = {
    "large": BlipViTConfig(),
    "base": BlipViTConfig(width=768, depth=12, heads=12),
}


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3,B,nh,N,hd
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # B,nh,N,hd
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = ViTAttention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = ViTMlp(cfg.width, int(cfg.width * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B,C,h,w -> B,h*w,C


class BlipVisionTransformer(nn.Module):
    def __init__(self, cfg: BlipViTConfig):
        super().__init__()
        self.cfg = cfg
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.width))
        self.blocks = nn.ModuleList([ViTBlock(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """[B,3,S,S] normalised pixels -> [B, 1 + (S/patch)^2, width] image tokens ([CLS] first)."""
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # B,1+N,C
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------- BERT with cross-attention


@dataclass
class MedBertConfig:
    """The fields of BLIP's ``med_config.json`` that define the architecture."""

    vocab_size: int = 30524  # bert-base-uncased 30522 + BLIP's [DEC] and [ENC]
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    encoder_width: int = 768  # BLIP overwrites this with the ViT width when building the model

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> MedBertConfig:
        """Read ``med_config.json``; refuse settings this implementation does not cover."""
        with open(path) as f:
            raw = json.load(f)
        unsupported = {
            "hidden_act": ("gelu",),
            "position_embedding_type": ("absolute",),
            "add_cross_attention": (True,),
        }
        for key, allowed in unsupported.items():
            if key in raw and raw[key] not in allowed:
                raise ValueError(f"{path}: {key}={raw[key]!r} is not supported (expected {allowed[0]!r})")
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(
                f"{path}: hidden_size {cfg.hidden_size} not divisible by {cfg.num_attention_heads} heads"
            )
        return cfg


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: MedBertConfig, kv_width: int):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        S = context.shape[1]
        q = self.query(x).view(B, T, self.heads, -1).transpose(1, 2)  # B,nh,T,hd
        k = self.key(context).view(B, S, self.heads, -1).transpose(1, 2)  # B,nh,S,hd
        v = self.value(context).view(B, S, self.heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # B,nh,T,hd
        return y.transpose(1, 2).reshape(B, T, C)


class BertSelfOutput(nn.Module):
    """Projection + residual + post-LayerNorm; also BERT's FFN output (``BertOutput``) has this shape."""

    def __init__(self, cfg: MedBertConfig, in_width: int):
        super().__init__()
        self.dense = nn.Linear(in_width, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: MedBertConfig, kv_width: int):
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_width)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: MedBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Self-attention over the text, cross-attention to the image tokens, feed-forward (BLIP 'multimodal')."""

    def __init__(self, cfg: MedBertConfig):
        super().__init__()
        self.attention = BertAttention(cfg, cfg.hidden_size)
        self.crossattention = BertAttention(cfg, cfg.encoder_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x: Tensor, text_mask: Tensor, image_tokens: Tensor) -> Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_tokens, None)  # every image token is attended (mask of ones)
        return self.output(self.intermediate(x), x)


class BertEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm. BLIP's BERT has no token-type embeddings."""

    def __init__(self, cfg: MedBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class BertEncoder(nn.Module):
    def __init__(self, cfg: MedBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class BertModel(nn.Module):
    def __init__(self, cfg: MedBertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """[B,T] ids, [B,T] 0/1 mask, [B,S,encoder_width] image tokens -> [B,T,hidden] text states."""
        T = input_ids.shape[1]
        if T > self.cfg.max_position_embeddings:
            raise ValueError(f"{T} tokens exceed max_position_embeddings={self.cfg.max_position_embeddings}")
        # padding keys are excluded; the official additive -10000 mask has the same effect in fp32/fp16
        mask = attention_mask.bool()[:, None, None, :]  # B,1,1,T
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask, image_tokens)
        return x


# ----------------------------------------------------------------------------- ImageReward


class BLIP(nn.Module):
    """The BLIP_Pretrain parts the checkpoint holds. ``vision_proj``/``text_proj`` (BLIP's contrastive
    heads) are not used for scoring; they are kept so that the official file loads as a plain copy."""

    def __init__(self, vit: BlipViTConfig, bert: MedBertConfig, embed_dim: int = 256):
        super().__init__()
        self.visual_encoder = BlipVisionTransformer(vit)
        self.text_encoder = BertModel(bert)
        self.vision_proj = nn.Linear(vit.width, embed_dim)
        self.text_proj = nn.Linear(bert.hidden_size, embed_dim)


class RewardMLP(nn.Module):
    """ImageReward's head: 5 linear layers, no activations; the dropouts sit at Sequential indices 1, 3,
    5, hence the checkpoint keys ``layers.{0,2,4,6,7}``."""

    def __init__(self, in_features: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    def __init__(self, vit: BlipViTConfig, bert: MedBertConfig):
        super().__init__()
        bert = replace(bert, encoder_width=vit.width)  # as BLIP_Pretrain does
        self.vit_cfg, self.bert_cfg = vit, bert
        self.blip = BLIP(vit, bert)
        self.mlp = RewardMLP(bert.hidden_size)

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Normalised pixels [B,3,S,S] + tokenised prompts [B,T] -> rewards [B] (float32)."""
        image_tokens = self.blip.visual_encoder(pixels)  # B,1+N,Cv
        text = self.blip.text_encoder(input_ids, attention_mask, image_tokens)  # B,T,Ct
        cls = text[:, 0].to(self.mlp.layers[0].weight.dtype)  # the wrapper keeps the head in float32
        reward = self.mlp(cls)[:, 0].float()  # B
        return (reward - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


POSITION_IDS_KEY = "blip.text_encoder.embeddings.position_ids"


def official_to_native(state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The one remapping between ``ImageReward.pt`` and :class:`ImageRewardModel`.

    BLIP's BertEmbeddings registers ``position_ids`` (``arange(max_positions)[None]``) as a persistent
    buffer, so files saved from it may carry that key; we compute positions on the fly and drop it after
    checking it holds the expected values. Every other key must match exactly.
    """
    sd = dict(state_dict)
    pos = sd.pop(POSITION_IDS_KEY, None)
    if pos is not None:
        want = torch.arange(pos.shape[-1])[None]
        if pos.shape != want.shape or not torch.equal(pos.long().cpu(), want):
            raise ValueError(
                f"{source}: {POSITION_IDS_KEY} is not arange(n)[None]; the file is not a BLIP checkpoint"
            )
    return sd


def native_to_official(model: ImageRewardModel) -> dict[str, Tensor]:
    """State dict in the official key layout (inverse of :func:`official_to_native`), e.g. for tests."""
    sd = dict(model.state_dict())
    sd[POSITION_IDS_KEY] = torch.arange(model.bert_cfg.max_position_embeddings)[None]
    return sd

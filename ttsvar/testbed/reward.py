"""`shapes-reward`: the testbed's ImageReward, a small text-image model trained on *generated* samples.

ImageReward is BLIP: a ViT whose patch tokens a BERT text encoder reads through cross-attention, with a
small head on the text side's first token. This is the same design at the size of the shapes world:

* image tower: a conv stem to an 8x8 grid of patch tokens (patch 4) with learned 2-D positions, then
  `image_layers` pre-norm transformer blocks;
* text tower: word embeddings of the closed shapes-world vocabulary plus a [CLS] token, `text_layers`
  self-attention blocks;
* fusion: `fusion_layers` blocks of text self-attention, text -> image cross-attention and an MLP;
* head: LayerNorm + Linear on the [CLS] token: the log-odds that the exact evaluator judges the image
  correct for the prompt.

Trained by `python -m ttsvar.testbed.train_reward` (data: samples of `shapes-tiny` for training prompts,
labelled by the exact evaluator; see docs/testbed.md). The vocabulary and the reward's declared scale live
in the JSON beside the weights, so loading needs nothing but the two files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checkpoint import load_strict, read_state_dict

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "shapes_reward.safetensors"


@dataclass
class ShapesRewardConfig:
    vocab: tuple[str, ...] = ()  # word list; index 0 is the padding word
    context_length: int = 14  # words per prompt, before the [CLS] token
    image_size: int = 32
    patch: int = 4
    stem_width: int = 48  # conv stem channels before the patch projection
    width: int = 128
    heads: int = 4
    image_layers: int = 2
    text_layers: int = 1
    fusion_layers: int = 2
    slots: int = 0  # object slots (18: one per (shape, colour)) the fusion reads beside the patches; 0: none
    mlp_ratio: float = 3.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # pixel statistics of the world, [0, 1] units
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        self.vocab = tuple(self.vocab)
        self.mean, self.std = tuple(self.mean), tuple(self.std)


class Attention(nn.Module):
    """Multi-head attention; `kv` None means self-attention. `mask` [B, Tk] is True where keys are valid."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None,
                kv_index: Tensor | None = None) -> Tensor:
        """`kv_index` [B] picks each query row's context among kv's rows: contexts shared by several rows
        (one image scored against several prompts) are projected once."""
        B, T, C = x.shape
        kv = x if kv is None else kv
        Tk, H = kv.shape[1], self.heads
        q = self.q(x).view(B, T, H, C // H).transpose(1, 2)  # [B, H, T, C/H]
        kvp = self.kv(kv)  # [B or B_ctx, Tk, 2C]
        if kv_index is not None:
            kvp = kvp[kv_index]  # [B, Tk, 2C]
        k, v = kvp.view(B, Tk, 2, H, C // H).permute(2, 0, 3, 1, 4)  # 2 x [B, H, Tk, C/H]
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, Tk]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float):
        super().__init__()
        self.fc = nn.Linear(width, int(width * ratio))
        self.proj = nn.Linear(int(width * ratio), width)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention to `ctx`, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, cross: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_x = nn.LayerNorm(width) if cross else None
        self.cross = Attention(width, heads) if cross else None
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: Tensor, mask: Tensor | None = None, ctx: Tensor | None = None,
                ctx_index: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask=mask)
        if self.cross is not None:
            x = x + self.cross(self.ln_x(x), kv=ctx, kv_index=ctx_index)
        return x + self.mlp(self.ln_2(x))


class ShapesRewardModel(nn.Module):
    def __init__(self, cfg: ShapesRewardConfig):
        super().__init__()
        self.cfg = cfg
        W, g = cfg.width, cfg.image_size // cfg.patch
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Conv2d(3, cfg.stem_width, 3, padding=1)
        self.patch_embed = nn.Conv2d(cfg.stem_width, W, cfg.patch, stride=cfg.patch)
        self.image_pos = nn.Parameter(torch.randn(1, g * g, W) * 0.02)
        self.image_blocks = nn.ModuleList(Block(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.image_layers))
        self.ln_image = nn.LayerNorm(W)
        # object slots: learned queries that each gather one (shape, colour)'s evidence from the patches; a
        # prompt's words then attend to the slot they name instead of re-deriving binding from raw patches
        if cfg.slots:
            self.slot_queries = nn.Parameter(torch.randn(1, cfg.slots, W) * 0.02)
            self.slot_attn = Attention(W, cfg.heads)
            self.ln_slots = nn.LayerNorm(W)
            self.slot_mlp = MLP(W, cfg.mlp_ratio)
        self.word_embed = nn.Embedding(len(cfg.vocab), W)
        self.cls = nn.Parameter(torch.randn(1, 1, W) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.context_length + 1, W) * 0.02)
        self.text_blocks = nn.ModuleList(Block(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.text_layers))
        self.fusion_blocks = nn.ModuleList(Block(W, cfg.heads, cfg.mlp_ratio, cross=True)
                                           for _ in range(cfg.fusion_layers))
        self.ln_f = nn.LayerNorm(W)
        self.head = nn.Linear(W, 1)

    def encode_images(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S] in [0, 1] at the model's size -> tokens [B, (S/p)^2 + slots, W]: the patch
        tokens, then the object slots (if any)."""
        x = (images - self.mean) / self.std
        x = self.patch_embed(F.gelu(self.stem(x)))  # [B, W, S/p, S/p]
        x = x.flatten(2).transpose(1, 2) + self.image_pos  # [B, (S/p)^2, W]
        for blk in self.image_blocks:
            x = blk(x)
        x = self.ln_image(x)
        if not self.cfg.slots:
            return x
        q = self.slot_queries.expand(x.shape[0], -1, -1)
        slots = q + self.slot_attn(q, kv=x)  # [B, slots, W]
        slots = self.ln_slots(slots + self.slot_mlp(slots))
        return torch.cat([x, slots], dim=1)

    def score_tokens(self, image_tokens: Tensor, ids: Tensor, image_index: Tensor | None = None) -> Tensor:
        """image_tokens [B_img, N, W] (from encode_images), ids [B, L] word ids (0 = pad) -> log-odds [B].
        `image_index` [B]: the image of each prompt row (default: row i reads image i)."""
        B = ids.shape[0]
        x = torch.cat([self.cls.expand(B, -1, -1), self.word_embed(ids)], dim=1)  # [B, 1+L, W]
        x = x + self.text_pos[:, : x.shape[1]]
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=ids.device), ids != 0], dim=1)  # [B, 1+L]
        for blk in self.text_blocks:
            x = blk(x, mask=mask)
        for blk in self.fusion_blocks:
            x = blk(x, mask=mask, ctx=image_tokens, ctx_index=image_index)
        return self.head(self.ln_f(x[:, 0]))[:, 0]

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        return self.score_tokens(self.encode_images(images), ids)

    def tokenize(self, prompts: list[str]) -> Tensor:
        """Word ids [B, context_length] (0 = pad). Unknown words and long prompts raise ValueError naming them."""
        table = {w: i for i, w in enumerate(self.cfg.vocab)}
        out = torch.zeros(len(prompts), self.cfg.context_length, dtype=torch.long)
        for b, p in enumerate(prompts):
            words = p.lower().split()
            unknown = sorted({w for w in words if w not in table or table[w] == 0})
            if unknown:
                raise ValueError(f"shapes-reward: prompt {p!r} has words outside its vocabulary: {unknown}; "
                                 f"it knows {list(self.cfg.vocab[1:])}")
            if len(words) > self.cfg.context_length:
                raise ValueError(f"shapes-reward: prompt {p!r} has {len(words)} words, more than its "
                                 f"context_length={self.cfg.context_length}")
            out[b, : len(words)] = torch.tensor([table[w] for w in words], dtype=torch.long)
        return out

    def prepare(self, images: Tensor) -> Tensor:
        """Resize [B, 3, H, W] images in [0, 1] to the model's size (area: previews are upsampled blocks)."""
        s = self.cfg.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images.float(), size=(s, s), mode="area" if images.shape[-1] > s else "nearest")
        return images.float()


def save_shapes_reward(model: ShapesRewardModel, path: str | Path, meta: dict) -> None:
    """Weights as float16 safetensors (`path`) and the config + training record as JSON beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"config": asdict(model.cfg), **meta}, indent=1) + "\n")


def load_shapes_reward(path: str | Path | None = None,
                       device: str | torch.device = "cpu") -> tuple[ShapesRewardModel, dict]:
    """The model (eval mode, float32, no grad) and its JSON record; strict: every key must match."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"shapes-reward weights not found: {path} and {meta_path}; they ship with ttsvar, "
                                "or rebuild them with `python -m ttsvar.testbed.train_reward`")
    meta = json.loads(meta_path.read_text())
    model = ShapesRewardModel(ShapesRewardConfig(**meta["config"]))
    sd = {k: v.float() for k, v in read_state_dict(path).items()}
    load_strict(model, sd, str(path))
    return model.to(device).eval().requires_grad_(False), meta


def declared_scale(meta: dict) -> float:
    """The reward's scale: std of its scores over generated samples, measured at training (see docs)."""
    s = float(meta.get("score_scale", 1.0))
    return s if math.isfinite(s) and s > 0 else 1.0


__all__ = ["DEFAULT_WEIGHTS", "ShapesRewardConfig", "ShapesRewardModel", "declared_scale", "load_shapes_reward",
           "save_shapes_reward"]

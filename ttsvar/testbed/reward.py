"""`shapes-reward`: the testbed's ImageReward, a small detector-grounded text-image model trained on
*generated* samples.

ImageReward reads an image through a pretrained backbone and a prompt through a text encoder that
cross-attends to it. At the size of the shapes world a ViT trained end to end from 12k samples did not
learn to bind colour, shape, count and position (within-prompt AUROC 0.70, docs/testbed.md), so this model
grounds the image side first, the way GenEval itself reads images through a detector:

* `Detector`: a small conv net, 32x32 image -> dense maps on a 16x16 grid: the colour class of each cell
  (background or one of the palette), the shape class (none or one of the shapes) and an object density
  whose sum over an object's cells is one (crowd-counting style), trained on the exact evaluator's
  segmentation of generated images;
* `slot_features`: a fixed read-out of those maps into one slot per (shape, colour) and per shape of any
  colour: soft count, density-weighted centre and spread, and covered area;
* slots: each slot token is its (shape, colour) identity embedding plus an MLP of its features; the
  identity is the sum of a shape and a colour embedding, so an unseen (colour, shape) pair is still named;
* optionally (`pair_tokens`, off in the shipped weights) one more token per ordered pair of shapes that holds
  the offset between their centres (docs/testbed.md: it did not help position, the tag it was built for);
* text tower: word embeddings of the closed vocabulary plus a [CLS] token, `text_layers` blocks;
* fusion: `fusion_layers` blocks of text self-attention, text -> slot cross-attention and an MLP;
* head: LayerNorm + Linear on [CLS]: the log-odds that the exact evaluator judges the image correct;
* symmetric views (`ShapesRewardModel.score`, `views_of`): the head averaged over colour relabellings and
  mirrors of the slots and the prompt alike that land on a prompt stage 2 trained on; the verdict is the same
  under each, and the fusion is more reliable on combinations it has seen.

Everything is learned: the detector from the evaluator's view of generated images, and how counts, colours
and positions decide a prompt from the verdicts (`python -m ttsvar.testbed.train_reward`). The vocabulary and
the declared scale live in the JSON beside the weights, so loading needs nothing but the two files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checkpoint import load_strict, read_state_dict
from ..models.text import words as prompt_words

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "shapes_reward.safetensors"
N_COLORS, N_SHAPES = 6, 3  # the shapes world's palette and shapes (world.PALETTE, world.SHAPES), in order
N_SLOTS = N_SHAPES * (N_COLORS + 1)  # one per (shape, colour) and one per shape of any colour
SLOT_FEATURES = 6  # count, centre x, centre y, spread x, spread y, area
PAIRS = [(i, j) for i in range(N_SHAPES) for j in range(N_SHAPES) if i != j]  # ordered pairs of shapes
PAIR_FEATURES = 6  # centre offset x, y (second minus first), the two counts, the two spreads' mean x, y
GRID = 16  # side of the detector's output grid
DENSITY_SCALE = 16.0  # the density head predicts density * this (keeps its targets near 1)


@dataclass
class ShapesRewardConfig:
    vocab: tuple[str, ...] = ()  # word list; index 0 is the padding word
    context_length: int = 14  # words per prompt, before the [CLS] token
    image_size: int = 32
    det_width: int = 32  # detector channels at full resolution (doubled at 16x16 and 8x8)
    width: int = 96
    heads: int = 4
    text_layers: int = 1
    fusion_layers: int = 2
    mlp_ratio: float = 3.0
    # add one token per ordered pair of distinct shapes (any colour) that holds their centres' offset: a
    # relation ("a circle below a triangle") then needs one look-up, not two looks and a difference
    pair_tokens: bool = False
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # pixel statistics of the world, [0, 1] units
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # symmetric views (`ShapesRewardModel.views_of`): a score averages the fusion over up to `views` symmetries
    # of the world that map the prompt onto one of `trained_prompts`, the prompts stage 2 trained on; 1 scores
    # the pair as given. The fusion is reliable on the combinations it was trained on, and a symmetry moves an
    # unseen combination onto them with the verdict unchanged (docs/testbed.md, "Symmetric views")
    views: int = 1
    trained_prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.vocab = tuple(self.vocab)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.trained_prompts = tuple(self.trained_prompts)
        if not isinstance(self.views, int) or isinstance(self.views, bool) or self.views < 1:
            raise ValueError(f"shapes-reward: views={self.views!r}: the number of symmetric views is an integer >= 1")


class Detector(nn.Module):
    """images [B, 3, 32, 32] (normalised) -> logits [B, 1 + N_COLORS + 1 + N_SHAPES + 1, 16, 16]: colour classes
    (0 = background), shape classes (0 = no shape), then the density (softplus / DENSITY_SCALE = objects per
    cell). A 16x16 trunk with an 8x8 dilated context branch: a shape's class needs its whole outline (up to 15
    pixels), its colour only its own pixels."""

    def __init__(self, width: int):
        super().__init__()
        w = width
        self.c1 = nn.Conv2d(3, w, 3, padding=1)
        self.c2 = nn.Conv2d(w, w, 3, padding=1, stride=2)  # 32 -> 16
        self.c3 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.c4 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2)  # 16 -> 8
        self.c5 = nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2)
        self.c6 = nn.Conv2d(4 * w, 2 * w, 3, padding=1)  # 16x16 trunk + upsampled context
        self.head = nn.Conv2d(2 * w, N_COLORS + N_SHAPES + 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        b = F.gelu(self.c3(F.gelu(self.c2(F.gelu(self.c1(x))))))  # [B, 2w, 16, 16]
        c = F.gelu(self.c5(F.gelu(self.c4(b))))  # [B, 2w, 8, 8]
        u = F.interpolate(c, scale_factor=2, mode="nearest")  # [B, 2w, 16, 16]
        return self.head(F.gelu(self.c6(torch.cat([b, u], 1))))


def slot_features(dense: Tensor) -> Tensor:
    """Detector logits [B, C, 16, 16] -> slot features [B, N_SLOTS, SLOT_FEATURES], slots ordered shape-major
    (shape s, colour c) at s * (N_COLORS + 1) + c, colour N_COLORS = any colour.

    Each cell's object mass for a slot is density x P(shape) x P(colour); a slot's count is its mass summed,
    its centre and spread the mass-weighted mean and std of cell centres (in [0, 1]), its area the summed
    P(shape) x P(colour) as a share of the image (x4: objects cover a few percent)."""
    B = dense.shape[0]
    pcol = dense[:, : N_COLORS + 1].softmax(1)[:, 1:]  # [B, 6, G, G]
    pshp = dense[:, N_COLORS + 1 : N_COLORS + N_SHAPES + 2].softmax(1)[:, 1:]  # [B, 3, G, G]
    dens = F.softplus(dense[:, -1]) / DENSITY_SCALE  # [B, G, G]
    pcol = torch.cat([pcol, pcol.new_ones(B, 1, GRID, GRID)], 1)  # [B, 7, G, G]: colour N_COLORS = any
    cover = pshp[:, :, None] * pcol[:, None]  # [B, 3, 7, G, G]
    mass = cover * dens[:, None, None]
    t = (torch.arange(GRID, dtype=dense.dtype, device=dense.device) + 0.5) / GRID
    count = mass.sum((-1, -2))  # [B, 3, 7]
    norm = count.clamp(min=1e-3)
    mx = (mass * t).sum((-1, -2)) / norm
    my = (mass * t[:, None]).sum((-1, -2)) / norm
    sx = ((mass * (t - mx[..., None, None]) ** 2).sum((-1, -2)) / norm).clamp(min=0).sqrt()
    sy = ((mass * (t[:, None] - my[..., None, None]) ** 2).sum((-1, -2)) / norm).clamp(min=0).sqrt()
    area = cover.sum((-1, -2)) * (4 / GRID**2)
    return torch.stack([count, mx, my, sx, sy, area], -1).flatten(1, 2)  # [B, 21, 6]


def pair_features(feats: Tensor) -> Tensor:
    """slot features [B, N_SLOTS, SLOT_FEATURES] -> pair features [B, len(PAIRS), PAIR_FEATURES] of the
    any-colour slot of each shape: where the second shape's centre is from the first's, both counts, and the
    mean spread (the offset's yardstick)."""
    anyc = feats[:, N_COLORS :: N_COLORS + 1]  # [B, N_SHAPES, F]: slot s * (N_COLORS + 1) + N_COLORS
    i, j = (torch.tensor(x, device=feats.device) for x in zip(*PAIRS))
    a, b = anyc[:, i], anyc[:, j]  # [B, len(PAIRS), F]
    return torch.cat([b[..., 1:3] - a[..., 1:3], a[..., :1], b[..., :1], (a[..., 3:5] + b[..., 3:5]) / 2], -1)


VIEW_TABLE, VIEW_SEED = 512, 7  # the symmetries `views_of` scans, in a fixed order (index 0: the identity)


def symmetry_table(n: int, seed: int) -> dict:
    """`n` symmetries of the shapes world: index 0 is the identity, the rest are drawn with `seed`. Relabelling
    colours (a permutation of the palette) or shapes in the image and the prompt alike, or mirroring the image
    and swapping "left"/"right" ("above"/"below") in the prompt, leaves the exact evaluator's verdict unchanged.

    Returns ``slots`` int64 [n, N_SLOTS] (new slot j reads old slot ``slots[t, j]``), ``flip`` bool [n, 2]
    (mirror x, mirror y), ``keeps_shapes`` bool [n] (the symmetry relabels no shape) and ``words``: n dicts
    mapping each prompt word to its image under the symmetry (`map_prompt`)."""
    from . import world

    colors, shapes = list(world.PALETTE), list(world.SHAPES)
    nc = len(colors) + 1
    rng = np.random.default_rng(seed)
    slots = np.zeros((n, len(shapes) * nc), np.int64)
    flip = np.zeros((n, 2), bool)
    keeps = np.zeros(n, bool)
    words_of = []
    for t in range(n):
        pc = np.arange(len(colors)) if t == 0 else rng.permutation(len(colors))
        ps = np.arange(len(shapes)) if t == 0 else rng.permutation(len(shapes))
        fx, fy = (False, False) if t == 0 else (bool(rng.integers(2)), bool(rng.integers(2)))
        for s_old in range(len(shapes)):
            for c_old in range(nc):
                c_new = pc[c_old] if c_old < len(colors) else c_old
                slots[t, ps[s_old] * nc + c_new] = s_old * nc + c_old
        words = {colors[i]: colors[pc[i]] for i in range(len(colors))}
        words.update({shapes[i]: shapes[ps[i]] for i in range(len(shapes))})
        words.update({world.PLURALS[shapes[i]]: world.PLURALS[shapes[ps[i]]] for i in range(len(shapes))})
        if fx:
            words.update(left="right", right="left")
        if fy:
            words.update(above="below", below="above")
        flip[t] = fx, fy
        keeps[t] = (ps == np.arange(len(shapes))).all()
        words_of.append(words)
    return {"slots": torch.from_numpy(slots), "flip": torch.from_numpy(flip), "keeps_shapes": torch.from_numpy(keeps),
            "words": words_of}


def map_prompt(prompt: str, words: dict[str, str]) -> str:
    """A prompt under a symmetry of `symmetry_table` (its ``words``)."""
    return " ".join(words.get(w, w) for w in prompt.split())


def apply_symmetry(feats: Tensor, sym: dict, t: Tensor) -> Tensor:
    """Slot features [B, N_SLOTS, F] seen under symmetry `t` [B] of `symmetry_table`. Mirroring maps a slot's
    centre c to 1 - c (its mass-weighted mean of 1 - cell centre: count / max(count, 1e-3) - c, exact for
    the near-empty slots too); counts, spreads and areas do not change."""
    slots, flip = sym["slots"].to(feats.device), sym["flip"].to(feats.device)
    t = t.to(feats.device)
    out = feats[torch.arange(len(t), device=feats.device)[:, None], slots[t]].clone()  # [B, N_SLOTS, F]
    full = out[..., 0] / out[..., 0].clamp(min=1e-3)
    for axis in (0, 1):
        m = flip[t, axis][:, None]  # [B, 1]
        out[..., 1 + axis] = torch.where(m, full - out[..., 1 + axis], out[..., 1 + axis])
    return out


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
        kvp = self.kv(kv)  # [B or B_ctx, Tk, 2C]
        Bk = kvp.shape[0]
        if kv_index is not None and mask is None and B % Bk == 0 and torch.equal(
                kv_index, torch.arange(Bk, device=kv_index.device).repeat_interleave(B // Bk)):
            # consecutive query rows share a context (one image, several prompts): fold them into one query
            # sequence per context instead of copying the context's keys and values to every row
            q = self.q(x).reshape(Bk, (B // Bk) * T, H, C // H).transpose(1, 2)  # [Bk, H, (B/Bk)*T, C/H]
            k, v = kvp.view(Bk, Tk, 2, H, C // H).permute(2, 0, 3, 1, 4)  # 2 x [Bk, H, Tk, C/H]
            y = F.scaled_dot_product_attention(q, k, v)  # [Bk, H, (B/Bk)*T, C/H]
            return self.proj(y.transpose(1, 2).reshape(B, T, C))
        q = self.q(x).view(B, T, H, C // H).transpose(1, 2)  # [B, H, T, C/H]
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
                ctx_index: Tensor | None = None, first_only: bool = False) -> Tensor:
        """x [B, T, W] -> [B, T, W], or [B, 1, W] with `first_only`: only the first token's output, which is
        all the last block feeds the head; every token still serves as a key (the same numbers, T times less
        query-side work)."""
        if first_only:
            h = self.ln_1(x)
            x = x[:, :1] + self.attn(h[:, :1], kv=h, mask=mask)
        else:
            x = x + self.attn(self.ln_1(x), mask=mask)
        if self.cross is not None:
            x = x + self.cross(self.ln_x(x), kv=ctx, kv_index=ctx_index)
        return x + self.mlp(self.ln_2(x))


class ShapesRewardModel(nn.Module):
    def __init__(self, cfg: ShapesRewardConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self.detector = Detector(cfg.det_width)
        self.shape_embed = nn.Parameter(torch.randn(N_SHAPES, 1, W) * 0.02)
        self.color_embed = nn.Parameter(torch.randn(1, N_COLORS + 1, W) * 0.02)
        self.slot_fc = nn.Linear(SLOT_FEATURES + 6, W)
        self.slot_proj = nn.Linear(W, W)
        self.ln_slots = nn.LayerNorm(W)
        if cfg.pair_tokens:
            self.pair_first = nn.Parameter(torch.randn(N_SHAPES, W) * 0.02)
            self.pair_second = nn.Parameter(torch.randn(N_SHAPES, W) * 0.02)
            self.pair_fc = nn.Linear(PAIR_FEATURES, W)
            self.pair_proj = nn.Linear(W, W)
        self.word_embed = nn.Embedding(len(cfg.vocab), W)
        self.cls = nn.Parameter(torch.randn(1, 1, W) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.context_length + 1, W) * 0.02)
        self.text_blocks = nn.ModuleList(Block(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.text_layers))
        self.fusion_blocks = nn.ModuleList(Block(W, cfg.heads, cfg.mlp_ratio, cross=True)
                                           for _ in range(cfg.fusion_layers))
        self.ln_f = nn.LayerNorm(W)
        self.head = nn.Linear(W, 1)

    def detect(self, images: Tensor) -> Tensor:
        """images [B, 3, 32, 32] in [0, 1] -> detector logits [B, C, 16, 16] (see `Detector`)."""
        return self.detector((images - self.mean) / self.std)

    def encode_slots(self, feats: Tensor) -> Tensor:
        """slot features [B, N_SLOTS, SLOT_FEATURES] -> slot tokens [B, N_SLOTS, W]. The count also enters
        as soft indicators of 0..5 objects, so "exactly three" is one unit away from the features."""
        count = feats[..., :1]
        near = torch.exp(-((count - torch.arange(6, dtype=feats.dtype, device=feats.device)) ** 2) / 0.18)
        ident = (self.shape_embed + self.color_embed).flatten(0, 1)  # [N_SLOTS, W], shape-major like the slots
        x = ident + self.slot_proj(F.gelu(self.slot_fc(torch.cat([feats, near], -1))))
        if self.cfg.pair_tokens:
            i, j = zip(*PAIRS)
            pair_ident = self.pair_first[list(i)] + self.pair_second[list(j)]  # [len(PAIRS), W]
            pairs = pair_ident + self.pair_proj(F.gelu(self.pair_fc(pair_features(feats))))
            x = torch.cat([x, pairs], 1)  # [B, N_SLOTS + len(PAIRS), W]
        return self.ln_slots(x)

    def encode_images(self, images: Tensor) -> Tensor:
        """images [B, 3, 32, 32] in [0, 1] -> slot tokens [B, N_SLOTS (+ len(PAIRS)), W]."""
        return self.encode_slots(slot_features(self.detect(images)))

    def encode_text(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """ids [B, L] (0 = pad) -> (tokens [B, 1 + L', W] after the text blocks, key mask [B, 1 + L']), L' <= L
        the longest prompt's words."""
        B = ids.shape[0]
        # trailing pad columns are masked keys everywhere and their own outputs are never read: drop them
        used = (ids != 0).any(0).nonzero()
        ids = ids[:, : int(used.max()) + 1 if len(used) else 0]
        x = torch.cat([self.cls.expand(B, -1, -1), self.word_embed(ids)], dim=1)  # [B, 1+L, W]
        x = x + self.text_pos[:, : x.shape[1]]
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=ids.device), ids != 0], dim=1)  # [B, 1+L]
        for blk in self.text_blocks:
            x = blk(x, mask=mask)
        return x, mask

    def score_tokens(self, image_tokens: Tensor, ids: Tensor, image_index: Tensor | None = None,
                     text: tuple[Tensor, Tensor] | None = None, text_index: Tensor | None = None) -> Tensor:
        """image_tokens [B_img, N, W] (from encode_images), ids [B, L] word ids (0 = pad) -> log-odds [B].
        `image_index` [B]: the image of each prompt row (default: row i reads image i). `text` (from
        `encode_text` of a few distinct prompts) with `text_index` [B] replaces re-encoding `ids` per row."""
        x, mask = text if text is not None else self.encode_text(ids)
        if text_index is not None:
            x, mask = x[text_index], mask[text_index]
        last = len(self.fusion_blocks) - 1
        for i, blk in enumerate(self.fusion_blocks):
            x = blk(x, mask=mask, ctx=image_tokens, ctx_index=image_index, first_only=i == last)
        return self.head(self.ln_f(x[:, 0]))[:, 0]

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        """The pair as given (one view): images [B, 3, 32, 32] in [0, 1], ids [B, L] -> log-odds [B]."""
        return self.score_tokens(self.encode_images(images), ids)

    def score(self, images: Tensor, prompts: list[str], views: int | None = None) -> Tensor:
        """What the reward calls: images [B, 3, 32, 32] in [0, 1] and each row's prompt -> log-odds [B],
        averaged over the prompt's symmetric views (`views_of`; `views` None: the config's)."""
        return self.score_features(slot_features(self.detect(images)), prompts, views)

    def score_features(self, feats: Tensor, prompts: list[str], views: int | None = None) -> Tensor:
        """`score` from slot features [B, N_SLOTS, SLOT_FEATURES] (the trainer caches them). The detector
        runs once per image; each view permutes and mirrors the slots and maps the prompt's words."""
        views = self.cfg.views if views is None else views
        if not prompts:
            return feats.new_zeros(0)
        rows, ts, texts = [], [], []
        for b, p in enumerate(prompts):
            # the generator's reading of a prompt ("A photo of a red circle." is "a photo of a red circle"), so
            # the views find the trained prompts and the reward accepts what the generator does
            for t, q in self.views_of(" ".join(prompt_words(p)), views):
                rows.append(b), ts.append(t), texts.append(q)
        rows_t = torch.tensor(rows, device=feats.device)
        x = feats[rows_t]  # [B * views, N_SLOTS, F]
        if any(ts):
            x = apply_symmetry(x, self._table(), torch.tensor(ts))
        uniq = sorted(set(texts))
        at = {q: i for i, q in enumerate(uniq)}
        text = self.encode_text(self.tokenize(uniq).to(feats.device))
        s = self.score_tokens(self.encode_slots(x), None, text=text,
                              text_index=torch.tensor([at[q] for q in texts], device=feats.device))
        n = torch.zeros(len(prompts), dtype=s.dtype, device=s.device).index_add_(0, rows_t, torch.ones_like(s))
        return torch.zeros(len(prompts), dtype=s.dtype, device=s.device).index_add_(0, rows_t, s) / n

    def views_of(self, prompt: str, views: int) -> list[tuple[int, str]]:
        """The (symmetry, mapped prompt) pairs a score of `prompt` averages: the first `views` symmetries of
        the fixed table (`symmetry_table(VIEW_TABLE, VIEW_SEED)`) that relabel colours and mirror, and map the
        prompt onto a trained prompt; the identity comes first when the prompt itself was trained on. One view,
        no trained prompts, or no symmetry that reaches one: the pair as given.

        Shapes are not relabelled: the detector reads the three shapes with different errors (touching squares
        merge), so a view that swaps them moves the image into another error regime, and on the dev split it
        cost counting what it gained elsewhere (docs/testbed.md, "Symmetric views")."""
        if views <= 1 or not self.cfg.trained_prompts:
            return [(0, prompt)]
        if getattr(self, "_views_for", None) is not self.cfg.trained_prompts:  # a new training list: forget
            self._views_for, self._views_cache = self.cfg.trained_prompts, {}
            self._trained = frozenset(self.cfg.trained_prompts)
        key = (prompt, views)
        if key not in self._views_cache:
            found = []
            table = self._table()
            for t, words in enumerate(table["words"]):
                if not table["keeps_shapes"][t]:
                    continue
                q = map_prompt(prompt, words)
                if q in self._trained:
                    found.append((t, q))
                    if len(found) == views:
                        break
            self._views_cache[key] = found or [(0, prompt)]
        return self._views_cache[key]

    def _table(self) -> dict:
        if getattr(self, "_sym", None) is None:
            self._sym = symmetry_table(VIEW_TABLE, VIEW_SEED)
        return self._sym

    def tokenize(self, prompts: list[str]) -> Tensor:
        """Word ids [B, context_length] (0 = pad). Unknown words and long prompts raise ValueError naming them."""
        table = {w: i for i, w in enumerate(self.cfg.vocab)}
        out = torch.zeros(len(prompts), self.cfg.context_length, dtype=torch.long)
        for b, p in enumerate(prompts):
            words = prompt_words(p)  # as the generator's text encoder reads it: lower case, no punctuation
            shown = p if len(p) <= 80 else p[:77] + "..."
            unknown = sorted({w for w in words if w not in table or table[w] == 0})
            if unknown:
                raise ValueError(f"shapes-reward: prompt {shown!r} has words outside its vocabulary: {unknown[:20]}"
                                 f"{' ...' if len(unknown) > 20 else ''}; it knows {list(self.cfg.vocab[1:])}")
            if len(words) > self.cfg.context_length:
                raise ValueError(f"shapes-reward: prompt {shown!r} has {len(words)} words, more than its "
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
    """Weights as float16 safetensors (`path`) and the config + training record as JSON beside it, together."""
    from ..output import write_weights

    write_weights(Path(path), {k: v.detach().cpu().to(torch.float16).contiguous()
                               for k, v in model.state_dict().items()}, {"config": asdict(model.cfg), **meta})


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


def declared_scale(meta: dict, views: int | None = None) -> float:
    """The reward's scale: the std of its scores over generated samples, measured at training (see docs) for
    the number of views it scores with (``score_scales``; `views` None: the config's)."""
    views = meta.get("config", {}).get("views", 1) if views is None else views
    s = float(meta.get("score_scales", {}).get(str(views), meta.get("score_scale", 1.0)))
    return s if math.isfinite(s) and s > 0 else 1.0


__all__ = ["DEFAULT_WEIGHTS", "ShapesRewardConfig", "ShapesRewardModel", "apply_symmetry", "declared_scale",
           "load_shapes_reward", "map_prompt", "save_shapes_reward", "symmetry_table"]

"""Step-wise sampling of Infinity behind the `Generator` interface.

Sampling follows the released sampler: classifier-free guidance on the logits (cond and uncond rows
run as one batch, uncond rows use the learned `cfg_uncond` text of the same length), temperature per
scale, per-bit top-k/top-p, bits -> BSQ codes, codes accumulated at the final latent size, and the next
scale's input is the accumulated latent resized to that scale (with the VAE's up-sampling mode, as the
released sampler does). On the 8B configuration each transformer token carries 2x2 VAE tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...core.generator import GenState, Prompts, Rows, SamplingConfig
from ..invariant import batch_invariant
from ..kv import SharedKV
from ..rows import (
    PairedRowsGenerator,
    check_concat,
    check_index,
    concat_caches,
    concat_rows,
    gather_rows,
    paired,
    row_hashes,
    select_caches,
    to_unit_images,
)
from ..sampling import row_uniforms, sample_with_confidence
from ..text import TextEncoder
from .model import Infinity, TextCond


@dataclass
class InfinityState(GenState):
    rows: Rows
    scale: int
    cond: TextCond  # R rows: the B cond rows, then (with CFG) the B uncond rows in the same order
    caches: SharedKV | None  # keys/values of the scales sampled so far but the last, per batch row (R rows)
    summed_codes: torch.Tensor | None  # [B,d,H,W] accumulated codes at the final latent size
    cfg_pairs: bool
    confidence: torch.Tensor | None = None  # [B,2] mean log-prob, mean entropy of the last scale's tokens


def _gather_cond(c: TextCond, idx: torch.Tensor) -> TextCond:
    """Rows `idx` of `c`: only the row-to-text index moves, and the texts no row keeps are dropped (a copy of
    the kept texts' tensors, per text, not per row)."""
    rows = idx if c.rows is None else c.rows[idx]
    used, rows = torch.unique(rows, return_inverse=True)
    if len(used) == len(c.cond_BD):
        return TextCond(c.cond_BD, c.gss, c.ca_kv, c.text_mask, rows)
    return TextCond(c.cond_BD[used], c.gss[used], [(k[used], v[used]) for k, v in c.ca_kv], c.text_mask[used],
                    rows)


def _pad_T(x: torch.Tensor, T: int, dim: int, value=0) -> torch.Tensor:
    if x.shape[dim] == T:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, T - x.shape[dim]]
    return F.pad(x, pad, value=value)


def _cat_cond(parts: Sequence[TextCond], cfg_pairs: bool) -> TextCond:
    """The texts of all parts, once each; rows in part order, or with `cfg_pairs` (each part's rows are its cond
    rows, then its uncond rows) all parts' cond rows, then all their uncond rows."""
    T = max(c.text_mask.shape[1] for c in parts)
    ca_kv = []
    for i in range(len(parts[0].ca_kv)):
        ca_kv.append((torch.cat([_pad_T(c.ca_kv[i][0], T, 2) for c in parts]),
                      torch.cat([_pad_T(c.ca_kv[i][1], T, 2) for c in parts])))
    offsets = np.cumsum([0] + [len(c.cond_BD) for c in parts[:-1]])
    rows = [(torch.arange(len(c), device=c.cond_BD.device) if c.rows is None else c.rows) + int(o)
            for c, o in zip(parts, offsets)]
    if cfg_pairs:
        rows = [r[:len(r) // 2] for r in rows] + [r[len(r) // 2:] for r in rows]
    return TextCond(torch.cat([c.cond_BD for c in parts]), torch.cat([c.gss for c in parts]), ca_kv,
                    torch.cat([_pad_T(c.text_mask, T, 1, False) for c in parts]), torch.cat(rows))


def scale_input(vae, summed: torch.Tensor, vae_size: tuple[int, int], patchify: bool) -> torch.Tensor:
    """Accumulated codes [B,d,H,W] -> the input tokens of the scale whose VAE grid is `vae_size`
    [B,h*w,d_vae]. Sampling (`InfinityGenerator.step`) and teacher forcing (`training.teacher_inputs`) share it,
    so a model is trained on exactly the inputs it samples from."""
    x = vae.upsample_codes(summed, vae_size)  # [B,d,h',w']
    if patchify:
        x = F.pixel_unshuffle(x, 2)  # [B,4d,h,w]
    return x.flatten(2).transpose(1, 2)  # [B,h*w,d_vae]


class InfinityGenerator(PairedRowsGenerator):
    """Drives an `Infinity` transformer and a BSQ-VAE scale by scale.

    vae: any object with `bits_to_codes(bits [B,h,w,d]) -> [B,d,h,w]`, `upsample_codes(codes, size)`
    and `decode(z [B,d,H,W]) -> [B,3,H',W'] in [-1,1]` (our `BSQVAE`).
    """

    def __init__(self, model: Infinity, vae, text_encoder: TextEncoder, scale_schedule: Sequence[tuple[int, int]],
                 sampling: SamplingConfig | None = None, device: str | torch.device = "cpu"):
        self.model, self.vae, self.text_encoder = model, vae, text_encoder
        self.device = torch.device(device)
        self.scale_schedule = [tuple(map(int, s)) for s in scale_schedule]
        if self.scale_schedule[0] != (1, 1):
            raise ValueError(f"the first scale must be a 1x1 grid (the start token), got {self.scale_schedule[0]}")
        if len(self.scale_schedule) > model.config.num_lvl_embeds:
            raise ValueError(f"{len(self.scale_schedule)} scales but the model has {model.config.num_lvl_embeds} "
                             "scale embeddings")
        if text_encoder.dim != model.config.text_channels:
            raise ValueError(f"text encoder width {text_encoder.dim} != model text_channels "
                             f"{model.config.text_channels}")
        self.patchify = model.config.apply_spatial_patchify
        f = 2 if self.patchify else 1
        self.vae_schedule = [(h * f, w * f) for h, w in self.scale_schedule]
        self.set_sampling(sampling or SamplingConfig())

    def set_sampling(self, sampling: SamplingConfig) -> None:
        """Called once per job (like a scheduler's set_timesteps) before `start`."""
        cfg, tau = sampling.per_scale(self.num_scales)  # validate first: a bad config leaves the old one in place
        self.sampling, self.cfg_list, self.tau_list = sampling, cfg, tau

    def check_prompt(self, prompt: str) -> None:
        check = getattr(self.text_encoder, "check_prompt", None)
        if callable(check):
            check(prompt)

    def state_bytes_per_row(self, scale: int) -> int:
        """About the bytes one candidate row holds once scale `scale` is sampled: its key/value cache (two rows
        with CFG) and its accumulated codes. `ttsvar.jobs.check_memory` sizes work units with it."""
        cfg = self.model.config
        tokens = sum(h * w for h, w in self.scale_schedule[: scale + 1])
        blocks = self.model.blocks
        item = blocks[0].sa.mat_qkv.weight.element_size() if blocks else 4
        pairs = self.forward_rows_per_candidate(scale)
        H, W = self.vae_schedule[-1]
        return pairs * cfg.depth * 2 * tokens * cfg.embed_dim * item + cfg.codebook_dim * H * W * 4

    # -- lifecycle ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def start(self, prompts: Prompts, rows: Rows) -> InfinityState:
        texts = [prompts[int(i)] for i in rows.prompt_index]
        uniq = list(dict.fromkeys(texts))
        feats, mask = self._encode(uniq)
        feats, mask = feats.to(self.device), mask.to(self.device)
        where = torch.tensor([uniq.index(t) for t in texts], device=self.device)
        cfg_pairs = self._cfg_pairs()
        if cfg_pairs:  # texts: the prompts, then their unconditional texts (the same lengths)
            un = self.model.uncond_text(mask.sum(1), feats.shape[1]).to(feats.dtype)
            feats, mask = torch.cat((feats, un)), torch.cat((mask, mask))
            where = torch.cat((where, where + len(uniq)))
        with batch_invariant(self.batch_invariant):
            cond = self.model.encode_text(feats, mask)
        cond.rows = where
        return InfinityState(rows, 0, cond, None, None, cfg_pairs)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features [n,T,D] and masks [n,T] of distinct prompts. Batch-invariant: one prompt per encoder
        call (an encoder pads a batch to its longest prompt, which changes the others' features), then padded."""
        if not self.batch_invariant:
            return self.text_encoder.encode(texts)
        parts = [self.text_encoder.encode([t]) for t in texts]
        T = max(f.shape[1] for f, _ in parts)
        return (torch.cat([_pad_T(f, T, 1) for f, _ in parts]),
                torch.cat([_pad_T(m, T, 1, False) for _, m in parts]))

    def _step(self, state: InfinityState) -> InfinityState:
        si, B = state.scale, len(state.rows)
        if si >= self.num_scales:
            raise ValueError(f"state already has all {self.num_scales} scales; call finish()")
        model, sched = self.model, self.scale_schedule
        if si == 0:
            x = model.sos(state.cond)  # [R,1,C]
        else:
            x = model.embed_scale_input(self._next_input(state.summed_codes, si))  # [B,l,C]
            if state.cfg_pairs:
                x = torch.cat((x, x))
        last = si == self.num_scales - 1  # nothing attends to the last scale's keys: they are not kept
        logits, caches = model.forward_scale(x, si, sched, state.cond, state.caches, keep=not last)
        if last:
            caches = None
        cfg, tau = self.cfg_list[si], self.tau_list[si]
        logits = logits / tau
        if state.cfg_pairs:
            logits = cfg * logits[:B] + (1 - cfg) * logits[B:]  # [B,l,V]
        h, w = sched[si]
        bits_per_tok = logits.shape[-1] // 2
        u = row_uniforms(state.rows.step_seeds(si), (h * w, bits_per_tok), self.device)
        # a token is bits_per_tok independent bits: its log-prob and entropy are sums over its bits
        bits, confidence = sample_with_confidence(logits.view(B, h * w, bits_per_tok, 2), u, self.sampling.top_k,
                                                  self.sampling.top_p, token_parts=1)  # [B,l,bits], [B,2]
        codes = self.vae.bits_to_codes(self._vae_grid(bits, h, w)).float()  # [B,d,h',w']
        final = self.vae_schedule[-1]
        if si == self.num_scales - 1:
            summed = codes if state.summed_codes is None else state.summed_codes + codes
        else:
            up = self.vae.upsample_codes(codes, final)
            summed = up if state.summed_codes is None else state.summed_codes + up
        return InfinityState(state.rows, si + 1, state.cond, caches, summed, state.cfg_pairs, confidence)

    def _vae_grid(self, bits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Sampled bits [B,h*w,bits] -> VAE bit grid [B,h',w',d] (un-patchified on the 8B)."""
        B = bits.shape[0]
        grid = bits.reshape(B, h, w, -1)  # [B,h,w,bits]
        if self.patchify:
            grid = F.pixel_shuffle(grid.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # [B,2h,2w,d]
        return grid

    def _next_input(self, summed: torch.Tensor, si: int) -> torch.Tensor:
        return scale_input(self.vae, summed, self.vae_schedule[si], self.patchify)

    def preview_grid(self, scale: int, cheap: bool = False) -> tuple[int, int]:
        if not 1 <= scale <= self.num_scales:
            raise ValueError(f"preview_grid needs a sampled scale in [1, {self.num_scales}], got {scale}")
        return self.vae_schedule[scale - 1 if cheap else -1]

    def _preview(self, state: InfinityState, size: int | None, rows, cheap: bool) -> torch.Tensor:
        if state.summed_codes is None:
            raise ValueError("preview needs at least one sampled scale; call step() first")
        codes = state.summed_codes if rows is None else state.summed_codes[torch.as_tensor(rows, dtype=torch.long)]
        grid = self.preview_grid(state.scale, cheap)
        if tuple(codes.shape[-2:]) != grid:  # cheap: the scale's own grid, like the next-scale input's resize
            codes = self.vae.downsample_codes(codes, grid)  # [B,d,h',w']
        return to_unit_images(self.vae.decode(codes.to(next(iter(self.vae.parameters())).dtype)), size)

    def row_keys(self, state: InfinityState) -> list[bytes] | None:
        return None if state.summed_codes is None else row_hashes(state.summed_codes)

    # -- row bookkeeping ------------------------------------------------------------------------------

    def _select(self, state: InfinityState, index, candidate_id: np.ndarray | None = None,
                compact: bool = True) -> InfinityState:
        B = len(state.rows)
        index = check_index(index, B)
        idx = torch.as_tensor(index, device=self.device)
        full = paired(idx, B, state.cfg_pairs)
        caches = select_caches(state.caches, full, compact)
        summed = None if state.summed_codes is None else state.summed_codes[idx]
        return InfinityState(state.rows.select(index, candidate_id), state.scale,
                             _gather_cond(state.cond, full),
                             caches, summed, state.cfg_pairs, gather_rows(state.confidence, idx))

    def concat(self, states: Sequence[InfinityState]) -> InfinityState:
        check_concat(states)
        if len(states) == 1:
            return states[0]
        cond = _cat_cond([s.cond for s in states], states[0].cfg_pairs)
        caches = concat_caches(states, states[0].cfg_pairs)
        summed = None if states[0].summed_codes is None else torch.cat([s.summed_codes for s in states])
        return InfinityState(Rows.concat([s.rows for s in states]), states[0].scale, cond, caches, summed,
                             states[0].cfg_pairs, concat_rows([s.confidence for s in states]))

"""Step-wise sampling of VAR behind the `Generator` interface.

Sampling follows the official `autoregressive_infer_cfg`: a class token starts the pyramid, each scale's
logits are guided by the null-class rows (cond and uncond rows run as one batch, the uncond rows with class
`num_classes`), top-k/top-p filtered, sampled, looked up in the codebook and accumulated into f_hat at the
finest size; the next scale's input is f_hat area-downsampled to that scale.

Prompts are class indices written as text ("207"): the job resolves class names and `{"class": ...}` prompt
lines to indices before generation (`ttsvar.jobs.resolve_prompts`); `classes` names the model's classes.

Guidance: a scalar `sampling.cfg = w` follows the official ramp. The official sampler mixes
(1 + t) * cond - t * uncond with t = cfg_official * si / (S - 1), i.e. a weight rising from 1 (no guidance)
at the first scale to 1 + cfg_official at the last; here w is that last weight (the official `cfg=4` is
`sampling.cfg: 5`, and w = 1 means no guidance at all). A per-scale list gives the weights literally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...core.classes import ClassList, imagenet_classes, parse_class_prompt
from ...core.errors import PromptError
from ...core.generator import GenState, Prompts, Rows, SamplingConfig, mix64
from ..kv import SharedKV
from ..rows import (
    PairedRowsGenerator,
    check_concat,
    check_index,
    concat_caches,
    concat_rows,
    cond_then_uncond,
    gather_rows,
    paired,
    row_hashes,
    select_caches,
    to_unit_images,
)
from ..sampling import filter_logits, row_uniforms, sample_with_confidence, token_confidence
from .model import VAR
from .vqvae import VQVAE


@dataclass
class VARState(GenState):
    rows: Rows
    scale: int
    labels: torch.Tensor  # [R] long: the B rows' classes, then (with CFG) B null classes in the same order
    caches: SharedKV | None  # keys/values of the scales sampled so far but the last, per batch row (R rows)
    f_hat: torch.Tensor | None  # [B,Cvae,H,W] float32 accumulated codes at the finest size
    cfg_pairs: bool
    confidence: torch.Tensor | None = None  # [B,2] mean log-prob, mean entropy of the last scale's tokens


def cfg_weights(cfg: float | Sequence[float], num_scales: int) -> list[float]:
    """Guidance weight of each scale: a scalar w ramps linearly from 1 at scale 0 to w at the last scale (the
    official schedule); a list is taken as is."""
    if isinstance(cfg, (int, float)):
        return [1 + (float(cfg) - 1) * si / (num_scales - 1) for si in range(num_scales)]
    return [float(c) for c in cfg]


class VARGenerator(PairedRowsGenerator):
    """Drives a `VAR` transformer and its multi-scale `VQVAE` scale by scale.

    more_smooth: the official visualisation option; each scale's codes are a Gumbel-softmax mixture of the
    codebook (temperature falling over the scales) instead of one sampled code per token. Off for benchmarks.
    """

    def __init__(self, model: VAR, vae: VQVAE, sampling: SamplingConfig | None = None,
                 device: str | torch.device = "cpu", more_smooth: bool = False, classes: ClassList | None = None):
        self.model, self.vae, self.more_smooth = model, vae, bool(more_smooth)
        self.device = torch.device(device)
        mc, vc = model.config, vae.config
        if tuple(mc.patch_nums) != tuple(vae.v_patch_nums):
            raise ValueError(f"VAR patch_nums {mc.patch_nums} != VAE v_patch_nums {vae.v_patch_nums}")
        if (mc.vocab_size, mc.Cvae) != (vc.vocab_size, vc.Cvae):
            raise ValueError(f"VAR expects {mc.vocab_size} codes of width {mc.Cvae}; the VAE has {vc.vocab_size} "
                             f"of width {vc.Cvae}")
        self.num_classes = mc.num_classes
        if classes is None:  # ImageNet's classes (a small model: the first num_classes of them)
            classes = imagenet_classes().first(mc.num_classes)
        if len(classes) != mc.num_classes:
            raise ValueError(f"the class list has {len(classes)} classes but the model {mc.num_classes}")
        self.classes = classes
        self.scale_schedule = [(pn, pn) for pn in mc.patch_nums]
        self.set_sampling(sampling or SamplingConfig())

    def set_sampling(self, sampling: SamplingConfig) -> None:
        """Called once per job (like a scheduler's set_timesteps) before `start`."""
        _, tau = sampling.per_scale(self.num_scales)  # validate first: a bad config leaves the old one in place
        self.sampling, self.cfg_list, self.tau_list = sampling, cfg_weights(sampling.cfg, self.num_scales), tau

    def class_of(self, prompt: str) -> int:
        """The class index a prompt names; raises `PromptError` unless it is an integer in [0, num_classes)."""
        k = parse_class_prompt(prompt, self.num_classes)
        if k is None:
            raise PromptError(f"prompt {prompt!r} is not a class index: VAR is class-conditional, write the class "
                              f"as an integer in [0, {self.num_classes}) (e.g. 207 for ImageNet's golden retriever) "
                              "or a class name")
        return k

    def check_prompt(self, prompt: str) -> None:
        self.class_of(prompt)

    def state_bytes_per_row(self, scale: int) -> int:
        """About the bytes one candidate row holds once scale `scale` is sampled: its key/value cache (two rows
        with CFG) and its accumulated f_hat."""
        cfg = self.model.config
        tokens = sum(h * w for h, w in self.scale_schedule[: scale + 1])
        item = self.model.blocks[0].attn.mat_qkv.weight.element_size() if len(self.model.blocks) else 4
        H = cfg.patch_nums[-1]
        return self.forward_rows_per_candidate(scale) * cfg.depth * 2 * tokens * cfg.embed_dim * item \
            + cfg.Cvae * H * H * 4

    # -- lifecycle ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def start(self, prompts: Prompts, rows: Rows) -> VARState:
        labels = torch.tensor([self.class_of(prompts[int(i)]) for i in rows.prompt_index], dtype=torch.long,
                              device=self.device)
        cfg_pairs = self._cfg_pairs()
        if cfg_pairs:
            labels = torch.cat((labels, torch.full_like(labels, self.num_classes)))
        return VARState(rows, 0, labels, None, None, cfg_pairs)

    def _step(self, state: VARState) -> VARState:
        si, B = state.scale, len(state.rows)
        if si >= self.num_scales:
            raise ValueError(f"state already has all {self.num_scales} scales; call finish()")
        model = self.model
        cond_BD = model.class_cond(state.labels)  # [R,D]
        if si == 0:
            x = model.sos(cond_BD)  # [R,1,C]
        else:
            x = model.embed_scale_input(self.vae.next_input(state.f_hat, si))  # [B,l,C]
            if state.cfg_pairs:
                x = torch.cat((x, x))  # [2B,l,C]
        last = si == self.num_scales - 1  # nothing attends to the last scale's keys: they are not kept
        logits, caches = model.forward_scale(x, si, cond_BD, state.caches, keep=not last)  # [R,l,V]
        if last:
            caches = None
        if state.cfg_pairs:
            t = self.cfg_list[si] - 1  # the official form (1 + t) c - t u, so the float rounding matches
            logits = (1 + t) * logits[:B] - t * logits[B:]  # [B,l,V]
        logits = logits / self.tau_list[si]
        pn = self.scale_schedule[si][0]
        seeds = state.rows.step_seeds(si)
        if not self.more_smooth:
            u = row_uniforms(seeds, (pn * pn,), self.device)
            idx, confidence = sample_with_confidence(logits, u, self.sampling.top_k, self.sampling.top_p)  # [B,l]
            f_hat = self.vae.add_scale(si, state.f_hat, idx)
        else:
            codes, weights = self._smooth_codes(logits, si, seeds)
            f_hat = self.vae.add_scale_codes(si, state.f_hat, codes)
            # no token is sampled: report the dominant code of each position's Gumbel-softmax mixture
            confidence = token_confidence(logits, weights.argmax(dim=-1))
        return VARState(state.rows, si + 1, state.labels, caches, f_hat, state.cfg_pairs, confidence)

    def _smooth_codes(self, logits: torch.Tensor, si: int, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The official `more_smooth` codes [B,Cvae,pn,pn]: a Gumbel-softmax mixture of the codebook over the
        filtered logits (sharpened by 1 + ratio, temperature 0.27 (1 - 0.95 ratio) floored at 0.005); and the
        mixture weights [B,l,V]."""
        B, l, V = logits.shape
        ratio = si / (self.num_scales - 1)
        logits = filter_logits(logits, self.sampling.top_k, self.sampling.top_p) * (1 + ratio)
        u = row_uniforms([mix64(s, 1) for s in seeds], (l, V), self.device)  # its own stream per row
        gumbel = -(-u.clamp_min(1e-10).log()).clamp_min(1e-10).log()  # standard Gumbel noise [B,l,V]
        w = ((logits + gumbel) / max(0.27 * (1 - ratio * 0.95), 0.005)).softmax(-1)  # [B,l,V]
        h = w @ self.vae.quantize.embedding.weight.float()  # [B,l,Cvae]
        pn = self.scale_schedule[si][0]
        return h.transpose(1, 2).reshape(B, -1, pn, pn), w  # [B,Cvae,pn,pn], [B,l,V]

    def _preview(self, state: VARState, size: int | None, rows, cheap: bool) -> torch.Tensor:
        if state.f_hat is None:
            raise ValueError("preview needs at least one sampled scale; call step() first")
        f_hat = state.f_hat if rows is None else state.f_hat[torch.as_tensor(rows, dtype=torch.long)]
        grid = self.preview_grid(state.scale, cheap)
        if tuple(f_hat.shape[-2:]) != grid:  # cheap: the scale's own grid, area-downsampled like `next_input`
            f_hat = F.interpolate(f_hat, size=grid, mode="area")  # [B,Cvae,pn,pn]
        return to_unit_images(self.vae.fhat_to_img(f_hat), size)

    def row_keys(self, state: VARState) -> list[bytes] | None:
        return None if state.f_hat is None else row_hashes(state.f_hat)

    # -- row bookkeeping: the cond and uncond halves of labels and caches move together ---------------

    def _select(self, state: VARState, index, candidate_id: np.ndarray | None = None,
                compact: bool = True) -> VARState:
        B = len(state.rows)
        index = check_index(index, B)
        idx = torch.as_tensor(index, device=self.device)
        full = paired(idx, B, state.cfg_pairs)
        caches = select_caches(state.caches, full, compact)
        f_hat = None if state.f_hat is None else state.f_hat[idx]
        return VARState(state.rows.select(index, candidate_id), state.scale, state.labels[full], caches, f_hat,
                        state.cfg_pairs, gather_rows(state.confidence, idx))

    def concat(self, states: Sequence[VARState]) -> VARState:
        check_concat(states)
        if len(states) == 1:
            return states[0]
        pairs = states[0].cfg_pairs
        caches = concat_caches(states, pairs)
        f_hat = None if states[0].f_hat is None else torch.cat([s.f_hat for s in states])
        return VARState(Rows.concat([s.rows for s in states]), states[0].scale,
                        cond_then_uncond([s.labels for s in states], pairs), caches, f_hat, pairs,
                        concat_rows([s.confidence for s in states]))

"""Per-row random numbers, top-k/top-p categorical sampling, and the sampled tokens' confidence.

Each row draws its uniforms from its own generator seeded by (seed, candidate id, scale), and a sample
is the inverse CDF of the filtered distribution at that uniform. A row's sample therefore never depends
on the other rows of its batch.

`sample_with_confidence` is the one sampling path of the model families (Infinity, VAR): it also returns each
row's mean log-probability and mean entropy of the tokens it sampled, which the generators keep in their state
for `Generator.confidence` (free per-row arrays for reward-free strategies such as `confidence`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def row_uniforms(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """[len(seeds), *shape] uniforms in [0, 1); row i comes from a generator seeded with seeds[i]."""
    device = torch.device(device)
    out = torch.empty((len(seeds), *shape), device=device, dtype=torch.float32)
    gen = torch.Generator(device=device)
    for i, s in enumerate(seeds):
        gen.manual_seed(int(s))
        out[i] = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
    return out


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits [..., V] outside the top-k and outside the top-p nucleus with -inf.

    Same rules as the released samplers: top-k keeps values >= the k-th largest; top-p drops the
    smallest-probability entries whose cumulative mass is <= 1 - top_p and always keeps the largest.
    """
    V = logits.shape[-1]
    logits = logits.float()
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(-1, sorted_idx, remove), -torch.inf)
    return logits


def sample_categorical(logits: torch.Tensor, u: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Sample indices [...] from logits [..., V] with uniforms u [...] by inverse CDF."""
    probs = filter_logits(logits, top_k, top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1).contiguous(), right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def token_confidence(logits: torch.Tensor, idx: torch.Tensor, token_parts: int = 0) -> torch.Tensor:
    """Per-row mean log-probability and mean entropy (nats per token) of sampled tokens: float32 [B, 2].

    `logits` [B, ..., V] are the scores the tokens were sampled from (after guidance and temperature; top-k and
    top-p are a sampler's truncation, not the model's belief, so they are not applied here); `idx` [B, ...] are
    the sampled indices. The last `token_parts` dimensions of `idx` are parts of ONE token sampled independently
    (Infinity's bits: token_parts=1), so a token's log-probability and entropy are sums over its parts; the
    remaining dimensions (positions) are averaged.
    """
    logp_all = logits.float().log_softmax(dim=-1)  # [B, ..., V]
    logp = logp_all.gather(-1, idx.long().unsqueeze(-1)).squeeze(-1)  # [B, ...]
    p = logp_all.exp()
    ent = -torch.where(p > 0, p * logp_all, torch.zeros_like(p)).sum(dim=-1)  # [B, ...]; 0 log 0 = 0
    if token_parts:
        parts = tuple(range(logp.ndim - token_parts, logp.ndim))
        logp, ent = logp.sum(dim=parts), ent.sum(dim=parts)
    B = logp.shape[0]
    return torch.stack((logp.reshape(B, -1).mean(dim=1), ent.reshape(B, -1).mean(dim=1)), dim=1)  # [B, 2]


def sample_with_confidence(logits: torch.Tensor, u: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                           token_parts: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_categorical` plus `token_confidence` of what it sampled: (indices [B, ...], float32 [B, 2])."""
    idx = sample_categorical(logits, u, top_k, top_p)
    return idx, token_confidence(logits, idx, token_parts)

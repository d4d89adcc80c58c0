"""Teacher forcing for Infinity: the transformer's inputs and targets from a VAE's per-scale bit grids.

Training code (`ttsvar/testbed/train.py`) calls these; they build the inputs exactly as
`InfinityGenerator.step` builds them while sampling (`generator.scale_input`), so the model learns on the
inputs it will see.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .generator import InfinityGenerator, scale_input


def teacher_inputs(gen: InfinityGenerator, bits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-scale VAE bit grids [B,h',w',d] (as `BSQVAE.encode_bits` returns them) -> the inputs of scales
    1..S-1 [B,L-1,d_vae]."""
    vae, final, summed, xs = gen.vae, gen.vae_schedule[-1], None, []
    for si in range(gen.num_scales - 1):
        up = vae.upsample_codes(vae.bits_to_codes(bits[si]).float(), final)
        summed = up if summed is None else summed + up
        xs.append(scale_input(vae, summed, gen.vae_schedule[si + 1], gen.patchify))
    return torch.cat(xs, 1)


def token_bits(gen: InfinityGenerator, bits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-scale VAE bit grids -> the transformer's targets [B,L,bits per token] (the inverse of the grid
    `InfinityGenerator.step` builds from sampled bits)."""
    out = []
    for grid in bits:
        if gen.patchify:
            grid = F.pixel_unshuffle(grid.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # [B,h,w,4d]
        out.append(grid.reshape(grid.shape[0], -1, grid.shape[-1]))
    return torch.cat(out, 1)

"""Step throughput, select cost and KV-cache memory of the native Infinity and VAR generators (random weights).

    python bench/bench_generator.py --model tiny --device cpu --batch 1 4 16
    python bench/bench_generator.py --model 2b --device cuda --pixels 0.25M --batch 1 4 8
    python bench/bench_generator.py --model var-tiny --batch 1 4 16 --threads 1
    python bench/bench_generator.py --model var-d16 --batch 1 4     # var-d30 too; --device cuda on a GPU

For each batch size (candidate rows; with CFG each row runs a cond and an uncond pass) it runs all scales
and reports: tokens/s (transformer token-forwards per second, CFG rows counted), the time of one
`select` (gather every row's KV cache, duplicates included) relative to one step at the same scale,
and the most KV cache held per candidate row (shared blocks, `ttsvar.models.kv`: after the next-to-last scale,
since the last scale's keys are never kept).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ttsvar.core.generator import Rows, SamplingConfig
from ttsvar.models.infinity.generator import InfinityGenerator
from ttsvar.models.infinity.model import Infinity, InfinityConfig
from ttsvar.models.infinity.schedules import scale_schedule
from ttsvar.models.infinity.vae import BSQVAE, TINY_SCALE_SCHEDULE, BSQVAEConfig
from ttsvar.models.text import TextEncoder


class RandomText(TextEncoder):
    """Stands in for Flan-T5: random features of a fixed length (the benchmark measures the transformer)."""

    def __init__(self, dim: int, length: int, device):
        self.dim, self.length, self.device = dim, length, device

    def encode(self, prompts):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(len(prompts), self.length, self.dim, generator=g).to(self.device)
        return x, torch.ones(len(prompts), self.length, dtype=torch.bool, device=self.device)


def build_var(model: str, device, dtype):
    """VAR with random weights: the tiny test configuration, or a released depth (256 px, 10 scales)."""
    from ttsvar.models.var.builders import tiny_random
    from ttsvar.models.var.generator import VARGenerator
    from ttsvar.models.var.model import VAR, VARConfig
    from ttsvar.models.var.vqvae import VQVAE, VQVAEConfig

    sampling = SamplingConfig(cfg=5.0, tau=1.0)
    if model == "var-tiny":
        gen = tiny_random(0, device, sampling)
        gen.model.cast_blocks(dtype)
        return gen
    torch.manual_seed(0)
    cfg = VARConfig.released(int(model.removeprefix("var-d")))
    with torch.device(device):
        net = VAR(cfg).eval().requires_grad_(False)
        vae = VQVAE(VQVAEConfig(v_patch_nums=cfg.patch_nums)).eval().requires_grad_(False)
    net.cast_blocks(dtype)
    return VARGenerator(net, vae, sampling, device)


def build(model: str, device, dtype, pixels: str):
    if model.startswith("var"):
        return build_var(model, device, dtype)
    torch.manual_seed(0)
    if model == "tiny":
        icfg = InfinityConfig.tiny(codebook_dim=8, depth=6, embed_dim=192, num_heads=6, text_channels=64,
                                   pool_head_dim=32)
        vcfg, sched = BSQVAEConfig.tiny(codebook_dim=8), TINY_SCALE_SCHEDULE
    else:
        icfg = InfinityConfig.infinity_2b() if model == "2b" else InfinityConfig.infinity_8b()
        vcfg = BSQVAEConfig.infinity_d32() if model == "2b" else BSQVAEConfig.infinity_d14_patchify()
        sched = scale_schedule(1.0, pixels)
    with torch.device(device):
        net = Infinity(icfg).eval().requires_grad_(False)
        vae = BSQVAE(vcfg).eval().requires_grad_(False)
    net.cast_blocks(dtype)
    text = RandomText(icfg.text_channels, 16 if model == "tiny" else 32, device)
    return InfinityGenerator(net, vae, text, list(sched), SamplingConfig(cfg=3.0, tau=1.0), device)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run(gen, B: int, device) -> dict:
    # a class index for VAR (class-conditional), text for Infinity
    prompts = {i: str(i % gen.num_classes) if hasattr(gen, "num_classes") else f"p{i}" for i in range(B)}
    rows = Rows(np.arange(B), np.zeros(B), np.zeros(B))
    state = gen.start(prompts, rows)
    step_times, select_ratio, kv = [], None, 0
    mid = gen.num_scales // 2
    for k in range(gen.num_scales):
        sync(device)
        t0 = time.perf_counter()
        state = gen.step(state)
        sync(device)
        step_times.append(time.perf_counter() - t0)
        kv = max(kv, 0 if state.caches is None else state.caches.nbytes())  # the last step keeps none
        if k == mid:
            idx = np.r_[np.zeros(B // 2 + 1, dtype=int), np.arange(B - B // 2 - 1)]  # duplicates + a shuffle
            t0 = time.perf_counter()
            for _ in range(3):
                gen.select(state, idx)
            sync(device)
            select_ratio = (time.perf_counter() - t0) / 3 / step_times[-1]
    tokens = sum(h * w for h, w in gen.scale_schedule) * B * 2
    return {"tokens_per_s": tokens / sum(step_times), "seconds": sum(step_times), "select_vs_step": select_ratio,
            "select_scale": mid, "kv_mb_per_row": kv / B / 2**20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["tiny", "2b", "8b", "var-tiny", "var-d16", "var-d20", "var-d24", "var-d30",
                                       "var-d36"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 on cuda, float32 on cpu by default")
    p.add_argument("--pixels", default="0.25M")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2, help="timed passes per batch size; the fastest is reported")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if a.device.startswith("cuda") else torch.float32)
    gen = build(a.model, a.device, dtype, a.pixels)
    run(gen, 1, a.device)  # warm-up
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {a.model} ({sum(x.numel() for x in gen.model.parameters()) / 1e6:.1f}M params), {name}, {dtype}, "
          f"scales {gen.scale_schedule[-1]} x{gen.num_scales}, CFG on")
    mid = gen.num_scales // 2
    print(f"| rows | tokens/s | s per image batch | select / step (scale {mid}) | KV cache MB per row (cond+uncond) |")
    print("|---|---|---|---|---|")
    for B in a.batch:
        r = min((run(gen, B, a.device) for _ in range(a.repeat)), key=lambda x: x["seconds"])
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"| {B} | {r['tokens_per_s']:,.0f} | {r['seconds']:.3f} | {r['select_vs_step']:.2f} | "
              f"{r['kv_mb_per_row']:.2f} |")


if __name__ == "__main__":
    main()

"""Train the embedded `shapes-tiny` testbed from a seed: BSQ-VAE, then Infinity + word encoder, then CLIP.

    python -m ttsvar.testbed.train [--device cpu|cuda] [--out DIR] [--seed 0] [--quick]

Everything is generated on the fly from the shapes world, so nothing is downloaded. Outputs (in --out,
default the package's `weights/` folder): `shapes_tiny.safetensors` (keys `gpt.*`, `text.*`, `vae.*`),
`shapes_tiny.json` (configs, vocabulary, training metrics, quality numbers, the command) and, unless
`--skip-clip`, `shapes_clip.safetensors` + `shapes_clip.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.infinity.generator import InfinityGenerator
from ..models.infinity.model import Infinity, InfinityConfig
from ..models.infinity.training import teacher_inputs, token_bits
from ..models.infinity.vae import BSQVAE, TINY_SCALE_SCHEDULE, BSQVAEConfig
from ..models.text import WordEncoderConfig, WordTextEncoder
from . import world
from .overrides import check_buildable, configure
from .train_vae import (
    StepLog,
    adamw_no_decay_1d,
    autocast,
    evaluate_vae,
    reconstruction_score,
    train_vae,
    warmup_cosine,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass
class TestbedConfig:
    seed: int = 0
    # VAE
    vae_bits: int = 8
    vae_ch: int = 48
    vae_steps: int = 1000
    vae_batch: int = 128
    vae_lr: float = 2e-3
    # transformer
    depth: int = 6
    embed_dim: int = 192
    num_heads: int = 6
    text_dim: int = 64
    gen_steps: int = 1600
    gen_batch: int = 96  # cheaper per sample on 2 CPU cores than 160 (13 vs 16 ms), and more updates
    gen_lr: float = 2e-3
    gen_warmup: int = 100
    weight_decay: float = 0.05
    cond_drop: float = 0.1  # rows trained unconditionally (learned uncond text), for CFG
    train_examples: int = 200_000  # pool the transformer batches are drawn from
    p_distractor: float = 0.0
    amp: str = "bf16"  # training autocast dtype: bf16 (about 2x faster on CPUs with AVX512-BF16) or fp32


AMP_DTYPES = {"bf16": torch.bfloat16, "fp32": None}


def amp_dtype(tc: TestbedConfig) -> torch.dtype | None:
    if tc.amp not in AMP_DTYPES:
        raise ValueError(f"TestbedConfig.amp={tc.amp!r}: use one of {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[tc.amp]


def model_configs(tc: TestbedConfig) -> tuple[BSQVAEConfig, InfinityConfig, WordEncoderConfig]:
    vcfg = BSQVAEConfig.tiny(codebook_dim=tc.vae_bits, ch=tc.vae_ch)
    icfg = InfinityConfig(depth=tc.depth, embed_dim=tc.embed_dim, num_heads=tc.num_heads, text_channels=tc.text_dim,
                          text_maxlen=world.MAX_PROMPT_WORDS, codebook_dim=tc.vae_bits, block_chunks=1,
                          pool_head_dim=32)
    wcfg = WordEncoderConfig(vocab=tuple(world.VOCAB), dim=tc.text_dim, depth=2, num_heads=4,
                             max_len=world.MAX_PROMPT_WORDS)
    return vcfg, icfg, wcfg


def to_model_images(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [B,32,32,3] -> float [B,3,32,32] in [-1,1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def encode_dataset(vae: BSQVAE, images_u8: np.ndarray, device, batch: int = 1024) -> list[torch.Tensor]:
    """All training images -> per-scale bit grids (uint8 tensors on the CPU)."""
    out: list[list[torch.Tensor]] = [[] for _ in TINY_SCALE_SCHEDULE]
    with torch.inference_mode():
        for s in range(0, len(images_u8), batch):
            _, bits = vae.encode_bits(to_model_images(images_u8[s:s + batch]).to(device), list(TINY_SCALE_SCHEDULE))
            for k, b in enumerate(bits):
                out[k].append(b.to(torch.uint8).cpu())
    return [torch.cat(x) for x in out]


def train_generator(gen: InfinityGenerator, text: WordTextEncoder, bits: list[torch.Tensor], prompts: list[str],
                    tc: TestbedConfig, device, log=print) -> dict:
    """Teacher-forced bitwise cross-entropy over all scales, with text dropout for CFG."""
    device = torch.device(device)
    model = gen.model.train()
    text.train()
    params = list(model.parameters()) + list(text.parameters())
    opt = adamw_no_decay_1d(params, tc.gen_lr, tc.weight_decay)
    ids_all = text.tokenize(prompts)
    amp = amp_dtype(tc)
    # PyTorch's CPU flash-attention backward is slow at these short sequences (130 tokens, 32-dim heads): the
    # plain math kernel made a whole training step 1.5-2x faster on 2 cores (bench note in docs/testbed.md)
    kernel = (lambda: sdpa_kernel(SDPBackend.MATH)) if device.type == "cpu" else contextlib.nullcontext
    g = torch.Generator().manual_seed(tc.seed + 1)
    sched = gen.scale_schedule
    lr_at = lambda step: warmup_cosine(step, tc.gen_steps, tc.gen_lr, tc.gen_warmup)  # noqa: E731
    steplog = StepLog("gpt", "bit_acc", tc.gen_steps, lr_at, log)
    for step in range(tc.gen_steps):
        idx = torch.randint(0, len(prompts), (tc.gen_batch,), generator=g)
        grids = [b[idx].to(device).long() for b in bits]
        x = teacher_inputs(gen, grids)  # [B,L-1,d]
        target = token_bits(gen, grids)  # [B,L,d]
        with kernel(), autocast(device, amp):
            feats, mask = text(ids_all[idx].to(device))
            drop = torch.rand(tc.gen_batch, generator=g).to(device) < tc.cond_drop
            if drop.any():
                un = model.uncond_text(mask.sum(1), feats.shape[1]).to(feats.dtype)
                feats = torch.where(drop[:, None, None], un, feats)
            logits = model(feats, mask, x, sched).float()  # [B,L,2d]
        B, L, V = logits.shape
        loss = F.cross_entropy(logits.view(-1, 2), target.reshape(-1))
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        with kernel():
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            acc = (logits.view(B, L, -1, 2).argmax(-1) == target).float().mean().item()
        steplog.add(step, loss.item(), acc)
    metrics = steplog.metrics
    metrics["seconds"] = time.time() - steplog.t0
    metrics["samples"] = tc.gen_steps * tc.gen_batch
    model.eval()
    text.eval()
    return metrics


def save_testbed(out: Path, gen: InfinityGenerator, text: WordTextEncoder, tc: TestbedConfig, info: dict) -> None:
    from ..output import write_weights

    vcfg, icfg, wcfg = model_configs(tc)
    sd = {f"gpt.{k}": v for k, v in gen.model.state_dict().items()}
    sd.update({f"text.{k}": v for k, v in text.state_dict().items()})
    sd.update({f"vae.{k}": v for k, v in gen.vae.state_dict().items()})
    # float16 halves the shipped size; the loader computes in float32
    write_weights(out / "shapes_tiny.safetensors",
                  {k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
                   for k, v in sd.items()},
                  {"testbed": asdict(tc), "vae": _cfg_dict(vcfg), "infinity": asdict(icfg),
                   "text": {**asdict(wcfg), "vocab": list(wcfg.vocab)},
                   "scale_schedule": [list(s) for s in TINY_SCALE_SCHEDULE], **info})


def _cfg_dict(cfg) -> dict:
    d = asdict(cfg)
    return {k: (list(map(list, v)) if k == "scale_schedule" and v else (list(v) if isinstance(v, tuple) else v))
            for k, v in d.items()}


def _check_config(tc: TestbedConfig) -> None:
    amp_dtype(tc)
    vcfg, icfg, wcfg = model_configs(tc)
    check_buildable(lambda: (BSQVAE(vcfg), Infinity(icfg), WordTextEncoder(wcfg)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ttsvar.testbed.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    p.add_argument("--skip-clip", action="store_true")
    p.add_argument("--skip-vae", action="store_true", help="reuse the VAE in --out")
    p.add_argument("--set", nargs="*", default=[], help="TestbedConfig overrides, e.g. gen_steps=100")
    args = p.parse_args(argv)
    tc = TestbedConfig(seed=args.seed)
    if args.quick:
        tc.vae_steps, tc.gen_steps, tc.train_examples, tc.gen_batch = 20, 20, 512, 8
    if not configure(tc, args.set, args.quick, args.out, WEIGHTS_DIR, check=lambda: _check_config(tc),
                     seed=args.seed, threads=args.threads, device=args.device):
        return 2  # amp: a bad value fails here, not after the data is built
    if args.threads:
        torch.set_num_threads(args.threads)
    out, device = Path(args.out), torch.device(args.device)
    command = "python -m ttsvar.testbed.train " + " ".join(argv if argv is not None else sys.argv[1:])
    t_all = time.time()
    vcfg, icfg, wcfg = model_configs(tc)

    print(f"[data] {tc.train_examples} training scenes (held-out prompts excluded), seed {tc.seed}")
    t0 = time.time()
    images, prompts, _ = world.make_dataset(tc.train_examples, tc.seed, holdout="exclude", p_distractor=tc.p_distractor)
    data_s = time.time() - t0


    rng = np.random.default_rng(tc.seed)

    def vae_batches(step: int) -> torch.Tensor:
        return to_model_images(images[rng.integers(0, len(images), tc.vae_batch)])

    torch.manual_seed(tc.seed)
    if args.skip_vae:
        from ..core.checkpoint import load_strict, read_state_dict, take_prefix

        vae = BSQVAE(vcfg)
        wpath = out / "shapes_tiny.safetensors"
        load_strict(vae, take_prefix(read_state_dict(wpath), "vae."), f"{wpath} [vae.*]")
        vae = vae.to(device).eval()
        vae_metrics = json.loads((out / "shapes_tiny.json").read_text()).get("vae_metrics", {})
    else:
        vae, vae_metrics = train_vae(vcfg, vae_batches, tc.vae_steps, lr=tc.vae_lr, seed=tc.seed, device=device,
                                     log_every=max(1, tc.vae_steps // 20), amp=amp_dtype(tc))
    vae.requires_grad_(False)
    held = world.make_dataset(512, tc.seed + 99, holdout="include")[0]
    vae_eval = evaluate_vae(vae, to_model_images(held).to(device))
    vae_eval["evaluator_score"] = reconstruction_score(vae)
    print(f"[vae] PSNR {vae_eval['psnr']:.2f} dB; exact evaluator on reconstructions "
          f"{vae_eval['evaluator_score']:.3f} (bar 0.95)")

    print("[gpt] encoding the training set to multi-scale bits")
    bits = encode_dataset(vae, images, device)
    torch.manual_seed(tc.seed + 2)
    model = Infinity(icfg).to(device)
    text = WordTextEncoder(wcfg).to(device)
    gen = InfinityGenerator(model, vae, text, list(TINY_SCALE_SCHEDULE), device=device)
    n_params = sum(q.numel() for q in model.parameters()) + sum(q.numel() for q in text.parameters())
    print(f"[gpt] {n_params / 1e6:.2f}M parameters (transformer + word encoder)")
    gen_metrics = train_generator(gen, text, bits, prompts, tc, device)
    info = {"seed": tc.seed, "command": command, "device": str(device), "data_seconds": data_s,
            "vae_metrics": vae_metrics, "vae_eval": vae_eval, "gpt_metrics": gen_metrics, "gpt_params": n_params,
            "torch": torch.__version__}
    save_testbed(out, gen, text, tc, info)
    print(f"[save] {out / 'shapes_tiny.safetensors'}")

    if not args.skip_clip:
        from .clip import TrainConfig, save_shapes_clip, train_clip

        # one thread: the shipped CLIP came from `python -m ttsvar.testbed.clip --threads 1`, and the tiny
        # CLIP's batches gain little from a second core
        ccfg = TrainConfig(seed=tc.seed, threads=1, **({"steps": 20, "log_every": 10} if args.quick else {}))
        clip, clip_metrics = train_clip(ccfg)
        save_shapes_clip(clip, out / "shapes_clip", {"seed": tc.seed, "command": command, **clip_metrics})
        print(f"[save] {out / 'shapes_clip.safetensors'}")
    print(f"[done] {time.time() - t_all:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

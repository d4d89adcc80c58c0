"""Train the testbed's tiny BSQ-VAE from scratch on CPU.

The testbed needs a tokenizer whose multi-scale bits a tiny Infinity transformer can learn to predict,
so training runs the same multi-scale residual quantiser the official VAE uses (the schedule in
`config.scale_schedule`, 1,2,3,4,6,8 for the 8x8 latent), with a straight-through estimator.

Loss = L1 reconstruction (flat colours: L1 keeps edges sharp and colours exact, L2 blurs them)
     + commit_weight * BSQ commitment (pulls each unit-sphere residual towards its code corner)
     + entropy_weight * (per-sample bit entropy - batch bit entropy), off by default
     + preview_weight * L1 of the image decoded from the codes of a random prefix of the scales (decoder
       only), off by default. Without it the decoder only ever sees complete sums, and decoding a partial sum (what a
       generator's intermediate preview does) gives noise at the coarse scales.

Who calls what: a testbed build script calls `train_vae(config, batches, ...)` with a batch function
from the shapes world, then saves `model.state_dict()` (official key layout) as safetensors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ttsvar.models.infinity.vae import BSQVAE, BSQVAEConfig


def warmup_cosine(step: int, steps: int, lr: float, warmup: int) -> float:
    """The testbed trainers' learning rate: linear warm-up, then a cosine down to 5% of `lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def adamw_no_decay_1d(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95) with weight decay on matrices only: biases, norms and gains keep their scale."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


class StepLog:
    """Running means of a training loop's loss and accuracy, written into `metrics` (lists "step", "loss",
    `acc_key`, "lr") every `steps // 40` steps and at the last step, and printed through `log` (None: silent)."""

    def __init__(self, name: str, acc_key: str, steps: int, lr_at: Callable[[int], float],
                 log: Callable | None = print):
        self.name, self.acc_key, self.steps, self.lr_at, self.log = name, acc_key, steps, lr_at, log
        self.metrics: dict[str, list] = {"step": [], "loss": [], acc_key: [], "lr": []}
        self.every = max(1, steps // 40)
        self.loss = self.acc = 0.0
        self.n = 0
        self.t0 = time.time()

    def add(self, step: int, loss: float, acc: float) -> None:
        self.loss, self.acc, self.n = self.loss + loss, self.acc + acc, self.n + 1
        if (step + 1) % self.every and step + 1 != self.steps:
            return
        m = self.metrics
        m["step"].append(step + 1)
        m["loss"].append(self.loss / self.n)
        m[self.acc_key].append(self.acc / self.n)
        m["lr"].append(self.lr_at(step))
        if self.log:
            self.log(f"{self.name} step {step + 1}/{self.steps} loss {self.loss / self.n:.4f} {self.acc_key} "
                     f"{self.acc / self.n:.4f} ({time.time() - self.t0:.0f}s)")
        self.loss = self.acc = 0.0
        self.n = 0


def train_vae(
    config: BSQVAEConfig,
    batches: Callable[[int], Tensor],
    steps: int,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 50,
    device: str | torch.device = "cpu",
    commit_weight: float = 0.25,
    entropy_weight: float = 0.0,
    warmup: int = 50,
    preview_weight: float = 0.0,
    log: Callable[[str], None] | None = print,
    amp: torch.dtype | None = None,
) -> tuple[BSQVAE, dict]:
    """Train a fresh `BSQVAE(config)`; `batches(step)` returns [B,3,H,W] images in [-1,1].

    Adam with linear warmup then cosine decay to lr/20, gradients clipped at 1. `amp` (e.g. torch.bfloat16)
    runs the convolutions under autocast; weights, the quantiser and the losses stay float32. Returns the
    model in eval mode and metrics: per logged step the mean loss terms since the previous log, plus wall time.
    """
    if config.scale_schedule is None:
        raise ValueError("train_vae needs config.scale_schedule (the multi-scale grids to train with), "
                         "e.g. BSQVAEConfig.tiny()")
    if steps < 1 or lr <= 0 or log_every < 1:
        raise ValueError(f"need steps >= 1, lr > 0, log_every >= 1; got steps={steps}, lr={lr}, "
                         f"log_every={log_every}")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = BSQVAE(config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:
        return warmup_cosine(step, steps, lr, warmup)

    metrics: dict[str, list] = {"step": [], "loss": [], "recon_l1": [], "commit": [], "entropy": [],
                                "preview_l1": [], "lr": []}
    n_scales = len(config.scale_schedule)
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(5)
    n_acc = 0
    t0 = time.time()
    for step in range(steps):
        x = batches(step)
        if x.ndim != 4 or x.shape[1] != config.in_channels:
            raise ValueError(f"batches({step}) returned {tuple(x.shape)}; "
                             f"expected [B,{config.in_channels},H,W]")
        x = x.to(device, torch.float32)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with autocast(device, amp):
            q = model.quantize(model.encode_features(x), config.scale_schedule)  # the quantiser casts to fp32
            rec = model.decode(q.z_hat, clamp=False)
        l1 = F.l1_loss(rec.float(), x)
        loss = l1 + commit_weight * q.commit_loss + entropy_weight * q.entropy_loss
        preview_l1 = torch.zeros((), device=x.device)
        if preview_weight > 0 and n_scales > 1:
            k = int(torch.randint(1, n_scales, (1,), generator=gen))  # a strict prefix: 1..S-1 scales
            # detached: the preview teaches the decoder to read partial sums without pulling the encoder
            # away from the full reconstruction (with gradients into the encoder it lost colour here)
            with autocast(device, amp):
                preview = model.decode(sum(q.codes[:k]).detach(), clamp=False)
            preview_l1 = F.l1_loss(preview.float(), x)
            loss = loss + preview_weight * preview_l1
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VAE loss became {loss.item()} at step {step}; lower lr (now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc += torch.stack([loss.detach(), l1.detach(), q.commit_loss.detach(), q.entropy_loss.detach(),
                            preview_l1.detach()]).cpu()
        n_acc += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            m = (acc / n_acc).tolist()
            for name, v in zip(("loss", "recon_l1", "commit", "entropy", "preview_l1"), m):
                metrics[name].append(v)
            metrics["step"].append(step + 1)
            metrics["lr"].append(lr_at(step))
            if log is not None:
                log(f"vae step {step + 1}/{steps} loss {m[0]:.4f} l1 {m[1]:.4f} commit {m[2]:.4f} "
                    f"entropy {m[3]:.3f} preview_l1 {m[4]:.4f} ({time.time() - t0:.0f}s)")
            acc.zero_()
            n_acc = 0
    metrics["seconds"] = time.time() - t0
    return model.eval(), metrics


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device` (bf16 runs ~2x faster on CPUs with AVX512-BF16 and on GPUs); a no-op
    context for None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.inference_mode()
def evaluate_vae(model: BSQVAE, images: Tensor, scale_schedule: list[tuple[int, int]] | None = None) -> dict:
    """Reconstruction quality through the bits: PSNR (images in [-1,1] mapped to [0,1]), mean |error|,
    PSNR of the image decoded from the first k scales (k = 1..S, the last equals `psnr`), and per-bit
    usage (fraction of ones per bit and scale; near 0 or 1 means a wasted bit)."""
    schedule = scale_schedule if scale_schedule is not None else model.config.scale_schedule
    if schedule is None:
        raise ValueError("evaluate_vae needs a scale schedule (argument or config.scale_schedule)")
    def psnr(rec: Tensor) -> float:
        mse = ((rec - images) / 2).pow(2).mean(dim=(1, 2, 3))
        return (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()

    q = model.quantize(model.encode_features(images), schedule)
    rec = model.decode(q.z_hat)
    return {
        "psnr": psnr(rec),
        "l1": (rec - images).abs().mean().item(),
        "psnr_prefix": [psnr(model.decode(sum(q.codes[:k]))) for k in range(1, len(q.codes) + 1)],
        "bit_ones": torch.stack([b.float().mean(dim=(0, 1, 2)) for b in q.bits]),  # [scales, d]
    }


@torch.inference_mode()
def reconstruction_score(model: BSQVAE, n: int = 256, seed: int = 5,
                         scale_schedule: list[tuple[int, int]] | None = None) -> float:
    """The testbed's VAE quality bar: the exact evaluator's accuracy on reconstructions (through the bits)
    of `n` rendered shapes-world scenes with their GenEval metadata, all tags."""
    from ttsvar.output import to_uint8

    from . import world
    from .evaluator import ShapesEvaluator

    schedule = scale_schedule if scale_schedule is not None else model.config.scale_schedule
    images, _, metadata = world.make_dataset(n, seed, holdout="include")
    device = next(model.parameters()).device
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    z, _ = model.encode_bits(x, list(schedule))
    rec = to_uint8(((model.decode(z) + 1) / 2).clamp(0, 1))
    ev = ShapesEvaluator()
    return float(sum(ev.evaluate(im, md).correct for im, md in zip(rec, metadata)) / n)


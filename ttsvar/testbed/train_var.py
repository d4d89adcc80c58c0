"""Train the embedded `shapes-var-tiny` from a seed: the VAR multi-scale VQ-VAE, then the class-conditional VAR.

    python -m ttsvar.testbed.train_var [--threads 2] [--out DIR] [--seed 0] [--quick] [--set gen_steps=400 ...]

Both are the project's VAR classes (`ttsvar.models.var`) at a tiny configuration; nothing here is a second
model. The classes are the shapes world's prompts of `CLASS_TAGS` (`class_prompts`): class k is the scene its
prompt text describes, so the exact evaluator can judge every sample by the class's GenEval metadata. Held-out
prompts are trained like the others: a class-conditional model cannot name a class it never saw, so the world's
held-out combinations have no meaning here (docs/testbed.md).

Outputs (in --out, default the package's `weights/` folder): `shapes_var_tiny.safetensors` (float16, keys
`var.*` and `vae.*`) and `shapes_var_tiny.json` (both configs, the class list with each class's metadata, the
training record and the command; the sampling defaults live in the model's registration, not in the file).

Everything trains in float32: this project's bf16 autocast recipe (`train.py`) needs a CPU with bf16 matmuls,
and on a CPU without them PyTorch's bf16 convolutions and matmuls ran 5-10x slower than float32.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.var.model import VAR, VARConfig
from ..models.var.vqvae import VQVAE, MultiScaleQuantizer, VQVAEConfig
from . import world
from .overrides import check_buildable, configure
from .train_vae import StepLog, adamw_no_decay_1d, warmup_cosine

WEIGHTS_DIR = Path(__file__).parent / "weights"
NAME = "shapes_var_tiny"
# the tags whose prompts become classes: each is one scene description with an exact verdict; position (24
# relations) and color_attr (180 pairs) would double and then sextuple the classes for the same training budget
CLASS_TAGS = ("single_object", "two_object", "counting", "colors")
PATCH_NUMS = (1, 2, 3, 4, 6, 8)  # the token grids of a 32 px image through a 4x down-sampling VAE (130 tokens)


def class_prompts(tags: tuple[str, ...] = CLASS_TAGS) -> list[dict]:
    """The class list: every shapes-world prompt of `tags`, in the world's order (GenEval metadata each)."""
    return world.prompts_of("all", tags)


@dataclass
class VarTrainConfig:
    seed: int = 0
    # VQ-VAE
    vocab_size: int = 256
    Cvae: int = 8
    vae_ch: int = 32  # the smallest width GroupNorm(32) allows
    vae_res_blocks: int = 0  # the decoder still has one block per level (it builds num_res_blocks + 1)
    vae_norm_groups: int = 8  # 4 channels per group (32 groups of 1 channel lose each flat colour's offset)
    vae_steps: int = 3000
    vae_batch: int = 24
    vae_lr: float = 2e-3
    beta: float = 0.25  # commitment weight, VAR's default
    restart_every: int = 20  # steps between re-seeding codes that no residual picked
    # transformer
    depth: int = 4
    embed_dim: int = 128
    num_heads: int = 4
    gen_steps: int = 800
    gen_batch: int = 64
    gen_lr: float = 2e-3
    gen_warmup: int = 50
    weight_decay: float = 0.05
    cond_drop: float = 0.1  # rows trained with the null class, for classifier-free guidance
    train_examples: int = 40_000  # scenes in the pool both stages draw from


def model_configs(tc: VarTrainConfig, num_classes: int) -> tuple[VQVAEConfig, VARConfig]:
    vcfg = VQVAEConfig(vocab_size=tc.vocab_size, Cvae=tc.Cvae, ch=tc.vae_ch, ch_mult=(1, 1, 2),
                       num_res_blocks=tc.vae_res_blocks, v_patch_nums=PATCH_NUMS, norm_groups=tc.vae_norm_groups)
    mcfg = VARConfig(depth=tc.depth, embed_dim=tc.embed_dim, num_heads=tc.num_heads, num_classes=num_classes,
                     vocab_size=tc.vocab_size, Cvae=tc.Cvae, patch_nums=PATCH_NUMS)
    return vcfg, mcfg


def to_model_images(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [B,32,32,3] -> float [B,3,32,32] in [-1,1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1)


# ----------------------------------------------------------------------------- VQ-VAE


def _nearest(z: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code [N] for rows z [N,C] of the codebook E [V,C]."""
    return torch.cdist(z, E).argmin(1)


def quantize_st(q: MultiScaleQuantizer, f: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, list]:
    """VAR's training-time residual quantization of encoder features f [B,C,H,W], the same scales and phi as
    `MultiScaleQuantizer.f_to_idx`. Returns the straight-through f_hat (its value is the quantized sum, its
    gradient goes to f), the VQ loss (per scale, the commitment beta*|sg(f_hat) - f|^2 plus the codebook term
    |f_hat - sg(f)|^2, which also trains phi) and per scale the residuals [N,C] the codes were matched to (for
    re-seeding unused codes)."""
    B, C, H, W = f.shape
    S = len(q.v_patch_nums)
    f_ng = f.detach()
    rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
    loss, residuals = f.new_zeros(()), []
    for si, pn in enumerate(q.v_patch_nums):
        z = rest if si == S - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
        z = z.permute(0, 2, 3, 1).reshape(-1, C)  # [B*pn*pn,C]
        idx = _nearest(z, q.embedding.weight.detach()).view(B, pn * pn)
        h = q.codes_to_fhat_part(si, q.lookup(idx, pn))  # [B,C,H,W], differentiable in the codes and phi
        f_hat = f_hat + h
        rest = rest - h.detach()
        loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
        residuals.append(z)
    return f_hat.detach() - f_ng + f, loss / S, residuals


def train_vqvae(vcfg: VQVAEConfig, images: np.ndarray, tc: VarTrainConfig, log: Callable | None = print
                ) -> tuple[VQVAE, dict]:
    """L1 reconstruction (flat colours: L1 keeps edges and colours exact) + VAR's VQ loss, Adam with warm-up and
    cosine decay. The codebook starts from encoder residuals of the first batch, and every `restart_every` steps
    the codes no residual picked are re-seeded from residuals of the current batch (a tiny codebook trained from
    scratch otherwise loses most of its codes)."""
    torch.manual_seed(tc.seed)
    vae = VQVAE(vcfg).train()
    opt = torch.optim.Adam(vae.parameters(), lr=tc.vae_lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(tc.seed)
    E = vae.quantize.embedding.weight
    hits = torch.zeros(vcfg.vocab_size)
    metrics: dict[str, list] = {"step": [], "loss": [], "recon_l1": [], "vq": [], "codes_used": []}
    acc = torch.zeros(3)
    n_acc, t0 = 0, time.time()
    log_every = max(1, tc.vae_steps // 20)
    for step in range(tc.vae_steps):
        x = to_model_images(images[rng.integers(0, len(images), tc.vae_batch)])
        f = vae.quant_conv(vae.encoder(x))
        if step == 0:
            with torch.no_grad():
                z = f.permute(0, 2, 3, 1).reshape(-1, vcfg.Cvae)
                E.copy_(z[torch.randint(0, len(z), (vcfg.vocab_size,))] + 0.01 * torch.randn_like(E))
        f_hat, vq, residuals = quantize_st(vae.quantize, f, tc.beta)
        rec = vae.decoder(vae.post_quant_conv(f_hat))
        l1 = F.l1_loss(rec, x)
        loss = l1 + vq
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, tc.vae_steps, tc.vae_lr, 20)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            z = torch.cat(residuals)
            hits += torch.bincount(_nearest(z, E), minlength=vcfg.vocab_size).float()
            if (step + 1) % tc.restart_every == 0:
                dead = (hits == 0).nonzero().flatten()
                if len(dead):
                    E[dead] = z[torch.randint(0, len(z), (len(dead),))] + 0.01 * torch.randn(len(dead), vcfg.Cvae)
                used = int((hits > 0).sum())
                hits.zero_()
        acc += torch.stack([loss.detach(), l1.detach(), vq.detach()])
        n_acc += 1
        if (step + 1) % log_every == 0 or step + 1 == tc.vae_steps:
            m = (acc / n_acc).tolist()
            metrics["step"].append(step + 1)
            for k, v in zip(("loss", "recon_l1", "vq"), m):
                metrics[k].append(v)
            metrics["codes_used"].append(used if step + 1 >= tc.restart_every else None)
            if log:
                log(f"vae step {step + 1}/{tc.vae_steps} loss {m[0]:.4f} l1 {m[1]:.4f} vq {m[2]:.4f} "
                    f"({time.time() - t0:.0f}s)")
            acc.zero_()
            n_acc = 0
    metrics["seconds"] = time.time() - t0
    return vae.eval().requires_grad_(False), metrics


@torch.inference_mode()
def encode_indices(vae: VQVAE, images: np.ndarray, batch: int = 512) -> list[torch.Tensor]:
    """Images -> per-scale code indices [N, pn*pn] (int16, on the CPU): the transformer's targets."""
    out: list[list[torch.Tensor]] = [[] for _ in vae.v_patch_nums]
    for s in range(0, len(images), batch):
        for k, idx in enumerate(vae.img_to_idx(to_model_images(images[s:s + batch]))):
            out[k].append(idx.to(torch.int16))
    return [torch.cat(x) for x in out]


@torch.inference_mode()
def reconstruction_score(vae: VQVAE, tags: tuple[str, ...] = CLASS_TAGS, n: int = 256, seed: int = 5) -> float:
    """The exact evaluator's accuracy on reconstructions (through the codes) of `n` rendered scenes of the
    class prompts, each judged by its prompt's metadata."""
    from ..output import to_uint8
    from .evaluator import ShapesEvaluator

    images, _, metadata = world.make_dataset(n, seed, holdout="include", tags=tags)
    rec = vae.fhat_to_img(vae.idx_to_fhat(vae.img_to_idx(to_model_images(images))))  # [n,3,32,32] in [-1,1]
    ev = ShapesEvaluator()
    rec_u8 = to_uint8((rec + 1) / 2)
    return float(np.mean([r.correct for r in ev.evaluate_batch(rec_u8, metadata)]))


# ----------------------------------------------------------------------------- transformer


def init_var(model: VAR, seed: int) -> None:
    """Our initialisation for training from scratch: linear layers N(0, 0.02), zero biases; each block's AdaLN
    projection starts at zero, so every block starts as the identity (gates 0) and the modulation is learned
    (DiT's adaLN-Zero), and the head starts small so the first logits are near uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(1 / model.C / 3))
        for b in model.blocks:
            if hasattr(b, "ada_lin"):
                b.ada_lin[-1].weight.zero_()
        model.head_nm.ada_lin[-1].weight.zero_()
        model.head.weight.mul_(0.1)


def train_var(model: VAR, vae: VQVAE, indices: list[torch.Tensor], labels: torch.Tensor, tc: VarTrainConfig,
              log: Callable | None = print) -> dict:
    """Teacher-forced cross-entropy over the tokens of all scales (the inputs are the next-scale inputs the
    sampler builds, `VQVAE.idx_to_var_input`), with `cond_drop` of the rows on the null class."""
    model.train()
    opt = adamw_no_decay_1d(list(model.parameters()), tc.gen_lr, tc.weight_decay)
    # PyTorch's CPU flash-attention backward is slow at 130 tokens of 32-dim heads (as for shapes-tiny, train.py)
    kernel = lambda: sdpa_kernel(SDPBackend.MATH)  # noqa: E731
    g = torch.Generator().manual_seed(tc.seed + 1)
    V, null = model.config.vocab_size, model.config.num_classes
    lr_at = lambda step: warmup_cosine(step, tc.gen_steps, tc.gen_lr, tc.gen_warmup)  # noqa: E731
    steplog = StepLog("var", "acc", tc.gen_steps, lr_at, log)
    for step in range(tc.gen_steps):
        rows = torch.randint(0, len(labels), (tc.gen_batch,), generator=g)
        idx = [x[rows].long() for x in indices]
        with torch.no_grad():
            x_in = vae.idx_to_var_input(idx)  # [B,L-1,Cvae]
        lab = labels[rows].clone()
        lab[torch.rand(tc.gen_batch, generator=g) < tc.cond_drop] = null
        target = torch.cat(idx, dim=1)  # [B,L]
        with kernel():
            logits = model(lab, x_in)  # [B,L,V]
            loss = F.cross_entropy(logits.view(-1, V), target.view(-1))
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        with kernel():
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steplog.add(step, loss.item(), (logits.argmax(-1) == target).float().mean().item())
    metrics = steplog.metrics
    metrics["seconds"] = time.time() - steplog.t0
    metrics["samples"] = tc.gen_steps * tc.gen_batch
    model.eval().requires_grad_(False)
    return metrics


# ----------------------------------------------------------------------------- files


def save_shapes_var(out: Path, model: VAR, vae: VQVAE, classes: list[dict], record: dict,
                    name: str = NAME) -> Path:
    """float16 safetensors (`var.*`, `vae.*`) and the JSON record beside it; returns the weights path."""
    from ..output import write_weights

    sd = {f"var.{k}": v for k, v in model.state_dict().items()}
    sd.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    path = out / f"{name}.safetensors"
    # float16 halves the shipped size; the loader computes in float32
    write_weights(path, {k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
                         for k, v in sd.items()},
                  {"var": asdict(model.config), "vqvae": asdict(vae.config),
                   "classes": [m["prompt"] for m in classes], "class_metadata": classes, **record})
    return path


def load_vqvae_from(path: Path, vcfg: VQVAEConfig) -> VQVAE:
    """The `vae.*` part of an earlier run's weights (`--vae-from`), strictly."""
    from ..core.checkpoint import load_strict, read_state_dict, take_prefix

    sd = take_prefix({k: v.float() for k, v in read_state_dict(path).items()}, "vae.")
    vae = VQVAE(vcfg)
    load_strict(vae, sd, f"{path} [vae.*]")
    return vae.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ttsvar.testbed.train_var", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    p.add_argument("--vae-from", default=None, help="reuse the VQ-VAE of this shapes_var_tiny.safetensors")
    p.add_argument("--set", nargs="*", default=[], help="VarTrainConfig overrides, e.g. gen_steps=100")
    args = p.parse_args(argv)
    tc = VarTrainConfig(seed=args.seed)
    if args.quick:
        tc.vae_steps, tc.gen_steps, tc.train_examples, tc.vae_batch, tc.gen_batch = 20, 20, 512, 16, 16
    if not configure(tc, args.set, args.quick, args.out, WEIGHTS_DIR, seed=args.seed, threads=args.threads,
                     check=lambda: check_buildable(lambda: [f(c) for f, c in zip(
                         (VQVAE, VAR), model_configs(tc, len(class_prompts())))])):
        return 2
    if args.vae_from and not Path(args.vae_from).is_file():
        print(f"error: --vae-from {args.vae_from}: no such file (give an earlier run's shapes_var_tiny.safetensors)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    command = "python -m ttsvar.testbed.train_var " + " ".join(argv if argv is not None else sys.argv[1:])
    classes = class_prompts()
    class_of = {m["prompt"]: k for k, m in enumerate(classes)}
    vcfg, mcfg = model_configs(tc, len(classes))
    t_all = time.time()

    print(f"[data] {tc.train_examples} scenes of {len(classes)} classes ({', '.join(CLASS_TAGS)}), seed {tc.seed}")
    t0 = time.time()
    images, prompts, _ = world.make_dataset(tc.train_examples, tc.seed, holdout="include", tags=CLASS_TAGS)
    labels = torch.tensor([class_of[q] for q in prompts])
    data_s = time.time() - t0

    if args.vae_from:
        vae = load_vqvae_from(Path(args.vae_from), vcfg)
        vae_metrics = {"from": args.vae_from}
    else:
        vae, vae_metrics = train_vqvae(vcfg, images, tc)
    t0 = time.time()
    vae_score = reconstruction_score(vae)
    print(f"[vae] exact evaluator on reconstructions {vae_score:.3f} ({time.time() - t0:.0f}s)")

    t0 = time.time()
    indices = encode_indices(vae, images)
    encode_s = time.time() - t0
    used = len(torch.unique(torch.cat([x.flatten() for x in indices])))
    print(f"[var] encoded {len(images)} scenes in {encode_s:.0f}s; {used} of {tc.vocab_size} codes in use")
    torch.manual_seed(tc.seed + 2)
    model = VAR(mcfg)
    init_var(model, tc.seed + 2)
    print(f"[var] {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M parameters")
    var_metrics = train_var(model, vae, indices, labels, tc)
    record = {"train": asdict(tc), "class_tags": list(CLASS_TAGS), "command": command, "seed": tc.seed,
              "threads": torch.get_num_threads(), "data_seconds": data_s, "encode_seconds": encode_s,
              "vae_metrics": vae_metrics, "vae_evaluator_score": vae_score, "codes_in_use": used,
              "var_metrics": var_metrics, "total_seconds": time.time() - t_all, "torch": torch.__version__}
    path = save_shapes_var(out, model, vae, classes, record)
    print(f"[save] {path}\n[done] {time.time() - t_all:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

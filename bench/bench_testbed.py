"""Quality of the embedded generators `shapes-tiny` and `shapes-var-tiny`, judged by the exact evaluator.

For a fixed prompt set (n per tag, train and held-out splits) it samples K images per prompt with plain
sampling and reports: the single-sample score (mean over the K samples) per tag and overall (= mean of
tags, as GenEval), and the oracle Best-of-K (a prompt counts if any of its K samples is correct), which
bounds what any reward can reach. Also the VAE's reconstruction score on rendered ground truth.
`--model shapes-var-tiny`: the prompts are the model's classes (every class once, `--per-tag` ignored; it has
no held-out split) and the reconstruction score is its VQ-VAE's on scenes of those classes.

    python bench/bench_testbed.py [--model shapes-tiny] [--weights PATH] [--per-tag 16] [--k 8] [--cfg 3]
                                  [--tau 1.0] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ttsvar.core.generator import SamplingConfig
from ttsvar.testbed import world
from ttsvar.testbed.evaluator import ShapesEvaluator
from ttsvar.testbed.model import load_shapes_tiny
from ttsvar.testbed.train_reward import sample_images
from ttsvar.testbed.train_vae import reconstruction_score
from ttsvar.testbed.train_var import class_prompts
from ttsvar.testbed.train_var import reconstruction_score as var_reconstruction_score
from ttsvar.testbed.var_model import load_shapes_var_tiny


def score(images: np.ndarray, metadata: list[dict]) -> dict:
    ev = ShapesEvaluator()
    tags = sorted({m["tag"] for m in metadata})
    per_tag_single, per_tag_oracle = {t: [] for t in tags}, {t: [] for t in tags}
    for imgs, md in zip(images, metadata):
        ok = [ev.evaluate(im, md).correct for im in imgs]
        per_tag_single[md["tag"]].append(np.mean(ok))
        per_tag_oracle[md["tag"]].append(float(any(ok)))
    single = {t: float(np.mean(v)) for t, v in per_tag_single.items()}
    oracle = {t: float(np.mean(v)) for t, v in per_tag_oracle.items()}
    return {"single": single, "oracle": oracle, "overall_single": float(np.mean(list(single.values()))),
            "overall_oracle": float(np.mean(list(oracle.values())))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default=None)
    p.add_argument("--per-tag", type=int, default=16)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--cfg", type=float, nargs="*", default=[3.0])
    p.add_argument("--tau", type=float, nargs="*", default=[1.0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--model", default="shapes-tiny", choices=("shapes-tiny", "shapes-var-tiny"))
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model == "shapes-var-tiny":
        gen = load_shapes_var_tiny(a.weights, a.device)
        rec = var_reconstruction_score(gen.vae)
        classes = class_prompts()
        splits = {"classes": (classes, [str(k) for k in range(len(classes))])}
    else:
        gen = load_shapes_tiny(a.weights, a.device)
        rec = reconstruction_score(gen.vae, 256, 5, gen.vae_schedule)
        splits = {}
        for split in ("train", "heldout"):
            md = world.eval_prompts(a.per_tag, seed=a.seed, split=split)
            splits[split] = (md, [m["prompt"] for m in md])
    print(f"VAE reconstruction score (evaluator accuracy on 256 rendered scenes): {rec:.3f}")
    for split, (md, prompts) in splits.items():
        for cfg in a.cfg:
            for tau in a.tau:
                gen.set_sampling(SamplingConfig(cfg=cfg, tau=tau, top_k=0, top_p=0.0))
                t0 = time.perf_counter()
                imgs = sample_images(gen, prompts, a.k, [a.seed + i for i in range(len(prompts))])
                s = score(imgs, md)
                dt = time.perf_counter() - t0
                tags = " ".join(f"{t}={s['single'][t]:.2f}/{s['oracle'][t]:.2f}" for t in sorted(s["single"]))
                print(f"| {split:7s} | cfg {cfg:g} tau {tau:g} | N=1 {s['overall_single']:.3f} | "
                      f"oracle best-of-{a.k} {s['overall_oracle']:.3f} | {tags} | {len(prompts)} prompts, {dt:.0f}s |")


if __name__ == "__main__":
    main()

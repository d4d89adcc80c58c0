"""Speed of `ttsvar geneval score`: images per second through the whole scorer (read the PNG, detect, GenEval's
filter and rules, results line).

    python bench/bench_geneval.py [--per-tag 20] [--images 8] [--threads 1] [--seed 0]
    python bench/bench_geneval.py --full [--device cuda] [--images 16]

Rows:

* ``shapes``: `evaluate_sample_folder(--detector shapes)` on a GenEval-layout folder of shapes-world renders
  (``--per-tag`` prompts per tag, one sample each, 32x32);
* ``mask2former tiny``: the mask2former pipeline (mmdet's test pipeline, transformers' Mask2Former, mmdet's instance
  post-processing, GenEval's filter) at the tiny size of tests/test_geneval_mask2former.py, random weights, on
  ``--images`` 512x512 images (GenEval's size: resized to 800x800); CPU;
* ``mask2former full`` (``--full``): GenEval's Swin-S size, random weights, on ``--device`` (cuda); skipped without
  CUDA.

The mask2former rows use no colour prompts (the CLIP classifier needs its weights) and time detection + rules.
Random weights make the post-processing keep all 100 queries; with real weights the work is the same.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from ttsvar.eval import mask2former as m2f
from ttsvar.eval.evaluate import evaluate_sample_folder
from ttsvar.eval.geneval import write_sample_folder
from ttsvar.testbed import world

TINY = m2f.Mask2FormerSize(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=7, hidden_dim=32,
                           encoder_layers=1, encoder_ffn=16, decoder_layers=3, decoder_ffn=16, num_queries=5,
                           num_classes=80)
PROMPTS = [
    {"tag": "single_object", "prompt": "a photo of a dog", "include": [{"class": "dog", "count": 1}]},
    {"tag": "counting", "prompt": "a photo of three cats", "include": [{"class": "cat", "count": 3}],
     "exclude": [{"class": "cat", "count": 4}]},
    {"tag": "position", "prompt": "a photo of a dog right of a teddy bear",
     "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]},
]


def bench_shapes(per_tag: int, seed: int) -> tuple[int, float]:
    rng = np.random.default_rng(seed)
    prompts = world.eval_prompts(per_tag, seed=seed)
    images = world.render_batch([world.sample_scene_for(m, rng, p_distractor=0.5) for m in prompts])
    with tempfile.TemporaryDirectory() as root:
        for i, (md, img) in enumerate(zip(prompts, images)):
            write_sample_folder(root, i, md, [img])
        t0 = time.perf_counter()
        evaluate_sample_folder(root, "shapes", outfile=f"{root}/results.jsonl")
        return len(prompts), time.perf_counter() - t0


def bench_mask2former(size: m2f.Mask2FormerSize, n: int, device: str, seed: int) -> tuple[int, float]:
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(seed)
    ev = object.__new__(m2f.Mask2FormerEvaluator)  # the evaluator without checkpoint files: random weights
    ev.model = Mask2FormerForUniversalSegmentation(size.hf_config()).eval().to(device)
    ev.device, ev.filter, ev.position_threshold = device, m2f.FilterOptions(), m2f.POSITION_THRESHOLD
    rng = np.random.default_rng(seed)
    blobs = rng.integers(0, 256, (n, 33, 33, 3), dtype=np.uint8)
    images = [np.kron(b, np.ones((16, 16, 1), np.uint8))[:512, :512] for b in blobs]
    ev.evaluate(images[0], PROMPTS[0])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        ev.evaluate(img, PROMPTS[i % len(PROMPTS)])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-tag", type=int, default=20, help="shapes row: prompts per tag")
    p.add_argument("--images", type=int, default=8, help="mask2former rows: timed images")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--full", action="store_true", help="also GenEval's full size (random weights) on --device")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    n, s = bench_shapes(args.per_tag, args.seed)
    rows.append(("shapes (32x32 renders)", "cpu", n, s))
    n, s = bench_mask2former(TINY, args.images, "cpu", args.seed)
    rows.append(("mask2former tiny, random (512x512 -> 800x800)", "cpu", n, s))
    if args.full:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            print("--full: no CUDA device here; the full-size row is skipped")
        else:
            n, s = bench_mask2former(m2f.Mask2FormerSize(), args.images, args.device, args.seed)
            rows.append(("mask2former Swin-S, random (512x512 -> 800x800)", args.device, n, s))

    print(f"ttsvar geneval score: images/s, {args.threads} torch thread(s) on the CPU")
    print(f"{'detector':<50} {'device':<8} {'images':>7} {'s':>8} {'images/s':>9} {'ms/image':>9}")
    for name, device, n, s in rows:
        print(f"{name:<50} {device:<8} {n:>7} {s:>8.2f} {n / s:>9.1f} {1e3 * s / n:>9.1f}")


if __name__ == "__main__":
    main()

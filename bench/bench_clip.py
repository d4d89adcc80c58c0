"""Quality and speed of the tiny shapes CLIP, judged by the exact evaluator.

    python bench/bench_clip.py [--weights PATH] [--images-per-prompt 4] [--seed 0]

For the training prompts and the held-out prompts (combinations never seen in training captions)
separately, prints `clip.evaluate_clip`'s numbers on clean renders and on renders blurred with
sigma 0.8 (soft images, as a generator makes):

* t2i R@1 - the top-scored gallery image is correct for the prompt;
* prompt AUROC - ranking of correct vs incorrect gallery images for one prompt (what best-of-N needs);
* i2t R@1 - the top-scored of all 240 prompts is correct for the image;
* pair acc - own prompt scores above a one-attribute perturbation (colour, count, relation, shape,
  colour binding) that the evaluator rejects;
* AUROC / Pearson of the score with the evaluator's verdict over all (image, prompt) pairs.

Also: feature structure (share of images whose nearest neighbour by image features shows the same
shapes, and the same coloured shapes, vs chance) and scoring throughput.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch

from ttsvar.testbed import world
from ttsvar.testbed.clip import evaluate_clip, load_shapes_clip


def feature_structure(clip, n: int, seed: int) -> dict:
    scenes, _ = world.make_scenes(n, seed, holdout="include")
    f = clip.extract(world.render_batch(scenes))
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(1)
    kinds = [tuple(sorted(s.kind for s in sc.shapes)) for sc in scenes]
    objects = [tuple(sorted((s.kind, s.color) for s in sc.shapes)) for sc in scenes]
    out = {}
    for name, key in (("same shapes", kinds), ("same coloured shapes", objects)):
        counts = Counter(key)
        chance = sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
        out[name] = (float(np.mean([key[i] == key[j] for i, j in enumerate(nn)])), chance)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="<name>.safetensors next to <name>.json (default: shipped)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clip = load_shapes_clip(args.weights)
    n_params = sum(v.numel() for v in clip.model.parameters())
    print(f"shapes CLIP: {n_params / 1e6:.2f}M parameters; trained with: {clip.record.get('command', '?')}")

    results = {}
    for split in ("train", "heldout"):
        for sigma in (0.0, 0.8):
            results[split, sigma] = evaluate_clip(clip, split, args.images_per_prompt, args.seed, blur_sigma=sigma)

    cols = ("t2i_r1", "prompt_auroc", "i2t_r1", "pair_acc", "auroc", "pearson")
    print(f"\n{'split':<8} {'images':<9} {'n_img':>6} " + " ".join(f"{c:>12}" for c in cols))
    for (split, sigma), r in results.items():
        label = "clean" if sigma == 0 else f"blur {sigma}"
        print(f"{split:<8} {label:<9} {r['n_images']:>6} " + " ".join(f"{r[c]:>12.3f}" for c in cols))

    print("\nper tag (clean): t2i R@1 / prompt AUROC / pair acc")
    print(f"{'tag':<14} {'train':>22} {'heldout':>22}")
    for tag in world.TAGS:
        cells = []
        for split in ("train", "heldout"):
            t = results[split, 0.0]["per_tag"].get(tag)
            cells.append(f"{t['t2i_r1']:.2f} / {t['prompt_auroc']:.2f} / {t['pair_acc']:.2f}" if t else "-")
        print(f"{tag:<14} {cells[0]:>22} {cells[1]:>22}")

    print("\nimage-feature structure: nearest neighbour shows the same ... (vs chance)")
    for name, (acc, chance) in feature_structure(clip, 1000, args.seed).items():
        print(f"  {name:<22} {acc:.3f}  (chance {chance:.3f})")

    images = torch.rand(256, 3, 32, 32)
    prompts = [m["prompt"] for m in world.eval_prompts(43, seed=0)][:256]
    clip.score(images[:8], prompts[:8])
    t0 = time.perf_counter()
    clip.score(images, prompts)
    dt = time.perf_counter() - t0
    print(f"\nscore(): {256 / dt:,.0f} images/s on CPU ({torch.get_num_threads()} threads, batch 256)")


if __name__ == "__main__":
    main()

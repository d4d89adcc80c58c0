"""Accuracy and speed of the exact shapes-world evaluator on clean, blurred and noisy renders.

    python bench/bench_evaluator.py [--per-tag 200] [--seed 0]

For every GenEval tag, ``--per-tag`` prompts (world.eval_prompts, all splits) each get one random
ground-truth scene (with a distractor half of the time). Two numbers per tag and condition:

* ``pos``: share of ground-truth renders the evaluator judges correct for their own prompt;
* ``neg``: share of one-attribute perturbed prompts (world.perturb_prompt: wrong colour, count,
  shape, swapped relation or colour binding) whose verdict equals the exact truth table
  (world.prompt_truth, from the scene description; undecidable pairs skipped).

Conditions: clean; Gaussian blur sigma 0.5 and 0.8 px; Gaussian noise sigma 8 and 16 (0-255 scale);
and, as stress rows beyond the spec, blur 1.2 and noise 32.
Also prints the dataset generator's speed (100k examples) and the evaluator's time per image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from ttsvar.testbed import world
from ttsvar.testbed.evaluator import ShapesEvaluator

CONDITIONS = ("clean", "blur 0.5", "blur 0.8", "noise 8", "noise 16")
STRESS = ("blur 1.2", "noise 32")  # beyond the spec, to show where the evaluator starts to fail


def corrupt(images: np.ndarray, condition: str, seed: int) -> np.ndarray:
    if condition == "clean":
        return images
    kind, value = condition.split()
    x = images.astype(np.float32)
    if kind == "blur":
        x = ndimage.gaussian_filter(x, (0, float(value), float(value), 0))
    else:
        x = x + np.random.default_rng(seed).normal(0, float(value), x.shape)
    return np.clip(x.round(), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-tag", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    world.make_dataset(100_000, seed=args.seed, holdout="exclude")
    gen_s = time.perf_counter() - t0

    rng = np.random.default_rng(args.seed)
    prompts = world.eval_prompts(args.per_tag, seed=args.seed)
    scenes = [world.sample_scene_for(m, rng, p_distractor=0.5) for m in prompts]
    negatives = [world.perturb_prompt(m, rng) for m in prompts]
    clean = world.render_batch(scenes)
    neg_truth = np.array([world.prompt_truth([s], [n])[0, 0] for s, n in zip(scenes, negatives)])
    tags = np.array([m["tag"] for m in prompts])
    ev = ShapesEvaluator()

    rows = {}
    times = []
    for cond in CONDITIONS + STRESS:
        images = corrupt(clean, cond, args.seed)
        t0 = time.perf_counter()
        pos = np.array([r.correct for r in ev.evaluate_batch(images, prompts)])
        if cond in CONDITIONS:
            times.append((time.perf_counter() - t0) / len(images))
        neg = np.array([r.correct for r in ev.evaluate_batch(images, negatives)])
        decided = neg_truth >= 0
        rows[cond] = {
            t: (pos[tags == t].mean(), (neg == (neg_truth == 1))[(tags == t) & decided].mean()) for t in world.TAGS
        }
        rows[cond]["all"] = (pos.mean(), (neg == (neg_truth == 1))[decided].mean())

    print(f"shapes-world evaluator, {args.per_tag} prompts per tag, seed {args.seed}")
    print(f"dataset generator: 100k examples in {gen_s:.1f} s ({100_000 / gen_s:,.0f}/s)")
    print(f"evaluator: {1e3 * np.mean(times):.2f} ms per image (one core, incl. GenEval rules)")
    print(f"negatives judged incorrect by the truth table: {(neg_truth == 0).mean():.1%}")
    print()
    header = f"{'condition':<10} " + " ".join(f"{t:>17}" for t in (*world.TAGS, "all"))
    print("pos / neg accuracy (%)")
    print(header)
    for cond, r in rows.items():
        cells = " ".join(f"{100 * a:>8.1f} / {100 * b:>5.1f}" for a, b in r.values())
        print(f"{cond:<10} {cells}")


if __name__ == "__main__":
    main()

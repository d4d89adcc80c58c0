"""Does a reward trained on *previews* rank a prompt's coarse rows better than the shipped `shapes-reward`?

The headroom bench (`bench_headroom.py`) shows that a perfect preview signal at scales 2-3 would lift a
single-decision search above Best-of-8 at 60% of its tokens, and that the shipped reward, which was trained on
final images, recovers only part of that. This bench fine-tunes the shipped reward's text-image fusion (its
detector frozen) on scale-s previews, labelled by the exact evaluator's verdict of the image the same path
finished as (an unbiased, noisy label of "this prefix ends well"), one model per decision scale, and scores it
with the headroom bench's own policies. TRAINING-split prompts only, for training and for scoring; the scored
samples use other seeds than the training samples (and the headroom bench's), as the shipped reward does:

    PYTHONPATH=.:bench .venv/bin/python bench/bench_preview_reward.py --headroom /tmp/headroom.npz
        [--scales 2 3 4] [--per-prompt 24] [--steps 600] [--data NPZ] [--threads 1] [--json PATH]

`--headroom` is the `--data` cache of `bench_headroom.py --scales ...` (it holds the previews, `p{s}`). Reported
per scale: the within-prompt AUROC of each signal against the prefix's mean verdict over its M continuations
(pairs of prefixes with different means), and the best single-decision policy under the headroom bench's budget.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_engine import _mean_se as mean_se
from bench_headroom import PREVIEW, best_of, best_policy

from ttsvar.testbed import world
from ttsvar.testbed.model import load_shapes_tiny
from ttsvar.testbed.reward import load_shapes_reward
from ttsvar.testbed.train_reward import RewardTrainConfig, label_matrix, sample_images, train_reward


def within_auroc(score: np.ndarray, target: np.ndarray) -> float:
    """Share of prefix pairs with different targets that `score` orders like `target` (ties count half)."""
    ds, dt = score[:, None] - score[None, :], target[:, None] - target[None, :]
    pairs = dt > 0
    if not pairs.any():
        return float("nan")
    return float(((ds > 0) + 0.5 * (ds == 0))[pairs].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--headroom", required=True, help="bench_headroom.py --data cache with previews")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--per-prompt", type=int, default=24, help="training samples per training prompt")
    ap.add_argument("--steps", type=int, default=600, help="fusion steps per scale")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-tag", type=int, default=8, help="as the headroom run (its prompts)")
    ap.add_argument("--budget-of", type=int, default=8)
    ap.add_argument("--budget-frac", type=float, default=0.6)
    ap.add_argument("--data", default=None, help="npz of the training samples: read if it exists, else written")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    z = np.load(a.headroom)
    missing = [s for s in a.scales if f"p{s}" not in z]
    if missing:
        raise SystemExit(f"--headroom {a.headroom} has no previews for scales {missing}; re-run bench_headroom.py")
    t0 = time.perf_counter()
    train = world.prompts_of("train")
    texts = [m["prompt"] for m in train]
    gen = load_shapes_tiny(None, "cpu")
    if a.data and Path(a.data).is_file():
        d = np.load(a.data)
        previews, finals = {s: d[f"p{s}"] for s in a.scales}, d["finals"]
    else:
        seeds = [int(x) for x in np.random.default_rng([a.seed, 99]).integers(0, 2**31, len(texts))]
        prev: dict[int, list[np.ndarray]] = {s: [] for s in a.scales}
        with torch.inference_mode():
            finals = sample_images(gen, texts, a.per_prompt, seeds, 384, previews=prev, preview_size=PREVIEW)
        finals = finals.reshape(-1, *finals.shape[2:])
        previews = {s: np.concatenate(v) for s, v in prev.items()}
        if a.data:
            np.savez(a.data, finals=finals, **{f"p{s}": v for s, v in previews.items()})
    own = np.repeat(np.arange(len(texts)), a.per_prompt)
    labels = label_matrix(finals, own, train)
    t_data = time.perf_counter() - t0
    print(f"training data: {len(finals)} samples of {len(texts)} training prompts, own-prompt accuracy "
          f"{labels['correct'][np.arange(len(own)), own].mean():.3f} ({t_data:.0f} s)", file=sys.stderr)

    md = world.eval_prompts(a.per_tag, seed=0, split="train")
    tokens = [gen.tokens_at_scale(x) for x in range(gen.num_scales)]
    T = sum(tokens)
    budget = a.budget_frac * a.budget_of * T
    shipped, meta = load_shapes_reward()
    shipped.eval()
    rng = np.random.default_rng(0)
    res = {"command": command, "budget": budget, "train_samples": len(finals), "scales": {}}
    print(f"## A reward trained on previews against the shipped reward\n\n`{command}`\n")
    print(f"{len(md)} scored training prompts, K={z['v' + str(a.scales[0])].shape[1]} prefixes x "
          f"M={z['v' + str(a.scales[0])].shape[2]} continuations; {len(finals)} training samples "
          f"({a.per_prompt} per training prompt, other seeds); {a.steps} fusion steps per scale, lr {a.lr:g}; "
          f"budget {budget:.0f} tokens = {a.budget_frac:g} x Best-of-{a.budget_of}.\n")
    head = ["s", "AUROC shipped", "AUROC preview-trained", "difference", "policy shipped (K', m)",
            "policy preview-trained (K', m)", "oracle (K', m)", f"Best-of-{a.budget_of}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for s in a.scales:
        t1 = time.perf_counter()
        model, _ = load_shapes_reward()
        model.requires_grad_(True)  # loaded frozen, for scoring; train_reward freezes the detector itself
        tc = RewardTrainConfig(det_steps=0, steps=a.steps, lr=a.lr, warmup=20, seed=a.seed + s,
                               views=shipped.cfg.views)
        data = {"images": previews[s], "prompt_idx": own, "prompts": texts, **labels}
        train_reward(model, data, tc, log=lambda *x: None)
        model.eval()
        v, R, p = z[f"v{s}"], z[f"R{s}"], z[f"p{s}"]
        P, K = p.shape[:2]
        flat = torch.from_numpy(p.reshape(-1, *p.shape[2:])).permute(0, 3, 1, 2).float() / 255
        row_prompts = [md[i]["prompt"] for i in range(P) for _ in range(K)]
        with torch.inference_mode():
            r_ship = shipped.score(flat, row_prompts).numpy().reshape(P, K)
            r_new = model.score(flat, row_prompts).numpy().reshape(P, K)
        target = v.mean(2)  # [P, K] the prefix's mean verdict over its continuations
        au = {n: [within_auroc(r[i], target[i]) for i in range(P)] for n, r in (("shipped", r_ship), ("new", r_new))}
        ok = [i for i in range(P) if not np.isnan(au["shipped"][i])]
        diff = mean_se([au["new"][i] - au["shipped"][i] for i in ok])
        cum = sum(tokens[: s + 1])
        signals = (("shipped", r_ship, "reward"), ("new", r_new, "reward"), ("oracle", r_ship, "oracle"))
        best = {name: best_policy(v, R, r, sig, cum, T, budget, rng)[0] for name, r, sig in signals}
        bon = mean_se([best_of(v[i], R[i], a.budget_of) for i in range(P)])
        row = {"auroc_shipped": mean_se([au["shipped"][i] for i in ok]),
               "auroc_new": mean_se([au["new"][i] for i in ok]), "difference": diff, "groups": len(ok),
               "policies": {n: {"k": b[0], "m": b[1], "score": b[2]} for n, b in best.items()},
               "best_of": bon, "fit_s": time.perf_counter() - t1}
        res["scales"][str(s)] = row
        cells = [str(s)] + [f"{row[x][0]:.3f} ± {row[x][1]:.3f}" for x in ("auroc_shipped", "auroc_new", "difference")]
        cells += [f"{best[n][2][0]:.3f} ± {best[n][2][1]:.3f} ({best[n][0]}, {best[n][1]})"
                  for n in ("shipped", "new", "oracle")]
        cells.append(f"{bon[0]:.3f} ± {bon[1]:.3f}")
        print("| " + " | ".join(cells) + " |", flush=True)
    res["wall_s"] = time.perf_counter() - t0
    print(f"\n{len(ok)} prompts with prefixes of different mean verdicts at the last scale; wall {res['wall_s']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

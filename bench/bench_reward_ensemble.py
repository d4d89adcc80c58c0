"""Does averaging several `shapes-reward` weights (an ensemble) rank a prompt's images better than one of them?

Each member scores with its own symmetric views; the ensemble's score is the mean of the members' log-odds, as
`shapes-reward` scores an ensemble manifest (`python -m ttsvar.testbed.reward_ensemble`). Two sets of images,
both from the `--data` cache of `python -m ttsvar.testbed.train_reward`:

* dev: the training images of the compositional dev split (`DEV_COMBOS`), in groups of 8 per prompt, when every
  member was trained with `dev=true` (their stage 2 never saw these prompts): how well the reward scores
  combinations it was not trained on, the held-out failure, measured without a held-out prompt;
* validation: the cache's fresh samples of every training prompt (8 each), which no member trained on.

    PYTHONPATH=.:bench .venv/bin/python bench/bench_reward_ensemble.py --data /tmp/rdata0.npz \\
        --weights A.safetensors B.safetensors [C.safetensors ...] [--threads 1] [--json PATH]

Reported for each member, each pair and all of them together: within-prompt AUROC, Best-of-8 (mean of tags),
the gap closed between random and the oracle, Best-of-8's per-group difference against the members' mean
(paired over the same groups: mean ± standard error), and the std of the scores over all images of the set (on
the validation set, the declared score scale an ensemble would have).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ttsvar.testbed.data_cache import split_data_cache
from ttsvar.testbed.reward import load_shapes_reward
from ttsvar.testbed.reward_metrics import ranking_metrics
from ttsvar.testbed.train_reward import _score_features, dev_groups, dev_mask, image_features, score_grid, tag_of


def load_cache(path: Path) -> tuple[dict, dict]:
    """(training data, validation data) of a `--data` cache, as `train_reward.main` splits it."""
    with np.load(path) as f:
        return split_data_cache({k: f[k] for k in f.files})


def picks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Whether each group's top-scored image is correct (float [G])."""
    return correct[np.arange(len(scores)), scores.argmax(1)].astype(float)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the --data cache of train_reward (.npz)")
    ap.add_argument("--weights", nargs="+", required=True, help="shapes-reward weight files (2 or more)")
    ap.add_argument("--k", type=int, default=8, help="images per group: Best-of-k (default 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if len(a.weights) < 2:
        print("error: --weights: give 2 or more weight files to ensemble", file=sys.stderr)
        return 2
    for w in [a.data, *a.weights]:
        if not Path(w).is_file():
            print(f"error: {w}: no such file", file=sys.stderr)
            return 2
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    data, val = load_cache(Path(a.data))
    members = [load_shapes_reward(w) for w in a.weights]
    # the dev images are unseen only if no member's stage 2 trained on a dev prompt
    dev_ok = all(not set(m.cfg.trained_prompts) & {p for p, d in zip(data["prompts"], dev_mask(data["prompts"]))
                                                   if d} for m, _ in members)
    sets: dict[str, tuple[list[np.ndarray], np.ndarray, list[str]]] = {}
    if dev_ok:
        rows, prompts, correct = dev_groups(data, a.k)
        scores = []
        for m, _ in members:
            feats = image_features(m, data["images"][rows])
            scores.append(_score_features(m, feats, prompts, a.k))
        sets["dev"] = (scores, correct, [tag_of(p) for p in prompts])
    else:
        print("dev: skipped (a member's stage 2 trained on dev prompts: train them with --set dev=true)")
    k = min(a.k, val["images"].shape[1])
    sets["validation"] = ([score_grid(m, val["images"][:, :k], val["prompts"]) for m, _ in members],
                          val["correct"][:, :k], val["tags"])
    names = [Path(w).stem for w in a.weights]
    combos = [c for r in range(1, len(members) + 1) for c in itertools.combinations(range(len(members)), r)]
    results = []
    print("| members | set | AUROC | Best-of-k | random | oracle | gap closed | Best-of-k per group vs the members' "
          "mean (paired, mean ± SE) | score std |\n|---|---|---|---|---|---|---|---|---|")
    for name, (scores, correct, tags) in sets.items():
        single = np.mean([picks(s, correct) for s in scores], axis=0)
        for c in combos:
            s = np.mean([scores[i] for i in c], axis=0)
            m = ranking_metrics(s, correct, tags, k=s.shape[1])
            m["best_of_k"], m["oracle"] = m.pop(f"best_of_{s.shape[1]}"), m.pop(f"oracle_best_of_{s.shape[1]}")
            d = picks(s, correct) - single
            se = d.std(ddof=1) / np.sqrt(len(d))
            label = " + ".join(names[i] for i in c)
            results.append({"members": [names[i] for i in c], "set": name, "score_std": float(s.std()),
                            **{k: v for k, v in m.items() if k != "per_tag"},
                            "per_tag": m["per_tag"], "vs_members_mean": float(d.mean()), "vs_members_se": float(se)})
            print(f"| {label} | {name} | {m['prompt_auroc']:.3f} | {m['best_of_k']:.3f} | {m['random']:.3f} | "
                  f"{m['oracle']:.3f} | {m['gap_closed']:.0%} | {d.mean():+.3f} ± {se:.3f} | {s.std():.3f} |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps({"weights": a.weights, "data": a.data, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

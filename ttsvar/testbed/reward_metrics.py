"""Within-prompt ranking metrics of a reward against the exact evaluator's verdicts (numpy only): what the
shapes-reward trainer logs and selects weights by, and what the benchmarks report."""

from __future__ import annotations

import numpy as np


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties count half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def ranking_metrics(scores: np.ndarray, correct: np.ndarray, tags: list[str], k: int = 8) -> dict:
    """Within-prompt ranking quality of scores [P, K] against the evaluator's correct [P, K].

    prompt_auroc: mean over prompts with both outcomes; best_of_k: the top-scored of the first k samples
    is correct (per-tag mean, then mean of tags, as GenEval); random / oracle of the same k samples."""
    aucs = [auroc(s[c == 1], s[c == 0]) for s, c in zip(scores, correct) if 0 < c.sum() < len(c)]
    k = min(k, scores.shape[1])
    pick = correct[np.arange(len(scores)), scores[:, :k].argmax(1)]
    per = {}
    for t in sorted(set(tags)):
        m = np.array([x == t for x in tags])
        per[t] = {"best": float(pick[m].mean()), "random": float(correct[m, :k].mean()),
                  "oracle": float(correct[m, :k].max(1).mean())}
    mean = {key: float(np.mean([v[key] for v in per.values()])) for key in ("best", "random", "oracle")}
    gap = mean["oracle"] - mean["random"]
    return {"prompt_auroc": float(np.mean(aucs)) if aucs else float("nan"), "prompts_with_both": len(aucs),
            f"best_of_{k}": mean["best"], "random": mean["random"], f"oracle_best_of_{k}": mean["oracle"],
            "gap_closed": (mean["best"] - mean["random"]) / gap if gap > 0 else float("nan"), "per_tag": per}

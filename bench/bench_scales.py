"""How reliable are coarse-scale previews? Reward and clustering-feature reliability per scale on `shapes-tiny`.

TTS-VAR's premise: the reward of an early (coarse-scale) preview predicts the final image's quality poorly,
so the search clusters for diversity at coarse scales and resamples by reward only at fine scales. This
bench measures that on the testbed, to choose the default decision scales.

    .venv/bin/python bench/bench_scales.py [--per-tag 8] [--k 16] [--rewards shapes-clip shapes-reward]
        [--reward-weights shapes-reward=PATH ...] [--features shapes-clip] [--m 8 4] [--seed 1234]
        [--plot docs/scale_reliability.png] [--json PATH] [--threads 2] [--device cpu]

Only TRAINING-split prompts are used (`world.eval_prompts(per_tag, seed=--prompt-seed, split="train")`):
the result chooses defaults, so the held-out prompts must not be looked at. For every prompt it samples K
full paths by plain sampling (the shipped sampling defaults; row seeds: prompt i gets seed --seed + i,
candidates 0..K-1), and after every scale k = 0..S-1 keeps each row's preview (`gen.preview(state, 32)`;
at the last scale the final image `gen.finish(state)`). The final image is judged by the exact evaluator
(the verdict, 0/1). All numbers are within-prompt, then averaged over prompts.

Table 1, per scale k and reward (the reward of the scale-k preview as a predictor of the same path's end):
  rho(verdict)  Spearman rank correlation with the final verdict; prompts whose K verdicts are all equal
                are skipped (their count is in the header). A preview reward constant within a prompt counts
                as 0 (it ranks nothing).
  rho(final)    Spearman with the same reward of the final image (1 at the last scale by construction).
  AUROC         P(preview reward of a correct path > that of a wrong one), ties half, over prompts with
                both outcomes.
Tables 2 (one per m, default m = K/2 and K/4), per scale k: does a selection of m of the K rows at scale k
keep a path whose final image is correct? Each column is the oracle coverage: the fraction of prompts where
at least one kept row's FINAL image is correct.
  cluster/rand  k-means++ (search.clustering.kmeans_pp, seeded as the TTS-VAR cluster step seeds it) of the
                K scale-k preview features into m clusters, one uniformly random member kept per cluster
                (the exact expectation over that choice: 1 - prod_c (1 - share of correct rows in c)).
  cluster/near  the same clusters, keeping the member nearest to each centroid (the strategy's rule).
  random        m rows uniformly at random, without replacement (exact expectation, hypergeometric; it
                does not depend on k).
  top-m <r>     the m rows of highest scale-k preview reward r (ties: lower candidate id).
  oracle (header) any of all K rows correct: the ceiling of every column.

Prints markdown tables with the command, K, the number of prompts and the wall time; writes a PNG plot
(--plot) of rho(verdict) per scale and the coverage per scale, and the raw numbers, per prompt included,
as JSON (--json). Deterministic for fixed seeds and thread count. Cost: the defaults (48 prompts x K=16 =
768 paths, 6 previews each) take an estimated 2-3 minutes on 2 CPU threads (measured: 96 paths with previews
in 18 s on one thread of a busy machine); the header prints the measured wall time per phase.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from rewards import create_features, create_reward
from search.base import RNG_KMEANS, group_rng
from search.clustering import kmeans_pp, nearest_to_centroids, squared_distances
from ttsvar.core.generator import Rows
from ttsvar.output import to_uint8
from ttsvar.testbed import world
from ttsvar.testbed.evaluator import ShapesEvaluator
from ttsvar.testbed.model import load_shapes_tiny
from ttsvar.testbed.reward_metrics import auroc

PREVIEW_SIZE = 32


# --------------------------------------------------------------------------------------------- sampling


@torch.inference_mode()
def sample_paths(gen, prompts: list[str], k: int, seed: int, batch: int) -> tuple[torch.Tensor, list[str]]:
    """K plain paths per prompt; returns previews [S, P*K, 3, 32, 32] (the last scale: final images) and the
    prompt of each row. Row r = prompt r // K, candidate r % K."""
    rows = Rows.for_prompts(k, [seed + i for i in range(len(prompts))])
    S = gen.num_scales
    per_scale: list[list[torch.Tensor]] = [[] for _ in range(S)]
    for s in range(0, len(rows), batch):
        sub = rows.select(np.arange(s, min(len(rows), s + batch)))
        state = gen.start(prompts, sub)
        for sc in range(S):
            state = gen.step(state)
            img = gen.finish(state) if sc == S - 1 else gen.preview(state, PREVIEW_SIZE)
            if img.shape[-1] != PREVIEW_SIZE:
                img = F.interpolate(img.float(), size=(PREVIEW_SIZE, PREVIEW_SIZE), mode="area")
            per_scale[sc].append(img.float().cpu().clamp(0, 1))
    row_prompts = [prompts[i] for i in rows.prompt_index.tolist()]
    return torch.stack([torch.cat(p) for p in per_scale]), row_prompts


@torch.inference_mode()
def score_all(reward, previews: torch.Tensor, row_prompts: list[str], batch: int) -> np.ndarray:
    """Reward of every row's preview at every scale: [S, N]."""
    out = []
    for imgs in previews:
        out.append(torch.cat([reward.score(imgs[s:s + batch], row_prompts[s:s + batch]).float().cpu()
                              for s in range(0, len(imgs), batch)]).numpy())
    return np.stack(out).astype(np.float64)


# ---------------------------------------------------------------------------------------------- metrics


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); nan if y is constant, 0 if only x is."""
    if np.ptp(y) == 0:
        return float("nan")
    if np.ptp(x) == 0:
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))


def random_coverage(n_correct: int, k: int, m: int) -> float:
    """P(at least one correct among m of k rows drawn without replacement), n_correct of them correct."""
    return 1.0 - math.comb(k - n_correct, m) / math.comb(k, m)


def cluster_coverage(features: np.ndarray, correct: np.ndarray, m: int, seed: int, niter: int) -> tuple[float, float]:
    """(expected coverage keeping a random member per cluster, coverage keeping the nearest member)."""
    assign, centroids = kmeans_pp(features, m, seed=seed, niter=niter)
    d2 = squared_distances(features, centroids)
    reps = nearest_to_centroids(features, assign, centroids, d2)
    miss = 1.0
    for c in range(m):
        members = np.flatnonzero(assign == c)
        if members.size:  # an empty cluster (duplicated rows) keeps no random member
            miss *= 1.0 - correct[members].mean()
    return 1.0 - miss, float(correct[reps].any())


def nanmean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def nansem(v) -> float:
    """Standard error of the mean over prompts (nan entries skipped)."""
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")


def reward_metrics(scores: np.ndarray, correct: np.ndarray, ms: list[int]) -> dict:
    """scores [S, P, K] of one reward; correct [P, K]. Per scale: mean within-prompt rho / AUROC, top-m coverage."""
    S, P, K = scores.shape
    final = scores[-1]
    out = []
    for k in range(S):
        x = scores[k]
        rho_v = [spearman(x[p], correct[p]) for p in range(P)]
        rho_f = [spearman(x[p], final[p]) for p in range(P)]
        auc = [auroc(x[p][correct[p] == 1], x[p][correct[p] == 0]) for p in range(P)]
        order = np.argsort(-x, axis=1, kind="stable")
        top = {m: float(np.mean([correct[p, order[p, :m]].any() for p in range(P)])) for m in ms}
        out.append({"rho_verdict": nanmean(rho_v), "rho_verdict_sem": nansem(rho_v), "rho_final": nanmean(rho_f),
                    "auroc": nanmean(auc), "auroc_sem": nansem(auc),
                    "top_m_coverage": top, "constant_preview_prompts": int(sum(np.ptp(x[p]) == 0 for p in range(P))),
                    "per_prompt": {"rho_verdict": rho_v, "rho_final": rho_f, "auroc": auc}})
    return out


def feature_metrics(features: np.ndarray, correct: np.ndarray, seeds: list[int], ms: list[int], niter: int) -> list:
    """features [S, P, K, F]; correct [P, K]. Per scale and m: cluster coverages (mean over prompts)."""
    S, P = features.shape[:2]
    out = []
    for k in range(S):
        row = {}
        for m in ms:
            rand_member, nearest = [], []
            for p in range(P):
                seed = int(group_rng(seeds[p], k, RNG_KMEANS).integers(0, 2**31 - 1))  # as cluster_step
                a, b = cluster_coverage(features[k, p], correct[p], m, seed, niter)
                rand_member.append(a)
                nearest.append(b)
            row[m] = {"cluster_random_member": float(np.mean(rand_member)), "cluster_nearest": float(np.mean(nearest)),
                      "per_prompt": {"cluster_random_member": rand_member, "cluster_nearest": nearest}}
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------- output


def fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def tables(res: dict) -> str:
    grids, rnames, ms = res["grids"], list(res["rewards"]), res["m"]
    lines = ["### Preview reward as a predictor of the final image (within-prompt, mean ± s.e. over prompts)", ""]
    head = ["k", "grid"] + [f"{r} {c}" for r in rnames for c in ("rho(verdict)", "rho(final)", "AUROC")]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for k, g in enumerate(grids):
        cells = [str(k), g]
        for r in rnames:
            d = res["rewards"][r][k]
            cells += [f"{fmt(d['rho_verdict'])} ± {fmt(d['rho_verdict_sem'])}", fmt(d["rho_final"]),
                      f"{fmt(d['auroc'])} ± {fmt(d['auroc_sem'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    for m in ms:
        lines += ["", f"### Oracle coverage keeping m={m} of K={res['k']} rows at scale k "
                      f"(random m: {fmt(res['random_coverage'][str(m)])}, all K: {fmt(res['oracle_coverage'])})", ""]
        head = ["k", "grid", "cluster/rand", "cluster/near", "random"] + [f"top-{m} {r}" for r in rnames]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for k, g in enumerate(grids):
            f = res["features_coverage"][k][str(m)]
            cells = [str(k), g, fmt(f["cluster_random_member"]), fmt(f["cluster_nearest"]),
                     fmt(res["random_coverage"][str(m)])]
            cells += [fmt(res["rewards"][r][k]["top_m_coverage"][str(m)]) for r in rnames]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = len(res["grids"])
    xs = np.arange(S)
    labels = [f"{k}\n({g})" for k, g in enumerate(res["grids"])]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (r, per) in enumerate(res["rewards"].items()):
        c = colors[i % len(colors)]
        a1.errorbar(xs, [d["rho_verdict"] for d in per], yerr=[d["rho_verdict_sem"] for d in per], fmt="o-",
                    color=c, capsize=3, label=f"{r}: vs final verdict (± s.e.)")
        a1.plot(xs, [d["rho_final"] for d in per], "s:", color=c, alpha=0.6, label=f"{r}: vs final reward")
    a1.axhline(0, color="gray", lw=0.8)
    a1.set_xticks(xs, labels)
    a1.set_xlabel("scale k (token grid)")
    a1.set_ylabel("mean within-prompt Spearman")
    a1.set_title("Preview reward at scale k vs the path's end")
    a1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    styles = ["-", "--", "-.", ":"]
    for j, m in enumerate(res["m"]):
        ls = styles[j % len(styles)]
        ms = str(m)
        a2.plot(xs, [res["features_coverage"][k][ms]["cluster_random_member"] for k in range(S)], "o" + ls,
                color="tab:green", label=f"cluster, random member (m={m})")
        a2.plot(xs, [res["features_coverage"][k][ms]["cluster_nearest"] for k in range(S)], "^" + ls,
                color="tab:olive", alpha=0.7, label=f"cluster, nearest (m={m})")
        a2.plot(xs, [res["random_coverage"][ms]] * S, ls, color="gray", label=f"random (m={m})")
        for i, (r, per) in enumerate(res["rewards"].items()):
            a2.plot(xs, [d["top_m_coverage"][ms] for d in per], "x" + ls, color=colors[i % len(colors)],
                    alpha=0.8, label=f"top-m {r} (m={m})")
    a2.axhline(res["oracle_coverage"], color="black", lw=0.8, ls=":", label=f"all K={res['k']}")
    a2.set_xticks(xs, labels)
    a2.set_xlabel("scale k (token grid)")
    a2.set_ylabel("P(a kept row ends correct)")
    a2.set_title(f"Selecting m of K={res['k']} rows at scale k ({res['prompts']} prompts)")
    a2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--reward-weights: expected name=path, got {it!r}")
        out[name] = path
    return out


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-tag", type=int, default=8, help="training prompts per tag")
    ap.add_argument("--prompt-seed", type=int, default=0, help="seed of the prompt choice")
    ap.add_argument("--k", type=int, default=16, help="paths sampled per prompt")
    ap.add_argument("--m", type=int, nargs="+", default=None, help="rows kept (default: K/2 and K/4)")
    ap.add_argument("--seed", type=int, default=1234, help="prompt i samples with seed SEED + i")
    ap.add_argument("--rewards", nargs="+", default=["shapes-clip", "shapes-reward"])
    ap.add_argument("--reward-weights", nargs="*", default=[], metavar="NAME=PATH",
                    help="weights option of a reward, e.g. shapes-reward=/tmp/r.safetensors")
    ap.add_argument("--features", default="shapes-clip", help="clustering features")
    ap.add_argument("--niter", type=int, default=25, help="k-means iterations (the strategy's default)")
    ap.add_argument("--batch", type=int, default=256, help="rows per generator / reward batch")
    ap.add_argument("--plot", default="docs/scale_reliability.png")
    ap.add_argument("--json", default=None, help="write the raw numbers here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ms = sorted({m for m in (a.m or [a.k // 2, a.k // 4]) if 1 <= m <= a.k}, reverse=True)
    if not ms:
        raise SystemExit(f"no valid m for K={a.k} (need 1 <= m <= K)")
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    t_start = time.perf_counter()
    times = {}

    gen = load_shapes_tiny(None, a.device)
    weights = parse_weights(a.reward_weights)
    rewards, skipped = {}, {}
    for name in a.rewards:
        opts = {"device": a.device}
        if name in weights:
            opts["weights"] = weights[name]
        try:
            rewards[name] = create_reward(name, **opts)
        except (FileNotFoundError, OSError) as e:  # e.g. shapes-reward not trained yet
            skipped[name] = str(e)
            print(f"WARNING: reward {name} skipped: {e}", file=sys.stderr)
    if not rewards:
        raise SystemExit("no reward could be loaded")
    feats = create_features(a.features, device=a.device)
    times["load"] = time.perf_counter() - t_start

    md = world.eval_prompts(a.per_tag, seed=a.prompt_seed, split="train")
    prompts = [m["prompt"] for m in md]
    P, K, S = len(prompts), a.k, gen.num_scales
    seeds = [a.seed + i for i in range(P)]
    grids = [f"{h}x{w}" for h, w in gen.scale_schedule]

    t0 = time.perf_counter()
    previews, row_prompts = sample_paths(gen, prompts, K, a.seed, a.batch)  # [S, P*K, 3, 32, 32]
    times["sample+previews"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ev = ShapesEvaluator()
    finals = to_uint8(previews[-1])
    correct = np.array([ev.evaluate(finals[i], md[i // K]).correct for i in range(P * K)], np.int64).reshape(P, K)
    times["evaluate"] = time.perf_counter() - t0

    scores = {}
    for name, r in rewards.items():
        t0 = time.perf_counter()
        scores[name] = score_all(r, previews, row_prompts, a.batch).reshape(S, P, K)
        times[f"reward {name}"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fx = np.stack([feats.extract(p) for p in previews])
    fx = fx.reshape(S, P, K, fx.shape[-1])
    times["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = {"command": command, "k": K, "prompts": P, "per_tag": a.per_tag, "split": "train",
           "prompt_seed": a.prompt_seed, "seed": a.seed, "threads": torch.get_num_threads(), "device": a.device,
           "sampling": asdict(gen.sampling),
           "features": a.features, "reward_weights": weights, "skipped_rewards": skipped, "m": ms, "grids": grids,
           "single_sample_accuracy": float(correct.mean()), "oracle_coverage": float(correct.any(1).mean()),
           "prompts_with_both_outcomes": int(((correct.sum(1) > 0) & (correct.sum(1) < K)).sum()),
           "random_coverage": {str(m): float(np.mean([random_coverage(int(c), K, m) for c in correct.sum(1)]))
                               for m in ms}}
    res["rewards"] = {}
    for name, sc in scores.items():
        per = reward_metrics(sc, correct, ms)
        for d in per:
            d["top_m_coverage"] = {str(m): v for m, v in d["top_m_coverage"].items()}
        res["rewards"][name] = per
    fm = feature_metrics(fx, correct, seeds, ms, a.niter)
    res["features_coverage"] = [{str(m): v for m, v in row.items()} for row in fm]
    times["metrics"] = time.perf_counter() - t0
    res["times_s"] = {k: round(v, 2) for k, v in times.items()}
    res["wall_s"] = round(time.perf_counter() - t_start, 2)
    res["raw"] = {"prompts": prompts, "tags": [m["tag"] for m in md], "correct": correct.tolist(),
                  "scores": {n: np.round(s, 6).tolist() for n, s in scores.items()}}

    print(f"## Scale reliability on shapes-tiny\n\n`{command}`\n")
    print(f"K={K} paths x {P} training prompts ({a.per_tag} per tag, prompt seed {a.prompt_seed}, sample seeds "
          f"{a.seed}+i), plain sampling at the shipped defaults, {S} scales {grids}; features {a.features}; "
          f"torch threads {res['threads']}, device {a.device}.")
    print(f"Single-sample accuracy {res['single_sample_accuracy']:.3f}; oracle best-of-{K} "
          f"{res['oracle_coverage']:.3f}; prompts with both outcomes (used by rho(verdict) and AUROC): "
          f"{res['prompts_with_both_outcomes']}/{P}.")
    if skipped:
        print(f"Skipped rewards (could not load): {', '.join(skipped)}.")
    consts = {n: [d["constant_preview_prompts"] for d in per] for n, per in res["rewards"].items()}
    if any(any(v) for v in consts.values()):
        print(f"Prompts whose preview reward is constant over the K rows, per scale: {consts}.")
    print(f"Wall time {res['wall_s']:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + ").\n")
    print(tables(res))
    if a.plot:
        plot(res, Path(a.plot))
        print(f"\nplot: {a.plot}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
        print(f"json: {a.json}")


if __name__ == "__main__":
    main()

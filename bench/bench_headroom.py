"""How far can a *perfect* preview signal take search on `shapes-tiny`, at a fixed token budget?

Issue 9's N=2 target asks TTS-VAR at N=2 to match Best-of-8 with at most 60% of its token-forwards. Whether
any preview reward can do that depends on how much of the final verdict is already decided at the scale where
the search narrows. This bench measures it directly, on TRAINING-split prompts only:

    .venv/bin/python bench/bench_headroom.py [--per-tag 8] [--k 16] [--m-cont 6] [--scales 1 2 3 4]
        [--budget-of 8 --budget-frac 0.6] [--seed 4321] [--threads 2] [--json PATH] [--data NPZ]

For every prompt it samples K prefixes (plain sampling, shipped defaults) and, at each scale s in --scales,
forks every prefix into M continuations with fresh randomness (new candidate ids) that run to the end. A
continuation is a full sample: (prefix i, continuation j) is judged by the exact evaluator (verdict v[i,j])
and scored by the default reward on its final image (R[i,j]); the prefix's scale-s preview is scored by the
same reward (r[i]).

  determined  share of the within-prompt variance of the verdict that lies between prefixes at scale s
              (1 = the prefix fixes the outcome; 0 = the rest of the path decides everything). Estimated
              with the one-way ANOVA components (between-prefix variance corrected for the M-sample noise).

Single-decision policies at scale s (what TTS-VAR's narrowing does, reduced to one decision): sample K' of the
prefixes, keep m of them by a signal, continue each once, and pick the final image by the final reward R.
Token cost per prompt (one cfg half): K' * cum_s + m * (T - cum_s), cum_s the tokens up to and including
scale s and T all of them. Signals:
  oracle  p_hat = the prefix's mean verdict over its OTHER M-1 continuations (cross-fitted: the continuation
          that is scored is never used to rank), ties broken by the preview reward: an upper bound for any
          preview reward or value model at that scale (up to the noise of M-1 samples).
  reward  the default reward of the scale-s preview (what TTS-VAR's resampling uses).
  entropy the mean over scales 1..s of minus the mean token entropy of the row's sampled tokens (what the
          reward-free `confidence` strategy prunes by; no preview, no reward).
  random  m of the K' prefixes uniformly at random (mean over 16 draws).
Every policy value averages over the continuation index j (each j gives one independent outcome per prefix).
Baselines on the same samples: Best-of-n = the first n prefixes with continuation j, picked by R.

Reported per scale: the best (K', m) under the budget (--budget-of n Best-of-n's tokens x --budget-frac) for
each signal, and the score of Best-of-{2,4,8,16}; mean ± standard error over prompts (8 per tag, so the mean
over prompts is the mean of tags). Choosing the best (K', m) per signal on these samples is selection on the
training prompts, which is fine for a ceiling.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_engine import _mean_se as mean_se  # the same mean +- standard error as the quality tables

from rewards import create_reward
from ttsvar.core.generator import Rows
from ttsvar.output import to_uint8
from ttsvar.testbed import world
from ttsvar.testbed.evaluator import ShapesEvaluator
from ttsvar.testbed.model import load_shapes_tiny

PREVIEW = 32


@torch.inference_mode()
def sample(gen, reward, ev, md: list[dict], k: int, m_cont: int, scales: list[int], seed: int, chunk: int) -> dict:
    """Per scale s: preview rewards r [P, K], continuation verdicts v and final rewards R [P, K, M], and the
    previews themselves p (uint8 [P, K, PREVIEW, PREVIEW, 3]: another signal can score them later)."""
    prompts = [d["prompt"] for d in md]
    P, S = len(prompts), gen.num_scales
    out = {s: {"r": np.zeros((P, k)), "v": np.zeros((P, k, m_cont)), "R": np.zeros((P, k, m_cont)),
               "p": np.zeros((P, k, PREVIEW, PREVIEW, 3), np.uint8), "e": np.full((P, k), np.nan)} for s in scales}
    for c0 in range(0, P, chunk):
        idx = list(range(c0, min(P, c0 + chunk)))
        rows = Rows.for_prompts(k, [seed + i for i in idx], prompt_indices=list(range(len(idx))))
        sub_prompts = [prompts[i] for i in idx]
        row_prompts = [sub_prompts[i] for i in rows.prompt_index.tolist()]
        state = gen.start(sub_prompts, rows)
        neg_entropy = []  # per scale from 1 on: -(mean token entropy) of each row, the `confidence` signal
        for sc in range(max(scales) + 1):
            state = gen.step(state)
            conf = gen.confidence(state)
            if sc >= 1 and conf is not None:
                neg_entropy.append(-conf[:, 1].astype(np.float64))
            if sc not in scales:
                continue
            if neg_entropy:  # the mean over scales 1..sc, as `confidence` averages over its prune scales
                out[sc]["e"][idx] = np.mean(neg_entropy, axis=0).reshape(len(idx), k)
            prev = gen.preview(state, PREVIEW).float().clamp(0, 1)
            r = reward.score(prev, row_prompts).float().cpu().numpy()
            rep = np.repeat(np.arange(len(rows)), m_cont)
            new_ids = 1000 * (sc + 1) + rows.candidate_id[rep] * m_cont + np.tile(np.arange(m_cont), len(rows))
            fork = gen.select(state, rep, candidate_id=new_ids)
            for _ in range(sc + 1, S):
                fork = gen.step(fork)
            imgs = gen.finish(fork).float().clamp(0, 1)
            if imgs.shape[-1] != PREVIEW:
                imgs = F.interpolate(imgs, size=(PREVIEW, PREVIEW), mode="area")
            R = reward.score(imgs, [row_prompts[i] for i in rep]).float().cpu().numpy()
            u8 = to_uint8(imgs)
            v = np.array([ev.evaluate(u8[i], md[idx[rows.prompt_index[rep[i]]]]).correct for i in range(len(rep))],
                         dtype=np.float64)
            n = len(idx)
            out[sc]["r"][idx] = r.reshape(n, k)
            out[sc]["p"][idx] = to_uint8(prev).reshape(n, k, *out[sc]["p"].shape[2:])
            out[sc]["v"][idx] = v.reshape(n, k, m_cont)
            out[sc]["R"][idx] = R.reshape(n, k, m_cont)
        print(f"  prompts {idx[-1] + 1}/{P}", file=sys.stderr, flush=True)
    return out


def determined_share(v: np.ndarray) -> float:
    """Between-prefix share of the verdict variance of one prompt (v [K, M]); nan if the verdict never varies."""
    K, M = v.shape
    if v.min() == v.max():
        return float("nan")
    msb = M * v.mean(1).var(ddof=1)
    msw = v.var(1, ddof=1).mean()
    between = max(0.0, (msb - msw) / M)
    return float(between / (between + msw)) if between + msw > 0 else float("nan")


def policy(v: np.ndarray, R: np.ndarray, r: np.ndarray, kk: int, m: int, signal: str, rng) -> float:
    """Mean verdict of keep-m-of-K' then pick by final reward, for one prompt (v, R [K, M]; r [K])."""
    M = v.shape[1]
    cols = np.arange(M)
    if signal == "random":  # 16 random m-subsets of the K' prefixes, the same ones for every j
        keep = np.argsort(rng.random((16, kk)), axis=1)[:, :m]  # [D, m]
        pick = keep[np.arange(16)[:, None], np.argmax(R[keep], axis=1)]  # [D, M] prefix picked for each j
        return float(v[pick, cols[None, :]].mean())
    if signal == "oracle":  # cross-fitted: the continuation scored (j) never ranks its own prefix
        p_hat = (v[:kk].sum(1, keepdims=True) - v[:kk]) / (M - 1)  # [K', M]
        orders = [np.lexsort((-r[:kk], -p_hat[:, j]))[:m] for j in range(M)]
    else:
        orders = [np.argsort(-r[:kk], kind="stable")[:m]] * M
    return float(np.mean([v[keep[np.argmax(R[keep, j])], j] for j, keep in enumerate(orders)]))


def best_policy(v: np.ndarray, R: np.ndarray, score: np.ndarray, how: str, cum: int, T: int, budget: float,
                rng) -> tuple[tuple[int, int, tuple[float, float]], dict]:
    """Every single-decision policy (K', m) under `budget` tokens for all prompts (v, R [P, K, M]; score [P, K]
    ranks the prefixes, `how` as `policy`'s signal; `cum` tokens up to the decision, `T` in all): the best
    (K', m, (mean, se)) and {"K':m": {"score", "tokens"}} for each one tried."""
    P, K = score.shape
    best, tried = None, {}
    for kk in range(2, K + 1):
        for m in range(1, kk):
            cost = kk * cum + m * (T - cum)
            if cost > budget:
                continue
            sc = mean_se([policy(v[p], R[p], score[p], kk, m, how, rng) for p in range(P)])
            tried[f"{kk}:{m}"] = {"score": sc, "tokens": cost}
            if best is None or sc[0] > best[2][0]:
                best = (kk, m, sc)
    return best, tried


def best_of(v: np.ndarray, R: np.ndarray, n: int) -> float:
    return float(np.mean([v[np.argmax(R[:n, j]), j] for j in range(v.shape[1])]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-tag", type=int, default=8)
    ap.add_argument("--prompt-seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=16, help="prefixes per prompt")
    ap.add_argument("--m-cont", type=int, default=6, help="continuations per prefix")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 3, 4], help="decision scales s")
    ap.add_argument("--budget-of", type=int, default=8, help="budget = this Best-of-n's tokens x --budget-frac")
    ap.add_argument("--budget-frac", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--chunk", type=int, default=4, help="prompts per generator batch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--data", default=None, help="npz of the sampled arrays: read if it exists, else written")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.m_cont < 2:
        raise SystemExit("--m-cont must be at least 2 (the oracle signal is cross-fitted)")
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    t0 = time.perf_counter()
    gen = load_shapes_tiny(None, "cpu")
    S = gen.num_scales
    if not all(0 <= s < S - 1 for s in a.scales):
        raise SystemExit(f"--scales must lie in 0..{S - 2} (a decision before the last scale)")
    reward = create_reward("shapes-reward", device="cpu")
    md = world.eval_prompts(a.per_tag, seed=a.prompt_seed, split="train")
    if a.data and Path(a.data).is_file():  # re-tabulate without sampling again
        z = np.load(a.data)
        data = {s: {x: z[f"{x}{s}"] for x in ("r", "v", "R", "p", "e") if f"{x}{s}" in z} for s in sorted(a.scales)}
    else:
        data = sample(gen, reward, ShapesEvaluator(), md, a.k, a.m_cont, sorted(a.scales), a.seed, a.chunk)
        if a.data:
            np.savez(a.data, **{f"{x}{s}": d[x] for s, d in data.items() for x in ("r", "v", "R", "p", "e")})
    wall = time.perf_counter() - t0

    tokens = [gen.tokens_at_scale(s) for s in range(S)]
    T = sum(tokens)
    budget = a.budget_frac * a.budget_of * T
    P = len(md)
    rng = np.random.default_rng(0)
    print(f"## Headroom of a perfect preview signal on shapes-tiny\n\n`{command}`\n")
    print(f"{P} training prompts ({a.per_tag} per tag), K={a.k} prefixes x M={a.m_cont} continuations per "
          f"decision scale, reward shapes-reward (shipped, default views); tokens per sample {T} (one cfg half), "
          f"budget {budget:.0f} = {a.budget_frac:g} x Best-of-{a.budget_of}; wall {wall:.0f} s.\n")
    res = {"command": command, "prompts": P, "k": a.k, "m_cont": a.m_cont, "budget": budget, "wall_s": wall,
           "scales": {}}
    v_any = data[sorted(a.scales)[0]]
    bon = {n: mean_se([best_of(v_any["v"][p], v_any["R"][p], n) for p in range(P)]) for n in (1, 2, 4, 8, 16)
           if n <= a.k}
    print("| Best-of-n | " + " | ".join(f"{n}: {m:.3f} ± {se:.3f}" for n, (m, se) in bon.items()) + " |\n")
    res["best_of"] = {str(n): v for n, v in bon.items()}
    # `entropy` (the reward-free `confidence` signal) where the samples recorded it (older caches did not)
    sigs = ["oracle", "reward"] + (["entropy"] if all("e" in data[s] and not np.isnan(data[s]["e"]).any()
                                                     for s in a.scales) else []) + ["random"]
    head = ["s", "grid", "determined"] + [c for sig in sigs for c in (f"{sig} (K', m)", f"{sig} score")] + [
        f"Best-of-{a.budget_of}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for s in sorted(a.scales):
        d = data[s]
        cum = sum(tokens[: s + 1])
        det = [determined_share(d["v"][p]) for p in range(P)]
        det = [x for x in det if not math.isnan(x)]
        row = {"determined": mean_se(det), "policies": {}}
        best = {}
        for sig in sigs:
            score = d["e"] if sig == "entropy" else d["r"]  # what ranks the prefixes (the oracle's tie-break)
            best[sig], tried = best_policy(d["v"], d["R"], score, "reward" if sig == "entropy" else sig, cum, T,
                                           budget, rng)
            row["policies"].update({f"{sig}:{k}": x for k, x in tried.items()})
        row["best"] = {sig: {"k": b[0], "m": b[1], "score": b[2]} for sig, b in best.items()}
        res["scales"][str(s)] = row
        h, w = gen.scale_schedule[s]
        cells = [str(s), f"{h}x{w}", f"{row['determined'][0]:.3f} ± {row['determined'][1]:.3f}"]
        for sig in sigs:
            kk, m, (mu, se) = best[sig]
            cells += [f"({kk}, {m})", f"{mu:.3f} ± {se:.3f}"]
        cells.append(f"{bon[a.budget_of][0]:.3f}" if a.budget_of in bon else "n/a")
        print("| " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
        print(f"\njson: {a.json}")


if __name__ == "__main__":
    main()

"""Does a learned value V_k rank coarse-scale rows better than the raw preview reward? (`shapes-tiny`, train split)

    PYTHONPATH=. .venv/bin/python bench/bench_value.py [--per-tag 6] [--seeds 0 1 2] [--n 4] [--epochs 400]
        [--out /tmp/bench_value] [--threads 1] [--json PATH] [--reuse] [--set search.options.lam=0 ...]

Only TRAINING-split prompts (`world.eval_prompts(per_tag, seed=--prompt-seed, split="train")`): the held-out
prompts are never run. For each seed, one tts-var job (search.n = --n, default reward shapes-reward, features
shapes-clip) with `output.save_search_data=true` and `output.save_candidates=true` writes every decision row's
features, reward and token statistics and every final candidate. `ttsvar.value` then fits V_k twice, on
`--target verdict` (the fraction of the row's surviving descendants the exact evaluator judges correct) and on
`--target reward` (their mean final reward), holding out 20% of the prompt texts (all seeds of a held-out prompt
are held out). The table: per decision scale, on the held-out prompts' rows, the within-prompt Spearman
correlation with the verdict target of V_k (verdict-fitted), V_k (reward-fitted) and the raw scale-k reward,
and the within-prompt pairwise concordance (AUROC) of the same three. Only rows with a surviving descendant have
a target (the tree of a tts-var run), so a prompt contributes at scale k only if >= 2 of its scale-k rows
survived and their targets differ; the count is the `groups` column. `--set key=value ...` adds job overrides
(e.g. a wider schedule that lets more lineages survive: `search.options.batch_schedule=[8,7,6,6,6,6]
search.options.lam=0`).

`--folds K` instead evaluates by K-fold cross-validation over the prompt texts: every prompt is once in the test
fold, V_k is fitted on the other folds only (its early stopping on a split of those), so every prompt's groups
count. The table then gives mean +- standard error over groups, and the paired difference V_k - raw reward
per group (mean +- SE): what "V_k beats the raw reward at scale k" needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from search.value import load_value
from ttsvar.config import load_config
from ttsvar.jobs import run_job
from ttsvar.testbed import world
from ttsvar.value import fit_value, load_search_data, save_value, split_prompts, within_prompt


def collect(a) -> list[Path]:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in world.eval_prompts(a.per_tag, seed=a.prompt_seed,
                                                                                 split="train")))
    runs = []
    for seed in a.seeds:
        run = out / (f"tts-var_n{a.n}_s{seed}" + ("_" + "_".join(a.set) if a.set else "")).replace("/", "-")
        runs.append(run)
        if a.reuse and (run / "summary.json").is_file():
            continue
        shutil.rmtree(run, ignore_errors=True)
        job = load_config(None, [f"prompts={prompts}", f"output.dir={run}", "search.strategy=tts-var",
                                 f"search.n={a.n}", f"seed={seed}", "runtime.quiet=true", "runtime.prompts_per_unit=8",
                                 "output.save_search_data=true", "output.save_candidates=true", "model.device=cpu",
                                 *a.set])
        t0 = time.perf_counter()
        s = run_job(job)
        print(f"# run seed {seed}: {s['prompts_ok']} prompts in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return runs


def _subset(data, mask: np.ndarray):
    return dataclasses.replace(data, x=data.x[mask], y=data.y[mask], scale=data.scale[mask], group=data.group[mask],
                               prompt=[q for q, m in zip(data.prompt, mask) if m])


def _mean_se(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=float)
    return (float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))) if len(v) > 1 else (float("nan"), float("nan"))


def cross_validated(a, dv, dr) -> list[dict]:
    """K folds over the distinct prompt texts: fit both V_k on K-1 folds, score the held-out fold's rows; per
    scale, every score's per-group rho and concordance pooled over folds."""
    distinct = sorted(set(dv.prompt))
    order = np.random.default_rng(a.fit_seed).permutation(len(distinct))
    fold_of = {distinct[i]: j % a.folds for j, i in enumerate(order)}
    fold = np.asarray([fold_of[q] for q in dv.prompt])
    pooled: dict[int, dict[str, dict[int, tuple[float, float]]]] = {}
    for f in range(a.folds):
        test = fold == f
        fits = {}
        for name, data in (("verdict", dv), ("reward", dr)):
            models, metrics = fit_value(_subset(data, ~test), epochs=a.epochs, seed=a.fit_seed, threads=a.threads)
            path, _ = save_value(Path(a.out) / f"value_{name}_fold{f}.safetensors", data, models, metrics,
                                 {"epochs": a.epochs, "seed": a.fit_seed, "fold": f, "folds": a.folds})
            fits[name] = load_value(path)
        for k in sorted(set(dv.scale.tolist())):
            va = test & (dv.scale == k)
            scores = {"raw reward": dv.x[va, -3]}
            for name, vm in fits.items():
                if k in vm.scales:
                    scores[f"V_k ({name})"] = vm.predict_inputs(k, dv.x[va])
            for label, sc in scores.items():
                for g, rho, conc in within_prompt(sc, dv.y[va], dv.group[va])["per_group"]:
                    pooled.setdefault(k, {}).setdefault(label, {})[g] = (rho, conc)
    rows = []
    for k, by_label in sorted(pooled.items()):
        raw = by_label["raw reward"]
        row = {"scale": k, "groups": len(raw)}
        for label, per in by_label.items():
            gs = sorted(per)
            row[label] = {"rho": _mean_se([per[g][0] for g in gs]), "concordance": _mean_se([per[g][1] for g in gs])}
            if label != "raw reward":
                row[label]["rho_minus_raw"] = _mean_se([per[g][0] - raw[g][0] for g in gs])
                row[label]["concordance_minus_raw"] = _mean_se([per[g][1] - raw[g][1] for g in gs])
        rows.append(row)
    return rows


def print_cross_validated(a, rows: list[dict], dv, n_runs: int, t_runs: float) -> None:
    labels = ["V_k (verdict)", "V_k (reward)"]
    cmd = "PYTHONPATH=. .venv/bin/python " + " ".join(shlex.quote(x) for x in ["bench/bench_value.py", *sys.argv[1:]])
    print(f"`{cmd}`  \n{len(set(dv.prompt))} training prompts x {n_runs} seeds, tts-var n={a.n}; {a.folds}-fold "
          f"cross-validation over prompt texts; runs {t_runs:.0f} s ({a.threads} thread(s)); mean ± SE over groups\n")
    fmt = lambda m: "-" if m is None else f"{m[0]:.3f} ± {m[1]:.3f}"  # noqa: E731
    print("| scale | groups | rho raw reward | " + " | ".join(f"rho {x} | {x} − raw" for x in labels)
          + " | AUROC raw reward | " + " | ".join(f"AUROC {x} | {x} − raw" for x in labels) + " |")
    print("|---" * (3 + 4 * len(labels) + 1) + "|")
    for r in rows:
        cells = [str(r["scale"]), str(r["groups"]), fmt(r["raw reward"]["rho"])]
        cells += [c for x in labels for c in ((fmt(r[x]["rho"]), fmt(r[x]["rho_minus_raw"])) if x in r else ("-", "-"))]
        cells.append(fmt(r["raw reward"]["concordance"]))
        cells += [c for x in labels for c in ((fmt(r[x]["concordance"]), fmt(r[x]["concordance_minus_raw"]))
                                              if x in r else ("-", "-"))]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-tag", type=int, default=6)
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--fit-seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/bench_value")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--reuse", action="store_true", help="keep runs already in --out")
    p.add_argument("--set", nargs="*", default=[], help="job overrides key=value for the collection runs")
    p.add_argument("--folds", type=int, default=0, help="K-fold cross-validation over prompts (0: one 20%% split)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    runs = collect(a)
    t_runs = time.perf_counter() - t0
    dv = load_search_data(runs, "verdict")
    dr = load_search_data(runs, "reward")
    assert np.array_equal(dv.scale, dr.scale) and np.array_equal(dv.group, dr.group)  # the same rows
    if a.folds:
        rows = cross_validated(a, dv, dr)
        print_cross_validated(a, rows, dv, len(runs), t_runs)
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
        return
    t1 = time.perf_counter()
    fits = {}
    for name, data in (("verdict", dv), ("reward", dr)):
        models, metrics = fit_value(data, epochs=a.epochs, seed=a.fit_seed, threads=a.threads)
        path, _ = save_value(Path(a.out) / f"value_{name}.safetensors", data, models, metrics,
                             {"epochs": a.epochs, "seed": a.fit_seed})
        fits[name] = load_value(path)
    t_fit = time.perf_counter() - t1
    held = split_prompts(dv.prompt, 0.2, a.fit_seed)
    is_val = np.asarray([q in held for q in dv.prompt])
    rows = []
    for k in sorted(set(dv.scale.tolist())):
        va = is_val & (dv.scale == k)
        row = {"scale": k, "val_rows": int(va.sum()), "train_rows": int(((dv.scale == k) & ~is_val).sum())}
        scores = {"raw reward": dv.x[va, -3]}
        for name, vm in fits.items():
            if k in vm.scales:
                scores[f"V_k ({name})"] = vm.predict_inputs(k, dv.x[va])
        for label, s in scores.items():
            row[label] = within_prompt(s, dv.y[va], dv.group[va])
        rows.append(row)
    labels = ["V_k (verdict)", "V_k (reward)", "raw reward"]
    cmd = "PYTHONPATH=. .venv/bin/python " + " ".join(shlex.quote(x) for x in ["bench/bench_value.py", *sys.argv[1:]])
    print(f"`{cmd}`  \n{len(set(dv.prompt))} training prompts x {len(runs)} seeds, tts-var n={a.n}; "
          f"{len(held)} prompts held out; runs {t_runs:.0f} s, fits {t_fit:.0f} s ({a.threads} thread(s))\n")
    print("| scale | train rows | val rows | groups | " + " | ".join(f"rho {x}" for x in labels) + " | "
          + " | ".join(f"AUROC {x}" for x in labels) + " |")
    print("|---" * (4 + 2 * len(labels)) + "|")
    for r in rows:
        groups = r["raw reward"]["groups"]
        rho = [f"{r[x]['rho']:.3f}" if x in r else "-" for x in labels]
        auc = [f"{r[x]['concordance']:.3f}" if x in r else "-" for x in labels]
        print(f"| {r['scale']} | {r['train_rows']} | {r['val_rows']} | {groups} | " + " | ".join(rho + auc) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

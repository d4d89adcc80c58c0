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
"""

from __future__ import annotations

import argparse
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
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    runs = collect(a)
    t_runs = time.perf_counter() - t0
    dv = load_search_data(runs, "verdict")
    dr = load_search_data(runs, "reward")
    assert np.array_equal(dv.scale, dr.scale) and np.array_equal(dv.group, dr.group)  # the same rows
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

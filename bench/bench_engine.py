"""Search quality against compute on the embedded testbed, engine overhead, and multi-prompt packing.

    python bench/bench_engine.py quality  [--split heldout] [--per-tag 16] [--seeds 0 1 2 3] [--jobs 2]
                                          [--only tts-var:2 ...] [--set reward.name=shapes-clip ...]
                                          [--model shapes-var-tiny]
                                          [--plot docs/pareto.png] [--json runs.json]
    python bench/bench_engine.py overhead [--prompts 8] [--n 2]
    python bench/bench_engine.py packing  [--prompts 16] [--ppu 1 2 4 8 16] [--model infinity-tiny-random]

quality: every strategy (random; Best-of-N 2-16; TTS-VAR 1-8; its two ablations; IS; beam; FK; beam-wc;
density; confidence; dts 2-8) on the same GenEval-style prompt set (shapes world; held-out split by default; tune on
`--split train`), steered by the model's default reward unless `--set reward.name=...`, judged by the exact
evaluator; `--only name:n ...` runs those pairs instead (any registered strategy). Score = mean of tags
(GenEval's overall), mean +- standard error over job seeds; per tag; compute per prompt (token-forwards,
preview decodes, reward images, wall time). Oracle best-of-N rows count a prompt when any Best-of-N
candidate is correct. Runs go to `--jobs` processes with one torch thread each. `--model` picks the generator
(default shapes-tiny); for a class-conditional one (shapes-var-tiny) the prompt set keeps the prompts that name
one of its classes (it has no held-out split: use `--split all`), and its prompt lines resolve to those classes.
overhead: a TTS-VAR job's wall time minus reward/feature time, over the time of the bare generator doing
the same batch schedule (steps + selects, no previews or scoring).
packing: prompts/s for each `--ppu` prompts per work unit (default 1 and --prompts) against one per unit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ttsvar.config import load_config
from ttsvar.core.generator import Rows
from ttsvar.eval.evaluate import evaluate_output_dir
from ttsvar.jobs import run_job
from ttsvar.testbed import world

CONFIGS = [
    ("random", 1), ("best-of-n", 2), ("best-of-n", 4), ("best-of-n", 8), ("best-of-n", 16),
    ("tts-var", 1), ("tts-var", 2), ("tts-var", 4), ("tts-var", 8),
    ("cluster-only", 2), ("resample-only", 2), ("importance", 4), ("beam", 4), ("fk", 4),
    ("beam-wc", 4), ("density", 4), ("confidence", 4), ("dts", 2), ("dts", 4), ("dts", 8),
]
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def write_prompts(out: Path, per_tag: int, seed: int, split: str = "train", model: str = "shapes-tiny") -> Path:
    """The evaluation prompts as a .jsonl of GenEval metadata; for a class model, only the tags whose prompts are
    its class names (each line's `prompt` then names its class)."""
    from ttsvar.models.registry import model_defaults

    classes = model_defaults(model).classes
    tags = world.TAGS
    if classes is not None:
        names = {n for ns in classes().names for n in ns}
        tags = tuple(t for t in world.TAGS if world.prompts_of(split, (t,))
                     and all(m["prompt"] in names for m in world.prompts_of(split, (t,))))
    md = world.eval_prompts(per_tag, seed=seed, split=split, tags=tags)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in md))
    return path


def job(prompts: Path, out: Path, strategy: str, n: int, device: str, *extra: str):
    shutil.rmtree(out, ignore_errors=True)
    return load_config(None, [f"prompts={prompts}", f"output.dir={out}", f"search.strategy={strategy}",
                              f"search.n={n}", f"model.device={device}", "runtime.quiet=true",
                              "runtime.prompts_per_unit=8", *extra])


def _quality_run(args: tuple) -> dict:
    """One (strategy, n, seed) job in a fresh process (1 torch thread): score, per tag, compute per prompt."""
    prompts, out, strategy, n, seed, device, extra = args
    torch.set_num_threads(1)
    oracle = strategy == "best-of-n"
    j = job(prompts, out, strategy, n, device, f"seed={seed}", *extra,
            *(["output.save_candidates=true"] if oracle else []))
    s = run_job(j)
    if s.get("prompts_failed"):  # the evaluator judges finished prompts only: a failure would raise the score
        raise RuntimeError(f"{strategy}:{n} seed {seed}: {s['prompts_failed']} prompt(s) failed (see "
                           f"{j.output.dir}/manifest.jsonl); the benchmark reports whole runs only")
    ev = evaluate_output_dir(j.output.dir)["summary"]
    k, c = s["prompts_ok"], s["compute"]
    res = {"strategy": strategy, "n": n, "seed": seed, "prompts": k, "overall": ev["overall"],
           "per_tag": {t: _tag(ev["per_tag"], t) for t in TAGS}, "token_forwards": c["token_forwards"] / k,
           "preview_decodes": c["preview_decodes"] / k, "reward_images": c["reward_images"] / k,
           "s_per_prompt": s["wall_time_s"] / k}
    if oracle:
        res["oracle"] = _oracle(Path(j.output.dir))
    res["ess_ratio"] = _ess_ratio(Path(j.output.dir))
    shutil.rmtree(out, ignore_errors=True)
    return res


def _ess_ratio(root: Path) -> float:
    """Mean ESS / rows over the job's potential-weighted decisions (resample, fk); NaN when it has none."""
    vals = []
    for path in (root / "traces").glob("*.json"):
        for d in json.loads(path.read_text())["decisions"]:
            if "ess" in d.get("info", {}):
                vals.append(d["info"]["ess"] / len(d["rows"]))
    return float(np.mean(vals)) if vals else float("nan")


def _oracle(root: Path) -> float:
    """Oracle best-of-N: a prompt counts when any of its final candidates is correct (mean of tags)."""
    from PIL import Image

    from ttsvar.testbed.evaluator import ShapesEvaluator

    ev, per = ShapesEvaluator(), {}
    for line in (root / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        md = ev.metadata_for(rec)
        ok = any(ev.evaluate(np.asarray(Image.open(root / c).convert("RGB")), md).correct for c in rec["candidates"])
        per.setdefault(md["tag"], []).append(ok)
    return float(np.mean([np.mean(v) for v in per.values()]))


def _read_results(paths: list[str], seeds: list[int]) -> list[dict]:
    """The records of `--json` files, merged: only the given seeds, and each (strategy, n, seed) once (a record
    counted twice would shrink the standard error)."""
    results, seen = [], {}
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            key = (r["strategy"], r["n"], r["seed"])
            if key in seen:
                raise SystemExit(f"error: {key[0]}:{key[1]} seed {key[2]} is in both {seen[key]} and {path}; "
                                 "merge files of disjoint runs")
            seen[key] = path
            if r["seed"] in seeds:
                results.append(r)
    return results


def _mean_se(xs: list[float]) -> tuple[float, float]:
    x = np.asarray(xs, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def quality(a) -> None:
    """Every strategy on the same prompts for each seed, in `--jobs` processes; mean +- SE over seeds."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    root = Path(a.out)
    prompts = write_prompts(root, a.per_tag, a.prompt_seed, a.split, a.model)
    n_prompts = len(prompts.read_text().splitlines())
    configs = CONFIGS if not a.only else [(st, int(n)) for st, n in (c.rsplit(":", 1) for c in a.only)]
    extra = (f"model.name={a.model}", *a.set)
    tasks = [(prompts, root / f"{st}_{n}_s{seed}", st, n, seed, a.device, extra)
             for seed in a.seeds for st, n in configs]
    t0 = time.perf_counter()
    if a.from_json:  # re-tabulate / re-plot earlier runs' numbers (several files: merged)
        results = _read_results(a.from_json, a.seeds)
        configs = [c for c in configs if any((r["strategy"], r["n"]) == c for r in results)]
    else:
        with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_quality_run, tasks))
    wall = time.perf_counter() - t0
    if a.json and not a.from_json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    rows = []
    for st, n in configs:
        rs = [r for r in results if (r["strategy"], r["n"]) == (st, n)]
        m, se = _mean_se([r["overall"] for r in rs])
        rows.append({"strategy": st, "n": n, "mean": m, "se": se, **{k: float(np.mean([r[k] for r in rs])) for k in
                     ("token_forwards", "preview_decodes", "reward_images", "s_per_prompt", "ess_ratio")},
                     "per_tag": {t: float(np.mean([r["per_tag"][t] for r in rs])) for t in TAGS},
                     "oracle": _mean_se([r["oracle"] for r in rs]) if "oracle" in rs[0] else None})
    seeds = sorted({r["seed"] for r in results})
    if a.from_json:  # the runs' own prompt count where recorded; the rest of their setting is not in the files
        n_prompts = max((r.get("prompts", 0) for r in results), default=0) or n_prompts
        print(f"{n_prompts} prompts ({a.split} split), seeds {' '.join(map(str, seeds))}; re-tabulated from "
              f"{' '.join(a.from_json)} (model, reward and overrides as in the original runs)")
    else:
        print(f"{n_prompts} prompts ({a.split} split, {a.per_tag} per tag, prompt seed {a.prompt_seed}), seeds "
              f"{' '.join(map(str, seeds))}; reward: the model default unless overridden; judged by the exact "
              f"evaluator; model {a.model}; overrides: {' '.join(a.set) or 'none'}; {wall:.0f} s wall with {a.jobs} "
              "processes")
    print("| strategy | N | score (mean ± SE) | " + " | ".join(TAGS) +
          " | token-fwd/prompt | decodes/prompt | reward imgs/prompt | s/prompt | ESS/n |")
    print("|---|---|---|" + "---|" * len(TAGS) + "---|---|---|---|---|")
    for r in rows:
        tags = " | ".join(f"{r['per_tag'][t]:.2f}" for t in TAGS)
        print(f"| {r['strategy']} | {r['n']} | {r['mean']:.3f} ± {r['se']:.3f} | {tags} | {r['token_forwards']:,.0f} | "
              f"{r['preview_decodes']:.1f} | {r['reward_images']:.1f} | {r['s_per_prompt']:.2f} | "
              + ("–" if np.isnan(r["ess_ratio"]) else f"{r['ess_ratio']:.2f}") + " |")
    for r in rows:
        if r["oracle"] is not None:
            print(f"| oracle best-of-{r['n']} | {r['n']} | {r['oracle'][0]:.3f} ± {r['oracle'][1]:.3f} | "
                  "(a prompt counts when any of the Best-of-N candidates is correct) |")
    _targets(rows)
    if a.plot:
        _pareto(rows, Path(a.plot), f"{n_prompts} {a.split} prompts, {len(a.seeds)} seeds", a.model)
        print(f"plot: {a.plot}")


def _targets(rows: list[dict]) -> None:
    """The issue's targets, computed from the table (printed, never asserted)."""
    by = {(r["strategy"], r["n"]): r for r in rows}
    base, bo8, oracle = by.get(("random", 1)), by.get(("best-of-n", 8)), None
    if bo8 and bo8["oracle"]:
        oracle = bo8["oracle"][0]
    if not (base and oracle):
        return
    gap = oracle - base["mean"]

    def closed(r):
        return (r["mean"] - base["mean"]) / gap if gap > 0 else float("nan")

    print(f"\ngap N=1 -> oracle best-of-8: {base['mean']:.3f} -> {oracle:.3f}")
    for key in (("best-of-n", 8), ("tts-var", 2), ("tts-var", 8)):
        if key in by:
            print(f"  {key[0]} N={key[1]} closes {closed(by[key]):.0%} of the gap")
    if ("tts-var", 2) in by and bo8:
        t2 = by[("tts-var", 2)]
        print(f"  tts-var N=2 {t2['mean']:.3f} vs best-of-8 {bo8['mean']:.3f}, token-forwards "
              f"{t2['token_forwards'] / bo8['token_forwards']:.0%} of best-of-8's")


def _pareto(rows: list[dict], path: Path, title: str, model: str = "shapes-tiny") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    series = {}
    for r in rows:
        series.setdefault(r["strategy"], []).append(r)
    colors = plt.get_cmap("tab20").colors  # more series than the default cycle's 10 colours
    for i, (st, rs) in enumerate(series.items()):
        rs = sorted(rs, key=lambda r: r["token_forwards"])
        x, y, e = ([r[k] for r in rs] for k in ("token_forwards", "mean", "se"))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=st, linestyle="-" if len(rs) > 1 else "none",
                    color=colors[2 * i % 20 + i // 10 % 2])  # dark shades first, then the light ones
        for r in rs:
            ax.annotate(f"N={r['n']}", (r["token_forwards"], r["mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    bo8 = next((r for r in rows if (r["strategy"], r["n"]) == ("best-of-n", 8)), None)
    if bo8 and bo8["oracle"]:
        ax.axhline(bo8["oracle"][0], color="grey", linestyle="--", linewidth=1, label="oracle best-of-8")
    ax.set_xscale("log")
    ax.set_xlabel("token-forwards per prompt (CFG rows included)")
    ax.set_ylabel("exact GenEval-style score (mean ± SE over seeds)")
    ax.set_title(f"Search quality against compute, {model} ({title})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _tag(tags: dict, t: str) -> float:
    v = tags.get(t)
    return float(v["accuracy"] if isinstance(v, dict) else v) if v is not None else float("nan")


def overhead(a) -> None:
    """Alternate job and bare runs `--repeat` times and keep the fastest of each (the machine is noisy)."""
    from ttsvar.jobs import build_components

    root = Path(a.out)
    prompts = write_prompts(root, max(1, a.prompts // 6), a.seed)
    items = [json.loads(x)["prompt"] for x in prompts.read_text().splitlines()]
    runs, bares, comp = [], [], None
    for r in range(a.repeat):
        j = job(prompts, root / f"overhead_{r}", "tts-var", a.n, a.device, "runtime.prompts_per_unit=64",
                "runtime.max_rows_per_forward=4096")  # one batch, like the bare run
        s = run_job(j)
        c = s["compute"]
        job_s = s["wall_time_s"] - s["time_setup"]
        runs.append((job_s - c["time_reward"] - c["time_features"], job_s, c))
        comp = comp or build_components(j)
        bares.append(_bare(comp, items))
    engine, job_s, c = min(runs, key=lambda x: x[0])
    bare = min(bares)
    print("| prompts | N | job s (after model loading) | reward+feature s | preview decode s | "
          "job - reward/features s | bare generator s | overhead (incl. decodes) | overhead (excl. decodes) |")
    print("|---|---|---|---|---|---|---|---|---|")
    dec = c["time_decode"]
    print(f"| {len(items)} | {a.n} | {job_s:.2f} | {c['time_reward'] + c['time_features']:.2f} | {dec:.2f} | "
          f"{engine:.2f} | {bare:.2f} | {engine / bare - 1:+.1%} | {(engine - dec) / bare - 1:+.1%} |")


def _bare(comp, items: list[str]) -> float:
    """The generator alone through the same batch schedule: steps and selects, no previews or scoring."""
    gen, plan = comp.generator, comp.plan
    t0 = time.perf_counter()
    state = gen.start(items, Rows.for_prompts(plan.batch_sizes[0], list(range(len(items)))))
    rng = np.random.default_rng(0)
    for k in range(gen.num_scales):
        state = gen.step(state)
        if k in plan.decision_scales:
            nxt = plan.batch_sizes[k + 1]
            idx = np.concatenate([g * plan.batch_sizes[k] + rng.integers(0, plan.batch_sizes[k], nxt)
                                  for g in range(len(items))])
            state = gen.select(state, idx)
    gen.finish(state)
    return time.perf_counter() - t0


def packing(a) -> None:
    """prompts/s of one job per `--ppu` value (the same prompts), alternating over `--repeat` rounds, fastest kept;
    speed-up against one prompt per unit measured in the same run. `--model` and `--set` choose the generator
    and any overrides (e.g. runtime.batch_invariant=false)."""
    root = Path(a.out)
    prompts = write_prompts(root, max(1, -(-a.prompts // 6)), a.seed, model=a.model)
    lines = prompts.read_text().splitlines()[: a.prompts]
    prompts.write_text("\n".join(lines) + "\n")
    sizes = sorted(set(a.ppu or [1, a.prompts]) | {1})
    best: dict[int, dict] = {}
    # a discarded first job: the first one in a process pays for loading and first-call initialisation
    run_job(job(prompts, root / "pack_warmup", "tts-var", a.n, a.device, f"model.name={a.model}", *a.set))
    for _ in range(a.repeat):
        for ppu in sizes:
            j = job(prompts, root / f"pack_{ppu}", "tts-var", a.n, a.device, f"model.name={a.model}",
                    *a.set, f"runtime.prompts_per_unit={ppu}")
            s = run_job(j)
            if ppu not in best or s["wall_time_s"] < best[ppu]["wall_time_s"]:
                best[ppu] = s
    print(f"model {a.model}, tts-var N={a.n}, {len(lines)} prompts, overrides: {' '.join(a.set) or 'none'}, "
          f"fastest of {a.repeat} alternating rounds, torch threads {torch.get_num_threads()}")
    print("| prompts per unit | prompts | wall s | time_generate s | time_decode s | prompts/s | speed-up vs 1 |")
    print("|---|---|---|---|---|---|---|")
    for ppu in sizes:
        s = best[ppu]
        print(f"| {ppu} | {s['prompts_ok']} | {s['wall_time_s']:.2f} | {s['compute']['time_generate']:.2f} | "
              f"{s['compute']['time_decode']:.2f} | {s['prompts_ok'] / s['wall_time_s']:.2f} | "
              f"{best[1]['wall_time_s'] / s['wall_time_s']:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["quality", "overhead", "packing"])
    p.add_argument("--per-tag", type=int, default=8)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--ppu", type=int, nargs="*", default=None, help="packing: prompts per unit to compare (and 1)")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="overhead, packing: alternating runs, fastest kept")
    p.add_argument("--only", nargs="*", default=None, help="strategy:n pairs, e.g. tts-var:2 best-of-n:8")
    p.add_argument("--split", choices=["train", "heldout", "all"], default="heldout",
                   help="quality: prompt split (tune on train; report heldout; all for a class model)")
    p.add_argument("--model", default="shapes-tiny", help="quality: the generator (shapes-tiny, shapes-var-tiny)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3], help="quality: job seeds (mean +- SE)")
    p.add_argument("--prompt-seed", type=int, default=0, help="quality: seed of the prompt set")
    p.add_argument("--jobs", type=int, default=2, help="quality: parallel processes (1 torch thread each)")
    p.add_argument("--plot", default=None, help="quality: write the Pareto PNG here")
    p.add_argument("--json", default=None, help="quality: write every run's numbers here")
    p.add_argument("--from-json", nargs="+", default=None,
                   help="quality: tabulate and plot --json files (merged; --seeds filters) instead of running")
    p.add_argument("--out", default="/tmp/bench_engine")
    p.add_argument("--set", nargs="*", default=[], help="extra job overrides for every run, e.g. search.options.lam=1")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    {"quality": quality, "overhead": overhead, "packing": packing}[a.what](a)


if __name__ == "__main__":
    main()

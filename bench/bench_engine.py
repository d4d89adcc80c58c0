"""Search quality against compute on the embedded testbed, engine overhead, and multi-prompt packing.

    python bench/bench_engine.py quality  [--per-tag 8] [--device cpu] [--out /tmp/bench_engine]
    python bench/bench_engine.py overhead [--prompts 8] [--n 2]
    python bench/bench_engine.py packing  [--prompts 16]

quality: every strategy on the same GenEval-style prompt set (shapes world, train split), steered by the
learned `shapes-clip` reward and judged by the exact evaluator; per tag, overall (= mean of tags), and
compute per prompt (token-forwards, preview decodes, reward images, wall time).
overhead: a TTS-VAR job's wall time minus reward/feature time, over the time of the bare generator doing
the same batch schedule (steps + selects, no previews or scoring).
packing: prompts/s with 16 prompts per work unit against one prompt per unit.
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
from ttsvar.generator import Rows
from ttsvar.jobs import run_job
from ttsvar.testbed import world
from ttsvar.testbed.evaluate import evaluate_output_dir

CONFIGS = [
    ("random", 1), ("best-of-n", 2), ("best-of-n", 4), ("best-of-n", 8),
    ("tts-var", 1), ("tts-var", 2), ("tts-var", 4), ("tts-var", 8),
    ("importance", 4), ("beam", 4), ("fk", 4), ("cluster-only", 2), ("resample-only", 2),
]


def write_prompts(out: Path, per_tag: int, seed: int) -> Path:
    md = world.eval_prompts(per_tag, seed=seed, split="train")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in md))
    return path


def job(prompts: Path, out: Path, strategy: str, n: int, device: str, *extra: str):
    shutil.rmtree(out, ignore_errors=True)
    return load_config(None, [f"prompts={prompts}", f"output.dir={out}", f"search.strategy={strategy}",
                              f"search.n={n}", f"model.device={device}", "runtime.quiet=true",
                              "runtime.prompts_per_unit=8", *extra])


def quality(a) -> None:
    root = Path(a.out)
    prompts = write_prompts(root, a.per_tag, a.seed)
    configs = CONFIGS if not a.only else [c for c in CONFIGS if f"{c[0]}:{c[1]}" in a.only]
    print(f"{len(world.eval_prompts(a.per_tag, seed=a.seed, split='train'))} prompts, reward shapes-clip, "
          f"judged by the exact evaluator; overrides: {' '.join(a.set) or 'none'}")
    print("| strategy | N | overall | single_object | two_object | counting | colors | position | color_attr | "
          "token-fwd/prompt | decodes/prompt | reward imgs/prompt | s/prompt |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for strategy, n in configs:
        j = job(prompts, root / f"{strategy}_{n}", strategy, n, a.device, f"seed={a.seed}", *a.set)
        s = run_job(j)
        ev = evaluate_output_dir(j.output.dir)["summary"]
        k = s["prompts_ok"]
        c = s["compute"]
        tags = ev["per_tag"] if "per_tag" in ev else ev
        cols = " | ".join(f"{_tag(tags, t):.3f}" for t in ("single_object", "two_object", "counting", "colors",
                                                            "position", "color_attr"))
        print(f"| {strategy} | {n} | {ev['overall']:.3f} | {cols} | {c['token_forwards'] / k:,.0f} | "
              f"{c['preview_decodes'] / k:.1f} | {c['reward_images'] / k:.1f} | {s['wall_time_s'] / k:.2f} |",
              flush=True)


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
    root = Path(a.out)
    prompts = write_prompts(root, max(1, -(-a.prompts // 6)), a.seed)
    lines = prompts.read_text().splitlines()[: a.prompts]
    prompts.write_text("\n".join(lines) + "\n")
    print("| prompts per unit | prompts | wall s | prompts/s |")
    print("|---|---|---|---|")
    res = {}
    for ppu in (1, a.prompts):
        j = job(prompts, root / f"pack_{ppu}", "tts-var", a.n, a.device, f"runtime.prompts_per_unit={ppu}")
        s = run_job(j)
        res[ppu] = s["wall_time_s"]
        print(f"| {ppu} | {s['prompts_ok']} | {s['wall_time_s']:.2f} | {s['prompts_ok'] / s['wall_time_s']:.2f} |")
    print(f"speed-up of packing: {res[1] / res[a.prompts]:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["quality", "overhead", "packing"])
    p.add_argument("--per-tag", type=int, default=8)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="overhead: alternating runs, fastest kept")
    p.add_argument("--only", nargs="*", default=None, help="e.g. tts-var:2 best-of-n:8")
    p.add_argument("--out", default="/tmp/bench_engine")
    p.add_argument("--set", nargs="*", default=[], help="extra job overrides for every run, e.g. search.lam=1")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    {"quality": quality, "overhead": overhead, "packing": packing}[a.what](a)


if __name__ == "__main__":
    main()

"""Throughput of the same job locally and on Ray with 1, 2, ... generator actors; coordinator latency.

    .venv/bin/python bench/bench_cluster.py [--prompts 16] [--n 2] [--strategy tts-var] [--actors 1 2]
                                            [--prompts-per-unit 2] [--cpus-per-actor 1] [--num-cpus N]

The job: `shapes-tiny` (its default `shapes-clip` reward and clustering features), GenEval-style shapes
prompts, the same seed in every run. The local run uses `--cpus-per-actor` torch threads, as each actor
does, so the runs compute the same images (checked: every run's PNG bytes are compared with the local
run's). Ray runs share one local Ray instance (`--num-cpus`, default: all cores) started once, so its
start-up is not counted; actor start-up (model load) is, and is also shown apart.

Columns: wall time; prompts/s over the whole run; prompts/s after the first actor was ready (steady
state; locally: after the models are loaded, timed apart); the coordinator's latency per decision (a
report arriving at the driver -> its selection sent back: deserialise, strategy.decide, submit), mean
and p95; the strategy's own decide time per call.
On a GPU machine the actors take one GPU each (leave --cpus-per-actor at 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch

from ttsvar.config import load_config
from ttsvar.jobs import build_components, run_job
from ttsvar.testbed import world


def images(out: Path) -> dict[int, bytes]:
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    return {r["index"]: (out / r["image"]).read_bytes() for r in recs if r["status"] == "ok"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--strategy", default="tts-var")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompts-per-unit", type=int, default=2)
    ap.add_argument("--cpus-per-actor", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--out", default=None, help="keep outputs here (default: a temporary directory)")
    a = ap.parse_args()

    root = Path(a.out or tempfile.mkdtemp(prefix="bench_cluster_"))
    root.mkdir(parents=True, exist_ok=True)
    md = world.eval_prompts(max(1, -(-a.prompts // len(world.TAGS))), seed=0, split="train")[: a.prompts]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in md))
    common = [f"prompts={prompts}", f"search.strategy={a.strategy}", f"search.n={a.n}", "runtime.quiet=true",
              f"runtime.prompts_per_unit={a.prompts_per_unit}", f"runtime.cpus_per_actor={a.cpus_per_actor}"]

    def job(name: str, *extra: str):
        shutil.rmtree(root / name, ignore_errors=True)
        return load_config(None, [*common, f"output.dir={root / name}", *extra])

    torch.set_num_threads(a.cpus_per_actor)
    run_job(job("warmup", "limit=1"))  # imports (faiss, open_clip) and file caches, once for all runs
    t = time.perf_counter()
    build_components(job("load"))
    load_s = time.perf_counter() - t
    rows = []
    s = run_job(job("local"))
    s["actor_start_s"], s["ray_connect_s"] = load_s, 0.0  # the local runtime loads the models in-line
    rows.append(("local", s))
    ref = images(root / "local")
    ray.init(address="local", num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        for n in a.actors:
            name = f"ray_{n}"
            s = run_job(job(name, "runtime.kind=ray", f"runtime.actors={n}"))
            same = images(root / name) == ref
            rows.append((f"ray, {n} actor{'s' if n > 1 else ''}" + ("" if same else " (IMAGES DIFFER)"), s))
    finally:
        ray.shutdown()

    print(f"{len(md)} prompts, shapes-tiny, {a.strategy} n={a.n}, {a.prompts_per_unit} prompts/unit, "
          f"{a.cpus_per_actor} thread(s) per actor, {os.cpu_count()} cores, torch {torch.__version__}")
    print("| runtime | wall s | prompts/s | prompts/s after actors ready | actor start s | "
          "coord. latency/decision ms (mean, p95) | decide ms/call |")
    print("|---|---|---|---|---|---|---|")
    calls = len(json.loads((root / "local" / "traces" / "0.json").read_text())["decisions"])  # per unit
    for name, s in rows:
        ok, wall = s["prompts_ok"], s["wall_time_s"]
        start = s["actor_start_s"] or 0.0
        steady = ok / max(1e-9, wall - start - s["ray_connect_s"])
        if s["runtime"] == "local":
            units = -(-ok // a.prompts_per_unit)
            print(f"| {name} | {wall:.2f} | {ok / wall:.3f} | {steady:.3f} | {start:.2f} (model load) | - | "
                  f"{s['time_decide'] * 1e3 / (units * calls):.2f} |")
            continue
        lat = s["coordinator_latency_ms"] or {}
        print(f"| {name} | {wall:.2f} | {ok / wall:.3f} | {steady:.3f} | {start:.2f} | "
              f"{lat.get('mean', float('nan')):.2f}, {lat.get('p95', float('nan')):.2f} | "
              f"{s['decide_ms_per_call']:.2f} |")
    if not a.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

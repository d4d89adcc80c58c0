"""Cheap previews (`runtime.preview=cheap`) against full ones on the embedded testbed (training prompts only).

    python bench/bench_previews.py [--per-tag 4] [--seeds 0 1 2] [--n 2] [--repeat 3]

1. decode cost per row at each decision scale of TTS-VAR (the generator alone, best of `--repeat`), and over
   the rows TTS-VAR N decodes per prompt (its batch schedule);
2. a TTS-VAR N job per seed and mode: `time_decode / time_generate` of summary.json (final decodes included);
3. decision agreement of cheap previews with full ones from their traces (same prompts and seeds): the share of
   decisions that keep the same rows with the same child counts, over all decisions and over those whose rows
   were equal; the share of prompts with the same final pick. As a yardstick, the same for full previews
   resized to 24 px after decoding (`runtime.preview_size=24`: a slight blur of the same pictures), which shows
   how sensitive the decisions are to any change of the previews;
4. the exact evaluator's score (mean of tags) of each mode, mean +- SE over seeds.
One torch thread; output under `--out` (deleted per job).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import _mean_se, job, write_prompts  # noqa: E402

from ttsvar.core.generator import Rows  # noqa: E402
from ttsvar.eval.evaluate import evaluate_output_dir  # noqa: E402
from ttsvar.jobs import build_components, run_job  # noqa: E402

# label -> the job's overrides; the first is the reference the others' decisions are compared with
MODES = {"full": ["runtime.preview=full"], "cheap": ["runtime.preview=cheap"],
         "full, 24 px": ["runtime.preview=full", "runtime.preview_size=24"]}


def decode_costs(comp, prompts: list[str], rows: int, repeat: int) -> list[tuple[int, tuple, float, float]]:
    """(scale, cheap grid, full ms/row, cheap ms/row) at each decision scale of the plan, `rows` rows at once."""
    gen, plan = comp.generator, comp.plan
    r = Rows.for_prompts(rows // len(prompts), list(range(len(prompts))))
    state, out = gen.start(dict(enumerate(prompts)), r), []
    for k in range(gen.num_scales - 1):
        state = gen.step(state)
        if k not in plan.decision_scales:
            continue
        ms = {}
        for mode in ("full", "cheap"):
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                gen.preview(state, comp.preview_size, cheap=mode == "cheap")
                best = min(best, time.perf_counter() - t0)
            ms[mode] = 1e3 * best / len(r)
        out.append((k, gen.preview_grid(k + 1, cheap=True), ms["full"], ms["cheap"]))
    return out


def kept(decision: dict) -> dict[int, int]:
    return {row["row_id"]: row.get("children", 1) for row in decision["rows"] if row["kept"]}


def overlap(x: dict, y: dict) -> float:
    """Share of the kept children (rows with their child counts) that both decisions keep."""
    return sum(min(c, y.get(r, 0)) for r, c in x.items()) / max(1, sum(x.values()))


def rows_of(decision: dict) -> list[tuple]:
    return [(r["row_id"], r.get("parent")) for r in decision["rows"]]


def agreement(a: Path, b: Path, tally: dict) -> int:
    """Add each decision of the two runs to `tally[scale]` = [decisions, equal kept rows, decisions over equal
    rows, equal kept rows among those, overlap of kept children among those]; returns prompts with the same pick."""
    picks = 0
    for path in sorted((a / "traces").glob("*.json")):
        da = json.loads(path.read_text())["decisions"]
        db = json.loads((b / "traces" / path.name).read_text())["decisions"]
        for x, y in zip(da[:-1], db[:-1], strict=True):  # the last entry is the final pick
            t = tally.setdefault(x["scale"], [0, 0, 0, 0, 0.0])
            t[0] += 1
            t[1] += kept(x) == kept(y)
            if rows_of(x) == rows_of(y):
                t[2] += 1
                t[3] += kept(x) == kept(y)
                t[4] += overlap(kept(x), kept(y))
        picks += da[-1]["picked_row"] == db[-1]["picked_row"]
    return picks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-tag", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="/tmp/bench_previews")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(1)
    root = Path(a.out)

    results = {m: [] for m in MODES}
    tally, picks = {m: {} for m in MODES}, {m: 0 for m in MODES}
    comp = None
    for seed in a.seeds:
        prompts = write_prompts(root / f"prompts_{seed}", a.per_tag, seed, split="train")
        outs = {}
        for i, (mode, extra) in enumerate(MODES.items()):
            j = job(prompts, root / f"mode{i}_{seed}", "tts-var", a.n, a.device, f"seed={seed}", *extra)
            s = run_job(j)
            ev = evaluate_output_dir(j.output.dir)["summary"]
            c = s["compute"]
            results[mode].append((ev["overall"], c["time_decode"] / c["time_generate"], c["preview_decodes"],
                                  s["prompts_ok"]))
            outs[mode] = Path(j.output.dir)
            if comp is None:
                comp = build_components(j)
        for mode in list(MODES)[1:]:
            picks[mode] += agreement(outs["full"], outs[mode], tally[mode])
        for o in outs.values():
            shutil.rmtree(o, ignore_errors=True)

    lines = write_prompts(root / "prompts_cost", 1, 0, "train").read_text().splitlines()
    items = [json.loads(x)["prompt"] for x in lines]
    costs = decode_costs(comp, items[:2], 16, a.repeat)
    sizes = comp.plan.batch_sizes
    print(f"| decision scale | rows (N={a.n}) | decoded grid full -> cheap | full ms/row | cheap ms/row | ratio |")
    print("|---|---|---|---|---|---|")
    tot_f = tot_c = 0.0
    final = comp.generator.preview_grid(comp.generator.num_scales)
    for k, grid, f, c in costs:
        tot_f += sizes[k] * f
        tot_c += sizes[k] * c
        print(f"| {k} | {sizes[k]} | {final[0]}x{final[1]} -> {grid[0]}x{grid[1]} | {f:.2f} | {c:.2f} | {f / c:.1f}x |")
    rows = sum(sizes[k] for k, *_ in costs)
    print(f"| all (ms per prompt) | {rows} | | {tot_f:.1f} | {tot_c:.1f} | {tot_f / tot_c:.1f}x |")
    print()
    print("| preview | score (mean of tags) | score − full (paired by seed) | time_decode / time_generate | "
          "preview decodes per prompt |")
    print("|---|---|---|---|---|")
    ref = [r[0] for r in results["full"]]
    for mode in MODES:
        sc, ratio, dec, k = zip(*results[mode])
        m, se = _mean_se(sc)
        dm, dse = _mean_se([x - y for x, y in zip(sc, ref)])
        rm, rse = _mean_se(ratio)
        per_prompt = np.mean(np.asarray(dec) / np.asarray(k))
        print(f"| {mode} | {m:.3f} ± {se:.3f} | {dm:+.3f} ± {dse:.3f} | {rm:.2f} ± {rse:.2f} | {per_prompt:.1f} |")
    prompts_total = sum(r[3] for r in results["full"])
    for mode in list(MODES)[1:]:
        print(f"\ndecisions with {mode} previews against full ones:\n")
        print("| decision scale | decisions | same kept rows | over equal rows | same kept rows there | "
              "kept children in common there |")
        print("|---|---|---|---|---|---|")
        for k, (n, same, n_eq, same_eq, ov) in sorted(tally[mode].items()):
            print(f"| {k} | {n} | {same / n:.0%} | {n_eq} | {same_eq / max(1, n_eq):.0%} | "
                  f"{ov / max(1, n_eq):.0%} |")
        n, same = sum(t[0] for t in tally[mode].values()), sum(t[1] for t in tally[mode].values())
        print(f"| all | {n} | {same / n:.0%} | | | |")
        print(f"\nsame final pick: {picks[mode]}/{prompts_total} prompts ({picks[mode] / prompts_total:.0%})")

if __name__ == "__main__":
    main()

"""What the shapes-tiny VAE decode costs, per image and inside TTS-VAR jobs, for one or more source trees.

    python bench/bench_decode.py [--trees DIR ...] [--seeds 0 1 2] [--per-tag 4] [--n 2] [--repeat 3] [--rounds 3]

`--trees` names ttsvar source trees (folders holding `ttsvar/`, e.g. a `git archive` of an older commit; default:
this one), so a change and its baseline are measured in one run, interleaved, on the same loaded machine. Every
measurement runs in a fresh process with that tree first on its path and 1 torch thread:

1. decoder ms per image: `BSQVAE.decode` of random latents at each grid of the testbed's schedule (a cheap preview
   decodes the decision scale's own grid, a full one the 8x8 grid) and batch sizes 1, 2, 16 and 64, with
   `runtime.batch_invariant` off and on; best of `--repeat`;
2. jobs: a TTS-VAR N job on the training prompts with `runtime.preview=cheap`, 8 prompts per unit, per seed and
   mode (off/on), and its summary's `time_decode / time_generate` (final decodes included); mean +- SE over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

GRIDS = (2, 3, 4, 6, 8)
BATCHES = (1, 2, 16, 64)
HERE = Path(__file__).resolve().parent


def child_decode(repeat: int) -> dict:
    import time

    import torch

    from ttsvar.models.invariant import batch_invariant
    from ttsvar.testbed.model import load_shapes_tiny

    vae = load_shapes_tiny().vae
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        for grid in GRIDS:
            z = torch.randn(max(BATCHES), vae.codebook_dim, grid, grid, generator=g)
            for inv in (False, True):
                for B in BATCHES:
                    best = float("inf")
                    with batch_invariant(inv):
                        for _ in range(repeat):
                            t0 = time.perf_counter()
                            vae.decode(z[:B])
                            best = min(best, time.perf_counter() - t0)
                    out[f"{grid},{int(inv)},{B}"] = 1e3 * best / B
    return out


def child_job(prompts: str, out: str, n: int, seed: int, inv: str) -> dict:
    from bench_engine import job

    from ttsvar.jobs import run_job

    s = run_job(job(Path(prompts), Path(out), "tts-var", n, "cpu", f"seed={seed}", "runtime.preview=cheap",
                    f"runtime.batch_invariant={inv}"))
    c = s["compute"]
    return {"generate": c["time_generate"], "decode": c["time_decode"]}


def in_tree(tree: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"child in {tree} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _mean_se(xs: list[float]) -> tuple[float, float]:
    x = np.asarray(xs, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", nargs="+", default=[str(HERE.parent)])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-tag", type=int, default=4)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="decoder timings: processes per tree, alternating")
    p.add_argument("--skip-jobs", action="store_true")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(1)
        kind, *rest = a.child
        res = child_decode(int(rest[0])) if kind == "decode" else child_job(rest[0], rest[1], *map(int, rest[2:4]),
                                                                             rest[4])
        print(json.dumps(res))
        return

    sys.path.insert(0, str(HERE))
    from bench_engine import write_prompts

    trees = [Path(t).resolve() for t in a.trees]
    names = [t.name for t in trees]
    dec: dict[Path, dict[str, float]] = {}
    for _ in range(a.rounds):  # trees alternate, so drifting load hits each alike; the best of all rounds is kept
        for t in trees:
            r = in_tree(t, "decode", str(a.repeat))
            dec[t] = {k: min(v, dec.get(t, {}).get(k, float("inf"))) for k, v in r.items()}
    print(f"decoder ms per image, best of {a.rounds} x {a.repeat} (1 thread); columns: tree / batch_invariant")
    cols = [(t, inv) for t in trees for inv in (0, 1)]
    print("| grid -> image | batch | " + " | ".join(f"{t.name} {'on' if i else 'off'}" for t, i in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for grid in GRIDS:
        for B in BATCHES:
            cells = " | ".join(f"{dec[t][f'{grid},{i},{B}']:.2f}" for t, i in cols)
            print(f"| {grid}x{grid} -> {4 * grid}x{4 * grid} | {B} | {cells} |")
    if a.skip_jobs:
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    ratios: dict[tuple[str, str], list[float]] = {}
    per_seed: dict[tuple[str, str], list[float]] = {}
    for seed in a.seeds:
        prompts = write_prompts(tmp / f"prompts_{seed}", a.per_tag, seed, split="train")
        for inv in ("false", "true"):
            for t in trees:  # interleaved, so drifting load hits every tree alike
                r = in_tree(t, "job", str(prompts), str(tmp / "out"), str(a.n), str(seed), inv)
                ratios.setdefault((t.name, inv), []).append(r["decode"] / r["generate"])
                per_seed.setdefault((t.name, inv), []).append(r["decode"])
                print(f"seed {seed} {t.name} batch_invariant={inv}: time_decode {r['decode']:.2f} s, time_generate "
                      f"{r['generate']:.2f} s, ratio {r['decode'] / r['generate']:.3f}", flush=True)
    print(f"\nTTS-VAR N={a.n}, runtime.preview=cheap, {len(a.seeds)} seeds x {6 * a.per_tag} training prompts, "
          "8 prompts per unit; time_decode / time_generate (mean +- SE over seeds)")
    print("| tree | batch_invariant | time_decode / time_generate | time_decode s |")
    print("|---|---|---|---|")
    for name in names:
        for inv in ("false", "true"):
            m, se = _mean_se(ratios[(name, inv)])
            dm, dse = _mean_se(per_seed[(name, inv)])
            print(f"| {name} | {'on' if inv == 'true' else 'off'} | {m:.3f} ± {se:.3f} | {dm:.2f} ± {dse:.2f} |")


if __name__ == "__main__":
    main()

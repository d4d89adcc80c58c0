"""What the batch-invariant mode (`runtime.batch_invariant`, `ttsvar.models.invariant`) costs, on the CPU.

    python bench/bench_invariant.py [--prompts 8] [--n 2 4] [--ppu 1 4] [--repeat 3] [--threads 1]

For each N and prompts per unit: a TTS-VAR job on the embedded shapes-tiny model (its own reward and features),
once with the mode off and once on, fastest of `--repeat` runs each (interleaved, so drifting load hits both);
prints the job's wall time, the summary's time_generate (transformer steps) and time_decode (previews and final
images), and the ratio on / off. Also checks that the mode's images do not depend on the packing: the byte
digest of every image must be the same for every `--ppu`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ttsvar.config import load_config
from ttsvar.jobs import run_job
from ttsvar.testbed import world


def run(prompts: Path, out: Path, n: int, ppu: int, mode: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    job = load_config(None, [f"prompts={prompts}", f"output.dir={out}", "model.name=shapes-tiny",
                             "search.strategy=tts-var", f"search.n={n}", f"runtime.prompts_per_unit={ppu}",
                             f"runtime.batch_invariant={mode}", "runtime.quiet=true"])
    t0 = time.perf_counter()
    s = run_job(job)
    wall = time.perf_counter() - t0
    digest = hashlib.sha256()
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]
    for r in sorted(records, key=lambda r: r["index"]):
        digest.update((out / r["image"]).read_bytes())
    return {"wall": wall, "generate": s["compute"]["time_generate"], "decode": s["compute"]["time_decode"],
            "digest": digest.hexdigest()[:12]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, nargs="+", default=[2, 4])
    p.add_argument("--ppu", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_invariant_"))
    md = world.eval_prompts(max(1, a.prompts // 6 + 1), seed=0, split="train")[: a.prompts]
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in md))
    print(f"shapes-tiny, TTS-VAR, {len(md)} prompts, CPU {torch.get_num_threads()} thread(s), fastest of {a.repeat}")
    print("| N | prompts per unit | mode | wall s | time_generate s | time_decode s | images digest |")
    print("|---|---|---|---|---|---|---|")
    for n in a.n:
        digests = set()
        for ppu in a.ppu:
            best: dict[str, dict] = {}
            for _ in range(a.repeat):
                for mode in ("false", "true"):
                    r = run(prompts, tmp / "out", n, ppu, mode)
                    if mode not in best or r["wall"] < best[mode]["wall"]:
                        best[mode] = r
            for mode in ("false", "true"):
                r = best[mode]
                print(f"| {n} | {ppu} | {'on' if mode == 'true' else 'off'} | {r['wall']:.2f} | {r['generate']:.2f} "
                      f"| {r['decode']:.2f} | {r['digest']} |")
            on, off = best["true"], best["false"]
            print(f"| {n} | {ppu} | on / off | {on['wall'] / off['wall']:.2f} | "
                  f"{on['generate'] / off['generate']:.2f} | {on['decode'] / off['decode']:.2f} | |")
            digests.add(on["digest"])
        print(f"N={n}: images with the mode on are {'identical' if len(digests) == 1 else 'DIFFERENT'} "
              f"across prompts per unit {a.ppu}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Memory a TTS-VAR job grows by while it runs, and what holds it (Linux, glibc).

    python bench/bench_memory.py [--trees DIR ...] [--n 8] [--ppu 1 8] [--prompts 8]

For each source tree (a folder holding `ttsvar/`; default: this one) and prompts per unit, one shapes-tiny TTS-VAR
job on the training prompts runs in a fresh process (1 torch thread) while a thread samples, every 2 ms:

* RSS (`/proc/self/statm`): what the OS sees;
* live malloc bytes (glibc `mallinfo2`: bytes in use in the heap plus mmapped chunks): what the process holds.

Both are reported as peak growth over their value when the first unit starts (models loaded). Before each decode
the unit's own state is weighed: its KV blocks' bytes (`KVBlock.nbytes`, each block once), the
storages behind them, and the storages of its text conditioning. At the end,
RSS again after `malloc_trim(0)` (memory the allocator kept after it was freed, handed back).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1 / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def child(n: int, ppu: int, prompts: int, out: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from bench_engine import job, write_prompts

    from ttsvar import engine as E
    from ttsvar.jobs import run_job

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def live() -> int:
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd

    st = {"rss0": None, "live0": None, "rss": 0, "live": 0, "stop": False, "kv": 0, "kv_storage": 0,
          "text": 0}

    def sample() -> None:
        while not st["stop"]:
            if st["rss0"] is not None:
                st["rss"], st["live"] = max(st["rss"], rss()), max(st["live"], live())
            time.sleep(0.002)

    orig_start, orig_decode = E.Worker.start, E.Worker._decode_unique

    def start(self, unit):
        if st["rss0"] is None:
            st["rss0"], st["live0"] = rss(), live()
        return orig_start(self, unit)

    def decode(self, u, final):
        blocks = {id(b): b for c in u.chunks if c.caches is not None for b in c.caches.blocks()}  # chunks share some
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for b in blocks.values() for layer in b.layers for t in layer}
        st["kv"] = max(st["kv"], sum(b.nbytes for b in blocks.values()))
        st["kv_storage"] = max(st["kv_storage"], sum(storages.values()))
        # the text conditioning the chunks hold (each storage once): per row before it was shared per prompt
        texts = {}
        for c in u.chunks:
            t = c.cond
            for x in [t.cond_BD, t.gss, t.text_mask, getattr(t, "rows", None), *(y for kv in t.ca_kv for y in kv)]:
                if x is not None:
                    texts[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        st["text"] = max(st["text"], sum(texts.values()))
        return orig_decode(self, u, final)

    E.Worker.start, E.Worker._decode_unique = start, decode
    threading.Thread(target=sample, daemon=True).start()
    root = Path(out)
    path = write_prompts(root / "prompts", max(1, prompts // 6 + 1), 0, split="train")
    path.write_text("\n".join(path.read_text().splitlines()[:prompts]) + "\n")
    t0 = time.perf_counter()
    run_job(job(path, root / "out", "tts-var", n, "cpu", f"runtime.prompts_per_unit={ppu}"))
    wall = time.perf_counter() - t0
    st["stop"] = True
    end = rss()
    libc.malloc_trim(0)
    return {"rss_growth": (st["rss"] - st["rss0"]) * MB, "live_growth": (st["live"] - st["live0"]) * MB,
            "kv": st["kv"] * MB, "kv_storage": st["kv_storage"] * MB, "text": st["text"] * MB,
            "end_growth": (end - st["rss0"]) * MB,
            "trimmed_growth": (rss() - st["rss0"]) * MB, "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", nargs="+", default=[str(HERE.parent)])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--ppu", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--out", default="/tmp/bench_memory")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(*map(int, a.child[:3]), a.child[3])))
        return
    print(f"shapes-tiny, TTS-VAR N={a.n}, {a.prompts} training prompts, 1 thread; MB, growth over the first unit's "
          "start")
    print("| tree | prompts per unit | peak RSS growth | peak live malloc growth | peak KV counted | its storages "
          "| text conditioning | RSS growth at the end | after malloc_trim | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ppu in a.ppu:
        for tree in (Path(t).resolve() for t in a.trees):
            env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
            r = subprocess.run([sys.executable, __file__, "--child", str(a.n), str(ppu), str(a.prompts), a.out],
                               env=env, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"| {tree.name} | {ppu} | {m['rss_growth']:.0f} | {m['live_growth']:.0f} | {m['kv']:.0f} | "
                  f"{m['kv_storage']:.0f} | {m['text']:.1f} | {m['end_growth']:.0f} | {m['trimmed_growth']:.0f} | "
                  f"{m['wall']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()

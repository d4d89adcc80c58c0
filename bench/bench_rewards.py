"""Throughput of every built-in reward: images/s through ``reward.score(images, prompts)``.

Weights are random (no real checkpoints exist here): the script writes them in each reward's official file
layout into a temporary folder and loads them through ``create_reward``, so the timed path is the real one
(preprocessing from the input size, tokenisation, forward, output checks).

    python bench/bench_rewards.py                              # tiny configs on CPU (1 thread)
    python bench/bench_rewards.py --device cuda --full         # real architectures, random weights
    python bench/bench_rewards.py --device cuda --full --dtype float16 --batch 32 --only imagereward

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import create_reward  # noqa: E402
from rewards.testing import reward_files  # noqa: E402

PROMPTS = ["a photo of a red cat sitting on a blue sofa", "an oil painting of a lighthouse at dusk"]
REWARDS = ["aesthetic", "clip-score", "hpsv2.1", "imagereward", "pickscore"]


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def bench(name: str, opts: dict, args) -> dict:
    reward = create_reward(name, device=args.device, dtype=args.dtype, **opts)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=g).to(args.device)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        reward.score(images, prompts)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        reward.score(images, prompts)
    sync()
    dt = time.perf_counter() - t0
    return {
        "reward": name,
        "input": reward.input_size,
        "ips": args.batch * args.iters / dt,
        "ms": 1000 * dt / args.iters,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true", help="real-size architectures (random weights)")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="default: float16 on cuda, float32 on cpu",
    )
    ap.add_argument("--batch", type=int, default=None, help="default: 16 (--full) or 8")
    ap.add_argument(
        "--image-size", type=int, default=None, help="input side in px; default: 1024 (--full) or 64"
    )
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; default 1 for tiny configs on CPU (thread hand-offs dominate there)",
    )
    ap.add_argument("--only", nargs="*", default=None, choices=REWARDS)
    args = ap.parse_args()
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    args.batch = args.batch or (16 if args.full else 8)
    args.image_size = args.image_size or (1024 if args.full else 64)
    if args.threads is None and args.device == "cpu" and not args.full:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    save_dtype = torch.float16 if args.dtype == "float16" else torch.float32  # halves the bytes for --full
    for name in args.only or REWARDS:
        with tempfile.TemporaryDirectory() as tmp:
            opts = reward_files(name, Path(tmp), full=args.full, dtype=save_dtype)
            rows.append(bench(name, opts, args))
        print(f"# {name}: {_fmt(rows[-1]['ips'])} images/s", file=sys.stderr)
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()}"
    )
    size = "full size" if args.full else "tiny config"
    print(
        f"\n{size}, random weights, {device}, {args.dtype}, batch {args.batch}, "
        f"input {args.image_size}x{args.image_size} px\n"
    )
    print("| reward | model input px | ms / batch | images/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['reward']} | {r['input']} | {r['ms']:.1f} | {_fmt(r['ips'])} |")


if __name__ == "__main__":
    main()

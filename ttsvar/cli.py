"""The `ttsvar` command line (argparse)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def _split_job_args(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_info(_: argparse.Namespace) -> int:
    import platform

    import numpy as np
    import torch

    print(f"ttsvar      {_version()}")
    print(f"python      {platform.python_version()}")
    print(f"torch       {torch.__version__}")
    print(f"numpy       {np.__version__}")
    print(f"cpu threads {torch.get_num_threads()}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"cuda        {n} device(s)" + "".join(f"\n  cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(n)))
    for mod, label in (("faiss", "faiss"), ("ray", "ray"), ("open_clip", "open_clip"), ("timm", "timm")):
        try:
            m = __import__(mod)
            extra = f" (GPUs seen: {m.get_num_gpus()})" if mod == "faiss" else ""
            print(f"{label:<11} {getattr(m, '__version__', '?')}{extra}")
        except Exception as e:  # noqa: BLE001 - report, don't fail
            print(f"{label:<11} not importable: {e}")
    from .models.registry import list_generators

    print(f"models      {', '.join(list_generators())}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ttsvar")
    except PackageNotFoundError:
        return "dev"


def _print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=1))


def cmd_run(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .jobs import run_job

    path, overrides = _split_job_args(ns.args)
    job = load_config(path, overrides)
    summary = run_job(job)
    out = Path(job.output.dir)
    print(f"images:   {out / 'images'}\nmanifest: {out / 'manifest.jsonl'}\ntraces:   {out / 'traces'}")
    _print_summary(summary)
    return 0 if summary.get("prompts_failed", 0) == 0 else 1


def cmd_generate(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .jobs import run_job

    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.txt"
    prompts.write_text(ns.prompt.replace("\n", " ") + "\n", encoding="utf-8")
    fields = {"prompts": str(prompts), "output": {"dir": str(out)}, "search": {"strategy": ns.strategy, "n": ns.n}}
    if ns.model:
        fields["model"] = {"name": ns.model}
    job = load_config(ns.config, ns.overrides, **fields)
    summary = run_job(job)
    rec = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()][-1]
    print(f"image: {out / rec['image']}  reward: {rec.get('reward')}")
    return 0 if summary.get("prompts_failed", 0) == 0 else 1


def cmd_demo(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .jobs import run_job
    from .testbed import world
    from .testbed.model import weights_available

    out = Path(ns.out)
    for old in ("manifest.jsonl", "summary.json", "images", "traces", "candidates"):  # a demo starts afresh
        path = out / old
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"  # one GenEval-format prompt per tag, so the result can be judged exactly
    metadata = world.eval_prompts(1, seed=ns.seed, split="train")
    prompts.write_text("".join(json.dumps(m) + "\n" for m in metadata), encoding="utf-8")
    model = "shapes-tiny" if weights_available() else "infinity-tiny-random"
    if model != "shapes-tiny":
        print("NOTE: the embedded shapes-tiny weights are not available; running a tiny Infinity with RANDOM "
              "weights (images are noise-like).")
    job = load_config(None, ns.overrides, prompts=str(prompts), model={"name": model},
                      search={"strategy": "tts-var", "n": 2}, output={"dir": str(out), "save_candidates": True})
    print(f"ttsvar demo: TTS-VAR (n=2) with {model} on {len(metadata)} GenEval-style prompts:")
    for m in metadata:
        print(f"  [{m['tag']}] {m['prompt']}")
    summary = run_job(job)
    print(f"images:   {out / 'images'}\nmanifest: {out / 'manifest.jsonl'}\ntraces:   {out / 'traces'}")
    _print_summary(summary)
    if model == "shapes-tiny":
        from .testbed.evaluate import evaluate_output_dir

        res = evaluate_output_dir(out)
        s = res["summary"]
        tags = ", ".join(f"{t} {v['correct']}/{v['total']}" for t, v in s["per_tag"].items())
        print(f"exact GenEval-style evaluation of the best images: overall {s['overall']:.2f} ({tags})")
        print(f"results: {res['results_path']}")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from .testbed.evaluate import evaluate_output_dir

    res = evaluate_output_dir(Path(ns.dir))
    print(json.dumps(res["summary"], indent=1))
    print(f"results: {res['results_path']}")
    return 0


def cmd_config(ns: argparse.Namespace) -> int:
    from .config import load_config, to_yaml

    path, overrides = _split_job_args(ns.args)
    print(to_yaml(load_config(path, overrides)))
    return 0


def cmd_train_testbed(ns: argparse.Namespace) -> int:
    from .testbed.train import main as train_main

    return train_main(ns.args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttsvar", description="Test-time scaling search for next-scale image generators")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="versions, devices, faiss GPUs, Ray")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("run", help="run a batch job: ttsvar run [JOB.yaml] key=value ...")
    s.add_argument("args", nargs="*", help="optional job YAML, then key=value overrides")
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("generate", help="search for the best image for one prompt")
    s.add_argument("prompt")
    s.add_argument("--n", type=int, default=4)
    s.add_argument("--strategy", default="tts-var")
    s.add_argument("--model", default=None)
    s.add_argument("--out", default="outputs/generate")
    s.add_argument("--config", default=None, help="optional job YAML")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.set_defaults(fn=cmd_generate)
    s = sub.add_parser("demo", help="TTS-VAR on the embedded default model for a handful of prompts")
    s.add_argument("--out", default="outputs/demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("evaluate", help="GenEval-style exact evaluation of a job's output dir (shapes testbed)")
    s.add_argument("dir")
    s.set_defaults(fn=cmd_evaluate)
    s = sub.add_parser("config", help="print the resolved job config")
    s.add_argument("args", nargs="*")
    s.set_defaults(fn=cmd_config)
    s = sub.add_parser("train-testbed", help="train the embedded testbed models from a seed")
    s.add_argument("args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_train_testbed)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`generate "p" --n 4 search.lam=5`): argparse leaves them over
    if extra and hasattr(ns, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        ns.overrides = list(ns.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from cluster import ClusterError  # cheap: importing cluster does not import Ray

    try:
        return ns.fn(ns)
    except (ValueError, FileNotFoundError, ClusterError) as e:
        print(f"ttsvar: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ttsvar: interrupted; finished prompts are in the manifest, re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic inputs for tests and benchmarks, made without a model (as `rewards.testing` is for reward files).

* `write_value_file`: a random but valid value file (`search.value` format);
* `strategy_options(name)`: the options a registered strategy needs beyond `search.n` (a value file for `value`);
* `fabricate_run(root, strategy)`: a job output directory written by the real `Coordinator` and strategy on
  random rewards and features (numpy), so its traces have exactly the structure a job of that strategy writes;
  the images are tiny PNGs. The report's tests and `bench/bench_report.py` read these.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from search import create_strategy
from search.value import FORMAT

from .engine import Coordinator, GroupArrays, Report, make_units
from .output import OutputDir


def write_value_file(path, feature_dim: int = 8, scales=range(16), hidden: int = 4, seed: int = 0, layers: int = 2,
                     output: str = "identity", **fitted):
    """A random but valid value file (`search.value` format) for strategy tests: `path` and its JSON beside.
    `fitted`: what it says it was fitted on (`model`, `features`, `reward`, `reward_scale`); unset, not checked."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, norm = {}, {}
    for k in scales:
        fan_in = feature_dim + 3
        for i in range(layers):
            out = 1 if i == layers - 1 else hidden
            tensors[f"scale{k}.{i}.weight"] = rng.normal(size=(out, fan_in)).astype(np.float32)
            tensors[f"scale{k}.{i}.bias"] = rng.normal(size=out).astype(np.float32)
            fan_in = out
        norm[str(k)] = {"mean": [0.0] * (feature_dim + 3), "std": [1.0] * (feature_dim + 3), "y_mean": 0.0,
                        "y_std": 1.0}
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(json.dumps(
        {"format": FORMAT, "scales": list(scales), "feature_dim": feature_dim, "layers": layers,
         "output": output, "norm": norm, **fitted}))
    return path


_VALUE_FILES: dict = {}


def strategy_options(name: str, feature_dim: int = 8) -> dict:
    """Options a registered strategy needs beyond `search.n` in synthetic runs: a value file for `value` (written
    once per `feature_dim` into a temporary folder)."""
    if name != "value":
        return {}
    if feature_dim not in _VALUE_FILES:
        _VALUE_FILES[feature_dim] = write_value_file(Path(tempfile.mkdtemp()) / "value.safetensors", feature_dim)
    return {"value": str(_VALUE_FILES[feature_dim])}


TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def fabricate_run(root: Path, strategy: str = "tts-var", n: int = 2, prompts: int = 4, num_scales: int = 13,
                  seed: int = 0, image_size: int = 32, previews: bool = False, candidates: bool = False,
                  evaluated: bool = False) -> Path:
    """Write a job output directory of `prompts` prompts searched by `strategy` (the real Coordinator and
    strategy on random rewards and features): manifest.jsonl, job.json, summary.json, images/, traces/, and
    optionally previews/ strips, candidates/ and the evaluation files. Returns `root`."""
    rng = np.random.default_rng(seed)
    strat = create_strategy(strategy, **strategy_options(strategy, 8))
    plan = strat.plan(num_scales, n)
    coord = Coordinator(strat, plan)
    out = OutputDir(root)
    texts = [f"a photo of {k % 5 + 1} synthetic thing(s) number {k}" for k in range(prompts)]
    img = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
    thumb = img[::2, ::2] if image_size > 16 else img
    png = _PngCache()
    recs, results = [], []
    for unit in make_units(list(range(prompts)), texts, seed, per_unit=64):
        coord.begin(unit)
        ids = {p: np.arange(plan.batch_sizes[0], dtype=np.int64) for p in unit.prompt_indices}
        strips: dict[int, list[tuple[int, int]]] = {p: [] for p in unit.prompt_indices}
        for k in plan.decision_scales:
            groups = []
            for p in unit.prompt_indices:
                m = len(ids[p])
                groups.append(GroupArrays(p, ids[p],
                                          rng.normal(size=m).astype(np.float32) if k in plan.reward_scales else None,
                                          rng.normal(size=(m, 8)).astype(np.float32) if k in plan.feature_scales
                                          else None,
                                          -rng.gamma(2.0, size=m).astype(np.float32),  # the generator's free
                                          rng.gamma(2.0, size=m).astype(np.float32)))  # token statistics
                strips[p].append((k, m))
            sel = coord.decide(Report(unit.unit_id, k, False, groups, {}))
            ids = {p: sel.row_ids[p] for p in unit.prompt_indices}
        final = Report(unit.unit_id, num_scales - 1, True,
                       [GroupArrays(p, ids[p], rng.normal(size=len(ids[p])).astype(np.float32), None)
                        for p in unit.prompt_indices], {})
        picks = coord.pick(final)
        for ga in final.groups:
            p = ga.prompt_index
            trace, _ = coord.finish_group(p)
            rel = out.image_path(p)
            png.write(root / rel, img)
            if previews:
                for k, m in strips[p]:
                    prel = out.preview_path(p, k)
                    png.write(root / prel, np.concatenate([thumb] * m, axis=1))
                    entry = next(d for d in trace["decisions"] if d["scale"] == k)
                    entry["preview"], entry["preview_tile"] = prel, list(thumb.shape[:2])
            cands = []
            if candidates:
                order = [picks[p]] + [i for i in range(len(ga.row_ids)) if i != picks[p]]
                for pos in order:
                    crel = f"candidates/{p:05d}_{pos}.png"
                    png.write(root / crel, img)
                    cands.append(crel)
            _write_json(root / out.trace_path(p), trace)
            tag = TAGS[p % len(TAGS)]
            recs.append({"index": p, "prompt": texts[p], "seed": unit.seeds[0], "status": "ok", "model": "synthetic",
                         "strategy": strategy, "n": n, "reward_name": "synthetic",
                         "reward": float(ga.rewards[picks[p]]), "image": rel, "trace": out.trace_path(p),
                         "candidates": cands, "row_id": int(ga.row_ids[picks[p]]),
                         "compute": {"token_forwards": 1000 * n}, "metadata": {"tag": tag, "prompt": texts[p]}})
            results.append({"filename": rel, "tag": tag, "prompt": texts[p], "correct": bool(p % 3)})
    out.append_many(recs)
    _write_json(root / "job.json", {"fingerprint": {"seed": seed, "model.name": "synthetic",
                                                          "search.strategy": strategy, "search.n": n}})
    _write_json(root / "summary.json", {"prompts_ok": prompts, "prompts_failed": 0, "wall_time_s": 1.0,
                                              "mean_reward": float(np.mean([r["reward"] for r in recs])),
                                              "compute": {"token_forwards": 1000 * n * prompts}})
    if evaluated:
        per_tag: dict[str, dict] = {}
        for r in results:
            t = per_tag.setdefault(r["tag"], {"correct": 0, "total": 0})
            t["correct"] += r["correct"]
            t["total"] += 1
        for t in per_tag.values():
            t["accuracy"] = t["correct"] / t["total"]
        (root / "geneval_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        _write_json(root / "geneval_summary.json",
                          {"per_tag": per_tag, "overall": float(np.mean([t["accuracy"] for t in per_tag.values()]))})
    return root


class _PngCache:
    """Plain (not atomic, not fsynced: thousands of files for the bench) PNG writes, each distinct array encoded
    once."""

    def __init__(self):
        self.encoded: dict[tuple, bytes] = {}

    def write(self, path: Path, arr: np.ndarray) -> None:
        key = (arr.shape, hash(arr.tobytes()))
        if key not in self.encoded:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            self.encoded[key] = buf.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.encoded[key])


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))

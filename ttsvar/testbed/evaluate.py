"""Exact GenEval-style scoring of a job's output directory on the shapes testbed.

Reads `manifest.jsonl`, takes each prompt's GenEval metadata (from the .jsonl prompt file, or looked up
by prompt text among the shapes world's prompts), judges the best image with `ShapesEvaluator`, and
writes `geneval_results.jsonl` (GenEval's results format) and `geneval_summary.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..output import OutputDir, atomic_write_json
from . import world
from .evaluator import Evaluator, ShapesEvaluator
from .geneval import summarize, write_results


def metadata_for(record: dict) -> dict | None:
    md = record.get("metadata")
    if md and "include" in md:
        return md
    return _BY_PROMPT.get(record["prompt"].strip().lower())


_BY_PROMPT = {m["prompt"].lower(): m for ms in world.ALL_PROMPTS.values() for m in ms}


def evaluate_output_dir(root: str | Path, evaluator: Evaluator | None = None) -> dict:
    out = OutputDir(root)
    records = sorted(out.records(), key=lambda r: r["index"])
    if not records:
        raise ValueError(f"{out.manifest} has no finished prompts to evaluate")
    ev = evaluator or ShapesEvaluator()
    results, skipped = [], []
    for rec in records:
        md = metadata_for(rec)
        if md is None:
            skipped.append(rec["index"])
            continue
        img = np.asarray(Image.open(out.root / rec["image"]).convert("RGB"))
        results.extend(ev.evaluate_records(img[None], [md], [rec["image"]]))
    if not results:
        raise ValueError(f"none of the {len(records)} prompts in {out.manifest} has GenEval metadata; run the job "
                         "from a GenEval-format .jsonl prompt file")
    path = out.root / "geneval_results.jsonl"
    write_results(path, results)
    summary = summarize(results)
    summary["skipped_without_metadata"] = skipped
    atomic_write_json(out.root / "geneval_summary.json", summary)
    return {"summary": summary, "results_path": str(path)}

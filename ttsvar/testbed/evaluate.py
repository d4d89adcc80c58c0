"""Exact GenEval-style scoring of a job's output directory on the shapes testbed.

Reads `manifest.jsonl`, takes each prompt's GenEval metadata (from the .jsonl prompt file, or looked up
by prompt text among the shapes world's prompts), judges the best image with `ShapesEvaluator`, and
writes `geneval_results.jsonl` (GenEval's results format) and `geneval_summary.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ManifestError, OutputError
from ..output import OutputDir, atomic_write_json
from . import world
from .evaluator import Evaluator, ShapesEvaluator
from .geneval import summarize, write_results


def metadata_for(record: dict) -> dict | None:
    md = record.get("metadata")
    if md and "include" in md:
        return md
    prompt = record.get("prompt")
    return _BY_PROMPT.get(prompt.strip().lower()) if isinstance(prompt, str) else None


_BY_PROMPT = {m["prompt"].lower(): m for ms in world.ALL_PROMPTS.values() for m in ms}


def _read_image(out: OutputDir, rec: dict) -> np.ndarray:
    path = out.root / rec["image"]
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:  # missing, truncated or not an image (PIL raises these)
        raise ManifestError(f"{path} (prompt {rec['index']}) cannot be read as an image ({type(e).__name__}: "
                            f"{str(e).strip()[:120]}); delete its line from {out.manifest.name} and re-run the job "
                            "on this output.dir to redo the prompt") from None


def evaluate_output_dir(root: str | Path, evaluator: Evaluator | None = None) -> dict:
    """Judge the best image of every finished prompt of a job's output.dir. Raises `ttsvar.errors.InputError`
    subclasses, naming the file or line, for a path that is not an output.dir, a damaged manifest line or an
    unreadable image."""
    out = OutputDir(root, create=False)
    if not out.manifest.is_file():
        raise OutputError(f"{out.root} has no {out.manifest.name}: give the output.dir of a `ttsvar run` job")
    records = sorted(out.records(strict=True), key=lambda r: r["index"])
    if not records:
        raise ManifestError(f"{out.manifest} has no finished prompts to evaluate")
    ev = evaluator or ShapesEvaluator()
    results, skipped = [], []
    for rec in records:
        md = metadata_for(rec)
        if md is None:
            skipped.append(rec["index"])
            continue
        img = _read_image(out, rec)
        results.extend(ev.evaluate_records(img[None], [md], [rec["image"]]))
    if not results:
        raise ManifestError(f"none of the {len(records)} prompts in {out.manifest} has GenEval metadata; run the job "
                         "from a GenEval-format .jsonl prompt file")
    path = out.root / "geneval_results.jsonl"
    write_results(path, results)
    summary = summarize(results)
    summary["skipped_without_metadata"] = skipped
    atomic_write_json(out.root / "geneval_summary.json", summary)
    return {"summary": summary, "results_path": str(path)}

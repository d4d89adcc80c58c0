"""GenEval-style scoring of a job's output directory with any registered evaluator.

Reads `manifest.jsonl`, takes each prompt's GenEval metadata (`Evaluator.metadata_for`: from the .jsonl
prompt file, or looked up by the evaluator), judges the best image, and writes `geneval_results.jsonl`
(GenEval's results format) and `geneval_summary.json`. `ttsvar evaluate DIR --evaluator NAME` calls it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import ManifestError, OutputError
from ..output import OutputDir, atomic_write_json
from .evaluator import Evaluator
from .geneval import summarize, write_results
from .registry import create_evaluator


def _read_image(out: OutputDir, rec: dict) -> np.ndarray:
    path = out.root / rec["image"]
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:  # missing, truncated or not an image (PIL raises these)
        raise ManifestError(f"{path} (prompt {rec['index']}) cannot be read as an image ({type(e).__name__}: "
                            f"{str(e).strip()[:120]}); delete its line from {out.manifest.name} and re-run the job "
                            "on this output.dir to redo the prompt") from None


def evaluate_output_dir(root: str | Path, evaluator: Evaluator | str = "shapes") -> dict:
    """Judge the best image of every finished prompt of a job's output.dir with `evaluator` (an instance or a
    registered name). Returns {"summary": GenEval's summary, "results_path": ...}. Raises `ttsvar.core.errors`
    input errors: `ConfigError` for an unknown evaluator name (before reading anything), and, naming the file or
    line, for a path that is not an output.dir, a damaged manifest line or an unreadable image."""
    ev = create_evaluator(evaluator) if isinstance(evaluator, str) else evaluator
    out = OutputDir(root, create=False)
    if not out.manifest.is_file():
        raise OutputError(f"{out.root} has no {out.manifest.name}: give the output.dir of a `ttsvar run` job")
    records = sorted(out.records(strict=True), key=lambda r: r["index"])
    if not records:
        raise ManifestError(f"{out.manifest} has no finished prompts to evaluate")
    results, skipped = [], []
    for rec in records:
        md = ev.metadata_for(rec)
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

"""GenEval-style scoring with any registered evaluator, of a job's output directory or of a GenEval image folder.

* `evaluate_output_dir` (`ttsvar evaluate DIR --evaluator NAME`): reads `manifest.jsonl`, takes each prompt's
  GenEval metadata (`Evaluator.metadata_for`: from the .jsonl prompt file, or looked up by the evaluator),
  judges the best image, and writes `geneval_results.jsonl` (GenEval's results format) and
  `geneval_summary.json`.
* `evaluate_sample_folder` (`ttsvar geneval score DIR --detector NAME`): every sample of a folder in GenEval's
  layout (`<DIR>/<5 digits>/metadata.jsonl` and `samples/<digits>.png`, whoever wrote it), judged like
  GenEval's `evaluation/evaluate_images.py`; writes `DIR/results.jsonl`, which GenEval's `summary_scores.py`
  reads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..core.errors import InputError, ManifestError, MissingFileError, OutputError
from ..output import OutputDir, atomic_write_json, inside, subfolder_runs_hint
from .evaluator import Evaluator
from .geneval import iter_sample_folder, summarize, write_results
from .registry import create_evaluator

log = logging.getLogger("ttsvar")


def _read_image(out: OutputDir, rec: dict) -> np.ndarray:
    path = inside(out.root, rec["image"])
    if path is None:
        raise ManifestError(f"{out.manifest} line of prompt {rec['index']} names the image {rec['image']!r}, which "
                            "is not inside the output.dir; a manifest names its images relative to it (images/...)")
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
        raise OutputError(f"{out.root} has no {out.manifest.name}: give the output.dir of a `ttsvar run` job"
                          f"{subfolder_runs_hint(out.root)}")
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
    summary.update(_job_coverage(out, len(records)))
    atomic_write_json(out.root / "geneval_summary.json", summary)
    return {"summary": summary, "results_path": str(path)}


def _job_coverage(out: OutputDir, evaluated: int) -> dict:
    """How the finished prompts evaluated compare with the job's prompts as its last run counted them
    (summary.json): failed and not-run prompts, and results of prompts the last run no longer had (a shorter
    prompts file or a smaller limit), each said in a warning, so that a partial score is never read as whole."""
    try:
        job = json.loads((out.root / "summary.json").read_text(encoding="utf-8")).get("job") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    cov = {k: job[k] for k in ("prompts", "prompts_failed", "prompts_not_run") if isinstance(job.get(k), int)}
    if cov.get("prompts_failed") or cov.get("prompts_not_run"):
        log.warning("%s: the job's last run counted %d failed and %d not yet run of its %d prompts; the score is "
                    "over the %d finished ones", out.root, cov.get("prompts_failed", 0), cov.get("prompts_not_run", 0),
                    cov.get("prompts", 0), evaluated)
    ok = job.get("prompts_ok")
    if isinstance(ok, int) and evaluated > ok:
        log.warning("%s: the manifest holds %d finished prompts, the job's last run %d: the others are results of "
                    "prompts it no longer had (a shorter prompts file or a smaller limit); all were evaluated",
                    out.root, evaluated, ok)
        cov["results_beyond_the_job"] = evaluated - ok
    return cov


def read_sample(path: Path) -> np.ndarray:
    """A sample as GenEval reads it (`ImageOps.exif_transpose(Image.open(path))`, then RGB), uint8 [H, W, 3]."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path} cannot be read as an image ({type(e).__name__}: {str(e).strip()[:120]}); "
                         "delete it or write it again") from None


def _readable(path: Path) -> bool:
    """Whether an image file is whole (PIL's integrity check, without decoding the pixels)."""
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - any failure to read it is the answer
        return False


def evaluate_sample_folder(root: str | Path, evaluator: Evaluator | Callable[[], Evaluator] | str = "shapes",
                           outfile: str | Path | None = None, progress: bool = False) -> dict:
    """Judge every sample of a GenEval image folder with `evaluator` (an instance, a registered name, or a function
    that builds one once the folder and `outfile` are checked) and write
    the results, one line per image, to `outfile` (default `root/results.jsonl`) in GenEval's format: the fields
    of `geneval.result_record`, ``filename`` being the sample's path as GenEval writes it (`root` as given, then
    ``<folder>/samples/<name>``). Returns {"summary": `geneval.summarize`, "results_path": ...}."""
    from tqdm import tqdm

    root_text = str(root)
    root = Path(root)
    if not root.is_dir():
        raise OutputError(f"{root} is not a folder; give a folder in GenEval's layout (<dir>/00000/metadata.jsonl, "
                          "<dir>/00000/samples/00000.png, ...)")
    out = Path(outfile) if outfile is not None else root / "results.jsonl"
    if out.is_dir() or not out.parent.is_dir():  # found before the scoring pass, not after it
        raise OutputError(f"{'--out ' + str(outfile) if outfile is not None else out}: give a file in an existing "
                          "folder (the results are written there)")
    try:
        samples = list(iter_sample_folder(root))
    except FileNotFoundError as e:
        raise MissingFileError(str(e)) from None
    if not samples:
        raise InputError(f"{root} holds no samples in GenEval's layout (<dir>/00000/metadata.jsonl and "
                         "<dir>/00000/samples/00000.png); run `ttsvar geneval generate` first")
    bad = [path for path, _ in samples if not _readable(path)]
    if bad:  # before the expensive pass, so that a damaged file found late does not cost the scores so far
        raise InputError(f"{len(bad)} sample(s) cannot be read as images ({', '.join(map(str, bad[:5]))}"
                         f"{', ...' if len(bad) > 5 else ''}); delete them or write them again")
    # the evaluator is built once the folder is known good (a detector's models take a while to load)
    if isinstance(evaluator, str):
        ev = create_evaluator(evaluator, field="--detector")
    else:
        ev = evaluator() if callable(evaluator) and not isinstance(evaluator, Evaluator) else evaluator
    results = []
    bar = tqdm(total=len(samples), disable=not progress, unit="image", desc="geneval score", dynamic_ncols=True)
    for path, md in samples:
        name = os.path.join(root_text, path.parent.parent.name, "samples", path.name)
        results.extend(ev.evaluate_records([read_sample(path)], [md], [name]))
        bar.update(1)
    bar.close()
    write_results(out, results)
    return {"summary": summarize(results), "results_path": str(out)}

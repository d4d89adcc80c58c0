"""Reading job output directories for the report: one `Run` per `OUT_DIR`, and the page data built from them.

`load_run(path)` is called by `ttsvar.report.build_report` for every directory on the command line. It reads
what `ttsvar run` wrote (`manifest.jsonl`, `job.json`, `summary.json`, `traces/`) and what `ttsvar evaluate`
added (`geneval_summary.json`, `geneval_results.jsonl`), or, for a `ttsvar geneval generate` folder, the
`results.jsonl` of `ttsvar geneval score`; a folder without a manifest is refused with an
`OutputError` naming it. Damaged side files (an unreadable trace or summary) are warnings: the report shows
what is there.

`page_data(runs, images)` turns the runs into the JSON the page's script renders: per prompt its text, tag,
reward, verdict, image references and a column-wise trace (`compact_trace`), with floats rounded to 4
significant digits, because a 553 x 4 GenEval run holds over two thousand traces.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.errors import ManifestError, OutputError
from ..output import MANIFEST, REDO, OutputDir, inside, subfolder_runs_hint

log = logging.getLogger("ttsvar")

# the decision info fields shown in a column header (the rest stay in the trace files)
INFO_FIELDS = ("kind", "k", "ess", "resampled", "width", "lam", "potential", "resampler")


@dataclass
class Run:
    """One job output directory, as the report reads it."""

    root: Path
    label: str
    config: dict[str, Any]  # the fingerprint of job.json ({} when missing)
    summary: dict[str, Any]  # summary.json ({} when missing)
    geneval: dict[str, Any] | None  # geneval_summary.json, when the run was evaluated
    correct: dict[str, bool]  # image path (as in the manifest) -> judged correct, from geneval_results.jsonl
    records: list[dict]  # finished prompts (status ok), by index
    failed: list[dict] = field(default_factory=list)  # prompts whose last record says failed, by index
    traces: dict[int, dict] = field(default_factory=dict)  # prompt index -> its trace, where one was read
    geneval_note: str | None = None  # why the GenEval scores do not stand for the run as it is now, if they do not

    def setting(self, key: str) -> Any:
        """A job setting (`search.strategy`, `search.n`, `model.name`, `reward.name`): from job.json, else from
        the first manifest record (`strategy`, `n`, `model`, `reward_name`)."""
        if key in self.config:
            return self.config[key]
        rec_key = {"search.strategy": "strategy", "search.n": "n", "model.name": "model",
                   "reward.name": "reward_name"}.get(key)
        recs = self.records or self.failed
        return recs[0].get(rec_key) if rec_key and recs else None


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing; a damaged file is a warning (and None)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s cannot be read (%s); the report leaves it out", path, e)
        return None


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read one job output directory. Raises `OutputError` for a path that is not a folder or holds no
    manifest.jsonl, and `ManifestError` for a manifest without a single result record."""
    root = Path(path).expanduser()
    expected = "give the output.dir of a `ttsvar run` or `ttsvar generate` job (a folder with manifest.jsonl)"
    if not root.exists():
        raise OutputError(f"{root} does not exist; {expected}")
    if not root.is_dir():
        raise OutputError(f"{root} is a file, not a job's output folder; {expected}")
    out = OutputDir(root, create=False)
    if not out.manifest.is_file():
        raise OutputError(f"{root} is not a job's output folder: it has no {MANIFEST}; {expected}"
                          f"{subfolder_runs_hint(root)}")
    latest: dict[int, dict] = {}
    for no, rec, why in out.lines():
        if rec is None:
            log.warning("%s line %d is %s; the report skips it", out.manifest, no, why)
        else:
            latest[rec["index"]] = rec  # a later line for the same index supersedes an earlier one
    if not latest:
        raise ManifestError(f"{out.manifest} holds no result records; run the job first (`ttsvar run`), then "
                            "make its report")
    records = [latest[i] for i in sorted(latest) if latest[i].get("status") == "ok"]
    failed = [latest[i] for i in sorted(latest) if latest[i].get("status") not in ("ok", REDO)]  # redo: not run
    job = _read_json(root / "job.json")
    config = job.get("fingerprint", {}) if isinstance(job, dict) else {}
    summary = _read_json(root / "summary.json")
    geneval, correct, scored = _evaluation(root, records)
    return Run(root, label or root.name or str(root), config if isinstance(config, dict) else {},
               summary if isinstance(summary, dict) else {}, geneval, correct, records, failed,
               _traces(root, records), _coverage(geneval, correct, scored, records, failed))


def _coverage(geneval: dict | None, correct: dict[str, bool], scored: int, records: list[dict],
              failed: list[dict]) -> str | None:
    """Why a run's GenEval scores do not stand for it as it is now: they were made before it changed (images
    finished since, or redone for an edited prompt), or some prompts failed and are in no score."""
    if geneval is None:
        return None
    notes = []
    skipped = set(geneval.get("skipped_without_metadata") or [])  # no GenEval metadata: never scored, not stale
    judged = [r for r in records if r.get("index") not in skipped]
    if len(correct) < len(judged) or scored > len(correct):
        notes.append(f"the scores cover {len(correct)} of the run's {len(judged)} finished images"
                     + (f" and {scored - len(correct)} it no longer has" if scored > len(correct) else "")
                     + ": evaluate it again")
    if failed:
        notes.append(f"{len(failed)} prompt(s) failed and are in no score")
    return "; ".join(notes) or None


_SAMPLE = re.compile(r"(\d+)[/\\]samples[/\\](\d+)\.png$")


def _evaluation(root: Path, records: list[dict]) -> tuple[dict | None, dict[str, bool], int]:
    """(GenEval summary, image path -> correct, images scored) of a run: `ttsvar evaluate`'s geneval_summary.json
    and geneval_results.jsonl, else the results.jsonl that `ttsvar geneval score` wrote into a `ttsvar geneval
    generate` folder, whose sample k of prompt folder f is the job's prompt f * n_samples + k (n_samples from
    geneval.json). A verdict counts for a finished image only if it was made for that image's prompt text (an
    edited prompt redone since has none). (None, {}, 0) for a run not evaluated."""
    summary = _read_json(root / "geneval_summary.json")
    if isinstance(summary, dict):
        verdicts = _verdicts(root / "geneval_results.jsonl")
        texts_of = {r.get("image"): _texts(r) for r in records}
        correct = {img: ok for img, (ok, prompt) in verdicts.items()
                   if img in texts_of and prompt in (None, *texts_of[img])}
        return summary, correct, len(verdicts)
    state = _read_json(root / "geneval.json")
    n = state.get("n_samples") if isinstance(state, dict) else None
    if not isinstance(n, int) or n < 1 or not (root / "results.jsonl").is_file():
        return None, {}, 0
    from ..eval.geneval import read_results, summarize

    try:
        results = read_results(root / "results.jsonl")
    except (OSError, ValueError) as e:
        log.warning("%s cannot be read (%s); the report leaves the GenEval scores out", root / "results.jsonl", e)
        return None, {}, 0
    if not results:
        return None, {}, 0
    by_index = {r["index"]: r for r in records}
    correct = {}
    for r in results:
        m = _SAMPLE.search(str(r.get("filename", "")))
        rec = by_index.get(int(m.group(1)) * n + int(m.group(2))) if m else None
        if rec and rec.get("image") and r.get("prompt") in (None, *_texts(rec)):
            correct[rec["image"]] = bool(r["correct"])
    return summarize(results), correct, len(results)


def _texts(rec: dict) -> tuple:
    """The texts a verdict on this record's image may carry: its prompt, and for a class-conditional model (whose
    prompt is the class, "5") the class's text, which the evaluators judge."""
    return (rec.get("prompt"), rec.get("class_name")) if rec.get("class_name") else (rec.get("prompt"),)


def _shown(rec: dict) -> str:
    """The prompt as the table shows (and filters) it: a class-conditional model's class by its text."""
    prompt = str(rec.get("prompt", ""))
    return f"{rec['class_name']} (class {prompt})" if rec.get("class_name") else prompt


def _traces(root: Path, records: list[dict]) -> dict[int, dict]:
    out, missing = {}, []
    for rec in records:
        rel = rec.get("trace")
        if not isinstance(rel, str):
            continue
        path = inside(root, rel)
        if path is None or not path.is_file():
            missing.append(rel)
            continue
        tr = _read_json(path)
        if isinstance(tr, dict):
            out[rec["index"]] = tr
    if missing:
        log.warning("%s: %d trace file(s) named in the manifest are missing (%s%s); their prompts show no tree",
                    root, len(missing), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else "")
    return out


def _verdicts(path: Path) -> dict[str, tuple[bool, str | None]]:
    """image path -> (correct, the prompt it was judged for) of `ttsvar evaluate`'s results."""
    out: dict[str, tuple[bool, str | None]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and isinstance(r.get("filename"), str):
            prompt = r.get("prompt")
            out[r["filename"]] = (bool(r.get("correct")), prompt.strip() if isinstance(prompt, str) else None)
    return out


def unique_labels(paths: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [p.name or str(p) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


# ----------------------------------------------------------------------------- traces


def _num(x: Any) -> Any:
    """A trace value for the page: floats to 4 significant digits, non-finite floats to None."""
    if isinstance(x, float):
        return float(f"{x:.4g}") if math.isfinite(x) else None
    if isinstance(x, list):
        return [_num(v) for v in x]
    return x


def compact_trace(trace: dict, image_ref: Callable[[str], int | None]) -> dict:
    """A per-prompt trace, column-wise: `{"S": scales, "d": [decision]}` where a decision is `{"s": scale,
    "info": {...}, "pick": picked row id or None, "prev": [image, h, w] or None, "c": {column: [values]}}`.
    Every row column of the trace is kept (strategies add their own). `image_ref` maps a preview path to an
    image id."""
    decisions = []
    for d in trace.get("decisions", []):
        rows = d.get("rows") or []
        names = list(dict.fromkeys(k for r in rows for k in r))
        cols = {k: [_num(r.get(k)) for r in rows] for k in names}
        info = {k: _num(v) for k, v in (d.get("info") or {}).items() if k in INFO_FIELDS}
        prev = None
        if isinstance(d.get("preview"), str) and isinstance(d.get("preview_tile"), list):
            ref = image_ref(d["preview"])
            if ref is not None:
                prev = [ref, *d["preview_tile"][:2]]
        decisions.append({"s": d.get("scale"), "info": info, "pick": d.get("picked_row"), "prev": prev, "c": cols})
    return {"S": len(trace.get("batch_sizes") or []), "d": decisions}


# ----------------------------------------------------------------------------- images


class Images:
    """The images a report shows, each once: embedded as a data URI, or a path relative to the report.

    `add(run_root, rel)` returns an id (None when the file does not exist); `uris()` the list the page indexes."""

    def __init__(self, report_dir: Path, embed: bool):
        self.report_dir, self.embed = report_dir, embed
        self.ids: dict[Path, int] = {}
        self.paths: list[Path] = []

    def add(self, root: Path, rel: str | None) -> int | None:
        path = inside(root, rel)  # a crafted record must not embed a file from outside the run
        if path is None:
            return None
        if path not in self.ids:
            if not path.is_file():
                return None
            self.ids[path] = len(self.paths)
            self.paths.append(path)
        return self.ids[path]

    def uris(self) -> list[str]:
        if self.embed:
            return [_data_uri(p) for p in self.paths]
        here, real = self.report_dir.resolve(), {}
        out = []
        for p in self.paths:  # resolve each folder once, not each of thousands of files
            if p.parent not in real:
                real[p.parent] = p.parent.resolve()
            out.append(quote(Path(os.path.relpath(real[p.parent] / p.name, here)).as_posix()))
        return out


def _data_uri(path: Path) -> str:
    kind = "png" if path.suffix.lower() == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_files(runs: list[Run]) -> list[Path]:
    """Every image file a report of `runs` would show (final images, candidates, preview strips named by traces)
    that exists; used to decide whether to embed them."""
    probe = Images(Path("."), embed=False)
    for run in runs:
        for rec in run.records:
            for rel in [rec.get("image"), *(rec.get("candidates") or [])]:
                probe.add(run.root, rel)
            for d in run.traces.get(rec["index"], {}).get("decisions", []):
                probe.add(run.root, d.get("preview") if isinstance(d.get("preview"), str) else None)
    return probe.paths


_CANDIDATE_POS = re.compile(r"_(\d+)\.\w+$")


def page_data(runs: list[Run], images: Images) -> dict:
    """The JSON the page's script renders (see the module docstring); images are ids into `images`."""
    out_runs = []
    for run in runs:
        prompts = []
        for rec in run.records:
            md = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
            cands = {}
            for rel in rec.get("candidates") or []:
                m = _CANDIDATE_POS.search(rel)
                ref = images.add(run.root, rel)
                if m and ref is not None:
                    cands[int(m.group(1))] = ref
            tr = run.traces.get(rec["index"])
            reward = rec.get("reward")
            prompts.append({
                "i": rec["index"], "p": _shown(rec), "tag": md.get("tag"),
                "r": _num(reward) if isinstance(reward, (int, float)) else None,
                "ok": run.correct.get(rec.get("image")) if run.correct else None,
                "img": images.add(run.root, rec.get("image")), "cand": cands,
                "tf": (rec.get("compute") or {}).get("token_forwards"),
                "t": compact_trace(tr, lambda rel, root=run.root: images.add(root, rel)) if tr else None,
            })
        for rec in run.failed:
            err = str(rec.get("error") or "").strip().splitlines()
            prompts.append({"i": rec["index"], "p": _shown(rec), "failed": err[-1] if err else "failed"})
        prompts.sort(key=lambda p: p["i"])
        out_runs.append({"label": run.label, "strategy": run.setting("search.strategy"), "n": run.setting("search.n"),
                         "evaluated": run.geneval is not None, "prompts": prompts})
    return {"runs": out_runs}

"""`ttsvar report OUT_DIR [OUT_DIR ...]`: one self-contained HTML page of one or more job output directories.

`build_report(dirs, out)` is called by `ttsvar.cli.cmd_report` and by `ttsvar.demo.run_demo`. It reads each
directory (`runs.load_run`), decides whether to embed the images, and writes one file (atomically):

* a summary: the runs side by side (settings, prompts, mean reward, GenEval overall and per-tag accuracy when
  the run was evaluated, compute counters and time per phase), a quality-against-compute chart when there are
  several runs, and every job.json field (those that differ first);
* a paged, filterable table of the prompts and, for the prompt picked, each run's search tree: decisions as
  columns, rows as nodes, edges from parent to child, pruned rows faded, clusters as colours, each row's reward
  and potential weight, the ESS of each resampling, and the pick (with its lineage) beside the final image.
  The trees are drawn by the page's script from embedded JSON when a prompt is opened, so thousands of
  prompts cost one JSON parse, not thousands of DOM trees.

Images (final images, `candidates/`, the `previews/` strips of `output.save_previews`) are embedded as data
URIs when they total at most `EMBED_LIMIT` bytes (`embed="auto"`), else linked by paths relative to the
report, which then has to stay next to the run folders. The page loads nothing from the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError, OutputError
from ..output import atomic_write_bytes
from .page import render_page
from .runs import Images, Run, image_files, load_run, page_data, unique_labels

__all__ = ["EMBED_LIMIT", "EMBED_MODES", "ReportInfo", "Run", "build_report", "load_run"]

EMBED_LIMIT = 16 * 2**20  # image bytes that `embed="auto"` still embeds; more are linked
EMBED_MODES = ("auto", "all", "none")
REPORT_NAME = "report.html"


@dataclass
class ReportInfo:
    """What `build_report` wrote."""

    path: Path
    size: int  # bytes of the page
    embedded: bool  # images inside the page (else linked relative to it)
    images: int  # image files shown
    image_bytes: int  # their total size on disk
    prompts: int  # prompt results over all runs
    seconds: float  # time to build and write the page


def report_path(out: str | Path | None, first_dir: Path) -> Path:
    """Where the page goes: `out` (a folder gets report.html inside it), else report.html in the first run."""
    if out is None:
        return first_dir / REPORT_NAME
    path = Path(out).expanduser()
    folder = path.is_dir() or str(out).endswith(("/", os.sep))  # `-o rep/new/`: a folder to create
    return path / REPORT_NAME if folder else path


def _check_not_a_job_file(target: Path, runs: Sequence[Path]) -> None:
    """Refuse a page path that is one of the files a job writes in a run folder (`-o RUN/manifest.jsonl` turned
    the manifest into HTML, and the run could no longer be resumed, evaluated or reported)."""
    from ..geneval_jobs import PROMPTS_FILE, STATE_FILE
    from ..output import LOCK_FILE, WRITTEN_DIRS, WRITTEN_FILES

    # what a job, `evaluate` and `geneval generate/score` write there (a report.html is the page's own place)
    own = {*WRITTEN_FILES, LOCK_FILE, "prompts.txt", PROMPTS_FILE, STATE_FILE, "results.jsonl"} - {REPORT_NAME}
    for run in runs:
        try:
            rel = target.resolve().relative_to(run.resolve())
        except ValueError:
            continue
        # a job's folders, GenEval's numbered sample folders, and the job's own files
        if rel.parts and (rel.parts[0] in WRITTEN_DIRS or rel.parts[0].isdigit() or str(rel) in own):
            raise OutputError(f"-o {target}: that is the run's own {rel}; write the report elsewhere (default: "
                              f"{run / REPORT_NAME})")


def build_report(dirs: Sequence[str | Path], out: str | Path | None = None, embed: str = "auto",
                 title: str = "ttsvar report") -> ReportInfo:
    """Write the report of the job output directories `dirs` to `out` (default: `dirs[0]/report.html`).

    Raises `OutputError` / `ManifestError` naming a directory that is not a job's output, `InputError` for an
    unknown `embed` (one of `EMBED_MODES`), `OutputError` when the page cannot be written."""
    t0 = time.perf_counter()
    if embed not in EMBED_MODES:
        raise InputError(f"--embed {embed!r} is unknown; use one of {', '.join(EMBED_MODES)}")
    if not dirs:
        raise InputError("give at least one job output folder (the output.dir of `ttsvar run`)")
    paths = [Path(d).expanduser() for d in dirs]
    seen: dict[Path, str] = {}
    for d, p in zip(dirs, paths):
        if p.resolve() in seen:
            raise InputError(f"{d} is given twice (as {seen[p.resolve()]} too): its results would be counted twice; "
                             "give each run folder once")
        seen[p.resolve()] = str(d)
    runs = [load_run(p, label) for p, label in zip(paths, unique_labels(paths))]
    target = report_path(out, paths[0])
    _check_not_a_job_file(target, paths)
    files = image_files(runs)
    image_bytes = sum(f.stat().st_size for f in files)
    embedded = embed == "all" or (embed == "auto" and image_bytes <= EMBED_LIMIT)
    images = Images(target.parent, embedded)
    data = page_data(runs, images)
    data["images"] = images.uris()
    page = render_page(runs, data, title).encode("utf-8")
    try:
        atomic_write_bytes(target, page)
    except OSError as e:
        raise OutputError(f"cannot write the report to {target} ({e.strerror or e}); choose another place with "
                          "-o PATH") from None
    n_prompts = sum(len(r.records) + len(r.failed) for r in runs)
    return ReportInfo(target, len(page), embedded, len(images.paths), image_bytes, n_prompts,
                      time.perf_counter() - t0)

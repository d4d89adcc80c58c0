"""`ttsvar geneval generate`: a job over GenEval's prompts whose images land in GenEval's own layout.

GenEval (github.com/djghosh13/geneval) scores a folder written by its `generation/diffusers_generate.py`:

    <out>/00000/metadata.jsonl      line 0 of evaluation_metadata.jsonl (the prompt's metadata object)
    <out>/00000/samples/00000.png   n_samples images of that prompt (GenEval's protocol: 4)
    <out>/00000/grid.png            the samples side by side (optional)
    <out>/00001/...

How a run is made (`run_geneval`): the metadata file's prompts (the first `limit`) are expanded into
`n_samples` lines each, written to `<out>/geneval_prompts.jsonl` (line k is sample k % n_samples of prompt
k // n_samples, the metadata object unchanged), and that file runs as an ordinary job with output.dir=<out>
(`ttsvar.jobs.run_job`, so the local runtime and Ray alike). Each line is one prompt of the job with its own
seed (`ttsvar.engine.prompt_seed(seed, k)`), so every sample is an independent search. The job's own files
(`manifest.jsonl`, `images/`, `traces/`, `job.json`, `summary.json`) sit beside the numbered folders, which
GenEval ignores (it reads only numeric folders); each finished sample is hard-linked (copied where links
fail) from `images/` into its folder (`write_layout`), also after an interrupted run.

Resuming is the job's: finished lines are skipped, a changed configuration is refused (`job.json`), and so is
a changed `n_samples` (`geneval.json`), which would give the samples already written other numbers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import JobConfig, load_config, read_job_file
from .core.errors import ConfigError, InputError, OutputError, PromptError, ResumeError
from .output import OutputDir, atomic_write_bytes, atomic_write_json, inside
from .prompts import format_problems, relabel_problems

log = logging.getLogger("ttsvar")

PROMPTS_FILE = "geneval_prompts.jsonl"  # the expanded prompts the job runs
STATE_FILE = "geneval.json"  # n_samples of the results here (a resume with another is refused)
MAX_SAMPLES = 10_000
GRID_PAD = 2  # pixels between grid cells (torchvision's make_grid default, which GenEval's script uses)


@dataclass
class GenevalOptions:
    """What `ttsvar geneval generate` takes besides the job's keys (a top-level key of the YAML or key=value)."""

    n_samples: int = 4  # images per prompt, each an independent search (GenEval's protocol: 4)
    grid: bool = False  # also write <folder>/grid.png, the prompt's samples side by side


GENEVAL_KEYS = tuple(GenevalOptions.__dataclass_fields__)


def load_geneval_job(yaml_path: str | Path | None, overrides: list[str],
                     **fields: Any) -> tuple[JobConfig, GenevalOptions]:
    """The job and the GenEval options of a command line: `n_samples` / `grid` are taken out of the YAML file and
    the overrides, the rest is an ordinary job (`ttsvar.config.load_config`). `ConfigError` naming the field."""
    tree = read_job_file(yaml_path) if yaml_path is not None else None
    mine = {k: tree.pop(k) for k in GENEVAL_KEYS if tree is not None and k in tree}
    ours = [o for o in overrides if o.split("=", 1)[0].strip() in GENEVAL_KEYS]
    rest = [o for o in overrides if o not in ours]
    _check_near_misses([o.split("=", 1)[0].strip().split(".")[0] for o in rest] + list(tree or {}))
    try:
        conf = OmegaConf.merge(OmegaConf.structured(GenevalOptions), OmegaConf.create(mine),
                               OmegaConf.from_dotlist(ours))
        opts: GenevalOptions = OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(getattr(e, "msg", e)).strip().splitlines()[0]
        raise ConfigError(f"invalid config{f' field {key!r}' if key else ''}: {msg}") from None
    if not 1 <= opts.n_samples <= MAX_SAMPLES:
        raise ConfigError(f"n_samples must be in [1, {MAX_SAMPLES}] (images per prompt), got {opts.n_samples}")
    job = load_config(tree, rest, **fields)
    if not job.prompts:
        raise ConfigError("prompts is not set: give GenEval's evaluation_metadata.jsonl (prompts=path)")
    return job, opts


def _check_near_misses(keys: list[str]) -> None:
    """A top-level key that is no job field but close to a GenEval option (`n_sample`) is that option misspelt:
    the job's own check would suggest a job field instead (`sampling`)."""
    import difflib
    from dataclasses import fields

    job_keys = {f.name for f in fields(JobConfig)}
    for key in keys:
        if key not in job_keys:
            near = difflib.get_close_matches(key, GENEVAL_KEYS, n=1, cutoff=0.75)
            if near:
                raise ConfigError(f"unknown key {key!r}: did you mean {near[0]!r}? (GenEval's options are "
                                  f"{', '.join(GENEVAL_KEYS)})")


def sample_of(index: int, n_samples: int) -> tuple[int, int]:
    """(prompt folder, sample number) of line `index` of the expanded prompts."""
    return divmod(index, n_samples)


def clear_layout(root: Path) -> list[str]:
    """What `output.overwrite` deletes besides the job's files, once the new job starts writing
    (`ttsvar.jobs.start_over`): the numbered folders (only those in GenEval's layout, holding nothing else),
    `geneval.json` and `results.jsonl`; not the expanded prompts, which the new job is reading."""
    gone = []
    for name in (STATE_FILE, "results.jsonl"):
        if (root / name).is_file():
            (root / name).unlink()
            gone.append(name)
    for p in _layout_folders(root):
        shutil.rmtree(p)
        gone.append(p.name)
    if len(gone) > 8:
        gone = gone[:8] + [f"... ({len(gone)} in all)"]
    return gone


def _layout_folders(root: Path) -> list[Path]:
    """The numbered folders of `root` in GenEval's layout (holding nothing but metadata, samples and a grid)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit()
                  and {c.name for c in p.iterdir()} <= {"metadata.jsonl", "samples", "grid.png"})


def is_geneval_output(root: Path) -> bool:
    """Whether `root` holds a `geneval generate` run (its state or expanded prompts)."""
    return (root / STATE_FILE).is_file() or (root / PROMPTS_FILE).is_file()


def _check_foreign_layout(root: Path) -> None:
    """Numbered sample folders that no ttsvar job wrote (no manifest, no job.json) are someone else's samples:
    generating into them would mix ours in, and `--fresh` would delete them. Refused, naming a few."""
    if (root / "manifest.jsonl").is_file() or (root / "job.json").is_file():
        return
    folders = [p.name for p in _layout_folders(root)]
    if folders:
        raise OutputError(f"output.dir={str(root)!r} holds GenEval sample folders that no ttsvar job wrote "
                          f"({', '.join(folders[:3])}{' ...' if len(folders) > 3 else ''}); choose another "
                          "output.dir (ttsvar neither mixes its samples into them nor deletes them)")


def _check_state(out: OutputDir, opts: GenevalOptions) -> None:
    """Refuse results written with another n_samples; record this run's."""
    path = out.root / STATE_FILE
    if out.has_results() and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("n_samples")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            old = None
        if old is not None and old != opts.n_samples:
            raise ResumeError(f"output.dir={str(out.root)!r} holds samples of another configuration (n_samples: "
                              f"{old} -> {opts.n_samples}). Start over with output.overwrite=true (`--fresh`), "
                              "which deletes them, or choose another output.dir")
    atomic_write_json(path, {"n_samples": opts.n_samples})


def run_geneval(job: JobConfig, opts: GenevalOptions, generator=None) -> dict:
    """Generate (or resume) `opts.n_samples` images for each GenEval prompt of `job.prompts` (the first
    `job.limit`) into GenEval's layout under `job.output.dir`; returns the job's summary plus the layout's
    counts. Called by `ttsvar.cli` (`geneval generate`)."""
    from .eval.geneval import load_metadata  # inside: ttsvar.eval imports ttsvar.output at module level
    from .jobs import run_job

    metadata = load_metadata(job.prompts)
    metadata = metadata[: job.limit] if job.limit else metadata
    if not metadata:
        raise PromptError(f"prompts={job.prompts!r} holds no prompts; give GenEval's evaluation_metadata.jsonl")
    root = Path(job.output.dir).expanduser()
    if root.exists() and not root.is_dir():
        raise OutputError(f"output.dir={job.output.dir!r} is a file, not a folder; choose another output.dir")
    _check_foreign_layout(root)
    out = OutputDir(root)
    if not job.output.overwrite:  # with it, the earlier state goes when the new job starts writing, not before
        _check_state(out, opts)
    expanded = root / PROMPTS_FILE
    before = expanded.read_bytes() if expanded.is_file() else None
    manifest_before = _stamp(out.manifest)
    lines = "".join(json.dumps(md) + "\n" for md in metadata for _ in range(opts.n_samples))
    atomic_write_bytes(expanded, lines.encode("utf-8"))
    inner = replace(job, prompts=str(expanded), limit=None)
    try:
        summary = run_job(inner, generator)
    except BaseException as e:
        if isinstance(e, InputError) or _stamp(out.manifest) == manifest_before:
            # refused, or stopped before its first result: the earlier run's prompts and layout stay as they were
            # (its layout rebuilt under this run's metadata would drop every sample of a changed prompt)
            _restore(expanded, before)
            if isinstance(e, PromptError):
                raise PromptError(_user_problems(str(e), expanded, job.prompts, opts.n_samples, job.limit)) from None
            raise
        try:  # an interrupted or failed job: what finished still goes into the layout
            if not (root / STATE_FILE).is_file():
                atomic_write_json(root / STATE_FILE, {"n_samples": opts.n_samples})
            write_layout(root, metadata, opts.n_samples, opts.grid)
        except Exception as e:  # noqa: BLE001 - the job's own error is the one to report
            log.error("could not put the finished samples into GenEval's layout: %s", e)
        raise
    atomic_write_json(root / STATE_FILE, {"n_samples": opts.n_samples})
    layout = write_layout(root, metadata, opts.n_samples, opts.grid)
    summary.update({"geneval_prompts": len(metadata), "n_samples": opts.n_samples, **layout})
    return summary


def _stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a file, None when absent: whether a job appended to its manifest."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _restore(path: Path, before: bytes | None) -> None:
    """`path` back to `before` (absent when None)."""
    if before is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_bytes(path, before)


def _user_problems(message: str, expanded: Path, metadata_file: str, n_samples: int, limit: int | None) -> str:
    """A `PromptError` about lines of the expanded prompts (which the user never wrote) told as the lines of
    the user's metadata file: line k of the expansion is prompt k // n_samples, on the file's line of that
    prompt (blank lines are skipped by `load_metadata`)."""
    with open(metadata_file, encoding="utf-8") as f:
        numbers = [n for n, line in enumerate(f, 1) if line.strip()]
    numbers = numbers[:limit] if limit else numbers
    problems = relabel_problems(message, expanded, lambda n: f"{metadata_file}:{numbers[(n - 1) // n_samples]}")
    return format_problems(problems) if problems else message


def _link(src: Path, dst: Path) -> None:
    """`dst` becomes `src` (a hard link, else a copy), replaced atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_layout(root: str | Path, metadata: list[dict], n_samples: int, grid: bool = False) -> dict:
    """Put every finished sample of the job in `root` into GenEval's layout (idempotent: a re-run redoes only
    what changed). A manifest line counts when its prompt (or, for a class-conditional model, its class's text)
    is the expanded prompt of its index. Returns
    {"samples_written": ..., "folders_written": ..., "folders_complete": ...}."""
    root = Path(root)
    out = OutputDir(root, create=False)
    by_folder: dict[int, dict[int, Path]] = {}
    for k, rec in out.done(warn=False).items():
        i, j = sample_of(k, n_samples)
        # a class-conditional model records the class (`prompt` "5") and its text (`class_name`)
        if i >= len(metadata) or metadata[i]["prompt"].strip() not in (rec.get("prompt"), rec.get("class_name")):
            continue
        src = inside(root / "images", str(rec["image"]).removeprefix("images/"))  # the job's own images only
        if src is not None and str(rec["image"]).startswith("images/") and src.is_file():
            by_folder.setdefault(i, {})[j] = src
    for i, samples in sorted(by_folder.items()):
        folder = root / f"{i:05d}"
        for d in (folder, folder / "samples"):
            if d.is_symlink():  # writing (or removing stale samples) through it would touch files outside the run
                raise OutputError(f"{d} is a symbolic link; ttsvar writes GenEval's layout only into real folders "
                                  "inside output.dir: remove the link and run again")
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "metadata.jsonl", json.dumps(metadata[i]).encode("utf-8"))  # as GenEval writes
        for j, src in sorted(samples.items()):
            _link(src, folder / "samples" / f"{j:05d}.png")
        # a grid shows the folder's samples as they are now: redrawn when complete (also when an earlier run asked
        # for it: its samples may have changed since), removed when not
        if len(samples) == n_samples and (grid or (folder / "grid.png").is_file()):
            write_grid(folder / "grid.png", [samples[j] for j in range(n_samples)])
        elif (folder / "grid.png").is_file():
            (folder / "grid.png").unlink()
    _drop_stale_samples(root, by_folder, len(metadata))
    stale = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()
                   and int(p.name) >= len(metadata))
    if stale:
        log.warning("%s holds folders of prompts beyond this run's %d (%s); GenEval scores every numbered folder: "
                    "delete them, or start over with output.overwrite=true", root, len(metadata),
                    ", ".join(f"{i:05d}" for i in stale[:5]) + (" ..." if len(stale) > 5 else ""))
    return {"samples_written": sum(len(s) for s in by_folder.values()), "folders_written": len(by_folder),
            "folders_complete": sum(len(s) == n_samples for s in by_folder.values())}


def _drop_stale_samples(root: Path, finished: dict[int, dict[int, Path]], n_prompts: int) -> None:
    """GenEval scores every png of a numbered folder: remove those this run's manifest does not stand behind (a
    sample of an earlier prompt text at that number, one beyond n_samples); a folder left with no sample goes
    (the layout's folders only)."""
    for folder in _layout_folders(root):
        i = int(folder.name)
        if i >= n_prompts:
            continue  # beyond this run's prompts: write_layout warns about them
        keep = finished.get(i, {})
        if not keep:
            shutil.rmtree(folder)
            continue
        samples = folder / "samples"
        for f in sorted(samples.glob("*.png")) if samples.is_dir() and not samples.is_symlink() else []:
            if not (f.stem.isdigit() and int(f.stem) in keep):
                f.unlink()


def write_grid(path: Path, images: list[Path]) -> None:
    """The samples in one row, `GRID_PAD` black pixels around each (like torchvision's `make_grid`)."""
    from PIL import Image

    from .output import atomic_write_png

    arrays = []
    for p in images:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    canvas = np.zeros((h + 2 * GRID_PAD, len(arrays) * (w + GRID_PAD) + GRID_PAD, 3), np.uint8)
    for c, a in enumerate(arrays):
        x = GRID_PAD + c * (w + GRID_PAD)
        canvas[GRID_PAD:GRID_PAD + a.shape[0], x:x + a.shape[1]] = a
    atomic_write_png(path, canvas)

"""A job's output directory: images, traces and `manifest.jsonl`, written atomically; resumable.

Layout (a contract users' scripts rely on: extend, don't rename):
    manifest.jsonl            one line per finished prompt (status ok or failed)
    images/<index>.png        best image per prompt
    candidates/<index>_<k>.png  all final candidates (optional)
    previews/<index>_s<scale>.png  thumbnails of every row at each decision scale, one strip (optional)
    traces/<index>.json       per-prompt search trace
    search_data/<index>.npz   every decision row's features, rewards, token statistics, outcome (optional)
    summary.json              this run's totals, and the job's (`job`: every prompt, by the manifest), at the end
    job.json                  the fingerprint of the configuration that wrote the results (resume checks it)
    report.html               `ttsvar report` of this folder (when made here)
    .ttsvar.lock              held (flock) by the job writing here; a second job on the folder is refused

Every file is created with the permissions the umask gives (like the manifest), not tempfile's 0600.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .core.errors import ManifestError, OutputError, ResumeError
from .core.files import CONTENT_SUFFIX

log = logging.getLogger("ttsvar")

MANIFEST, JOB_FILE = "manifest.jsonl", "job.json"
# a manifest line's status: "ok", "failed", or REDO: the files of an earlier result of the index are being
# replaced (`OutputDir.replace_results`); the index is not finished until a later line says so
REDO = "redo"
# what a job (and `ttsvar evaluate`, and `ttsvar report` by default) writes into output.dir: files by name, and
# in each folder the files of the names the job gives them (an atomic write's leftover `.NAME.*.tmp` too).
# `output.overwrite=true` deletes exactly these, in a folder that holds a job's results, and nothing else.
WRITTEN_FILES = (MANIFEST, "summary.json", JOB_FILE, "geneval_results.jsonl", "geneval_summary.json", "report.html")
WRITTEN_DIRS = {
    "images": re.compile(r"\d{5,}\.png"),
    "traces": re.compile(r"\d+\.json"),
    "candidates": re.compile(r"\d{5,}_\d+\.png"),
    "previews": re.compile(r"\d{5,}_s\d+\.png"),
    "search_data": re.compile(r"\d{5,}\.npz"),
}
WRITTEN = WRITTEN_FILES + tuple(WRITTEN_DIRS)
LOCK_FILE = ".ttsvar.lock"
_TMP = re.compile(r"\..+\.tmp")

# Fingerprint fields an older ttsvar recorded that no longer exist, with the only value they ever held: results
# recorded with them are still of the same configuration.
RETIRED_FIELDS: dict[str, Any] = {"sampling.extra": {}}
# Fingerprint fields added since: results recorded without them still resume (they were not checked then).
ADDED_FIELDS = frozenset({"search.value_sha256", "reward.batch_size", "search.features_opts.batch_size"})


# a path field, and the field holding what it names, beyond `<path>#content`
_CONTENT_OF = {"search.options.value": "search.value_sha256"}


def _same_content(key: str, old: dict, new: dict) -> bool:
    """A path field whose file holds the same bytes under both configurations (moved, or named relative to
    another working directory) is the same job; in a mapping field (`reward.options`), every entry that differs
    must be such a path (`reward.options.weights` with an equal `reward.options.weights#content`)."""
    return key in old and key in new and _same_at(key, old[key], new[key], old, new)


def _same_at(key: str, a: Any, b: Any, old: dict, new: dict) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(a[k] == b[k] or _same_at(f"{key}.{k}", a[k], b[k], old, new) for k in a)
    cid = _CONTENT_OF.get(key, key + CONTENT_SUFFIX)
    return cid in old and cid in new and old[cid] == new[cid]


def _under(key: str, keys: list[str]) -> bool:
    """`key` (`reward.options.path`) is one of `keys` or inside one (`reward.options`): its path changed, which
    says more than that its content did."""
    return any(key == k or key.startswith((k + ".", k + "[")) for k in keys)


def _changed(key: str, old: Any, new: Any) -> str:
    if key.endswith(CONTENT_SUFFIX):  # the path may be the same, its bytes are not
        return f"{key[:-len(CONTENT_SUFFIX)]}: the file at that path changed (size:hash {old} -> {new})"
    return f"{key}: {_short(old)} -> {_short(new)}"


def file_mode() -> int:
    """0o666 minus the process umask: the mode `open()` would create a file with."""
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(x.split()[1], 8) for x in f if x.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)  # elsewhere: read it by setting it (briefly)
        os.umask(umask)
    return 0o666 & ~umask


def inside(root: Path, rel: Any) -> Path | None:
    """`root / rel` if `rel` (a path read from a manifest, trace or results file) names something inside `root`:
    relative, no `..`, and not leading out of `root` through a symbolic link; else None. A crafted record must
    not make a report embed, a layout link, or an evaluator read a file outside the run."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        return None
    path = Path(root) / rel
    try:
        path.resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError):
        return None
    return path


def _open_nofollow(path: Path, flags: int, what: str) -> int:
    """os.open refusing a symbolic link at `path` (a planted link would make the job write through it)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, file_mode())
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{path} is a symbolic link; ttsvar writes {what} only as a real file inside "
                              "output.dir: remove the link or choose another output.dir") from None
        raise


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Files that belong together (weights and their JSON record), or one file: every one written to a synced
    temp file in its folder first, then all renamed into place, so an interrupted write leaves the old set, never
    a truncated file or new weights beside an old record. Umask permissions."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), file_mode())
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path` (umask permissions)."""
    atomic_write_files({path: data})


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())


def write_weights(path: Path, tensors: dict, record: Any) -> None:
    """A trainer's safetensors file at `path` and its JSON record at `path` with `.json`, together
    (`atomic_write_files`). `tensors` are written as given (contiguous CPU tensors)."""
    from safetensors.torch import save

    atomic_write_files({path: save(tensors), path.with_suffix(".json"):
                        (json.dumps(record, indent=1, default=_json_default) + "\n").encode()})


def subfolder_runs_hint(root: Path) -> str:
    """For an error about a folder that is not a job's output: "; its subfolders a/, b/ are" when some of its
    subfolders hold a manifest (the demo's top folder, a sweep's parent); "; it is a job's output.dir, but no
    prompt has finished there yet" when it holds a job's job.json and no manifest; else ""."""
    if (root / JOB_FILE).is_file() and not (root / MANIFEST).exists():
        return "; it is a job's output.dir, but no prompt has finished there yet: run (or resume) the job first"
    try:
        runs = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / MANIFEST).is_file())
    except OSError:
        return ""
    return f"; its subfolders {', '.join(r + '/' for r in runs)} are" if runs else ""


def atomic_write_png(path: Path, image: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def to_uint8(images) -> np.ndarray:
    """[B,3,H,W] float in [0,1] (tensor or array) -> [B,H,W,3] uint8, rounding to nearest."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _short(v: Any, limit: int = 60) -> str:
    text = json.dumps(v, default=_json_default)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray) or hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _record_problem(line: str) -> tuple[dict | None, str | None]:
    """(record, None) for a manifest line that is a result record, else (None, why)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg})"
    if not isinstance(rec, dict):
        return None, f"a JSON {type(rec).__name__}, not an object"
    idx = rec.get("index")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        return None, f"no integer 'index' field (index={idx!r})"
    if rec.get("status") == "ok" and not isinstance(rec.get("image"), str):
        return None, "status ok but no 'image' path"
    return rec, None


class OutputDir:
    """Owned by the process that applies the search (the engine or the Ray coordinator): one writer.

    `create=False` opens an existing directory for reading (`ttsvar evaluate`)."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root).expanduser()
        self.manifest = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            if not create:
                raise OutputError(f"{self.root} is a file, not a folder: give the output.dir of a job")
            raise OutputError(f"output.dir={str(root)!r} is a file, not a folder; choose another output.dir")
        if not create:
            if not self.root.is_dir():
                raise OutputError(f"{self.root} does not exist; give the output.dir of a job")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output.dir={str(root)!r}: {e.strerror or e}; choose another "
                              "output.dir") from None

    # -- checks before a job --------------------------------------------------------------------------

    def check_writable(self, subdirs: tuple[str, ...] = ("images", "traces")) -> None:
        """Create the folders a job writes to and write (then delete) a file in each, so that a read-only or
        full output.dir is refused before any model loads. Raises `OutputError` naming the path."""
        if self.manifest.is_symlink():
            raise OutputError(f"{self.manifest} is a symbolic link; ttsvar appends only to a real file inside "
                              "output.dir: remove the link or choose another output.dir")
        if self.manifest.exists() and not self.manifest.is_file():
            raise OutputError(f"{self.manifest} is not a file; remove it or choose another output.dir")
        for d in ("", *subdirs):
            path = self.root / d
            if d and path.is_symlink():  # files written there would land wherever it points
                raise OutputError(f"{path} is a symbolic link; ttsvar writes only into real folders inside "
                                  "output.dir: remove the link or choose another output.dir")
            try:
                if path.exists() and not path.is_dir():
                    raise OutputError(f"{path} is a file, but the job writes files into a folder of that name; "
                                      "move it away or choose another output.dir")
                path.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path, prefix=".ttsvar-write-check.", suffix=".tmp")
                os.close(fd)
                os.unlink(tmp)
            except OSError as e:
                raise OutputError(f"output.dir={str(self.root)!r} is not writable ({path}: {e.strerror or e}); "
                                  "fix its permissions or choose another output.dir") from None
        if self.manifest.exists() and not os.access(self.manifest, os.W_OK):
            raise OutputError(f"{self.manifest} is not writable; fix its permissions or choose another output.dir")

    def has_results(self) -> bool:
        return self.manifest.is_file() and self.manifest.stat().st_size > 0

    def clear(self) -> list[str]:
        """Delete what jobs write here (`WRITTEN_FILES`, and the job-named files of `WRITTEN_DIRS`), nothing
        else: a folder keeps any other file, and one that holds no job's results (no manifest or job.json) is
        left alone. Returns what was deleted (a folder's name when any of its files went)."""
        if not (self.manifest.is_file() or (self.root / JOB_FILE).is_file()):
            return []
        gone = []
        for name in WRITTEN_FILES:
            if self._remove(self.root / name):
                gone.append(name)
        for name, pattern in WRITTEN_DIRS.items():
            d = self.root / name
            if not d.is_dir() or d.is_symlink():
                continue
            hit = [self._remove(f) for f in sorted(d.iterdir())
                   if (pattern.fullmatch(f.name) or _TMP.fullmatch(f.name)) and not f.is_dir()]
            if any(hit):
                gone.append(name)
            try:
                d.rmdir()  # only when nothing else is in it
            except OSError:
                pass
        return gone

    def _remove(self, path: Path) -> bool:
        try:
            if not (path.exists() or path.is_symlink()) or (path.is_dir() and not path.is_symlink()):
                return False
            path.unlink()
            return True
        except OSError as e:
            raise OutputError(f"cannot delete {path} to start over ({e.strerror or e}); fix its permissions "
                              "or choose another output.dir") from None

    def lock(self, field: str = "output.dir") -> None:
        """Hold output.dir for this process until `unlock` (or exit): a second job on the same folder is refused
        (`OutputError`, naming the folder as `field`) instead of interleaving its results with another
        configuration's. POSIX only."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        if getattr(self, "_lock", None) is not None:
            return
        path = self.root / LOCK_FILE
        try:
            f = os.fdopen(_open_nofollow(path, os.O_RDWR | os.O_CREAT, "its lock"), "r+", encoding="ascii")
        except OSError as e:
            raise OutputError(f"cannot create {path} ({e.strerror or e}); fix its permissions or choose another "
                              f"{field}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip()
            f.close()
            raise OutputError(f"{field}={str(self.root)!r} is in use by another ttsvar job"
                              f"{f' ({who})' if who else ''}; wait for it to finish or choose another {field}"
                              ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._lock = f

    def unlock(self) -> None:
        f, self._lock = getattr(self, "_lock", None), None
        if f is not None:
            f.close()  # closing the file releases the flock

    def repair_tail(self) -> str | None:
        """A kill while a manifest line was being appended leaves it without its newline; the next append
        would glue a record onto it (and lose it). A torn line that is a whole record gets its newline back;
        otherwise it is cut off (its prompt is redone). Returns a warning, or None if the file was intact."""
        if not self.manifest.is_file():
            return None
        with os.fdopen(_open_nofollow(self.manifest, os.O_RDWR, "the manifest"), "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return None
            f.seek(max(0, size - (1 << 20)))
            chunk = f.read()
            cut = size - len(chunk) + chunk.rfind(b"\n") + 1 if b"\n" in chunk else 0
            f.seek(cut)
            tail = f.read()
            rec, _ = _record_problem(tail.decode("utf-8", "replace"))
            if rec is not None:
                f.seek(size)
                f.write(b"\n")
                msg = f"{self.manifest}: its last line had no newline (a kill during a write); added it"
            else:
                f.truncate(cut)
                msg = (f"{self.manifest}: its last line was cut off by a kill during a write; removed it "
                       f"({len(tail)} bytes: {tail[:60]!r}...), its prompt will be redone")
            f.flush()
            os.fsync(f.fileno())
        return msg

    def check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to add results of one configuration to those of another. `fingerprint`: the flat fields that
        change results. With results here and a different stored fingerprint, raises `ResumeError` naming
        the fields (`clear()` first to start over). Writes `job.json` for the next run."""
        fp = json.loads(json.dumps(fingerprint, default=_json_default))
        path = self.root / JOB_FILE
        if self.has_results():
            old = None
            if path.is_file():
                try:
                    old = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                    old = None
            if old is None:
                log.warning("%s has results but no readable %s (an older ttsvar, or it was deleted): cannot check "
                            "that they come from this configuration; resuming", self.root, JOB_FILE)
            else:
                diff = [k for k in sorted(set(old) | set(fp)) if old.get(k, "<unset>") != fp.get(k, "<unset>")
                        and not (k not in fp and k in RETIRED_FIELDS and old[k] == RETIRED_FIELDS[k])
                        and not (k not in old and k in ADDED_FIELDS)
                        # a path that holds nothing now is the load's error to report, with its field's name
                        and not (k.endswith(CONTENT_SUFFIX) and (k not in old or k not in fp))]
                diff = [k for k in diff if not (k.endswith(CONTENT_SUFFIX) and _under(k[:-len(CONTENT_SUFFIX)], diff))
                        and not _same_content(k, old, fp)]
                if diff:
                    n = sum(1 for _ in self.done(warn=False))
                    what = "; ".join(_changed(k, old.get(k, "<unset>"), fp.get(k, "<unset>")) for k in diff[:8]) \
                        + (f"; ... ({len(diff)} fields)" if len(diff) > 8 else "")
                    raise ResumeError(
                        f"output.dir={str(self.root)!r} holds {n} result(s) of another configuration ({what}). "
                        "Start over with output.overwrite=true (`--fresh`), which deletes them, or choose another "
                        "output.dir")
        atomic_write_json(path, {"fingerprint": fp})

    # -- reading ----------------------------------------------------------------------------------------

    def lines(self) -> list[tuple[int, dict | None, str | None]]:
        """(line number from 1, record or None, why not a record) for every non-empty manifest line."""
        if not self.manifest.exists():
            return []
        if not self.manifest.is_file():
            raise ManifestError(f"{self.manifest} is not a file")
        out = []
        text = self.manifest.read_bytes().decode("utf-8", "replace")
        for no, line in enumerate(text.split("\n"), 1):
            if line.strip():
                out.append((no, *_record_problem(line)))
        return out

    def done(self, warn: bool = True) -> dict[int, dict]:
        """Prompts already finished with status ok (a resumed job skips them); a later line for the same
        index supersedes an earlier one. Lines that are not records are skipped (with a warning naming them):
        their prompts are redone."""
        out: dict[int, dict] = {}
        for no, rec, why in self.lines():
            if rec is None:
                if warn:
                    log.warning("%s line %d is %s; skipped (its prompt is redone unless another line has it)",
                                self.manifest, no, why)
                continue
            if rec.get("status") == "ok":
                out[rec["index"]] = rec
            else:
                out.pop(rec["index"], None)
        return out

    def records(self, strict: bool = False) -> list[dict]:
        """The finished prompts' records. `strict`: a line that is not a record raises `ManifestError`."""
        if strict:
            bad = [f"line {no}: {why}" for no, rec, why in self.lines() if rec is None]
            if bad:
                raise ManifestError(f"{self.manifest} has {len(bad)} line(s) that are not result records "
                                    f"({'; '.join(bad[:5])}); delete them and re-run the job on this output.dir "
                                    "(it redoes the prompts they stood for)")
        return list(self.done(warn=not strict).values())

    def image_path(self, index: int) -> str:
        return f"images/{index:05d}.png"

    def write_image(self, rel: str, image: np.ndarray) -> None:
        atomic_write_png(self.root / rel, image)

    def preview_path(self, index: int, scale: int) -> str:
        return f"previews/{index:05d}_s{scale}.png"

    def search_data_path(self, index: int) -> str:
        return f"search_data/{index:05d}.npz"

    def write_search_data(self, rel: str, arrays: dict[str, np.ndarray]) -> None:
        """One prompt's search data (`ttsvar.engine.search_data_arrays`) as a compressed .npz, atomically."""
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(self.root / rel, buf.getvalue())

    def trace_path(self, index: int) -> str:
        return f"traces/{index}.json"

    def write_trace(self, index: int, trace: dict) -> str:
        rel = self.trace_path(index)
        atomic_write_json(self.root / rel, trace)
        return rel

    def files_of(self, index: int) -> list[Path]:
        """The files a result of prompt `index` may have written besides its image (which the next result of the
        index overwrites): trace, candidates, previews and search data."""
        found = [self.root / self.trace_path(index), self.root / self.search_data_path(index)]
        for folder, pattern in (("candidates", f"{index:05d}_*.png"), ("previews", f"{index:05d}_s*.png")):
            if (self.root / folder).is_dir():
                found += sorted((self.root / folder).glob(pattern))
        return [f for f in found if f.is_file()]

    def write_files(self, files: list[tuple[str, str, object]]) -> None:
        """A unit's files: ("image", rel, array), ("search_data", rel, arrays) or ("trace", rel, (index, trace))."""
        for kind, rel, payload in files:
            if kind == "image":
                self.write_image(rel, payload)
            elif kind == "search_data":
                self.write_search_data(rel, payload)
            else:
                self.write_trace(payload[0], payload[1])

    def replace_results(self, earlier: dict[int, dict], files: list[tuple[str, str, object]],
                        records: list[dict]) -> None:
        """Write `files` (`write_files`), the files of `records`, where results of an earlier prompt text of the
        same index may lie (`earlier`: index -> that index's latest record), then append `records`. A `redo` line
        for each such index goes first, so that a kill while its files are replaced leaves no ok record pointing at
        another prompt's image (the index is redone on resume); the earlier result's files the new one does not
        write (a trace, candidates, previews or search data that this run does not save) are removed before the
        new record is appended."""
        redo = [{"index": r["index"], "prompt": r.get("prompt"), "status": REDO} for r in records
                if r["index"] in earlier]
        self.append_many(redo)
        self.write_files(files)
        new = {self.root / rel for _, rel, _ in files}
        for r in redo:
            for f in self.files_of(r["index"]):
                if f not in new:
                    f.unlink(missing_ok=True)
        self.append_many(records)

    def append_many(self, records: list[dict]) -> None:
        """Append manifest lines after their files exist, in one write call, fsynced."""
        if not records:
            return
        data = "".join(json.dumps(r, default=_json_default) + "\n" for r in records).encode()
        with os.fdopen(_open_nofollow(self.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "the manifest"),
                       "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

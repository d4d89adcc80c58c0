"""`ttsvar demo` (what `make demo` runs): plain sampling vs TTS-VAR on the same prompts, judged exactly.

`run_demo` is called by `ttsvar.cli.cmd_demo`; `write_grid` by `run_demo` (and the tests). Layout of the
demo's output directory:

    demo.json       the demo's settings (marks the folder as the demo's: its entries listed here are replaced
                    by the next demo run; anything else in it is never touched)
    prompts.jsonl   the GenEval-format prompts (`per_tag` per GenEval tag, shapes world, train split)
    plain/          job output of plain sampling (search.strategy=random, search.n=1)
    tts-var/        job output of TTS-VAR (search.n=n, output.save_candidates=true, output.save_previews=true)
    grid.png        one row per prompt: plain sample, TTS-VAR pick, TTS-VAR's other final candidates,
                    each framed green (correct) or red (wrong) by the exact shapes evaluator
    report.html     `ttsvar report` of both runs: the summary side by side, every prompt's search tree
"""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .core.errors import OutputError
from .output import OutputDir, atomic_write_bytes

PLAIN, SEARCH = "plain", "tts-var"
MARKER = "demo.json"  # the demo's settings; marks --out as a folder the demo owns the entries of `_OWN` in
_OWN = ("prompts.jsonl", PLAIN, SEARCH, "grid.png", "report.html", MARKER)  # all else in --out stays untouched
# fields the demo sets for each run; a user override of one of them would be silently replaced
_DEMO_KEYS = ("seed", "prompts", "model.name", "search.strategy", "search.n", "output.dir", "output.save_candidates",
              "output.save_previews")
_STALE = ("manifest.jsonl", "summary.json", "images", "traces", "candidates", "previews", "geneval_results.jsonl",
          "geneval_summary.json")

# grid geometry (pixels); a cell is a tile framed by BORDER and surrounded by PAD
BORDER, PAD, LABEL_W, HEADER_H = 4, 5, 200, 36
GREEN, RED = (40, 170, 60), (210, 40, 40)


def cell_size(tile: int) -> int:
    return tile + 2 * BORDER + 2 * PAD


def grid_size(n_rows: int, n_cols: int, tile: int) -> tuple[int, int]:
    """(width, height) of a grid with `n_rows` prompt rows (plus the header) and `n_cols` image columns."""
    return LABEL_W + n_cols * cell_size(tile), HEADER_H + n_rows * cell_size(tile)


# 6 tags x 50 prompts x 2 jobs is a long run on a CPU already; a typo (100000) should not start 600,000 prompts
MAX_PER_TAG = 50


def run_demo(out: str | Path, *, seed: int = 0, per_tag: int = 4, n: int = 2, overrides: Sequence[str] = (),
             max_candidates: int = 4, tile: int = 96) -> int:
    """Run the demo into `out`; returns the exit code (1 when a prompt failed in either run).

    Called by `ttsvar.cli.cmd_demo`. Both runs use the same prompts and job seed (`seed`, which also draws the
    prompts); the user's `overrides` apply to both, except `search.*` ones, which only TTS-VAR takes. Everything
    is checked before anything is written. `out` is locked for the demo's whole run, and the demo starts afresh
    each time, touching only its own entries (`_OWN`): a folder holding any of them that no demo wrote is
    refused. Without the shapes-tiny weights only TTS-VAR runs, on a random-weight Infinity, and there is nothing
    to judge or compare.
    """
    from .config import MAX_SEARCH_N, load_config
    from .jobs import run_job
    from .testbed import world
    from .testbed.model import weights_available

    _check_arguments(out, seed, per_tag, n, MAX_SEARCH_N)
    fixed = [o for o in overrides if _sets_demo_key(o.split("=", 1)[0].strip())]
    if fixed:
        raise ValueError(f"the demo sets {', '.join(_DEMO_KEYS)} itself (got {', '.join(fixed)}); use --seed, --n "
                         "for TTS-VAR's N, --per-tag for the number of prompts, or `ttsvar run` for other jobs")
    out = Path(out).expanduser()
    prompts = out / "prompts.jsonl"  # GenEval format, so the results can be judged exactly
    model = "shapes-tiny" if weights_available() else "infinity-tiny-random"
    runs = [(PLAIN, "random", 1, "plain sampling (N=1)"), (SEARCH, "tts-var", n, f"TTS-VAR (N={n})")]
    if model != "shapes-tiny":
        runs = runs[1:]
    jobs = {}  # both configs first: a bad override is refused before a file is touched or a model runs
    for sub, strategy, k, _ in runs:
        mine = [o for o in overrides if strategy == "tts-var" or not o.strip().startswith("search.")]
        jobs[sub] = load_config(None, mine, seed=seed, prompts=str(prompts), model={"name": model},
                                search={"strategy": strategy, "n": k},
                                output={"dir": str(out / sub), "save_candidates": strategy == "tts-var",
                                        "save_previews": strategy == "tts-var"})
    metadata = world.eval_prompts(per_tag, seed=seed, split="train")

    folder = _claim(out)
    try:
        atomic_write_bytes(out / MARKER, json.dumps({"seed": seed, "per_tag": per_tag, "n": n, "model": model,
                                                     "overrides": list(overrides)}, indent=1).encode())
        atomic_write_bytes(prompts, "".join(json.dumps(m) + "\n" for m in metadata).encode())
        if model != "shapes-tiny":
            print("NOTE: the embedded shapes-tiny weights are not available; running TTS-VAR on a tiny Infinity "
                  "with RANDOM weights (images are noise-like), without evaluation or comparison.")
        print(f"ttsvar demo: {' vs '.join(r[3] for r in runs)} with {model} on {len(metadata)} GenEval-style "
              f"prompts (seed {seed}):")
        for m in metadata:
            print(f"  [{m['tag']}] {m['prompt']}")
        try:
            return _run_and_compare(out, runs, jobs, model, n, max_candidates, tile, run_job)
        except KeyboardInterrupt as e:  # the CLI's usual advice (re-run to resume) is wrong here
            e.hint = "the demo starts over when run again"
            raise
    finally:
        folder.unlock()


def _check_arguments(out: str | Path, seed: int, per_tag: int, n: int, max_n: int) -> None:
    if not str(out).strip():
        raise ValueError("--out is empty; give the demo's output folder (default outputs/demo)")
    if not 1 <= per_tag <= MAX_PER_TAG:
        raise ValueError(f"--per-tag must be in 1..{MAX_PER_TAG}, got {per_tag}; for a larger job use `ttsvar run` "
                         "with a prompts file")
    if not 1 <= n <= max_n:
        raise ValueError(f"--n must be in 1..{max_n} (TTS-VAR's N), got {n}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")


def _sets_demo_key(key: str) -> bool:
    """`search.n`, and also `search` (a whole section, `search={n: 3}`), would replace what the demo sets."""
    return any(k == key or k.startswith(key + ".") for k in _DEMO_KEYS)


def _claim(out: Path) -> OutputDir:
    """`out` created and locked for this demo (`OutputError` if another ttsvar process holds it), after checking
    that the demo's own entries in it, if any, were written by a demo; the previous demo's results are cleared."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file, not a folder; choose another --out")
    ours = [name for name in _OWN if (out / name).exists() or (out / name).is_symlink()]
    written_by_demo = (out / MARKER).is_file() or any((out / d / "job.json").is_file() for d in (PLAIN, SEARCH))
    if ours and not written_by_demo:
        raise OutputError(f"--out {str(out)!r} holds {', '.join(ours)}, which no ttsvar demo wrote; the demo "
                          "would replace them: choose another --out or move them")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --out {str(out)!r} ({e.strerror or e}); choose another --out") from None
    folder = OutputDir(out)
    folder.lock(field="--out")
    try:
        for name in ("grid.png", "report.html"):  # they would describe the runs about to be deleted
            (out / name).unlink(missing_ok=True)
        for sub in (PLAIN, SEARCH):
            _start_afresh(out / sub)
    except BaseException:
        folder.unlock()
        raise
    return folder


def _run_and_compare(out: Path, runs: list, jobs: dict, model: str, n: int, max_candidates: int, tile: int,
                     run_job) -> int:
    summaries = {}
    for sub, _, _, label in runs:
        s = summaries[sub] = run_job(jobs[sub])
        print(f"{label}: {s['prompts_ok']} images in {s['wall_time_s']:.1f} s, "
              f"{s['compute'].get('token_forwards', 0):,} token forwards -> {out / sub}")
    rc = 0 if all(s.get("prompts_failed", 0) == 0 for s in summaries.values()) else 1
    if model != "shapes-tiny":
        _write_report(out, [r[0] for r in runs])
        return rc

    from .eval.evaluate import evaluate_output_dir

    print("exact GenEval-style evaluation (overall = mean of the per-tag accuracies):")
    for sub, _, _, label in runs:
        s = evaluate_output_dir(out / sub)["summary"]
        tags = ", ".join(f"{t} {v['correct']}/{v['total']}" for t, v in s["per_tag"].items())
        print(f"{label}: overall {s['overall']:.2f} ({tags})")
    tf = {sub: summaries[sub]["compute"].get("token_forwards", 0) for sub in summaries}
    if tf[PLAIN]:
        print(f"TTS-VAR used {tf[SEARCH] / tf[PLAIN]:.1f}x the token forwards of plain sampling")
    grid = write_grid(out / "grid.png", out / PLAIN, out / SEARCH, labels=("plain N=1", f"TTS-VAR N={n}"),
                      max_candidates=max_candidates, tile=tile)
    print(f"grid: {grid}  (rows: prompts; columns: plain sample, TTS-VAR pick, TTS-VAR's other final candidates; "
          "green frame = correct, red = wrong)")
    _write_report(out, [r[0] for r in runs])
    return rc


def _write_report(out: Path, subs: list[str]) -> None:
    from .report import build_report

    info = build_report([out / s for s in subs], out / "report.html", title="ttsvar demo")
    print(f"report: {info.path}  (open it in a browser: the runs side by side and every prompt's search tree)")


def _start_afresh(d: Path) -> None:
    for old in _STALE:
        path = d / old
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    d.mkdir(parents=True, exist_ok=True)


def write_grid(path: Path, plain_dir: Path, search_dir: Path, *, labels: tuple[str, str] = ("plain N=1", "TTS-VAR"),
               max_candidates: int = 4, tile: int = 96) -> Path:
    """Judge and draw both runs' images into one PNG at `path` (written atomically); returns `path`.

    Called by `run_demo`. One row per prompt finished in both runs (by index): the plain sample, the
    TTS-VAR pick, then up to `max_candidates` of TTS-VAR's other final candidates (manifest `candidates`,
    the pick first, so it is skipped). Each tile is upscaled (nearest) to `tile` pixels and framed green
    with a check mark when the `shapes` evaluator judges it correct for the prompt's metadata, red with a cross
    otherwise. A header row names the columns and gives each run's number of correct images.
    """
    from .eval.registry import create_evaluator

    ev = create_evaluator("shapes")
    plain, search = OutputDir(plain_dir), OutputDir(search_dir)
    p_recs, s_recs = plain.done(), search.done()
    rows = []  # (metadata, [(image, correct) or None per column])
    for i in sorted(set(p_recs) & set(s_recs)):
        md = ev.metadata_for(s_recs[i])
        if md is None:
            raise ValueError(f"prompt {i} ({s_recs[i]['prompt']!r}) has no GenEval metadata to judge it by")
        paths = [plain.root / p_recs[i]["image"], search.root / s_recs[i]["image"]]
        paths += [search.root / c for c in s_recs[i].get("candidates", [])[1:][:max_candidates]]
        cells = []
        for p in paths:
            img = np.asarray(Image.open(p).convert("RGB"))
            cells.append((img, ev.evaluate(img, md).correct))
        rows.append((md, cells))
    if not rows:
        raise ValueError(f"no prompt finished in both {plain_dir} and {search_dir}")
    n_cols = max(len(c) for _, c in rows)
    counts = [sum(c[j][1] for _, c in rows if len(c) > j) for j in range(2)]
    titles = [labels[0], labels[1]] + [f"not picked {j}" for j in range(1, n_cols - 1)]
    subtitles = [f"{counts[0]}/{len(rows)} correct", f"pick: {counts[1]}/{len(rows)} correct"]
    subtitles += ["(TTS-VAR final)"] * (n_cols - 2)

    font = _font()
    W, H = grid_size(len(rows), n_cols, tile)
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    cell = cell_size(tile)
    draw.text((PAD, PAD), "prompt [GenEval tag]", fill="black", font=font)
    for j, (t, st) in enumerate(zip(titles, subtitles)):
        x = LABEL_W + j * cell + PAD
        draw.text((x, PAD), t, fill="black", font=font)
        draw.text((x, PAD + 14), st, fill=(90, 90, 90), font=font)
    draw.line([(0, HEADER_H - 1), (W, HEADER_H - 1)], fill=(180, 180, 180))
    for r, (md, cells) in enumerate(rows):
        y = HEADER_H + r * cell
        text = textwrap.wrap(md["prompt"], width=_wrap_width(draw, font, LABEL_W - 2 * PAD)) + [f"[{md['tag']}]"]
        draw.multiline_text((PAD, y + PAD + BORDER), "\n".join(text), fill="black", font=font, spacing=3)
        for j, (img, ok) in enumerate(cells):
            x = LABEL_W + j * cell + PAD
            draw.rectangle([x, y + PAD, x + tile + 2 * BORDER - 1, y + PAD + tile + 2 * BORDER - 1],
                           fill=GREEN if ok else RED)
            canvas.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (x + BORDER, y + PAD + BORDER))
            _mark(draw, x + tile + 2 * BORDER - 16, y + PAD, ok)
        if r:
            draw.line([(0, y), (W, y)], fill=(225, 225, 225))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=12)  # Pillow >= 10.1 (FreeType)
    except TypeError:
        return ImageFont.load_default()


def _wrap_width(draw: ImageDraw.ImageDraw, font, width: int) -> int:
    """Characters per line that fit in `width` pixels (measured on a typical prompt's letters)."""
    per_char = draw.textlength("a photo of a square", font=font) / len("a photo of a square")
    return max(8, int(width / max(per_char, 1.0)))


def _mark(draw: ImageDraw.ImageDraw, x: int, y: int, ok: bool) -> None:
    """A 16x16 badge at (x, y): a white check on green or a white cross on red (drawn, not a font glyph)."""
    draw.rectangle([x, y, x + 15, y + 15], fill=GREEN if ok else RED)
    if ok:
        draw.line([(x + 3, y + 8), (x + 6, y + 12), (x + 12, y + 3)], fill="white", width=2)
    else:
        draw.line([(x + 4, y + 4), (x + 11, y + 11)], fill="white", width=2)
        draw.line([(x + 11, y + 4), (x + 4, y + 11)], fill="white", width=2)

"""The report page: the summary (runs side by side, per-tag scores, configuration, a quality-against-compute
chart) as static HTML, and the prompts section that `report.js` renders from the embedded JSON.

`render_page(runs, data)` is called by `ttsvar.report.build_report`. Everything is escaped here; the script
builds its DOM with `textContent`, so a prompt cannot inject markup. The CSS and JS are read from the files next
to this module and inlined: the page needs no network.
"""

from __future__ import annotations

import json
import math
import time
from html import escape
from pathlib import Path
from typing import Any

from .runs import Run

_HERE = Path(__file__).resolve().parent

# summary rows: (label, getter, format); a getter returns None where a run has no value
_TIME_PHASES = ("time_setup", "time_generate", "time_decode", "time_reward", "time_features", "time_decide")
_RUN_PHASES = ("time_setup", "time_decide")  # a run's as a whole (summary.json); the others are per prompt
_COUNTERS = ("token_forwards", "preview_decodes", "reward_images", "feature_images")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _tick(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


# The job's totals come from its records (the manifest: every run of a resumed job), never from summary.json's
# top level, which holds the last run's numbers only; the phases of a run as a whole (setup, decide) from the summary.
def _total(run: Run, key: str) -> float | None:
    vals = [(r.get("compute") or {}).get(key) for r in run.records]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return sum(vals) if vals else None


def _phase(run: Run, key: str) -> Any:
    total = _total(run, key)
    return total if total is not None else run.summary.get(key)


def per_prompt_forwards(run: Run) -> float | None:
    tf = _total(run, "token_forwards")
    return tf / len(run.records) if tf is not None and run.records else None


def quality(run: Run, use_geneval: bool) -> float | None:
    if use_geneval:
        return (run.geneval or {}).get("overall")
    vals = [r["reward"] for r in run.records if isinstance(r.get("reward"), (int, float))]
    return sum(vals) / len(vals) if vals else None


def _rows(runs: list[Run]) -> list[tuple[str, list[Any], str]]:
    """(label, value per run, css class) rows of the side-by-side table."""
    rows: list[tuple[str, list[Any], str]] = [
        ("output folder", [str(r.root) for r in runs], "path"),
        ("model", [r.setting("model.name") for r in runs], ""),
        ("strategy", [r.setting("search.strategy") for r in runs], ""),
        ("n", [r.setting("search.n") for r in runs], ""),
        ("reward", [r.setting("reward.name") for r in runs], ""),
        ("seed", [r.config.get("seed") for r in runs], ""),
        ("prompts ok", [len(r.records) for r in runs], ""),
        ("prompts failed", [len(r.failed) for r in runs], ""),
        ("mean reward", [quality(r, False) for r in runs], "metric"),
    ]
    if any(r.geneval for r in runs):
        rows.append(("GenEval overall", [(r.geneval or {}).get("overall") for r in runs], "metric"))
        if any(r.geneval_note for r in runs):
            rows.append(("  GenEval scores stale", [r.geneval_note for r in runs], "warning"))
        tags = list(dict.fromkeys(t for r in runs for t in ((r.geneval or {}).get("per_tag") or {})))
        for t in tags:
            vals = []
            for r in runs:
                v = ((r.geneval or {}).get("per_tag") or {}).get(t)
                vals.append(f"{v['accuracy']:.2f} ({v['correct']}/{v['total']})" if isinstance(v, dict) else None)
            rows.append((f"  {t}", vals, "tag"))
    rows.append(("token forwards / prompt", [per_prompt_forwards(r) for r in runs], "compute"))
    for k in _COUNTERS:
        rows.append((k.replace("_", " "), [_phase(r, k) for r in runs], "compute"))
    for k in _TIME_PHASES:
        if k not in _RUN_PHASES:
            rows.append((f"{k[5:]} time (s)", [_phase(r, k) for r in runs], "compute"))
    rows.append(("wall time, last run (s)", [r.summary.get("wall_time_s") for r in runs], "compute"))
    for k in _RUN_PHASES:
        rows.append((f"  {k[5:]}, last run (s)", [r.summary.get(k) for r in runs], "compute"))
    return rows


def summary_table(runs: list[Run]) -> str:
    head = "".join(f"<th>{escape(r.label)}</th>" for r in runs)
    body = []
    for label, vals, cls in _rows(runs):
        cells = "".join(f"<td>{escape(_fmt(v))}</td>" for v in vals)
        body.append(f'<tr class="{cls}"><th>{escape(label)}</th>{cells}</tr>')
    return f'<table id="runs-table" class="runs"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def config_table(runs: list[Run]) -> str:
    """Every fingerprint field of every run; fields that differ between runs first and marked."""
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    if not keys:
        return "<p>No job.json in these folders: the configuration is unknown.</p>"

    def differs(k: str) -> bool:
        return len({json.dumps(r.config.get(k, "<unset>"), sort_keys=True) for r in runs}) > 1

    keys.sort(key=lambda k: not differs(k))
    head = "".join(f"<th>{escape(r.label)}</th>" for r in runs)
    body = []
    for k in keys:
        cells = "".join(f"<td>{escape(_fmt(r.config.get(k)))}</td>" for r in runs)
        body.append(f'<tr{" class=differs" if differs(k) else ""}><th>{escape(k)}</th>{cells}</tr>')
    return f'<table id="config-table" class="runs"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def chart(runs: list[Run], width: int = 560, height: int = 320) -> str:
    """Quality against compute, one point per run, as inline SVG: x = token forwards per prompt (log scale when
    they span more than 10x), y = GenEval overall when every run was evaluated, else mean reward."""
    use_geneval = all(r.geneval and not r.geneval_note for r in runs)  # stale scores are not plotted as a run's
    pts = [(per_prompt_forwards(r), quality(r, use_geneval), r.label) for r in runs]
    pts = [(x, y, lab) for x, y, lab in pts if x and x > 0 and y is not None]
    if not pts:
        return "<p>No run has both compute and a score to plot.</p>"
    rewards = sorted({str(rec.get("reward_name")) for r in runs for rec in r.records if rec.get("reward_name")})
    if not use_geneval and len(rewards) > 1:
        return (f"<p>No chart: the runs score with different rewards ({escape(', '.join(rewards))}), whose "
                "mean rewards are not on one scale; evaluate every run (<code>ttsvar evaluate</code>) to chart them "
                "by GenEval score.</p>")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    log_x = max(xs) / min(xs) > 10
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    y0, y1 = (0.0, 1.0) if use_geneval else (min(ys), max(ys))
    pad_x = (x1 - x0) * 0.1 or abs(x0) * 0.1 or 1.0  # one point, or all at one x: a range around it
    pad_y = (y1 - y0) * 0.1 or abs(y0) * 0.1 or 0.5
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - (0 if use_geneval else pad_y), y1 + (0 if use_geneval else pad_y)
    L, R, T, B = 70, 20, 20, 50

    def px(v: float) -> float:
        return L + (fx(v) - x0) / (x1 - x0) * (width - L - R)

    def py(v: float) -> float:
        return height - B - (v - y0) / (y1 - y0) * (height - T - B)

    parts = [f'<svg id="quality-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<line x1="{L}" y1="{height - B}" x2="{width - R}" y2="{height - B}" class="axis"/>',
             f'<line x1="{L}" y1="{T}" x2="{L}" y2="{height - B}" class="axis"/>']
    for i in range(5):  # y ticks
        v = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{L - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{_tick(v)}</text>')
    for i in range(5):  # x ticks
        t = x0 + (x1 - x0) * i / 4
        v = 10 ** t if log_x else t
        parts.append(f'<text x="{L + (t - x0) / (x1 - x0) * (width - L - R):.1f}" y="{height - B + 16}" '
                     f'text-anchor="middle">{_tick(v)}</text>')
    xl = "token forwards per prompt" + (" (log scale)" if log_x else "")
    yl = "GenEval overall" if use_geneval else "mean reward"
    parts.append(f'<text x="{(L + width - R) / 2}" y="{height - 10}" text-anchor="middle">{xl}</text>')
    parts.append(f'<text x="14" y="{(T + height - B) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(T + height - B) / 2})">{yl}</text>')
    for x, y, lab in pts:
        parts.append(f'<g class="point"><circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5"/>'
                     f'<text x="{px(x) + 8:.1f}" y="{py(y) - 8:.1f}">{escape(lab)}</text>'
                     f'<title>{escape(lab)}: {yl} {y:.4g} at {x:,.0f} token forwards per prompt</title></g>')
    parts.append("</svg>")
    return "".join(parts)


def _script_json(data: Any) -> str:
    """JSON safe inside <script>: no `</` and no `<!--` (both still valid JSON escapes); ASCII only, so no line
    separator JS would choke on either."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\u0021--")


def prompt_mismatch(runs: list[Run]) -> str | None:
    """The prompt table lines runs up by prompt index: say so when their prompts differ at an index (runs of
    different prompt files, or a GenEval-layout run beside a plain one), naming the first."""
    texts: dict[int, dict[str, str]] = {}
    for r in runs:
        for rec in r.records + r.failed:
            texts.setdefault(rec["index"], {})[r.label] = rec.get("prompt", "")
    differ = sorted(i for i, by in texts.items() if len(set(by.values())) > 1)
    if not differ:
        return None
    i = differ[0]
    example = "; ".join(f"{label}: {text!r}" for label, text in texts[i].items())
    return (f"These runs have different prompts at {len(differ)} index(es) (first #{i}: {example}); the prompt "
            "table puts results of the same index side by side, so compare runs of the same prompts file.")


def render_page(runs: list[Run], data: dict, title: str = "ttsvar report") -> str:
    css = (_HERE / "report.css").read_text(encoding="utf-8")
    js = (_HERE / "report.js").read_text(encoding="utf-8")
    evaluated = any(r.geneval for r in runs)
    n_prompts = len({p["i"] for r in data["runs"] for p in r["prompts"]})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{css}</style></head><body>",
        f"<header><h1>{escape(title)}</h1><p>{len(runs)} run(s), {n_prompts} prompt(s); written "
        f"{escape(time.strftime('%Y-%m-%d %H:%M:%S'))}. Click a prompt to see its search tree.</p></header>",
        '<section id="summary"><h2>Runs</h2>',
        summary_table(runs),
    ]
    mismatch = prompt_mismatch(runs)
    if mismatch:
        parts.append(f'<p class="warning">{escape(mismatch)}</p>')
    if len(runs) > 1:
        parts += ['<h2>Quality against compute</h2>', chart(runs)]
    if not evaluated:
        parts.append('<p class="note">Not evaluated: run <code>ttsvar evaluate DIR</code> for per-tag scores.</p>')
    parts += ["<details><summary>Configuration (job.json; fields that differ first)</summary>", config_table(runs),
              "</details></section>",
              '<section id="prompts"><h2>Prompts</h2>',
              '<div class="controls"><input id="filter" type="search" placeholder="filter: words of the prompt or tag">'
              '<button id="prev" type="button">&lt; prev</button><span id="page-info"></span>'
              '<button id="next" type="button">next &gt;</button></div>',
              '<table id="prompt-table"></table></section>',
              '<section id="detail"><p class="hint">No prompt selected.</p></section>',
              '<noscript><p>The prompts and their search trees need JavaScript.</p></noscript>',
              f'<script type="application/json" id="report-data">{_script_json(data)}</script>',
              f"<script>{js}</script></body></html>"]
    return "\n".join(parts)

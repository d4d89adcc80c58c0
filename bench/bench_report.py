"""Size and build time of `ttsvar report` for a full GenEval run: 553 prompts x 4 samples = 2212 prompt results.

    .venv/bin/python bench/bench_report.py [--prompts 2212] [--keep DIR]

The runs are fabricated without a model (`ttsvar.testing.fabricate_run`: the real Coordinator and strategies on
random rewards and features, so the traces are those of a 13-scale Infinity job; tiny PNGs), then reported:

* tts-var N=4, images linked: the case of a real Infinity run (1024 px images are far too big to embed);
* tts-var N=4 with `output.save_previews` strips and 32 px images, embedded (the shapes testbed's size);
* best-of-n N=4 (no intermediate decisions), images linked;
* all three in one report (the summary side by side and the chart).

Columns: prompt results, trace rows per prompt, images shown, whether embedded, page size, build time (read +
render + write, the median of `--repeats`), and, with chromium installed, the wall time of a headless chromium
opening the page on the last prompt and dumping its DOM (browser start-up included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttsvar.report import build_report  # noqa: E402
from ttsvar.report.browser import chromium, dump_dom  # noqa: E402
from ttsvar.testing import fabricate_run  # noqa: E402


def rows_per_prompt(run: Path) -> float:
    tr = json.loads(next((run / "traces").iterdir()).read_text())
    return sum(len(d["rows"]) for d in tr["decisions"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=553 * 4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="fabricate into this folder and keep it")
    args = ap.parse_args()
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="ttsvar-bench-report-")
        base = Path(tmp.name)
    else:
        base = args.keep
    t = time.perf_counter()
    runs = {
        "tts-var N=4, linked": (fabricate_run(base / "tts-var", "tts-var", n=4, prompts=args.prompts), "none"),
        "tts-var N=4 + previews, embedded": (fabricate_run(base / "tts-var-previews", "tts-var", n=4,
                                                           prompts=args.prompts, previews=True), "all"),
        "best-of-n N=4, linked": (fabricate_run(base / "best-of-n", "best-of-n", n=4, prompts=args.prompts), "none"),
    }
    print(f"fabricated {len(runs)} runs of {args.prompts} prompts in {time.perf_counter() - t:.1f} s "
          f"({'chromium: ' + chromium() if chromium() else 'no chromium: no browser column'})\n")
    cases = [(label, [run], embed, rows_per_prompt(run)) for label, (run, embed) in runs.items()]
    cases.append(("all three, one report, linked", [r for r, _ in runs.values()], "none", None))
    print("| report | prompt results | trace rows / prompt | images | embedded | page (MiB) | build (s) | "
          "chromium open (s) |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for k, (label, dirs, embed, rows) in enumerate(cases):
        out = base / f"report-{k}.html"
        times, info = [], None
        for _ in range(args.repeats):
            info = build_report(dirs, out, embed=embed)
            times.append(info.seconds)
        browser = "–"
        if chromium():
            t = time.perf_counter()
            dom = dump_dom(out, f"prompt={args.prompts - 1}")
            browser = f"{time.perf_counter() - t:.1f}"
            assert 'class="node' in dom, "the page rendered no tree"
        print(f"| {label} | {info.prompts} | {'–' if rows is None else f'{rows:.0f}'} | {info.images} | "
              f"{'yes' if info.embedded else 'no'} | {info.size / 2**20:.1f} | {statistics.median(times):.2f} | "
              f"{browser} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

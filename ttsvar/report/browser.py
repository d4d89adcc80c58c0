"""A headless Chromium driven through its command line, for checking and timing report pages (the report's
tests and `bench/bench_report.py`): `chromium()` finds it, `dump_dom` returns a page's DOM after its scripts
ran, `screenshot` writes a PNG of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def chromium() -> str | None:
    """The headless browser the report tests use: $TTSVAR_CHROMIUM, else Debian's `chromium` on PATH."""
    for name in (os.environ.get("TTSVAR_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


NO_BROWSER = "no headless browser: install Debian's chromium (`apt-get install chromium`, as .ci/run does) " \
             "or set TTSVAR_CHROMIUM to run the report's browser tests"


def _browser(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    exe = chromium()
    if not exe:
        raise RuntimeError(NO_BROWSER)
    with tempfile.TemporaryDirectory(prefix="ttsvar-chromium-") as profile:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def dump_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran (chromium --dump-dom)."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    res = _browser(["--dump-dom", url])
    if "<html" not in res.stdout:
        raise RuntimeError(f"chromium printed no DOM (exit {res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1400, 1000), fragment: str = "") -> None:
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    res = _browser([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", url])
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-2000:]}")

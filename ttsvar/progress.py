"""The progress bar of a job (prompts finished out of the job's total), shared by the local runtime
(`ttsvar.jobs`) and the Ray driver (`cluster.driver`)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, quiet: bool) -> Any:
    """A tqdm bar counting prompts; `quiet` (`runtime.quiet`) disables it. Callers `update(n)` per finished
    prompt and may `set_postfix_str` the unit and scale in progress."""
    from tqdm import tqdm

    return tqdm(total=total, disable=quiet, unit="prompt", desc="ttsvar", dynamic_ncols=True)


def close_bars() -> None:
    """Close every live tqdm bar: called before the CLI prints why a command stopped, so that the message starts
    on its own line and no bar is redrawn after it (an exception keeps the bar alive in its traceback)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()

"""The progress bar of a job (prompts finished out of the job's total), shared by the local runtime
(`ttsvar.jobs`) and the Ray driver (`cluster.driver`)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, quiet: bool) -> Any:
    """A tqdm bar counting prompts; `quiet` (`runtime.quiet`) disables it. Callers `update(n)` per finished
    prompt and may `set_postfix_str` the unit and scale in progress."""
    from tqdm import tqdm

    return tqdm(total=total, disable=quiet, unit="prompt", desc="ttsvar", dynamic_ncols=True)

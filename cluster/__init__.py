"""Distributed runs on Ray: the same jobs, the same strategy code, the same results as a local run.

`ttsvar run job.yaml runtime.kind=ray` reaches `run_ray_job(job)` through `ttsvar.jobs.run_job`. The
driver process keeps the decision half of the engine (`ttsvar.engine.Coordinator`) and the single
`ResultWriter`; generator actors (`cluster.actors.GeneratorActor`, one per GPU) keep the model half
(`ttsvar.engine.Worker`) and the candidate-path state of the work units they run. Only small per-row
arrays (row ids, rewards, features) and row indices cross between them.

This package is the only one that imports Ray, and it imports it lazily: `import cluster` is cheap, so
the command line can catch `ClusterError` without loading Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ttsvar.core.errors import TtsvarError

if TYPE_CHECKING:
    from ttsvar.config import JobConfig


class ClusterError(TtsvarError, RuntimeError):
    """The Ray runtime cannot run the job (no cluster to join, actors that cannot start, all actors lost)."""


def run_ray_job(job: JobConfig, on_event: Callable[[Any], None] | None = None) -> dict:
    """Run (or resume) `job` on Ray; returns the summary (also written to output.dir/summary.json).

    `on_event(ray_job)` is called after every message the driver handles (tests use it to kill an actor
    at a chosen moment; it may read `ray_job.slots`, `ray_job.writer.ok`, `ray_job.total`)."""
    from .driver import RayJob

    return RayJob(job, on_event).run()


__all__ = ["ClusterError", "run_ray_job"]

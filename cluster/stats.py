"""What the Ray driver counts for the job summary (`summary.json`: actors, retries, coordinator latency).

`RayJob` and `Recovery` bump the counters as things happen; `RayJob._run` calls `summary` once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ttsvar.engine import Coordinator

from .runtime import ActorPlan
from .scheduling import ActorSlot


@dataclass
class DriverStats:
    connect_s: float = 0.0  # joining or starting Ray
    t_start: float | None = None  # perf_counter when the actors were launched
    t_first_ready: float | None = None  # ... and when the first generator actor was ready
    latency: list[float] = field(default_factory=list)  # report arrived -> selection sent, per decision
    decide_calls: int = 0  # Coordinator.decide / pick calls (one per report: a unit at one scale)
    units_retried: int = 0  # re-queued after a (transient) error
    units_requeued: int = 0  # re-queued after their actor died
    actors_restarted: int = 0  # replacement generator actors launched
    units_abandoned_lost: int = 0  # prompts recorded as failed because their actor kept dying under them
    reward_actors_ready: int = 0

    def summary(self, plan: ActorPlan, slots: list[ActorSlot], coord: Coordinator | None, n_units: int) -> dict:
        lat = np.asarray(self.latency) * 1e3
        n_dec = self.decide_calls
        return {
            "actors": plan.generators, "reward_actors": plan.reward_actors,
            "actors_started": len(slots), "actors_restarted": self.actors_restarted,
            "actor_hosts": sorted({s.host for s in slots if s.host}),
            "ray_connect_s": round(self.connect_s, 3),
            "actor_start_s": round(self.t_first_ready - self.t_start, 3) if self.t_first_ready else None,
            "units": n_units, "units_retried": self.units_retried, "units_requeued": self.units_requeued,
            "prompts_abandoned_actor_lost": self.units_abandoned_lost,
            "time_decide": round(coord.time_decide, 4) if coord else 0.0,
            "decide_ms_per_call": round(coord.time_decide * 1e3 / n_dec, 4) if n_dec and coord else None,
            "coordinator_latency_ms": None if not len(lat) else {
                "mean": round(float(lat.mean()), 4), "p50": round(float(np.median(lat)), 4),
                "p95": round(float(np.percentile(lat, 95)), 4), "max": round(float(lat.max()), 4),
                "decisions": int(len(lat))},
        }

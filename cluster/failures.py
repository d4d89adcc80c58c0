"""The Ray side of failure handling: applies the coordinator's verdicts to the driver's queue and actors.

The policy (split a failed unit into single prompts, retry a transient error up to `runtime.retries` times,
abandon a unit whose actor died `MAX_ACTOR_LOSSES` times while it ran alone) is `ttsvar.engine.Coordinator.fail`
/ `lost`, the same the local runtime follows. `RayJob` calls `unit_failed` when a unit raised (in its actor, or in the
strategy on the driver) and `units_lost` when an actor is gone; this class frees the unit's actor state,
puts units back in the `Scheduler`'s queue or records them as failed, and counts what it did in `DriverStats`.
"""

from __future__ import annotations

import logging
import traceback

from ray.exceptions import RayTaskError

from ttsvar.engine import Action, Coordinator
from ttsvar.jobs import ResultWriter

from .scheduling import ActorSlot, Scheduler
from .stats import DriverStats

log = logging.getLogger("ttsvar.cluster")


def last_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def error_text(e: BaseException) -> str:
    """A short error for the manifest: the end of the (remote) traceback, ending with the exception line."""
    if isinstance(e, RayTaskError):
        lines = [x for x in str(e).strip().splitlines() if x.strip()]
        return "\n".join(lines[-8:])
    return "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=3))


class Recovery:
    """Carries out `Coordinator.fail` / `Coordinator.lost` verdicts for the Ray driver."""

    def __init__(self, sched: Scheduler, writer: ResultWriter, bar, stats: DriverStats, retries: int):
        self.sched, self.writer, self.bar, self.stats, self.retries = sched, writer, bar, stats, retries

    def unit_failed(self, coord: Coordinator, unit_id: int, e: BaseException) -> None:
        """A unit raised: drop its state on its actor, then split, re-queue (at the back) or record it."""
        slot = self.sched.flights[unit_id].slot
        unit = self.sched.forget_unit(unit_id)
        if not slot.dead:
            slot.handle.drop.remote(unit_id)  # free the unit's state; nothing waits on this
        err = error_text(e)
        why = err.splitlines()[-1] if err else ""
        verdict = coord.fail(unit, e)
        if verdict.action is Action.SPLIT:
            log.warning("prompts %s failed together (%s); running them one by one", unit.prompt_indices, why)
            self.sched.queue.extendleft(reversed(verdict.units))
        elif verdict.action is Action.RETRY:
            log.warning("prompt %d failed (attempt %d of %d), re-queued: %s", unit.prompt_indices[0],
                        verdict.attempts, self.retries + 1, why)
            self.stats.units_retried += 1
            self.sched.queue.append(unit)
        else:
            n = verdict.attempts
            log.error("prompt %d failed%s; recorded as failed: %s", unit.prompt_indices[0],
                      f" {n} times" if n > 1 else "", why)
            self.writer.write_failure(unit, err, e)
            self.bar.update(len(unit.prompt_indices))

    def units_lost(self, coord: Coordinator | None, slot: ActorSlot, e: BaseException) -> None:
        """`slot`'s actor is gone: its units go back to the front of the queue (re-run from the start), each to
        run alone on an actor (`Scheduler.suspects`; a unit of several prompts split into single prompts), or
        are recorded as failed once they have lost their actor `MAX_ACTOR_LOSSES` times while running alone.
        Units that shared the dying actor are not blamed for it, so one prompt that kills actors costs only
        itself."""
        alone = len(slot.units) == 1
        for unit_id in sorted(slot.units, reverse=True):
            unit = self.sched.forget_unit(unit_id)
            verdict = coord.lost(unit, alone)  # a unit is only started once the coordinator exists
            if verdict.action is Action.ABANDON:
                log.error("prompt %d: its actor died %d times while running it alone; recorded as failed",
                          unit.prompt_indices[0], verdict.attempts)
                self.writer.write_failure(unit, f"the actor running this prompt alone died {verdict.attempts} "
                                                f"times (last: {last_line(e)})", e)
                self.stats.units_abandoned_lost += 1
                self.bar.update(len(unit.prompt_indices))
            else:
                self.stats.units_requeued += 1
                self.sched.queue.extendleft(reversed(verdict.units))
                self.sched.suspects.update(u.unit_id for u in verdict.units)
